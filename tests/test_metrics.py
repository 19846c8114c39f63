"""Tests of metrics.py: FID against scipy and exact references, IS by hand, streaming moments,
KID and precision/recall against torch-fidelity and by hand, density/coverage against prdc
and by hand, intra-class FID against torch-fidelity's FID per class."""
import functools
import inspect
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


# ----------------------------------------------------------------------------- KID, P/R

def relu_features(n: int, dim: int, seed: int, shift: float = 0.0, scale: float = 1.0
                  ) -> torch.Tensor:
    """n float64 features [n, dim], >= 0 like Inception pool features."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g, dtype=torch.float64) * scale + shift).relu()


@pytest.mark.parametrize('n_real, n_fake, dim, subset_size, seed', [
    (500, 400, 64, 300, 0), (300, 450, 2048, 200, 1),
    (250, 300, 128, 1000, 2)])  # a subset larger than the smaller sample: capped at 250
def test_kid_matches_torch_fidelity(n_real, n_fake, dim, subset_size, seed):
    from torch_fidelity.metric_kid import kid_features_to_metric
    real = relu_features(n_real, dim, seed)
    fake = relu_features(n_fake, dim, seed + 100, shift=0.05, scale=1.1)
    mean, std = metrics.kernel_inception_distance(real, fake, num_subsets=10,
                                                  subset_size=subset_size, seed=seed)
    # torch-fidelity refuses a subset larger than a sample: give it the capped size.
    ref = kid_features_to_metric(real, fake, kid_subsets=10, rng_seed=seed, verbose=False,
                                 kid_subset_size=min(subset_size, n_real, n_fake))
    assert mean == pytest.approx(ref['kernel_inception_distance_mean'], rel=0, abs=1e-6)
    assert std == pytest.approx(ref['kernel_inception_distance_std'], rel=0, abs=1e-6)
    assert mean > 5 * std > 0  # different distributions, subsets that differ
    # float32 features (as the Inception net gives) are taken in float64 all the same.
    assert metrics.kernel_inception_distance(
        real.float(), fake.float(), num_subsets=10, subset_size=subset_size, seed=seed
    ) == pytest.approx((mean, std), rel=1e-5)


def test_kid_and_pr_defaults_are_torch_fidelitys():
    """With the same defaults, the same seed and features give the same numbers."""
    from torch_fidelity.defaults import DEFAULTS
    kid = inspect.signature(metrics.kernel_inception_distance).parameters
    assert (kid['num_subsets'].default, kid['subset_size'].default, kid['seed'].default) == (
        DEFAULTS['kid_subsets'], DEFAULTS['kid_subset_size'], DEFAULTS['rng_seed'])
    assert (DEFAULTS['kid_kernel'], DEFAULTS['kid_kernel_poly_degree'],
            DEFAULTS['kid_kernel_poly_gamma'], DEFAULTS['kid_kernel_poly_coef0']) == (
        'poly', 3, None, 1)  # (x.y / d + 1)^3, as polynomial_kernel
    assert inspect.signature(metrics.precision_recall).parameters['k'].default == (
        DEFAULTS['prc_neighborhood'])


def test_polynomial_kernel_and_mmd_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    k = metrics.polynomial_kernel(x, y)  # (x.y / 2 + 1)^3
    torch.testing.assert_close(k, torch.tensor([[1.5 ** 3, 2.0 ** 3], [2.0 ** 3, 1.0]],
                                               dtype=torch.float64))
    # within x: off-diagonal (0 / 2 + 1)^3 = 1 twice; within y: (2 / 2 + 1)^3 = 8 twice.
    expected = (2 * 1 + 2 * 8) / 2 - 2 * (1.5 ** 3 + 8 + 8 + 1) / 4
    assert float(metrics.mmd2_unbiased(x, y)) == pytest.approx(expected, rel=1e-15)


# Real/fake feature sets of both k-NN metrics (precision/recall, density/coverage): a few
# hundred rows at 16 to 2048 dimensions, and repeated rows (k-th neighbours at distance 0).
FEATURE_CASES = pytest.mark.parametrize('n_real, n_fake, dim, seed, scale, duplicates', [
    (500, 400, 64, 0, 1.1, 0), (300, 250, 2048, 1, 1.01, 0), (350, 200, 16, 2, 1.05, 40)])


@FEATURE_CASES
def test_precision_recall_matches_torch_fidelity(n_real, n_fake, dim, seed, scale, duplicates):
    from torch_fidelity.metric_prc import prc_features_to_metric
    real = relu_features(n_real, dim, seed)
    fake = relu_features(n_fake, dim, seed + 100, shift=0.02, scale=scale)
    if duplicates:  # repeated rows: the k-th neighbour may be at distance 0
        real[-duplicates:] = real[:duplicates]
        fake[-duplicates // 2:] = real[:duplicates // 2]
    ours = metrics.precision_recall(real, fake, batch_size=96)
    assert 0.05 < ours[0] < 0.95 and 0.05 < ours[1] < 0.95  # neither all nor nothing
    for save_cpu_ram in (False, True):  # its whole-matrix and its batched routes
        # torch-fidelity's features_1 is the generated sample, features_2 the real one.
        ref = prc_features_to_metric(fake, real, prc_batch_size=256, save_cpu_ram=save_cpu_ram,
                                     verbose=False)
        assert ours == pytest.approx((ref['precision'], ref['recall']), rel=0, abs=1e-6)


def test_precision_recall_by_hand():
    """1-D points, k = 1: the radii, and a fake exactly on a ball's boundary counts (<=)."""
    real = torch.tensor([[0.0], [1.0], [3.0]])  # radii (1st other neighbour): 1, 1, 2
    fake = torch.tensor([[2.0], [5.0], [-1.5]])  # radii: 3, 3, 3.5
    torch.testing.assert_close(metrics.knn_radii(real, k=1),
                               torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))
    # 2 is within 1 of 1; 5 is exactly 2 from 3 (radius 2); -1.5 is 1.5 from 0 (radius 1).
    # Every real is within 3.5 of -1.5 or within 3 of 2.
    assert metrics.precision_recall(real, fake, k=1) == (2 / 3, 1.0)


def test_identical_and_far_apart_sets():
    x = relu_features(300, 32, seed=3)
    assert metrics.precision_recall(x, x, batch_size=None) == (1.0, 1.0)
    # Identical sets, subsets of all 300: every subset is the whole set, and with S the sum
    # of the kernel matrix and T its trace, MMD^2 = 2 (S - T) / (m (m - 1)) - 2 S / m^2.
    k = metrics.polynomial_kernel(x, x)
    S, T, m = float(k.sum()), float(k.trace()), 300
    mean, std = metrics.kernel_inception_distance(x, x, num_subsets=5, subset_size=10_000)
    assert mean == pytest.approx(2 * (S - T) / (m * (m - 1)) - 2 * S / m ** 2, rel=1e-9)
    assert std < 1e-12
    # Another sample of the same distribution: KID is 0 in expectation (and may go below).
    same = metrics.kernel_inception_distance(x, relu_features(300, 32, seed=4),
                                             num_subsets=50, subset_size=200)
    shifted = metrics.kernel_inception_distance(x, relu_features(300, 32, seed=4, shift=0.2),
                                                num_subsets=50, subset_size=200)
    assert abs(same[0]) < 2 * same[1] and shifted[0] > 10 * abs(same[0])
    far = x + 100
    assert metrics.precision_recall(x, far) == (0.0, 0.0)
    assert metrics.kernel_inception_distance(x, far, num_subsets=5)[0] > 1e3


def test_batched_precision_recall_equals_unbatched():
    real = relu_features(130, 48, seed=5)
    fake = relu_features(110, 48, seed=6, scale=1.1)
    real[100:110] = real[:10]  # duplicates: their k-th neighbour counts the twin at 0
    whole = metrics.precision_recall(real, fake, batch_size=None)
    for batch_size in (1, 7, 64, 1000):
        assert metrics.precision_recall(real, fake, batch_size=batch_size) == whole
    radii = metrics.knn_radii(real, k=3, batch_size=17)
    d = np.sqrt(((real.numpy()[:, None] - real.numpy()[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)  # the k-th nearest *other* sample
    np.testing.assert_allclose(radii.numpy(), np.sort(d, axis=1)[:, 2], rtol=1e-12)
    torch.testing.assert_close(radii[:10], radii[100:110], rtol=1e-12, atol=0)
    assert metrics.precision_recall(real, fake, real_radii=radii) == whole


def test_kid_and_precision_recall_refuse_too_few_samples():
    x = relu_features(10, 8, seed=7)
    with pytest.raises(ValueError, match='at least 2 samples of each, got 10 real and 1 fake'):
        metrics.kernel_inception_distance(x, x[:1])
    with pytest.raises(ValueError, match='k = 3 need more than 3 samples, got 3'):
        metrics.precision_recall(x, x[:3])
    with pytest.raises(ValueError, match='equal d'):
        metrics.kernel_inception_distance(x, x[:, :4])


def test_inception_metrics_unpack_into_the_2019_three_values():
    result = metrics.InceptionMetrics(5.0, 0.5, 30.0, KID_mean=0.02, KID_std=0.001,
                                      precision=0.7, recall=0.4, density=1.1, coverage=0.6)
    IS_mean, IS_std, FID = result
    assert (IS_mean, IS_std, FID) == (5.0, 0.5, 30.0) and result == (5.0, 0.5, 30.0)
    assert (result.KID_mean, result.precision, result.recall) == (0.02, 0.7, 0.4)
    assert result.record() == dict(IS_mean=5.0, IS_std=0.5, FID=30.0, KID_mean=0.02,
                                   KID_std=0.001, precision=0.7, recall=0.4, density=1.1,
                                   coverage=0.6)
    assert metrics.small_data_metrics(result) == dict(KID_mean=0.02, KID_std=0.001,
                                                      precision=0.7, recall=0.4, density=1.1,
                                                      coverage=0.6)
    is_only = metrics.InceptionMetrics(5.0, 0.5, None)
    assert is_only.KID_mean is None and is_only.record() == dict(IS_mean=5.0, IS_std=0.5,
                                                                 FID=None)


# ----------------------------------------------------------------------------- density/coverage

@FEATURE_CASES
def test_density_coverage_match_prdc(n_real, n_fake, dim, seed, scale, duplicates):
    from prdc import compute_prdc
    real = relu_features(n_real, dim, seed)
    fake = relu_features(n_fake, dim, seed + 100, shift=0.02, scale=scale)
    if duplicates:  # repeated rows: the k-th neighbour may be at distance 0
        real[-duplicates:] = real[:duplicates]
    density, coverage = metrics.density_coverage(real, fake, batch_size=96)
    ref = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    assert (density, coverage) == pytest.approx((ref['density'], ref['coverage']), rel=0,
                                                abs=1e-6)
    assert 0.05 < coverage < 0.95 and density > 0.05  # neither all nor nothing
    assert inspect.signature(metrics.density_coverage).parameters['k'].default == 5


def test_density_coverage_by_hand():
    """1-D points, k = 1: strictly inside counts, a fake on a ball's boundary does not."""
    real = torch.tensor([[0.0], [1.0], [3.0]])  # radii (1st other neighbour): 1, 1, 2
    fake = torch.tensor([[0.5], [5.0], [2.0]])
    # 0.5 is in the balls of 0 and 1; 5 is exactly 2 from 3 (radius 2): outside; 2 is in the
    # ball of 3 only (1 from 1, whose radius is 1: the boundary). Covered: 0 and 1 (by 0.5),
    # 3 (by 2).
    density, coverage = metrics.density_coverage(real, fake, k=1)
    assert density == pytest.approx((2 + 0 + 1) / 3) and coverage == 1.0
    radii = metrics.knn_radii(real, k=1)
    assert metrics.density_coverage(real, fake, k=1, real_radii=radii, batch_size=1) == (
        density, coverage)
    with pytest.raises(ValueError, match='real_radii has shape'):
        metrics.density_coverage(real, fake, k=1, real_radii=radii[:2])
    with pytest.raises(ValueError, match='k = 5 need more than 5 samples, got 3'):
        metrics.density_coverage(real, fake)


def test_density_is_about_1_for_the_same_distribution_and_0_far_away():
    x, y = relu_features(400, 16, seed=8), relu_features(400, 16, seed=9)
    density, coverage = metrics.density_coverage(x, y)
    assert 0.8 < density < 1.2 and coverage > 0.9
    assert metrics.density_coverage(x, y + 100) == (0.0, 0.0)


# ----------------------------------------------------------------------------- intra-class FID

def torch_fidelity_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """torch-fidelity's FID of two sets of features."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    return fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b),
                                    False)['frechet_inception_distance']


@pytest.mark.parametrize('n1, n2, dim', [(20, 30, 64), (300, 250, 16), (40, 2, 8)])
def test_fid_of_features_matches_references_by_either_route(n1, n2, dim):
    """Few samples: the nuclear norm route; many: the moments route. Both are exact."""
    x1 = relu_features(n1, dim, seed=10).numpy()
    x2 = relu_features(n2, dim, seed=11, shift=0.1, scale=1.2).numpy()
    fid = metrics.frechet_distance_of_features(torch.from_numpy(x1), x2)
    if min(n1, n2) > dim:  # full rank: torch-fidelity's eigvals route is exact
        assert fid == pytest.approx(torch_fidelity_fid(torch.from_numpy(x1),
                                                       torch.from_numpy(x2)), rel=1e-6)
    else:  # rank-deficient: the exact reference of test_fid_rank_deficient_is_exact
        c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
        ref = (((x1.mean(0) - x2.mean(0)) ** 2).sum() + np.trace(np.cov(x1, rowvar=False))
               + np.trace(np.cov(x2, rowvar=False)) - 2 * nuclear_reference(c1, c2))
        assert fid == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match='at least 2 samples of each, got 1'):
        metrics.frechet_distance_of_features(x1[:1], x2)


def test_intra_class_fid_is_the_mean_of_per_class_fids():
    real, fake = relu_features(200, 8, seed=12), relu_features(150, 8, seed=13, scale=1.3)
    real_y, fake_y = np.arange(200) % 4, np.arange(150) % 3  # class 3: no samples
    fake_y[0] = 5  # one sample of a class the reference lacks
    mean, per_class, skipped = metrics.intra_class_fid(real, torch.from_numpy(real_y), fake,
                                                       fake_y)
    expected = {c: torch_fidelity_fid(fake[fake_y == c], real[real_y == c]) for c in range(3)}
    assert per_class == pytest.approx(expected, rel=1e-6)
    assert mean == pytest.approx(np.mean(list(expected.values())), rel=1e-6)
    assert sorted(skipped) == [3, 5]
    assert skipped[3].startswith('0 samples and 50 reference features')
    assert skipped[5].startswith('1 samples and 0 reference features')
    assert metrics.intra_class_fid(real[:3], [0, 1, 2], fake[:3], [0, 1, 2])[0] is None
    with pytest.raises(ValueError, match='one label per feature'):
        metrics.intra_class_fid(real, real_y[:5], fake, fake_y)
