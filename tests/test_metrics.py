"""Tests of metrics.py: FID against scipy and exact references, IS by hand, streaming moments."""
import functools
import math

import numpy as np
import pytest
import torch

import metrics
from benchmarks.bench_fid import random_moments, scipy_frechet_distance


@functools.lru_cache
def moments(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Well-conditioned 2048-d (mu, sigma), made once per seed (np.cov at 2048-d is slow)."""
    return random_moments(2048, 4096, seed)


@functools.lru_cache
def samples_cov(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centred samples [n, dim], their mean, np.cov): rank n - 1 when n <= dim."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)) * rng.uniform(0.5, 2.0, dim) + rng.normal(0, 1, dim)
    return x - x.mean(0), x.mean(0), np.cov(x, rowvar=False)


def nuclear_reference(x1: np.ndarray, x2: np.ndarray) -> float:
    """tr sqrtm(s1 s2) with s = X^T X / (n - 1) for centred X: the nuclear norm of X1 X2^T
    / sqrt((n1 - 1)(n2 - 1)), exact without forming a singular dim x dim product."""
    scale = math.sqrt((len(x1) - 1) * (len(x2) - 1))
    return float(np.linalg.svd(x1 @ x2.T / scale, compute_uv=False).sum())


# ----------------------------------------------------------------------------- FID

@pytest.mark.parametrize('fid', [metrics.numpy_calculate_frechet_distance,
                                 metrics.torch_calculate_frechet_distance])
def test_fid_of_identical_statistics_is_zero(fid):
    mu, sigma = moments(0)
    assert 0.0 <= fid(mu, sigma, mu, sigma) < 1e-6
    _, mu, sigma = samples_cov(30, 512, seed=0)  # rank-deficient: rank 29 of 512
    assert 0.0 <= fid(mu, sigma, mu, sigma) < 1e-6


def test_fid_matches_scipy_sqrtm_at_2048d():
    (mu1, sigma1), (mu2, sigma2) = moments(0), moments(1)
    ref = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    for fid in (metrics.numpy_calculate_frechet_distance,
                metrics.torch_calculate_frechet_distance):
        assert fid(mu1, sigma1, mu2, sigma2) == pytest.approx(ref, rel=1e-6)
    tensors = map(torch.from_numpy, (mu1, sigma1, mu2, sigma2))
    assert metrics.torch_calculate_frechet_distance(*tensors) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize('n1, n2', [(40, 60), (40, 2500), (2500, 40)])
def test_fid_rank_deficient_is_exact(n1, n2):
    x1, mu1, sigma1 = samples_cov(n1, 2048, seed=1)
    x2, mu2, sigma2 = samples_cov(n2, 2048, seed=2)
    ref = (((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2)
           - 2 * nuclear_reference(x1, x2))
    fid = metrics.numpy_calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert isinstance(fid, float) and math.isfinite(fid)
    assert fid == pytest.approx(ref, rel=1e-6)


def test_fid_commuting_covariances_with_null_spaces():
    # Shared eigenvectors: FID = |dmu|^2 + sum (sqrt a - sqrt b)^2, zeros in both spectra.
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    a, b = rng.uniform(0.1, 3, 300), rng.uniform(0.1, 3, 300)
    a[:100], b[50:150] = 0, 0
    mu1, mu2 = rng.normal(size=300), rng.normal(size=300)
    ref = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    fid = metrics.numpy_calculate_frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert fid == pytest.approx(ref, rel=1e-6)


def test_fid_zero_covariance_and_non_finite_input():
    zero, eye, mu = np.zeros((8, 8)), np.eye(8), np.zeros(8)
    assert metrics.numpy_calculate_frechet_distance(mu, zero, mu + 1, eye) == pytest.approx(16.0)
    with pytest.raises(ValueError, match='non-finite'):
        metrics.numpy_calculate_frechet_distance(mu, eye * np.nan, mu, eye)


def test_both_routes_match_exact_reference():
    # The LAPACK route (CPU) and the torch route (GPUs), both run here on the CPU, through
    # their positive definite and their singular branches.
    full1, full2, low1, low2 = (samples_cov(n, 256, seed) for n, seed in
                                ((600, 4), (700, 5), (50, 6), (70, 7)))
    for (x1, _, s1), (x2, _, s2) in ((full1, full2), (low1, full2), (low1, low2),
                                     (full1, low2)):
        ref = nuclear_reference(x1, x2)
        lapack = np.sqrt(np.clip(metrics._psd_eigs_lapack(s1, s2), 0, None)).sum()
        eigs = metrics._psd_eigs_torch(torch.from_numpy(s1), torch.from_numpy(s2))
        # Factoring a positive definite s1 leaves s2's null space as eigenvalues of order
        # rounding, ~1e-8 relative after the square root: well inside FID's 1e-6.
        assert lapack == pytest.approx(ref, rel=1e-7)
        assert float(eigs.clamp_min(0).sqrt().sum()) == pytest.approx(ref, rel=1e-7)


# ----------------------------------------------------------------------------- IS

def test_inception_score_by_hand():
    pred = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0],
                     [0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [0.9, 0.05, 0.05]])
    scores = []
    for part in (pred[0:3], pred[3:6]):  # 7 samples, 2 splits of 3; the 7th is left out
        p_y = [sum(row[c] for row in part) / 3 for c in range(3)]
        kl = [sum(p * math.log(p / p_y[c]) for c, p in enumerate(row) if p > 0) for row in part]
        scores.append(math.exp(sum(kl) / 3))
    mean, std = metrics.calculate_inception_score(pred, num_splits=2)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-12)


def test_inception_score_streams_in_any_batches():
    probs = torch.softmax(torch.randn(103, 17, dtype=torch.float64) * 3, dim=1)
    acc = metrics.ISAccumulator(103, num_splits=10)
    for chunk in torch.split(probs, [1, 40, 7, 55]):
        acc.update(chunk)
    assert acc.compute() == pytest.approx(metrics.calculate_inception_score(probs.numpy(), 10))


def test_inception_score_needs_a_sample_per_split():
    with pytest.raises(ValueError, match='at least as many samples as splits'):
        metrics.calculate_inception_score(np.full((5, 3), 1 / 3), num_splits=10)


# ----------------------------------------------------------------------------- moments

def test_streaming_moments_equal_numpy():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((77, 16)) * rng.uniform(0.1, 3, 16) + 100  # far from 0
    acc = metrics.MomentsAccumulator(16)
    for chunk in np.split(feats, [5, 6, 50]):
        acc.update(torch.from_numpy(chunk))
    mu, sigma = acc.compute()
    np.testing.assert_allclose(mu.numpy(), feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(feats, rowvar=False), rtol=1e-9,
                               atol=1e-12)
    with pytest.raises(ValueError, match='at least 2 samples'):
        one = metrics.MomentsAccumulator(16)
        one.update(torch.zeros(1, 16))
        one.compute()
