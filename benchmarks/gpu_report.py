"""One table of every figure scripts/gpu_checks.sh measured: summary.txt and summary.json.

Reads what the checks wrote into a folder (each file optional: a step that failed or ran out
of time is reported as missing, with the reason to look for in log.txt):

    bench.json          bench.py: the training step per mode (img/s, peak memory, MFU) and the
                        HDF5 loader's img/s
    bench_compile.json, bench_compile_ro.json   the same with torch.compile (and CUDA graphs)
    profile.json        profile_step.py: where one step's time goes (GPU busy, launches, syncs)
    sample.json         bench_sample.py: sampling img/s per mode, the IS/FID test's time

Example:
    python benchmarks/gpu_report.py gpu_out --target 1000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

STEP_FILES = ('bench.json', 'bench_compile.json', 'bench_compile_ro.json')


def load(folder: Path, name: str) -> Optional[dict]:
    """A result file, or None if the check did not write it (failed or timed out)."""
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def step_lines(folder: Path, target: float) -> tuple[list[str], dict]:
    """The training-step table over every mode any bench file holds, and the fastest."""
    benches = {name: load(folder, name) for name in STEP_FILES}
    rows = [r for b in benches.values() if b for r in b['rows']]
    first = next((b for b in benches.values() if b), None)
    if first is None:
        return ['training step: not measured (no bench.json; see log.txt)'], {}
    lines = [f"training step: {first['config']['model']}-{first['config']['resolution']} "
             f"G_ch {first['config']['G_ch']} D_ch {first['config']['D_ch']}, "
             f"{first['real_images_per_iter']} real images per iteration (D step + G step + "
             f"EMA), {first['gflop_per_image']:.3g} GFLOP per real image",
             f"{'mode':<20}{'img/s':>9}{'ms/iter':>9}{'peak GiB':>10}{'TFLOP/s':>9}{'MFU':>7}"]
    for r in rows:
        if 'error' in r:
            lines.append(f"{r['mode']:<20}failed: {r['error'][:100]}")
            continue
        mfu = f"{r['MFU']:.1%}" if 'MFU' in r else 'n/a'
        peak = 'n/a' if r.get('peak_mem_GiB') is None else f"{r['peak_mem_GiB']:.1f}"
        lines.append(f"{r['mode']:<20}{r['images_per_s']:>9.1f}{r['ms_per_iter']:>9.1f}"
                     f"{peak:>10}{r['TFLOP_per_s']:>9.1f}{mfu:>7}")
    missing = [name for name, b in benches.items() if b is None]
    if missing:
        lines.append(f"not measured: {', '.join(missing)} (failed or out of time; see log.txt)")
    timed = [r for r in rows if 'error' not in r]
    summary: dict = {'step_rows': rows}
    if timed:
        best = max(timed, key=lambda r: r['images_per_s'])
        met = 'met' if best['images_per_s'] >= target else 'NOT met'
        lines.append(f"fastest: {best['mode']}, {best['images_per_s']:,.0f} img/s (target "
                     f"{target:,.0f}: {met})")
        summary.update(fastest_mode=best['mode'], fastest_images_per_s=best['images_per_s'],
                       target_met=best['images_per_s'] >= target)
    loader = (benches['bench.json'] or {}).get('loader')
    if loader and 'images_per_s' in loader:
        workers = loader['num_workers']
        lines.append(f"HDF5 loader ({workers} worker{'s' * (workers != 1)}, batches of "
                     f"{loader['batch_size']}): {loader['images_per_s']:,.0f} img/s, "
                     f"{loader['loader_over_step']:.1f}x what {loader['step_mode']} consumes")
        summary['loader_images_per_s'] = loader['images_per_s']
    else:
        lines.append(f'HDF5 loader: not measured ({loader})')
    return lines, summary


def profile_lines(folder: Path) -> tuple[list[str], dict]:
    """Where a step's time goes, from profile.json."""
    p = load(folder, 'profile.json')
    if p is None:
        return ['profile: not measured (no profile.json; see log.txt)'], {}
    lines = [f"profile ({p.get('mode', '?')}): {p['ms_per_iter']:.1f} ms per iteration with "
             f'the profiler on']
    gpu = p.get('gpu')
    if gpu:
        lines.append(f"  GPU busy {gpu['gpu_busy']:.0%} (kernels {gpu['kernel_ms_per_iter']:.1f} "
                     f"ms), {gpu['kernel_launches_per_iter']:.0f} launches and "
                     f"{gpu['host_syncs_per_iter']:.1f} host syncs per iteration")
        top = sorted(gpu['kernel_ms_by_category'].items(), key=lambda kv: -kv[1])
        lines.append('  kernel ms by category: ' + ', '.join(f'{c} {ms:.1f}' for c, ms in top))
    host = sorted(p['categories_ms'].items(), key=lambda kv: -kv[1])
    lines.append('  host ms by category: ' + ', '.join(f'{c} {ms:.1f}' for c, ms in host))
    return lines, {'profile': {'ms_per_iter': p['ms_per_iter'], 'gpu': gpu}}


def sample_lines(folder: Path) -> tuple[list[str], dict]:
    """Sampling img/s per mode and the IS/FID test's time, from sample.json."""
    s = load(folder, 'sample.json')
    if s is None:
        return ['sampling: not measured (no sample.json; see log.txt)'], {}
    lines = [f"sampling (G in eval, batches of {s['G_batch_size']}, to uint8 as the npz "
             f"writer): " + ', '.join(
                 f"{r['mode']} {r['images_per_s']:,.0f} img/s" if 'error' not in r
                 else f"{r['mode']} failed" for r in s['rows'])]
    summary: dict = {'sampling': {r['mode']: r.get('images_per_s') for r in s['rows']}}
    m = s.get('metrics')
    if m:
        lines.append(f"IS/FID test of {m['num_inception_images']:,} samples (G in {m['mode']}, "
                     f"Inception on the same GPU): {m['seconds']:.1f} s = G "
                     f"{m['G_seconds']:.1f} s + Inception and IS/FID "
                     f"{m['inception_seconds']:.1f} s (+ {m['setup_s']:.1f} s loading the net)")
        summary['metrics_seconds'] = m['seconds']
    return lines, summary


def report(folder: Path, target: float = 1000.0) -> tuple[str, dict]:
    """The summary text and its JSON."""
    env = (folder / 'env.txt').read_text().strip() if (folder / 'env.txt').is_file() else ''
    lines, summary = [env] if env else [], {'env': env}
    for part in (step_lines(folder, target), profile_lines(folder), sample_lines(folder)):
        lines += part[0] + ['']
        summary.update(part[1])
    return '\n'.join(lines).rstrip() + '\n', summary


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument('folder', help="the checks' output folder ($OUT)")
    parser.add_argument('--target', type=float, default=1000.0,
                        help='training img/s to meet (default: 1000, issue 16)')
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        parser.error(f'{folder} is no folder')
    text, summary = report(folder, args.target)
    (folder / 'summary.txt').write_text(text)
    (folder / 'summary.json').write_text(json.dumps(summary, indent=2))
    print(text, end='')
    return text


if __name__ == '__main__':
    main()
