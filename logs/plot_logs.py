"""Plot a run's logs as PNGs: training losses, IS/FID over iterations, singular values.

Replaces the MATLAB scripts of the 2019 release. Reads what train.py writes under
`--logs_root`: every `<exp>/<series>.log` (lines `itr: value`: the objectives' terms such as
`G_loss`, `D_loss_real`, `D_loss_R1`, D's mean outputs `D_real`/`D_fake`, `ada_p`, and the
singular values `G_*_sv0`...), and `<exp>_log.jsonl` (one test per line: itr, IS_mean, IS_std,
FID).

    python logs/plot_logs.py --logs_root logs --experiment_name demo

writes `losses.png`, `IS_FID.png`, `G_SVs.png` / `D_SVs.png` into `--out` (default
`<logs_root>/<exp>/plots/`) and prints their paths; plots whose logs are absent are skipped.
The loss plot has one panel per group of series (`panel_of`: D losses, G loss, D outputs,
regularisers, augmentation, and one per prefix of anything else an objective logs), so a new
objective's terms appear without editing this script. Each raw series is drawn faint under a
centred moving average (`--smooth` points, by default 1/30 of the run, at least 5), and each
panel's y-range spans the 1st-99th percentile of its data plus a margin, so a start-up
spike of a few log lines does not flatten the rest (the panel notes how many points it cuts).
"""
import argparse
import glob
import json
import math
import os
import warnings
from typing import Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Loss panels: every series train.py logged gets a line, in the panel its name puts it in
# (panel_of), so a new objective's terms are plotted without editing this script.
PANELS = ('D losses', 'G loss', 'D outputs (mean)', 'D regularisers (weighted)',
          'G regularisers (weighted)', 'adaptive augmentation')
COLORS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown',
          'tab:pink', 'tab:gray', 'tab:olive', 'tab:cyan')


def panel_of(name: str) -> str:
    """The panel of a logged series: the adversarial loss's D and G terms, D's mean outputs,
    regularisers' terms (D_loss_* / G_loss_*), adaptive augmentation (ada_*), else a panel
    named by the series' first word (an objective's extra scalars: 'lecam_ema_real' and
    'lecam_ema_fake' share 'lecam')."""
    if name in ('D_loss_real', 'D_loss_fake', 'D_loss'):
        return 'D losses'
    if name == 'G_loss':
        return 'G loss'
    if name in ('D_real', 'D_fake'):
        return 'D outputs (mean)'
    for side in 'DG':
        if name.startswith(f'{side}_loss_'):
            return f'{side} regularisers (weighted)'
    if name.startswith('ada_'):
        return 'adaptive augmentation'
    return name.split('_')[0]


def is_sv_log(name: str) -> bool:
    """Whether a log file (name without .log) holds singular values (utils.get_SVs's names)."""
    return name[:2] in ('G_', 'D_') and 'sv' in name.split('_')[-1]


def loss_series(run_dir: str) -> dict[str, list[str]]:
    """Panel title -> the loss-log series in it (every `<name>.log` but singular values)."""
    names = sorted(os.path.basename(p)[:-len('.log')]
                   for p in glob.glob(os.path.join(run_dir, '*.log')))
    panels: dict[str, list[str]] = {}
    for name in names:
        if not is_sv_log(name):
            panels.setdefault(panel_of(name), []).append(name)
    order = {title: i for i, title in enumerate(PANELS)}
    return dict(sorted(panels.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


PERCENTILES = (1, 99)  # the y-range of a loss panel, before the margin
MARGIN = 0.1           # fraction of that range added above and below


def _warn_skipped(path: str, skipped: list[int]) -> None:
    """Say which lines of a log could not be read (a kill can cut the last one short)."""
    if skipped:
        warnings.warn(f'{path}: skipped {len(skipped)} unreadable line(s) (line '
                      f'{", ".join(map(str, skipped[:10]))}), e.g. the last line of a run '
                      f'killed while writing it', stacklevel=3)


def read_log(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterations and values of one `itr: value` log file (unreadable lines skipped)."""
    itrs, values, skipped = [], [], []
    with open(path, errors='replace') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                itr, value = line.split(':', 1)
                itr, value = int(itr), float(value)
            except ValueError:
                skipped.append(number)
                continue
            itrs.append(itr)
            values.append(value)
    _warn_skipped(path, skipped)
    return np.asarray(itrs), np.asarray(values, dtype=float)


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics .jsonl file, sorted by iteration (unreadable lines skipped)."""
    records, skipped = [], []
    with open(path, errors='replace') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get('itr', 0), (int, float)):
                records.append(record)
            else:
                skipped.append(number)
    _warn_skipped(path, skipped)
    return sorted(records, key=lambda r: r.get('itr', 0))


def auto_window(n: int) -> int:
    """Default smoothing window for n logged points: 1/30 of the series, but at least 5 (a
    short run's 75 points still get a readable trend) and at most a quarter of it."""
    return max(1, min(n // 4, max(5, n // 30)))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` points (made odd; fewer at the ends), same length."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < 2:
        return values
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(len(values))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(values))
    return (csum[hi] - csum[lo]) / (hi - lo)


def robust_ylim(values: np.ndarray) -> tuple[float, float]:
    """PERCENTILES of the finite values widened by MARGIN (never an empty range)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return -1.0, 1.0
    # 'higher'/'lower' take data points: a lone spike in a short series cannot leak in.
    lo = float(np.percentile(values, PERCENTILES[0], method='higher'))
    hi = float(np.percentile(values, PERCENTILES[1], method='lower'))
    pad = MARGIN * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
    return lo - pad, hi + pad


def _loss_panel(ax: Axes, title: str, series: dict[str, tuple[np.ndarray, np.ndarray, str]],
                smooth_window: int) -> None:
    """Raw series faint, smoothed on top, y-range robust to spikes, off-scale count noted."""
    for name, (itrs, values, color) in series.items():
        ok = np.isfinite(values)
        window = smooth_window or auto_window(int(ok.sum()))
        ax.plot(itrs[ok], values[ok], color=color, alpha=0.25, linewidth=0.6)
        ax.plot(itrs[ok], smooth(values[ok], window), color=color, linewidth=1.6, zorder=3,
                label=name if window <= 1 else f'{name}, mean of {window // 2 * 2 + 1} logs')
    values = np.concatenate([v for _, v, _ in series.values()])
    lo, hi = robust_ylim(values)
    ax.set_ylim(lo, hi)
    cut = int(np.sum(~np.isfinite(values) | (values < lo) | (values > hi)))
    if cut:
        ax.text(0.99, 0.97, f'{cut} of {len(values)} points off-scale', ha='right', va='top',
                fontsize='small', color='0.4', transform=ax.transAxes)
    ax.set(ylabel='loss' if 'loss' in title or 'regularisers' in title else 'value', title=title)
    ax.legend(loc='upper left', fontsize='small')
    ax.grid(alpha=0.3)


def loss_figure(run_dir: str, smooth_window: int = 0) -> Optional[Figure]:
    """One panel per group of logged series (panel_of); None when no loss log exists.

    `smooth_window` is the moving-average width in log lines; 0 picks it per series.
    """
    panels = []
    for title, names in loss_series(run_dir).items():
        series = {name: (*read_log(os.path.join(run_dir, f'{name}.log')),
                         COLORS[i % len(COLORS)]) for i, name in enumerate(_ordered(names))}
        panels.append((title, series))
    if not panels:
        return None
    fig = Figure(figsize=(10, 3.6 * len(panels)), layout='constrained')
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, series) in zip(axes, panels):
        _loss_panel(ax, title, series, smooth_window)
    axes[-1].set_xlabel('iteration')
    lo, hi = PERCENTILES
    fig.suptitle(f'Training losses (faint: raw; y-range: percentiles {lo}-{hi} + margin)')
    return fig


def _ordered(names: list[str]) -> list[str]:
    """Real before fake (blue, orange as always), then the others alphabetically."""
    first = [n for n in ('D_loss_real', 'D_loss_fake', 'D_real', 'D_fake') if n in names]
    return first + [n for n in names if n not in first]


def plot_losses(run_dir: str, out_dir: str, smooth_window: int = 0) -> Optional[str]:
    """Write `losses.png` (see `loss_figure`); None when no loss log exists."""
    fig = loss_figure(run_dir, smooth_window)
    return None if fig is None else _save(fig, os.path.join(out_dir, 'losses.png'))


def plot_metrics(jsonl_path: str, out_dir: str) -> Optional[str]:
    """IS (mean ± std) and FID against iterations, and below them KID (mean ± std) and
    precision/recall when any test logged them; None when there is no metrics log."""
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
    # KID and P/R are logged when the data's real-features file exists.
    small = [r for r in records if r.get('KID_mean') is not None]
    fig = Figure(figsize=(11, 9 if small else 4.5), layout='constrained')
    axes = fig.subplots(2 if small else 1, 2, squeeze=False)
    ax_is, ax_fid = axes[0]
    ax_is.errorbar(itrs, IS_mean, yerr=IS_std, marker='o', capsize=3)
    ax_is.set(xlabel='iteration', ylabel='IS', title='Inception Score')
    if fid:
        ax_fid.plot(*zip(*fid), marker='o', color='tab:red')
    else:
        ax_fid.text(0.5, 0.5, 'no FID logged', ha='center', va='center',
                    transform=ax_fid.transAxes)
    ax_fid.set(xlabel='iteration', ylabel='FID', title='FID')
    if small:
        ax_kid, ax_pr = axes[1]
        small_itrs = [r['itr'] for r in small]
        ax_kid.errorbar(small_itrs, [r['KID_mean'] for r in small], marker='o', capsize=3,
                        yerr=[r.get('KID_std', 0.0) for r in small], color='tab:purple')
        ax_kid.set(xlabel='iteration', ylabel='KID', title='KID (lower is better)')
        for key, color in (('precision', 'tab:green'), ('recall', 'tab:orange')):
            ax_pr.plot(small_itrs, [r[key] for r in small], marker='o', color=color, label=key)
        ax_pr.set(xlabel='iteration', ylim=(-0.02, 1.02), title='Precision and recall (k = 3)')
        ax_pr.legend(fontsize='small')
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return _save(fig, os.path.join(out_dir, 'IS_FID.png'))


def plot_svs(run_dir: str, out_dir: str, prefix: str) -> Optional[str]:
    """Logged singular values of G or D (`prefix`), one line per layer; None if none."""
    paths = sorted(p for p in glob.glob(os.path.join(run_dir, f'{prefix}_*.log'))
                   if is_sv_log(os.path.basename(p)[:-len('.log')]))
    if not paths:
        return None
    fig = Figure(figsize=(8, 5), layout='constrained')
    ax = fig.subplots()
    for path in paths:
        itrs, values = read_log(path)
        label = os.path.basename(path)[len(prefix) + 1:-len('.log')]
        ax.plot(itrs, values, label=label, linewidth=1)
    ax.set(xlabel='iteration', ylabel='singular value', title=f'{prefix} singular values')
    ax.grid(alpha=0.3)
    if len(paths) <= 20:  # a legend of more layers would hide the plot
        ax.legend(fontsize='x-small', ncol=2)
    return _save(fig, os.path.join(out_dir, f'{prefix}_SVs.png'))


def _save(fig: Figure, path: str) -> str:
    """Write a figure as PNG (Agg, no pyplot state to close) and return the path."""
    fig.savefig(path, dpi=100)
    return path


def plot_run(logs_root: str, experiment_name: str, out_dir: Optional[str] = None,
             smooth_window: int = 0) -> list[str]:
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
        'losses': lambda: plot_losses(run_dir, out_dir, smooth_window),
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
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument('--logs_root', default='logs', help='where train.py wrote the logs')
    parser.add_argument('--experiment_name', required=True, help='the run to plot')
    parser.add_argument('--out', default=None,
                        help='folder for the PNGs (default <logs_root>/<exp>/plots)')
    parser.add_argument('--smooth', type=int, default=0,
                        help='moving-average window in loss log lines (0: 1/30 of the '
                             'run, at least 5; 1: raw only)')
    args = parser.parse_args()
    try:
        paths = plot_run(args.logs_root, args.experiment_name, args.out, args.smooth)
    except FileNotFoundError as e:
        parser.exit(1, f'error: {e}\n')
    for path in paths:
        print(path)


if __name__ == '__main__':
    main()
