"""What sample.py writes: the `Sampler` its output modes share (the loaded G, its latents and
precision, the run) and one function per mode.

    save_npz            samples/<exp>/samples.npz                      (--sample_npz)
    save_class_sheets   samples/<exp>/<itr>/samples*.jpg               (--sample_sheets)
    save_interps        samples/<exp>/<itr>/interp{ZY,Z,Y}0.jpg        (--sample_interps)
    save_random_grid    samples/<exp>/random_samples.jpg               (--sample_random)
    log_metrics         logs/<exp>_sample_metrics.jsonl, one record    (--sample_inception_metrics)
    sweep_truncation    logs/<exp>_trunc_curves.{jsonl,png}            (--sample_trunc_curves)
`measure` is the IS/FID (KID, precision/recall, density/coverage) record the last two write
per call, of the samples as 8-bit images (`as_saved`): evaluate.py of the npz of the same
samples gives the same numbers.

Example (what `python sample.py --experiment_name my_run --sample_sheets` does):
    config, weights_file, itr = sample.resolve_config(['--experiment_name', 'my_run'])
    s = sample.build_sampler(config, weights_file, itr)
    with torch.inference_mode():
        save_class_sheets(s)
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

import bn_stats
import datasets
import metrics
import train_fns
import utils
from utils import TruncatedLatents


@dataclass
class Sampler:
    """What the output modes share: the loaded G, its latents and precision, and the run."""
    config: dict
    G: nn.Module
    net: nn.Module  # G, or G in DataParallel over the GPUs (--parallel)
    latents: utils.Latents
    precision: train_fns.Precision  # G runs under the run's --amp; Inception never does
    device: torch.device
    weights_file: Path
    itr: int
    name: str  # the run folder's name, <exp>
    out_dir: str  # samples/<exp>
    folder: int  # the sheets' folder: --sample_sheet_folder_num, or itr when that is -1
    get_metrics: Optional[Callable] = None  # inception_utils' IS/FID, when asked for
    bn_table: Optional[dict] = None  # per-truncation BN statistics of a converted G

    def sample_fn(self, latents: Optional[utils.Latents] = None,
                  bar: Optional[tqdm] = None) -> Callable:
        """sample() -> (images [B, 3, R, R] in [-1, 1], labels [B]) from fresh latents."""
        latents = self.latents if latents is None else latents

        def sample() -> tuple[torch.Tensor, torch.Tensor]:
            z, y = latents.sample_()
            with self.precision.autocast():
                images = self.net(z, self.G.shared(y))
            if bar is not None:  # the last batch may be cut short by the caller
                bar.update(min(len(y), bar.total - bar.n) if bar.total else len(y))
            return images, y
        return sample

    def accumulate_stats(self, latents: utils.Latents) -> None:
        """Standing BN statistics of G over batches drawn from `latents`."""
        with self.precision.autocast():
            utils.accumulate_standing_stats(self.G, latents,
                                            self.config['num_standing_accumulations'])


# ----------------------------------------------------------------------------------------
# Outputs: the file writers, then one function per mode
# ----------------------------------------------------------------------------------------


def plot_trunc_curves(records: list[dict], path: str) -> None:
    """IS and FID against truncation, and FID against IS (the paper's trade-off), as PNG."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot global state
    t = [r['truncation'] for r in records]
    IS = [r['IS_mean'] for r in records]
    FID = [r['FID'] for r in records]
    has_fid = all(v is not None for v in FID)
    fig = Figure(figsize=(12 if has_fid else 4, 3.5))
    axes = fig.subplots(1, 3 if has_fid else 1, squeeze=False)[0]
    axes[0].plot(t, IS, 'o-')
    axes[0].set(xlabel='truncation t', ylabel='IS')
    if has_fid:
        axes[1].plot(t, FID, 'o-')
        axes[1].set(xlabel='truncation t', ylabel='FID')
        axes[2].plot(IS, FID, 'o-')
        axes[2].set(xlabel='IS', ylabel='FID')
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_npz(s: Sampler) -> dict:
    """--sample_npz: samples/<exp>/samples.npz; returns its path and the images/s."""
    n, path = s.config['sample_num_npz'], os.path.join(s.out_dir, 'samples.npz')
    os.makedirs(s.out_dir, exist_ok=True)
    with tqdm(total=n, desc='npz samples', unit='img', file=sys.stdout) as bar:
        start = time.perf_counter()
        utils.write_npz(path, s.sample_fn(bar=bar), n)
    images_per_s = n / (time.perf_counter() - start)
    print(f"Wrote {n} samples to {path} ({images_per_s:.1f} images/s)")
    return {'npz': path, 'images_per_s': images_per_s}


def save_class_sheets(s: Sampler) -> list[str]:
    """--sample_sheets: samples/<exp>/<itr>/samples*.jpg, 10 samples of each class, a row
    per class labelled with its name when the run has names."""
    with s.precision.autocast():
        paths = utils.sample_sheet(
            s.G, classes_per_sheet=s.config['classes_per_sheet'],
            num_classes=s.config['n_classes'], samples_per_class=10,
            samples_root=s.config['samples_root'], experiment_name=s.name,
            folder_number=s.folder, device=s.device, truncation=s.config['truncation'],
            truncation_style=s.config['truncation_style'],
            class_names=s.config.get('class_names'))  # rows labelled when the run has names
    print(f'Wrote {len(paths)} sheets to {os.path.dirname(paths[0])}')
    return paths


def save_interps(s: Sampler) -> list[str]:
    """--sample_interps: samples/<exp>/<itr>/interp{ZY,Z,Y}0.jpg."""
    with s.precision.autocast():  # z and class together, z only, class only
        paths = [utils.interp_sheet(
            s.G, num_per_sheet=16, num_midpoints=8, num_classes=s.config['n_classes'],
            samples_root=s.config['samples_root'], experiment_name=s.name,
            folder_number=s.folder, sheet_number=0, fix_z=fix_z, fix_y=fix_y,
            device=s.device, truncation=s.config['truncation'],
            truncation_style=s.config['truncation_style'])
            for fix_z, fix_y in ((0, 0), (0, 1), (1, 0))]
    paths = [p for p in paths if p is not None]  # class interps need a shared embedding
    print(f'Wrote {len(paths)} interps to {os.path.dirname(paths[0])}')
    return paths


def save_random_grid(s: Sampler) -> str:
    """--sample_random: samples/<exp>/random_samples.jpg, one G_batch_size batch."""
    path = os.path.join(s.out_dir, 'random_samples.jpg')
    utils.save_grid(s.sample_fn()()[0], path)
    print(f'Wrote {path}')
    return path


def as_saved(sample: Callable) -> Callable:
    """sample() with its images rounded to 8 bits as save_npz stores them and read back as the
    data are (datasets.to_float): the metrics of sample.py and evaluate.py of the npz of the
    same samples are then the same numbers, and samples are measured as the data were."""
    def quantised() -> tuple[torch.Tensor, torch.Tensor]:
        images, y = sample()
        x = utils.to_uint8(images).permute(0, 3, 1, 2).cpu().numpy()  # uint8 [B, 3, R, R]
        return datasets.to_float(x), y
    return quantised


def _small_data_text(m: dict) -> str:
    """', KID m +/- s, precision p, recall r, density d, coverage c', of those in m."""
    parts = [f"KID {m['KID_mean']:.5f} +/- {m['KID_std']:.5f}"] if 'KID_mean' in m else []
    parts += [f'{k} {m[k]:.3f}' for k in ('precision', 'recall', 'density', 'coverage')
              if k in m]
    return ''.join(f', {part}' for part in parts)


def measure(s: Sampler, latents: utils.Latents, **what) -> dict:
    """IS/FID (and KID, precision/recall, density/coverage when the data's real-features file
    exists) of num_inception_images samples from `latents`, as a record naming `what`.

    The samples are measured as 8-bit images (`as_saved`), as the npz holds them.
    """
    config, n = s.config, s.config['num_inception_images']
    with tqdm(total=n, desc='IS/FID samples', unit='img', file=sys.stdout) as bar:
        start = time.perf_counter()
        result = s.get_metrics(as_saved(s.sample_fn(latents, bar)), n, num_splits=10)
    IS_mean, IS_std, FID = result
    small_data = metrics.small_data_metrics(result)  # KID, P/R, density/coverage if computed
    record = dict(itr=s.itr, weights=str(s.weights_file), **what, IS_mean=float(IS_mean),
                  IS_std=float(IS_std), FID=None if FID is None else float(FID), **small_data,
                  num_inception_images=n, G_batch_size=config['G_batch_size'],
                  G_eval_mode=config['G_eval_mode'],
                  standing_accumulations=config['num_standing_accumulations']
                  if config['accumulate_stats'] else 0)
    print(f"{what}: IS {IS_mean:.3f} +/- {IS_std:.3f}, FID {record['FID']}"
          f"{_small_data_text(small_data)} "
          f"({n / (time.perf_counter() - start):.1f} images/s with Inception)")
    return record


def log_metrics(s: Sampler) -> dict:
    """--sample_inception_metrics: one record appended to logs/<exp>_sample_metrics.jsonl."""
    t = s.config['truncation']
    record = measure(s, s.latents, **({'truncation': t} if t > 0 else
                                      {'z_var': s.config['z_var']}))
    path = os.path.join(s.config['logs_root'], f'{s.name}_sample_metrics.jsonl')
    utils.MetricsLogger(path).log(record)
    return record


def sweep_truncation(s: Sampler, truncations: list[float]) -> list[dict]:
    """--sample_trunc_curves: IS/FID per t, to logs/<exp>_trunc_curves.{jsonl,png}."""
    log_path = os.path.join(s.config['logs_root'], f'{s.name}_trunc_curves.jsonl')
    log = utils.MetricsLogger(log_path, reinitialize=True)
    records = []
    for t in truncations:
        latents = TruncatedLatents(s.config['G_batch_size'], s.G.dim_z, s.config['n_classes'],
                                   s.device, truncation=t, style=s.config['truncation_style'])
        if s.config['accumulate_stats']:  # standing stats at this t, as 2019 did
            s.accumulate_stats(latents)
        elif s.bn_table is not None:  # a converted G's statistics for this t
            bn_stats.apply(s.G, s.bn_table, t)
        records.append(measure(s, latents, truncation=t))
        log.log(records[-1])
    plot_trunc_curves(records, log_path[:-len('.jsonl')] + '.png')
    print(f'Wrote {log_path} and its .png plot')
    return records

