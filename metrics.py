"""Metric mathematics on features and class probabilities: IS, streaming moments, FID.

Nothing here knows which network made the numbers: inception_utils.py runs the Inception
network and feeds these. Every statistic streams over batches in constant memory and
all-reduces across DDP ranks. FID takes tr sqrtm(S1 S2) from the eigenvalues of a symmetric
PSD matrix similar to S1 S2, in float64: as exact as scipy's `sqrtm` reference, finite on
rank-deficient covariances and 20x+ faster (see benchmarks/bench_fid.py). Further metrics
of features (KID, precision/recall) belong here, one function each.

Example:
    acc = MomentsAccumulator(2048)
    for feats in batches:  # [B, 2048] each
        acc.update(feats)
    fid = torch_calculate_frechet_distance(*acc.compute(), data_mu, data_sigma)
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
