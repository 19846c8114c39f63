"""Benchmark make_hdf5.py: images/s and peak memory packing a folder of mixed-size JPEGs.

Example:
    python benchmarks/bench_make_hdf5.py --n_images 3000 --resolution 128 --workers 1 2

Writes a synthetic ImageNet-like folder (10 classes, JPEGs of 160..640 px per side, smooth
content plus noise so decoding costs what a photo does), then packs it once per worker
count, each in a fresh Python process. Throughput is images / wall time of `make_hdf5.main`
(interpreter start and imports excluded). Memory is `ru_maxrss` (peak resident set size) of
the packer's main process, and of its largest decoding worker (RUSAGE_CHILDREN: the maximum
over the reaped workers, not a sum). Peak RSS includes torch's import footprint (a few
hundred MiB), so the import-time RSS is printed too; run two --n_images to see that memory
does not grow with the number of images.

Last, the packed file is read back as training reads it: shuffled batches of 256 from
`datasets.get_data_loaders` in this process (no loader workers), images/s over one pass.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# benchmarks/ is a folder of scripts: the repository's modules import from its root.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Run in a child process so each measurement has its own peak RSS.
CHILD = """
import json, resource, sys, time
import make_hdf5
import_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
make_hdf5.main(sys.argv[1:])
seconds = time.perf_counter() - start
main_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
worker_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print('BENCH ' + json.dumps(dict(seconds=seconds, import_kib=import_kib, main_kib=main_kib,
                                 worker_kib=worker_kib)))
"""


def write_jpegs(root: Path, n_images: int, seed: int = 0) -> None:
    """n_images JPEGs of random sizes in 10 class folders."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 12, (1280, 1280, 3)).astype(np.float32)  # cropped per image: fast
    for i in range(n_images):
        w, h = rng.integers(160, 641, 2)
        yy, xx = (a.astype(np.float32) / max(w, h) for a in np.ogrid[0:h, 0:w])
        wave = (0.5 + 0.5 * np.sin(6 * xx + 4 * yy))[..., None]
        y0, x0 = rng.integers(0, 1280 - 640, 2)
        base = rng.uniform(0, 255, 3).astype(np.float32) * wave + noise[y0:y0 + h, x0:x0 + w]
        pixels = np.clip(base, 0, 255).astype(np.uint8)
        folder = root / f'class{i % 10}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f'{i:06d}.jpg', quality=90)


def pack(folder: Path, out_dir: Path, resolution: int, workers: int, compression: bool) -> dict:
    """Run make_hdf5.main in a fresh process; its timing and peak memory."""
    argv = ['--dataset', str(folder), '--resolution', str(resolution), '--data_root',
            str(out_dir), '--num_workers', str(workers), '--batch_size', '256']
    argv += ['--compression'] if compression else []
    done = subprocess.run([sys.executable, '-c', CHILD, *argv], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith('BENCH '))
    return json.loads(line[len('BENCH '):])


def read_speed(path: Path) -> float:
    """Images/s of one shuffled pass over a packed file through the training loader."""
    import warnings

    import datasets
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the compressed-file warning: this measures it
        loader = datasets.get_data_loaders(str(path), batch_size=256, num_workers=0,
                                           drop_last=False)[0]
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    """Make the folder, pack it with each worker count, print a table."""
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--n_images', type=int, default=3000, help='JPEGs in the folder')
    p.add_argument('--resolution', type=int, default=128, help='packed resolution')
    p.add_argument('--workers', type=int, nargs='+', default=[1, 2], help='worker counts')
    p.add_argument('--compression', action='store_true', help='pack with LZF')
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / 'jpegs'
        start = time.perf_counter()
        write_jpegs(folder, args.n_images)
        size_mib = sum(f.stat().st_size for f in folder.rglob('*.jpg')) / 2**20
        print(f'Wrote {args.n_images} JPEGs ({size_mib:.0f} MiB, 160-640 px per side) in '
              f'{time.perf_counter() - start:.1f} s; packing at {args.resolution}x'
              f'{args.resolution}{" with LZF" if args.compression else ""}')
        print(f'{"workers":>7} {"seconds":>8} {"images/s":>9} {"main RSS after import":>22} '
              f'{"main peak RSS":>14} {"worker peak RSS":>16}')
        for workers in args.workers:
            r = pack(folder, Path(tmp) / f'out{workers}', args.resolution, workers,
                     args.compression)
            print(f'{workers:>7} {r["seconds"]:>8.2f} {args.n_images / r["seconds"]:>9.0f} '
                  f'{r["import_kib"] / 1024:>18.0f} MiB {r["main_kib"] / 1024:>10.0f} MiB '
                  f'{r["worker_kib"] / 1024:>12.0f} MiB')
        packed = next((Path(tmp) / f'out{args.workers[-1]}').glob('*.hdf5'))
        print(f'Shuffled reads of {packed.name} through the training loader (one process): '
              f'{read_speed(packed):.0f} images/s')


if __name__ == '__main__':
    main()
