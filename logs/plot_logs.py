"""Plot a run's logs as PNGs: training losses, IS/FID over iterations, singular values.

Replaces the MATLAB scripts of the 2019 release. Reads what train.py writes under
`--logs_root`: `<exp>/{G_loss,D_loss_real,D_loss_fake}.log` and the `*sv*.log` files
(lines `itr: value`), and `<exp>_log.jsonl` (one test per line: itr, IS_mean, IS_std, FID).

    python logs/plot_logs.py --logs_root logs --experiment_name demo --smooth 20

writes `losses.png`, `IS_FID.png`, `G_SVs.png` / `D_SVs.png` into `--out` (default
`<logs_root>/<exp>/plots/`) and prints their paths; plots whose logs are absent are skipped.
"""
import argparse
import glob
import json
import math
import os
from typing import Optional

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

LOSS_NAMES = ('G_loss', 'D_loss_real', 'D_loss_fake')


def read_log(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterations and values of one `itr: value` log file."""
    itrs, values = [], []
    with open(path) as f:
        for line in f:
            if line.strip():
                itr, value = line.split(':', 1)
                itrs.append(int(itr))
                values.append(float(value))
    return np.asarray(itrs), np.asarray(values, dtype=float)


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics .jsonl file, sorted by iteration."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return sorted(records, key=lambda r: r.get('itr', 0))


def moving_average(values: np.ndarray, n: int) -> np.ndarray:
    """Trailing mean over up to `n` points (shorter at the start), same length as `values`."""
    if n <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - n, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_losses(run_dir: str, out_dir: str, smooth: int) -> Optional[str]:
    """G and D losses against iterations; None when no loss log exists."""
    paths = {name: os.path.join(run_dir, f'{name}.log') for name in LOSS_NAMES}
    paths = {name: p for name, p in paths.items() if os.path.exists(p)}
    if not paths:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, path in paths.items():
        itrs, values = read_log(path)
        ax.plot(itrs, moving_average(values, smooth), label=name, linewidth=1)
    title = 'Training losses' + (f' (moving average over {smooth} logs)' if smooth > 1 else '')
    ax.set(xlabel='iteration', ylabel='loss', title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, os.path.join(out_dir, 'losses.png'))


def plot_metrics(jsonl_path: str, out_dir: str) -> Optional[str]:
    """IS (mean ± std) and FID against iterations; None when there is no metrics log."""
    if not os.path.exists(jsonl_path):
        return None
    records = read_jsonl(jsonl_path)
    if not records:
        return None
    itrs = np.array([r['itr'] for r in records])
    IS_mean = np.array([r['IS_mean'] for r in records], dtype=float)
    IS_std = np.array([r.get('IS_std', 0.0) for r in records], dtype=float)
    # FID is null with --no_fid (and may be non-finite); those tests get no FID point.
    fid = [(r['itr'], r['FID']) for r in records
           if r.get('FID') is not None and math.isfinite(r['FID'])]
    fig, (ax_is, ax_fid) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax_is.errorbar(itrs, IS_mean, yerr=IS_std, marker='o', capsize=3)
    ax_is.set(xlabel='iteration', ylabel='IS', title='Inception Score')
    if fid:
        ax_fid.plot(*zip(*fid), marker='o', color='tab:red')
    else:
        ax_fid.text(0.5, 0.5, 'no FID logged', ha='center', va='center',
                    transform=ax_fid.transAxes)
    ax_fid.set(xlabel='iteration', ylabel='FID', title='FID')
    for ax in (ax_is, ax_fid):
        ax.grid(alpha=0.3)
    return _save(fig, os.path.join(out_dir, 'IS_FID.png'))


def plot_svs(run_dir: str, out_dir: str, prefix: str) -> Optional[str]:
    """Logged singular values of G or D (`prefix`), one line per layer; None if none."""
    paths = sorted(p for p in glob.glob(os.path.join(run_dir, f'{prefix}_*.log'))
                   if 'sv' in os.path.basename(p))
    if not paths:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for path in paths:
        itrs, values = read_log(path)
        label = os.path.basename(path)[len(prefix) + 1:-len('.log')]
        ax.plot(itrs, values, label=label, linewidth=1)
    ax.set(xlabel='iteration', ylabel='singular value', title=f'{prefix} singular values')
    ax.grid(alpha=0.3)
    if len(paths) <= 20:  # a legend of more layers would hide the plot
        ax.legend(fontsize='x-small', ncol=2)
    return _save(fig, os.path.join(out_dir, f'{prefix}_SVs.png'))


def _save(fig: plt.Figure, path: str) -> str:
    """Write a figure as PNG, close it, return the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run(logs_root: str, experiment_name: str, out_dir: Optional[str] = None,
             smooth: int = 1) -> list[str]:
    """Write every plot the run's logs allow; returns the PNG paths written."""
    run_dir = os.path.join(logs_root, experiment_name)
    jsonl_path = os.path.join(logs_root, f'{experiment_name}_log.jsonl')
    if not os.path.isdir(run_dir) and not os.path.exists(jsonl_path):
        raise FileNotFoundError(
            f'no logs for experiment {experiment_name!r} under {logs_root!r}: expected '
            f'{run_dir}/ or {jsonl_path} (check --logs_root and --experiment_name)')
    out_dir = out_dir or os.path.join(run_dir, 'plots')
    os.makedirs(out_dir, exist_ok=True)
    plots = {
        'losses': lambda: plot_losses(run_dir, out_dir, smooth),
        'IS/FID': lambda: plot_metrics(jsonl_path, out_dir),
        'G singular values': lambda: plot_svs(run_dir, out_dir, 'G'),
        'D singular values': lambda: plot_svs(run_dir, out_dir, 'D'),
    }
    written = []
    for what, make in plots.items():
        path = make()
        if path is None:
            print(f'skipped {what}: no logs for it')
        else:
            written.append(path)
    return written


def main() -> None:
    """Parse the command line, plot, print the PNG paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--logs_root', default='logs', help='where train.py wrote the logs')
    parser.add_argument('--experiment_name', required=True, help='the run to plot')
    parser.add_argument('--out', default=None,
                        help='folder for the PNGs (default <logs_root>/<exp>/plots)')
    parser.add_argument('--smooth', type=int, default=1,
                        help='moving-average window over loss log lines (1: raw)')
    args = parser.parse_args()
    try:
        paths = plot_run(args.logs_root, args.experiment_name, args.out, args.smooth)
    except FileNotFoundError as e:
        parser.exit(1, f'error: {e}\n')
    for path in paths:
        print(path)


if __name__ == '__main__':
    main()
