"""Metric mathematics on features and class probabilities: IS, FID, KID, precision/recall,
density/coverage and intra-class FID.

Nothing here knows which network made the numbers: inception_utils.py runs the Inception
network and feeds these. IS and the FID moments stream over batches in constant memory and
all-reduce across DDP ranks. FID takes tr sqrtm(S1 S2) from the eigenvalues of a symmetric
PSD matrix similar to S1 S2, in float64: as exact as scipy's `sqrtm` reference, finite on
rank-deficient covariances and 20x+ faster (see benchmarks/bench_fid.py). KID and
precision/recall, the metrics for small data, take the features themselves (50k x 2048
float32 is 400 MB) and agree with torch-fidelity's implementations; density/coverage with the
`prdc` package's; intra-class FID is the mean of per-class FIDs (tests/test_metrics.py).

Example:
    acc = MomentsAccumulator(2048)
    for feats in batches:  # [B, 2048] each
        acc.update(feats)
    fid = torch_calculate_frechet_distance(*acc.compute(), data_mu, data_sigma)
    kid_mean, kid_std = kernel_inception_distance(real_feats, fake_feats)
    precision, recall = precision_recall(real_feats, fake_feats)
    density, coverage = density_coverage(real_feats, fake_feats)
    mean, per_class, skipped = intra_class_fid(real_feats, real_labels, fake_feats, labels)
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import scipy.linalg
import torch
import torch.distributed as dist

Array = Union[np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------- moments

class MomentsAccumulator:
    """Streaming mean and covariance (ddof 1, as np.cov) of features, in float64.

    Keeps the sum and the sum of outer products of features minus a shift (the first batch
    mean), which avoids the cancellation of E[xx^T] - mu mu^T on features far from 0.
    """

    def __init__(self, dim: int, device: Optional[Union[str, torch.device]] = None):
        self.count, self.shift = 0, None
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, feats: torch.Tensor) -> None:
        """Add a batch of features [B, dim]."""
        x = feats.detach().to(self.sum.device, torch.float64)
        if self.shift is None:
            self.shift = x.mean(0)
        x = x - self.shift
        self.sum += x.sum(0)
        self.outer += x.T @ x
        self.count += x.shape[0]

    def all_reduce_(self) -> None:
        """Sum the statistics of every DDP rank into each rank's accumulator (in place).

        Each rank's sums are taken about its own shift: re-centre them on rank 0's first.
        """
        shift = self.shift.clone() if self.shift is not None else torch.zeros_like(self.sum)
        common = shift.clone()
        dist.broadcast(common, src=0)
        d = shift - common  # x - common = (x - shift) + d
        self.outer += torch.outer(d, self.sum) + torch.outer(self.sum, d)
        self.outer += self.count * torch.outer(d, d)
        self.sum += self.count * d
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        for t in (self.sum, self.outer, count):
            dist.all_reduce(t)
        self.shift, self.count = common, int(count.item())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu [dim], sigma [dim, dim]) of all features added."""
        if self.count < 2:
            raise ValueError(f'a covariance needs at least 2 samples, got {self.count}')
        m = self.sum / self.count
        sigma = (self.outer - self.count * torch.outer(m, m)) / (self.count - 1)
        return self.shift + m, (sigma + sigma.T) / 2


# ----------------------------------------------------------------------------- Inception Score

class ISAccumulator:
    """Streaming Inception Score over `num_splits` contiguous splits of `num_images` samples.

    As the 2019 code, split k holds samples [k*n, (k+1)*n) with n = num_images // num_splits
    and the remainder is left out. Per split it keeps sum_i p_i and sum_i sum_c p_ic log p_ic,
    which give E_i[KL(p_i || p_split)] exactly.
    """

    def __init__(self, num_images: int, num_splits: int = 10, start: int = 0):
        if num_splits < 1 or num_images < num_splits:
            raise ValueError(f'the Inception Score needs at least as many samples as splits: '
                             f'got {num_images} samples for {num_splits} splits')
        # `start`: index of this process's first sample among all ranks' (DDP).
        self.num_splits, self.split_size = num_splits, num_images // num_splits
        self.seen = start
        self.p_sum, self.plogp_sum, self.counts = None, None, None

    def all_reduce_(self) -> None:
        """Sum the per-split sums of every DDP rank (each filled its own sample range)."""
        for t in (self.p_sum, self.plogp_sum, self.counts):
            dist.all_reduce(t)

    def update(self, probs: Array) -> None:
        """Add class probabilities [B, K] (softmax of the logits) of the next B samples."""
        p = torch.as_tensor(probs).detach().to(torch.float64)
        if self.p_sum is None:
            self.p_sum = p.new_zeros(self.num_splits, p.shape[1])
            self.plogp_sum = p.new_zeros(self.num_splits)
            self.counts = p.new_zeros(self.num_splits)
        p = p.to(self.p_sum.device)
        split = (torch.arange(len(p), device=p.device) + self.seen) // self.split_size
        self.seen += len(p)
        keep = split < self.num_splits
        p, split = p[keep], split[keep]
        self.p_sum.index_add_(0, split, p)
        self.plogp_sum.index_add_(0, split, torch.xlogy(p, p).sum(1))
        self.counts.index_add_(0, split, torch.ones_like(split, dtype=torch.float64))

    def compute(self) -> tuple[float, float]:
        """(mean, std) over splits of exp(E[KL(p(y|x) || p(y))])."""
        if self.counts is None or bool((self.counts == 0).any()):
            raise ValueError(f'the Inception Score needs samples in all {self.num_splits} '
                             f'splits; got {self.seen} samples')
        p_mean = self.p_sum / self.counts[:, None]
        kl = self.plogp_sum / self.counts - torch.xlogy(p_mean, p_mean).sum(1)
        scores = torch.exp(kl).cpu().numpy()
        return float(np.mean(scores)), float(np.std(scores))


def calculate_inception_score(pred: Array, num_splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the Inception Score of class probabilities pred [N, K] over splits."""
    acc = ISAccumulator(len(pred), num_splits)
    acc.update(pred)
    return acc.compute()


# ----------------------------------------------------------------------------- FID

def _psd_eigs_lapack(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Eigenvalues of s1 s2 for symmetric PSD float64 s1, s2, by LAPACK on the CPU.

    Positive definite s1 = L L^T: sygv (type 2, A B x = lambda x) does the Cholesky, forms
    L^T s2 L and takes its eigenvalues in one call, the fastest CPU route. The matrices go in
    transposed: for symmetric ones that is the same matrix in LAPACK's (Fortran) order, which
    spares two copies. Singular s1 (fewer samples than dimensions): pivoted Cholesky gives
    s1 = R R^T with R of the numerical rank's width, and s1 s2 shares its nonzero eigenvalues
    with the small R^T s2 R.
    """
    try:
        return scipy.linalg.eigh(s2.T, s1.T, type=2, eigvals_only=True, driver='gv',
                                 check_finite=False)
    except np.linalg.LinAlgError:
        pass
    c, piv, rank, _ = scipy.linalg.lapack.dpstrf(s1.T, lower=1)
    if rank == 0:
        return np.zeros(0)
    r = np.empty((s1.shape[0], rank))
    r[piv - 1] = np.tril(c)[:, :rank]  # P^T s1 P = L L^T, so R = P L
    return scipy.linalg.eigvalsh(r.T @ s2 @ r, check_finite=False)


def _psd_eigs_torch(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of s1 s2 for symmetric PSD float64 s1, s2, by torch on their device.

    s1 = R R^T makes s1 s2 similar to the symmetric PSD R^T s2 R. R is the Cholesky factor
    when s1 is positive definite, else V sqrt(w) over the eigenpairs of s1 above rounding.
    """
    r, info = torch.linalg.cholesky_ex(s1)
    if int(info) != 0:
        w, v = torch.linalg.eigh(s1)
        keep = w > w.abs().max() * s1.shape[0] * torch.finfo(s1.dtype).eps
        r = v[:, keep] * w[keep].sqrt()
    return torch.linalg.eigvalsh(r.mT @ s2 @ r)


def trace_sqrt_product(sigma1: Array, sigma2: Array) -> float:
    """tr sqrtm(sigma1 @ sigma2) for symmetric PSD matrices, in float64, never complex."""
    s1 = torch.as_tensor(sigma1).to(torch.float64)
    s2 = torch.as_tensor(sigma2).to(s1.device, torch.float64)
    if s1.device.type == 'cpu':
        eigs = torch.from_numpy(_psd_eigs_lapack(s1.numpy(), s2.numpy()))
    else:
        eigs = _psd_eigs_torch(s1, s2)
    # Exact eigenvalues are >= 0; rounding can make the smallest slightly negative.
    return float(eigs.clamp_min(0).sqrt().sum())


def torch_calculate_frechet_distance(mu1: Array, sigma1: Array, mu2: Array,
                                     sigma2: Array) -> float:
    """FID = |mu1 - mu2|^2 + tr(s1 + s2 - 2 sqrtm(s1 s2)), in float64 on mu1's device.

    On a GPU the eigenvalues come from torch; on the CPU from LAPACK's generalized
    symmetric solver. The result is clamped at 0 (rounding can push 0 slightly below).
    """
    mu1 = torch.as_tensor(mu1).to(torch.float64)
    mu2, s1, s2 = (torch.as_tensor(t).to(mu1.device, torch.float64)
                   for t in (mu2, sigma1, sigma2))
    # A sum is NaN or inf when any entry is: one cheap pass instead of isfinite(t).all().
    if not all(bool(torch.isfinite(t.sum())) for t in (mu1, mu2, s1, s2)):
        raise ValueError('FID of non-finite moments: the features or the moments file hold '
                         'NaN or inf')
    diff = mu1 - mu2
    fid = float(diff @ diff) + float(s1.trace() + s2.trace()) - 2 * trace_sqrt_product(s1, s2)
    return max(fid, 0.0)


def numpy_calculate_frechet_distance(mu1: Array, sigma1: Array, mu2: Array,
                                     sigma2: Array) -> float:
    """FID on the CPU, same method as the torch version (the 2019 name; scipy sqrtm is gone)."""
    return torch_calculate_frechet_distance(*(torch.as_tensor(t).cpu()
                                              for t in (mu1, sigma1, mu2, sigma2)))


# ----------------------------------------------------------------------------- KID

def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(x, y) = (x . y / d + 1)^3 between the rows of x [n, d] and y [m, d]."""
    return (x @ y.T / x.shape[1] + 1) ** 3  # [n, m]


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two samples of equal size m under `polynomial_kernel`.

    The within-sample means leave out the diagonal, the cross mean takes all m^2 pairs (x
    and y are independent): Binkowski et al.'s estimator, torch-fidelity's `mmd2` default.
    """
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    return within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_inception_distance(real: Array, fake: Array, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """KID (Binkowski et al. 2018, "Demystifying MMD GANs"): (mean, std) over subsets of the
    unbiased MMD^2 between real [n, d] and fake [m, d] features, cubic polynomial kernel.

    Each subset takes `subset_size` rows without replacement from real, then from fake, by
    np.random.RandomState(seed).choice: the draws of torch-fidelity's
    `kid_features_to_metric(real, fake)` (its defaults: 100 subsets of 1000, seed 2020), so
    with equal arguments the numbers agree. Unlike torch-fidelity, which refuses a subset
    larger than a sample, `subset_size` is capped at min(n, m) (every subset is then a
    permutation of the smaller sample). std is np.std's (ddof 0). The arithmetic is float64
    on real's device. KID can be slightly negative: the estimator is unbiased.
    """
    real = torch.as_tensor(real)
    fake = torch.as_tensor(fake).to(real.device)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f'KID needs features [n, d] of equal d, got {tuple(real.shape)} and '
                         f'{tuple(fake.shape)}')
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f'KID needs at least 2 samples of each, got {len(real)} real and '
                         f'{len(fake)} fake')
    rng = np.random.RandomState(seed)
    mmds = torch.empty(num_subsets, dtype=torch.float64, device=real.device)
    for i in range(num_subsets):
        rows_real = torch.from_numpy(rng.choice(len(real), size, replace=False))
        rows_fake = torch.from_numpy(rng.choice(len(fake), size, replace=False))
        x, y = (f[rows.to(real.device)].to(torch.float64)
                for f, rows in ((real, rows_real), (fake, rows_fake)))
        mmds[i] = mmd2_unbiased(x, y)
    mmds = mmds.cpu().numpy()
    return float(np.mean(mmds)), float(np.std(mmds))


# ----------------------------------------------------------------------------- precision/recall

def _row_blocks(x: torch.Tensor, batch_size: Optional[int]) -> tuple[torch.Tensor, ...]:
    """x in blocks of `batch_size` rows (None: one block)."""
    return x.split(batch_size) if batch_size else (x,)


def knn_radii(feats: Array, k: int = 3, batch_size: Optional[int] = 1024) -> torch.Tensor:
    """Distance of each row of feats [n, d] to its k-th nearest other row: [n], float64.

    The (k+1)-th smallest Euclidean distance from the row, its zero distance to itself being
    the first (as Kynkaenniemi et al.'s code and torch-fidelity); an exact duplicate of the
    row counts as a neighbour at distance 0. Rows go in blocks of `batch_size` against all
    n (memory batch_size x n; None: the whole n x n at once).
    """
    x = torch.as_tensor(feats).to(torch.float64)
    if len(x) <= k:
        raise ValueError(f'k-NN radii with k = {k} need more than {k} samples, got {len(x)}')
    return torch.cat([torch.cdist(block, x).kthvalue(k + 1, dim=1).values
                      for block in _row_blocks(x, batch_size)])


def _fraction_in_balls(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                       batch_size: Optional[int]) -> float:
    """Fraction of the rows of points within distance radii[j] (<=) of some centres[j]."""
    inside = [(torch.cdist(block, centres) <= radii).any(dim=1)
              for block in _row_blocks(points, batch_size)]
    return float(torch.cat(inside).double().mean())


def _real_fake_balls(real: Array, fake: Array, real_radii: Optional[torch.Tensor], k: int,
                     batch_size: Optional[int], what: str
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(real, fake as float64 [n, d] / [m, d], the reals' k-NN radii) for the k-NN ball
    metrics `what`, checking the shapes; `real_radii` given are reused, else computed."""
    x = torch.as_tensor(real).to(torch.float64)
    y = torch.as_tensor(fake).to(x.device, torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f'{what} need features [n, d] of equal d, got '
                         f'{tuple(x.shape)} and {tuple(y.shape)}')
    if real_radii is None:
        real_radii = knn_radii(x, k, batch_size)
    elif real_radii.shape != (len(x),):
        raise ValueError(f'real_radii has shape {tuple(real_radii.shape)}, real has {len(x)} '
                         f'samples')
    return x, y, real_radii.to(x.device, torch.float64)


def precision_recall(real: Array, fake: Array, *, k: int = 3,
                     batch_size: Optional[int] = 1024,
                     real_radii: Optional[torch.Tensor] = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019): (precision, recall) of fake
    [m, d] against real [n, d] features, on k-NN manifolds.

    Each real sample has a ball of radius its distance to its k-th nearest other real
    sample (`knn_radii`); precision is the fraction of fakes inside (distance <=) at least
    one real ball, recall the fraction of reals inside at least one fake ball. These are the
    conventions of the paper's code and of torch-fidelity's `prc_features_to_metric`
    (features_1 fake, features_2 real), which this matches; distances are float64 here,
    where torch-fidelity uses the features' dtype. Distances go in blocks of `batch_size`
    rows (memory batch_size x max(n, m); None: whole matrices). `real_radii`, the real
    samples' `knn_radii` with the same k, spares recomputing them when real is reused.
    """
    x, y, real_radii = _real_fake_balls(real, fake, real_radii, k, batch_size,
                                        'precision/recall')
    fake_radii = knn_radii(y, k, batch_size)
    precision = _fraction_in_balls(y, x, real_radii, batch_size)
    recall = _fraction_in_balls(x, y, fake_radii, batch_size)
    return precision, recall


# ----------------------------------------------------------------------------- density/coverage

def density_coverage(real: Array, fake: Array, *, k: int = 5, batch_size: Optional[int] = 1024,
                     real_radii: Optional[torch.Tensor] = None) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
    Generative Models") of fake [m, d] against real [n, d] features: (density, coverage).

    With each real sample's ball of radius its distance to its k-th nearest other real sample
    (`knn_radii`), density is the mean over fakes of the number of real balls holding the fake,
    divided by k (1 when fakes are spread as the reals are; it is not capped at 1), and
    coverage the fraction of real balls that hold at least one fake. Inside means strictly
    closer than the radius, as in the paper's code, the `prdc` package (whose k = 5 default
    this takes), which this matches. Distances are float64, in blocks of `batch_size` rows;
    `real_radii`, the reals' `knn_radii` with the same k, spares recomputing them.
    """
    x, y, radii = _real_fake_balls(real, fake, real_radii, k, batch_size, 'density/coverage')
    balls_per_fake = torch.cat([(torch.cdist(block, x) < radii).sum(1, dtype=torch.float64)
                                for block in _row_blocks(y, batch_size)])
    nearest_fake = torch.cat([torch.cdist(block, y).min(1).values
                              for block in _row_blocks(x, batch_size)])
    return float(balls_per_fake.mean() / k), float((nearest_fake < radii).double().mean())


# ----------------------------------------------------------------------------- intra-class FID

def frechet_distance_of_features(feats1: Array, feats2: Array) -> float:
    """FID between two sets of features [n1, d] and [n2, d] (covariances with ddof 1, as np.cov).

    When the n1 x n2 cross product is smaller than a d x d covariance (few samples, as per
    class), tr sqrtm(s1 s2) is taken exactly as the nuclear norm of X1 X2^T / sqrt((n1 - 1)
    (n2 - 1)) for the centred features X (s1 s2 and (X1 X2^T)(X1 X2^T)^T share their nonzero
    eigenvalues): no d x d matrix is formed. Otherwise the moments go to
    `torch_calculate_frechet_distance`.
    """
    x1 = torch.as_tensor(feats1).to(torch.float64)
    x2 = torch.as_tensor(feats2).to(x1.device, torch.float64)
    (n1, d), n2 = x1.shape, len(x2)
    if min(n1, n2) < 2:
        raise ValueError(f'FID needs at least 2 samples of each, got {n1} and {n2}')
    mu1, mu2 = x1.mean(0), x2.mean(0)
    if n1 * n2 > d * d:
        return torch_calculate_frechet_distance(mu1, torch.cov(x1.T), mu2, torch.cov(x2.T))
    c1, c2 = x1 - mu1, x2 - mu2
    traces = float((c1 * c1).sum()) / (n1 - 1) + float((c2 * c2).sum()) / (n2 - 1)
    cross = torch.linalg.svdvals(c1 @ c2.T).sum() / ((n1 - 1) * (n2 - 1)) ** 0.5
    diff = mu1 - mu2
    return max(float(diff @ diff) + traces - 2 * float(cross), 0.0)


def intra_class_fid(real: Array, real_labels: Array, fake: Array, fake_labels: Array,
                    min_samples: int = 2) -> tuple[Optional[float], dict, dict]:
    """Intra-class FID: the mean over classes of the FID between the fake and the real
    features of that class (Miyato & Koyama 2018). Returns (mean or None, {class: FID},
    {skipped class: why}).

    A class is skipped when either side has fewer than `min_samples` (at least 2) features of
    it: a covariance needs 2 samples. Every class seen on either side is measured or skipped.
    Per-class FIDs from fewer samples than feature dimensions are biased upwards (their
    covariances are rank-deficient): compare them only at equal sample counts.
    """
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    real_labels = np.asarray(torch.as_tensor(real_labels).cpu()).astype(np.int64)
    fake_labels = np.asarray(torch.as_tensor(fake_labels).cpu()).astype(np.int64)
    if len(real_labels) != len(real) or len(fake_labels) != len(fake):
        raise ValueError(f'intra-class FID needs one label per feature: got {len(real_labels)} '
                         f'labels for {len(real)} real and {len(fake_labels)} for {len(fake)} '
                         f'fake features')
    min_samples = max(min_samples, 2)
    per_class, skipped = {}, {}
    for c in np.union1d(real_labels, fake_labels).tolist():
        in_real, in_fake = real_labels == c, fake_labels == c
        n_real, n_fake = int(in_real.sum()), int(in_fake.sum())
        if min(n_real, n_fake) < min_samples:
            skipped[c] = (f'{n_fake} samples and {n_real} reference features; a covariance '
                          f'needs at least {min_samples} of each')
            continue
        per_class[c] = frechet_distance_of_features(
            real[torch.from_numpy(in_real).to(real.device)],
            fake[torch.from_numpy(in_fake).to(fake.device)])
    mean = float(np.mean(list(per_class.values()))) if per_class else None
    return mean, per_class, skipped


# ----------------------------------------------------------------------------- results

class InceptionMetrics(tuple):
    """What get_inception_metrics returns: (IS_mean, IS_std, FID) as in 2019, unpacking into
    exactly those three, with KID_mean, KID_std, precision, recall, density and coverage as
    attributes (None when not computed)."""

    KEYS = ('IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std', 'precision', 'recall',
            'density', 'coverage')

    def __new__(cls, IS_mean: float, IS_std: float, FID: Optional[float] = None, *,
                KID_mean: Optional[float] = None, KID_std: Optional[float] = None,
                precision: Optional[float] = None, recall: Optional[float] = None,
                density: Optional[float] = None, coverage: Optional[float] = None):
        self = super().__new__(cls, (IS_mean, IS_std, FID))
        self.KID_mean, self.KID_std = KID_mean, KID_std
        self.precision, self.recall = precision, recall
        self.density, self.coverage = density, coverage
        return self

    def record(self) -> dict:
        """IS_mean, IS_std and FID (None with --no_fid), and those of KID_mean, KID_std,
        precision, recall, density, coverage that were computed, as floats for a jsonl log."""
        values = dict(zip(self.KEYS, (*self, *(getattr(self, k) for k in self.KEYS[3:]))))
        return {k: None if v is None else float(v) for k, v in values.items()
                if v is not None or k in self.KEYS[:3]}

    def __repr__(self) -> str:
        return 'InceptionMetrics(' + ', '.join(f'{k}={v!r}' for k, v in self.record().items()) + ')'


def small_data_metrics(result: tuple) -> dict[str, float]:
    """KID_mean, KID_std, precision, recall, density and coverage of a get_inception_metrics
    result, those computed ({} for a plain (IS_mean, IS_std, FID) tuple, as custom metric
    functions give)."""
    return {k: float(getattr(result, k)) for k in InceptionMetrics.KEYS[3:]
            if getattr(result, k, None) is not None}
