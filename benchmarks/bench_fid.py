"""Benchmark: our FID against the classic scipy `sqrtm` reference, at 2048-d.

Times `numpy_calculate_frechet_distance` (CPU) and, when CUDA is present,
`torch_calculate_frechet_distance` on the GPU, against the float64 formula the 2019 numpy
code and the TF FID code use, `tr(sqrtm(s1 @ s2))` by `scipy.linalg.sqrtm`; prints the
best and median time of each, the speed-ups and the relative difference of the FIDs.

Example:
    python benchmarks/bench_fid.py --dim 2048 --repeats 5 --ref_repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import metrics  # noqa: E402


def scipy_frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                           sigma2: np.ndarray) -> float:
    """The reference: |mu1 - mu2|^2 + tr(s1 + s2 - 2 sqrtm(s1 s2)) with scipy's sqrtm."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * np.trace(covmean).real)


def random_moments(dim: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of `samples` random features with uneven per-dimension scales."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((samples, dim)) * rng.uniform(0.2, 2.0, dim)
    return feats.mean(0) + rng.normal(0, 0.1, dim), np.cov(feats, rowvar=False)


def timed(fns: dict[str, Callable[[], float]], repeats: dict[str, int],
          sync: Callable[[], None] = lambda: None) -> dict[str, tuple[float, list[float]]]:
    """{name: (result, seconds per call)}: one warm-up call each, then timed calls taken in
    turn, so that load from other processes on a shared machine falls on all of them."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r < repeats[name]:
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: (results[name], times[name]) for name in fns}


def report(name: str, times: list[float], ref_times: list[float] | None = None) -> None:
    """One line: best and median seconds, and speed-ups over the reference."""
    line = f'{name:<28} best {min(times):8.3f} s   median {statistics.median(times):8.3f} s'
    if ref_times is not None:
        line += (f'   speed-up {min(ref_times) / min(times):6.1f}x (best)'
                 f' {statistics.median(ref_times) / statistics.median(times):6.1f}x (median)')
    print(line)


def main() -> None:
    """Time the reference and ours on two random 2048-d moments; print the comparison."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument('--dim', type=int, default=2048, help='feature dimension')
    parser.add_argument('--samples', type=int, default=4096,
                        help='samples per covariance (>= dim: well conditioned)')
    parser.add_argument('--repeats', type=int, default=5, help='timed calls of ours')
    parser.add_argument('--ref_repeats', type=int, default=3, help='timed calls of scipy')
    args = parser.parse_args()

    mu1, sigma1 = random_moments(args.dim, args.samples, seed=0)
    mu2, sigma2 = random_moments(args.dim, args.samples, seed=1)
    print(f'FID of two {args.dim}-d moments from {args.samples} samples each; '
          f'torch threads {torch.get_num_threads()}')

    fns = {'ref': lambda: scipy_frechet_distance(mu1, sigma1, mu2, sigma2),
           'cpu': lambda: metrics.numpy_calculate_frechet_distance(mu1, sigma1, mu2, sigma2)}
    out = timed(fns, {'ref': args.ref_repeats, 'cpu': args.repeats})
    (ref, ref_times), (ours, times) = out['ref'], out['cpu']
    report('scipy sqrtm reference', ref_times)
    report('ours, CPU', times, ref_times)
    print(f'FID reference {ref:.10f}, ours {ours:.10f}, relative difference '
          f'{abs(ours - ref) / abs(ref):.2e}')

    if torch.cuda.is_available():
        dev = torch.device('cuda')
        tensors = [torch.as_tensor(t, device=dev) for t in (mu1, sigma1, mu2, sigma2)]
        gpu_fid = {'gpu': lambda: metrics.torch_calculate_frechet_distance(*tensors)}
        gpu, gpu_times = timed(gpu_fid, {'gpu': args.repeats}, sync=torch.cuda.synchronize)['gpu']
        report(f'ours, {torch.cuda.get_device_name(dev)}', gpu_times, ref_times)
        print(f'FID on the GPU {gpu:.10f}, relative difference {abs(gpu - ref) / abs(ref):.2e}')
    else:
        print('CUDA: not present, GPU timing skipped')


if __name__ == '__main__':
    main()
