"""Time the full BigGAN training iteration on synthetic data, once per precision mode.

One iteration is what train.py runs per batch: `train_fns.GAN_training_function`'s
num_D_steps D steps of num_D_accumulations minibatches, one G step of num_G_accumulations
minibatches and the EMA update, with models and Adam built by `train.build_models` /
`train.build_optimizers`. Real images and labels are random tensors already on the device,
so the step timing includes no data loading. Figures per mode:

    img/s     real images consumed per second: batch_size * num_D_steps * num_D_accumulations
              per iteration (what train.py's loader yields per iteration) / s per iteration
    G img/s   images G generates per second: batch_size per D minibatch plus
              G_batch_size * num_G_accumulations in the G step
    ms/iter   wall time of one iteration (the device is synchronised around the timed loop)
    peak mem  torch.cuda.max_memory_allocated during the mode (CPU: the process's peak RSS)
    TFLOP/s   FLOPs of one iteration / s per iteration; FLOPs are counted once, in eager
              fp32, by FlopCounterMode (convs and matmuls with their gradients, SN power
              iterations included; every mode does the same ones)
    MFU       TFLOP/s over the chip's dense tensor-core peak (bench.PEAK_TFLOPS: TF32 for the
              fp32 mode, whose convolutions run in TF32; BF16 for the others), on known GPUs
              or with --bench_peak_tflops

Modes: fp32, bf16 (autocast), _cl (channels_last), _compile (torch.compile of G_D), and
_compile_ro (--compile_mode reduce-overhead: CUDA graphs).

Beside them, once, the loader figure (--bench_loader): whether the data loader keeps up.

    loader img/s  images per second out of the loader train.py builds for the HDF5 path
              (`train.build_loader`: one iteration's real images per batch, with the flags'
              --num_workers, --load_in_mem, --shuffle, --use_multiepoch_sampler, --augment,
              ...), copied to the device by `train.to_device` in the fastest mode's memory
              format. Timed over --bench_loader_batches batches rounded up to whole rounds of
              the workers, after one untimed round (the workers start together, so their
              first batches arrive at once); the first batch's wait, worker start-up
              included, is reported apart. The line compares it with the fastest mode's
              img/s, the most the step consumes: a ratio under 1 means training waits.

    --bench_loader auto (default): --dataset's file when it resolves to an existing HDF5 file
        at the bench's resolution, else a note saying why not; dataset: that file or an error;
        synthetic: a temporary file (system temp folder, deleted after) of random images at
        --resolution and --n_classes, packed by make_hdf5.pack_folder as make_hdf5.py packs
        by default (uncompressed, chunks of 500), just written and so read from the page
        cache (the loader's CPU cost, not the disk's speed); off: no loader figure.

Examples:
    # CPU, tiny (seconds per mode; on a shared, busy CPU one OpenMP thread avoids stalls):
    OMP_NUM_THREADS=1 python bench.py --resolution 32 --G_ch 16 --D_ch 16 --batch_size 16 \\
        --G_attn 0 --D_attn 0 --num_D_steps 1 --bench_modes fp32,bf16,bf16_cl --bench_iters 3 \\
        --bench_warmup 1 --bench_json bench_cpu.json
    # GPU, BigGAN-128 ch96, one batch of 256 per iteration, and the loader of 8 workers:
    bash scripts/bench.sh --bench_loader synthetic --bench_json bench_I128.json
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

import datasets
import make_hdf5
import train
import train_fns
import utils

MODES = {  # name: (--amp, --channels_last, --compile_mode or None for no --compile)
    'fp32': ('none', False, None),
    'bf16': ('bf16', False, None),
    'bf16_cl': ('bf16', True, None),
    'bf16_compile': ('bf16', False, 'default'),
    'bf16_cl_compile': ('bf16', True, 'default'),
    'bf16_cl_compile_ro': ('bf16', True, 'reduce-overhead'),  # + CUDA graphs
}
# Dense tensor-core peaks in TFLOP/s (NVIDIA's data sheets, SXM parts): (TF32, BF16). fp32
# modes run their convolutions and matmuls in TF32 (utils.configure_backends).
PEAK_TFLOPS = {'H200': (494.7, 989.4), 'H100': (494.7, 989.4), 'A100': (156.0, 312.0),
               'V100': (15.7, 125.0)}  # V100: no TF32 or bf16; its fp32 and fp16 peaks
ANALYTIC_GFLOP_PER_IMAGE = 370  # BigGAN-128 ch96, counted by hand from its layer shapes
LOADER_SOURCES = ('auto', 'dataset', 'synthetic', 'off')  # --bench_loader (see the docstring)
SYNTHETIC_HINT = '--bench_loader synthetic times the loader on a temporary file of random images'


@dataclass
class Step:
    """One benchmarked training iteration: the real step function and what it trains."""
    G: nn.Module
    D: nn.Module
    train: Callable
    x: torch.Tensor
    y: torch.Tensor
    state_dict: dict

    def __call__(self) -> dict:
        """Run one iteration, advancing `itr` as train.py's loop does (the EMA reads it)."""
        self.state_dict['itr'] += 1
        return self.train(self.x, self.y)


def G_images_per_iter(config: dict) -> int:
    """Images G generates in one iteration: the D steps' fakes plus the G step's."""
    return train.images_per_itr(config) + config['G_batch_size'] * config['num_G_accumulations']


def build_step(config: dict, device: torch.device) -> Step:
    """Models, optimizers, EMA, precision and compile as train.py builds them; random reals."""
    utils.seed_rng(config['seed'])
    nets = train.build_nets(config, device)
    ema = train.build_ema(nets, config)
    state_dict = {'itr': 0}
    GD, _, _ = train.wrap_parallel(nets, config, device, world_size=1)
    latents = utils.Latents(train_fns.latent_batch_size(config), nets.G.dim_z,
                            config['n_classes'], device, z_var=config['z_var'])
    step = train_fns.GAN_training_function(
        nets, GD, state_dict, config, latents=latents, ema=ema,
        precision=train_fns.Precision.from_config(config['amp'], device))
    n, res = train.images_per_itr(config), config['resolution']
    x = torch.rand(n, 3, res, res, device=device) * 2 - 1  # reals live in [-1, 1]
    if config['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(config['n_classes'], (n,), device=device)
    return Step(nets.G, nets.D, step, x, y, state_dict)


def mode_config(config: dict, mode: str) -> dict:
    """The config with a mode's --amp, --channels_last and --compile."""
    amp, channels_last, compile_mode = MODES[mode]
    return {**config, 'amp': amp, 'channels_last': channels_last,
            'compile': compile_mode is not None, 'compile_mode': compile_mode or 'default'}


def peak_tflops(device_name: str, mode: str, given: float = 0.0) -> Optional[float]:
    """The device's dense peak for the mode's precision (TF32 for fp32), or None if unknown;
    `given` (--bench_peak_tflops) overrides the bf16 figure and counts for every mode."""
    if given:
        return given
    for chip, (tf32, bf16) in PEAK_TFLOPS.items():
        if chip in device_name:
            return tf32 if MODES[mode][0] == 'none' else bf16
    return None


def count_flops(config: dict, device: torch.device) -> int:
    """FLOPs of one training iteration, counted on a fresh eager fp32 setup."""
    step = build_step(mode_config(config, 'fp32'), device)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_step(step: Step, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per iteration over `iters` iterations after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def peak_memory_gib(device: torch.device) -> Optional[float]:
    """Peak GPU memory allocated (GiB) since the last reset; on the CPU the process's peak RSS."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def pick_device(name: str = '') -> torch.device:
    """The --bench_device named, else CUDA if there is one, else the CPU."""
    return torch.device(name or ('cuda' if torch.cuda.is_available() else 'cpu'))


def reset_peak_memory(device: torch.device) -> None:
    """Free what earlier work left and restart the GPU's peak-memory count."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def error_text(e: Exception) -> str:
    """A failed mode's row entry: the exception's type and first non-empty line."""
    lines = [line for line in str(e).splitlines() if line.strip()] or ['']
    return f'{type(e).__name__}: {lines[0][:300]}'


def bench_mode(config: dict, mode: str, device: torch.device, *, warmup: int, iters: int,
               flops: int) -> dict:
    """One row of the table; a mode that fails (compile, out of memory) reports its error."""
    reset_peak_memory(device)
    row: dict = {'mode': mode}
    try:
        seconds = time_step(build_step(mode_config(config, mode), device), device, warmup, iters)
    except Exception as e:  # report it in the row and bench the next mode
        row['error'] = error_text(e)
        return row
    row.update(images_per_s=train.images_per_itr(config) / seconds,
               G_images_per_s=G_images_per_iter(config) / seconds, ms_per_iter=seconds * 1e3,
               peak_mem_GiB=peak_memory_gib(device), TFLOP_per_s=flops / seconds / 1e12)
    return row


def add_mfu(rows: list[dict], device_name: str, given_peak: float = 0.0) -> None:
    """Each timed row's model FLOPs utilisation: its TFLOP/s over the chip's dense peak."""
    for r in rows:
        peak = peak_tflops(device_name, r['mode'], given_peak)
        if 'error' not in r and peak:
            r.update(peak_TFLOP_per_s=peak, MFU=r['TFLOP_per_s'] / peak)


def fastest_row(rows: list[dict]) -> Optional[dict]:
    """The timed row with the most real images per second."""
    return max((r for r in rows if 'error' not in r), key=lambda r: r['images_per_s'],
               default=None)


def print_table(rows: list[dict], device: torch.device) -> None:
    """The rows as an aligned table, and the fastest mode."""
    mem = 'peak GPU GiB' if device.type == 'cuda' else 'peak RSS GiB'
    print(f"{'mode':<20}{'img/s':>10}{'G img/s':>10}{'ms/iter':>10}{mem:>14}{'TFLOP/s':>10}"
          f"{'MFU':>8}")
    for r in rows:
        if 'error' in r:
            print(f"{r['mode']:<20}failed: {r['error']}")
            continue
        peak = 'n/a' if r['peak_mem_GiB'] is None else f"{r['peak_mem_GiB']:.2f}"
        mfu = f"{r['MFU']:.1%}" if 'MFU' in r else 'n/a'
        print(f"{r['mode']:<20}{r['images_per_s']:>10.1f}{r['G_images_per_s']:>10.1f}"
              f"{r['ms_per_iter']:>10.1f}{peak:>14}{r['TFLOP_per_s']:>10.3f}{mfu:>8}")
    best = fastest_row(rows)
    if best is not None:
        print(f"fastest: {best['mode']}, {best['images_per_s']:,.1f} real img/s")


def run(config: dict, modes: list[str], *, warmup: int, iters: int,
        device: Optional[torch.device] = None, loader: Optional[LoaderBench] = None,
        peak_tflops_given: float = 0.0) -> dict:
    """Count FLOPs once, bench every mode, print the table, then time `loader` if given;
    returns the JSON-able result."""
    device = device or pick_device()
    utils.configure_backends(device)  # as train.py sets them
    config = {**config, 'G_batch_size': train_fns.G_batch_size(config)}
    if not config['resolution']:  # a dataset name fixes it (I128_hdf5 by default)
        config['resolution'] = datasets.resolve_dataset(config['dataset']).resolution
    flops = count_flops(config, device)
    gflop_per_image = flops / train.images_per_itr(config) / 1e9
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f"BigGAN-{config['resolution']} G_ch {config['G_ch']} D_ch {config['D_ch']} on "
          f"{name}, torch {torch.__version__}: {train.images_per_itr(config)} real and "
          f"{G_images_per_iter(config)} generated images per iteration, "
          f"{flops / 1e12:.4f} TFLOP per iteration")
    print(f'measured {gflop_per_image:.2f} GFLOP per real image per iteration (analytic '
          f'reference for BigGAN-128 ch96: ~{ANALYTIC_GFLOP_PER_IMAGE})')
    rows = [bench_mode(config, mode, device, warmup=warmup, iters=iters, flops=flops)
            for mode in modes]
    add_mfu(rows, name, peak_tflops_given)
    print_table(rows, device)
    loader_result = report_loader(loader, config, rows, device) if loader else None
    return {'device': name, 'torch': torch.__version__, 'warmup': warmup, 'iters': iters,
            'flops_per_iter': flops, 'gflop_per_image': gflop_per_image,
            'real_images_per_iter': train.images_per_itr(config),
            'G_images_per_iter': G_images_per_iter(config), 'rows': rows,
            'fastest': (fastest_row(rows) or {}).get('mode'), 'loader': loader_result,
            'config': utils.plain_config(config)}


# ----------------------------------------------------------------------------- the loader

@dataclass
class LoaderBench:
    """The training loader of the HDF5 path to time, and what it reads."""
    loader: DataLoader
    source: str  # 'dataset' (--dataset's file) or 'synthetic' (a temporary file)
    path: str
    warmup: int  # untimed batches: one round of the workers' first batches
    batches: int  # timed batches: whole rounds of the workers


def loader_rounds(num_workers: int, batches: int) -> tuple[int, int]:
    """(warm-up, timed) batches: one round of the workers, then `batches` rounded up to
    whole rounds, so that the timed span holds as many batches as the workers made in it."""
    workers = max(1, num_workers)
    return workers, -(-batches // workers) * workers


def hdf5_path(config: dict) -> Path:
    """--dataset's HDF5 file, resolved as train.py resolves it; an error naming the fix
    when it is no HDF5 file (a folder, CIFAR) or not at the bench's resolution."""
    spec = datasets.resolve_dataset(config['dataset'], config['data_root'],
                                    resolution=config['resolution'] or None,
                                    single_class_ok=config['unconditional'])
    if spec.kind == 'folder':
        raise ValueError(f"--dataset {config['dataset']} is an image folder, not an HDF5 file; "
                         f"pack it with `python make_hdf5.py --dataset {config['dataset']} "
                         f"--resolution {spec.resolution}` and pass the file it writes")
    if spec.kind != 'hdf5':
        raise ValueError(f"--dataset {config['dataset']} is CIFAR, held in memory as "
                         f"torchvision's arrays, not an HDF5 file")
    return spec.path


def write_synthetic_hdf5(folder: Path, resolution: int, n_classes: int, n_images: int,
                         seed: int = 0) -> Path:
    """A file of random images in make_hdf5.py's layout: random BMPs (image i in class
    i mod n_classes) packed by make_hdf5.pack_folder as make_hdf5.py packs by default;
    the BMPs are deleted after."""
    rng = np.random.default_rng(seed)
    images = folder / 'images'
    for c in range(n_classes):
        (images / f'{c:05d}').mkdir(parents=True)
    for i in range(max(n_images, n_classes)):  # every class gets an image
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f'{i % n_classes:05d}' / f'{i:07d}.bmp')
    packed = make_hdf5.pack_folder(images, folder / f'synthetic_{resolution}.hdf5', resolution,
                                   num_workers=0, progress=False, single_class_ok=n_classes == 1)
    shutil.rmtree(images)
    return packed.path


def build_loader_bench(config: dict, source: str, batches: int, folder: Path) -> LoaderBench:
    """The loader train.py would build (`train.build_loader`) on --dataset's HDF5 file
    (source 'dataset') or on a synthetic file written to `folder` ('synthetic')."""
    config = utils.update_config_roots(dict(config))  # --base_root moves data_root
    warmup, batches = loader_rounds(config['num_workers'], batches)
    per_batch = train.images_per_itr(config)
    if source == 'synthetic':
        resolution = (config['resolution']
                      or datasets.resolve_dataset(config['dataset']).resolution)
        path = write_synthetic_hdf5(folder, resolution, config['n_classes'],
                                    max((warmup + batches) * per_batch, config['num_samples']),
                                    config['seed'])
        config = {**config, 'dataset': str(path), 'resolution': resolution}
    else:
        path = hdf5_path(config)
    loader = train.build_loader(config, start_itr=0, rank=0, world_size=1)
    if len(loader) < warmup + batches:
        raise ValueError(f'{path} gives {len(loader)} batches of {per_batch} images (one '
                         f"iteration's real images) in a pass; timing {batches} after "
                         f'{warmup} warm-up needs {warmup + batches}: lower '
                         f'--bench_loader_batches or --num_workers')
    return LoaderBench(loader, source, str(path), warmup, batches)


def time_loader(bench: LoaderBench, config: dict, device: torch.device) -> dict:
    """Images/s of the loader with the copy to the device, over the timed batches after
    the warm-up ones, and the seconds to the first batch (worker start-up included)."""
    start = time.perf_counter()
    batches = iter(bench.loader)  # starts the workers
    train.to_device(*next(batches), config, device)
    synchronize(device)
    first_batch_s = time.perf_counter() - start
    for _ in range(bench.warmup - 1):
        train.to_device(*next(batches), config, device)
    synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(bench.batches):
        _, y = train.to_device(*next(batches), config, device)
        images += len(y)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {'source': bench.source, 'path': bench.path, 'images_per_s': images / seconds,
            'images': images, 'batches': bench.batches, 'warmup_batches': bench.warmup,
            'batch_size': bench.loader.batch_size, 'num_workers': bench.loader.num_workers,
            'first_batch_s': first_batch_s}


def report_loader(bench: LoaderBench, config: dict, rows: list[dict],
                  device: torch.device) -> dict:
    """Time the loader in the fastest mode's memory format, print it beside that mode's
    img/s (the most the step consumes) and say whether it keeps up."""
    fastest = fastest_row(rows)
    result = time_loader(bench, mode_config(config, fastest['mode']) if fastest else config,
                         device)
    workers = result['num_workers']
    what = 'synthetic hdf5' if bench.source == 'synthetic' else f'hdf5 {bench.path}'
    print(f"loader ({what}, {workers} worker{'s' * (workers != 1)}, batches of "
          f"{result['batch_size']}): {result['images_per_s']:,.1f} img/s over "
          f"{result['batches']} batches after {result['warmup_batches']} warm-up (first "
          f"batch {result['first_batch_s']:.2f} s)")
    if fastest is None:
        print('loader: no mode ran, so nothing to compare it with')
        return result
    ratio = result['images_per_s'] / fastest['images_per_s']
    verdict = ('keeps up' if ratio >= 1 else 'does NOT keep up: the step would wait for data '
               '(more --num_workers, --load_in_mem or an uncompressed file help)')
    print(f"the fastest mode, {fastest['mode']}, consumes {fastest['images_per_s']:,.1f} "
          f'img/s: the loader gives {ratio:.2f}x that and {verdict}')
    return {**result, 'step_mode': fastest['mode'],
            'step_images_per_s': fastest['images_per_s'], 'loader_over_step': ratio}


def prepare_parser() -> argparse.ArgumentParser:
    """The training flags plus the bench-only ones (no dataset, so --n_classes here)."""
    parser = utils.prepare_parser()
    parser.description = 'Time the BigGAN training iteration on synthetic data.'
    parser.add_argument('--n_classes', type=int, default=1000, help='classes (default: 1000)')
    parser.add_argument('--bench_modes', default='fp32,bf16,bf16_cl,bf16_compile',
                        help=f"comma-separated modes out of {', '.join(MODES)}")
    parser.add_argument('--bench_iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--bench_warmup', type=int, default=5,
                        help='untimed iterations first (compile needs several)')
    parser.add_argument('--bench_json', default='', help='also write the results here')
    parser.add_argument('--bench_device', default='', help='cpu or cuda (default: cuda if any)')
    parser.add_argument('--bench_peak_tflops', type=float, default=0.0,
                        help="the chip's dense peak TFLOP/s for the MFU column (default: "
                             "from the GPU's name for H200/H100/A100/V100, TF32 for fp32 modes)")
    parser.add_argument('--bench_loader', default='auto', choices=LOADER_SOURCES,
                        help="time the HDF5 training loader: auto (--dataset's file if it "
                             "exists), dataset, synthetic (a temporary file) or off")
    parser.add_argument('--bench_loader_batches', type=int, default=20,
                        help='timed loader batches (rounded up to whole rounds of workers)')
    return parser


def main(argv: Optional[list[str]] = None) -> dict:
    """Parse the flags, bench each mode, print and optionally write the JSON."""
    parser = prepare_parser()
    config = vars(parser.parse_args(argv))
    bench = {k: config.pop(k) for k in [k for k in config if k.startswith('bench_')]}
    modes = [m for m in bench['bench_modes'].split(',') if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--bench_modes: unknown {unknown}; choose from {', '.join(MODES)}")
    if bench['bench_iters'] < 1:
        parser.error('--bench_iters must be at least 1')
    if bench['bench_loader_batches'] < 1:
        parser.error('--bench_loader_batches must be at least 1')
    device = pick_device(bench['bench_device'])
    source = bench['bench_loader']
    with tempfile.TemporaryDirectory(prefix='bench_loader_') as folder:
        loader: Optional[LoaderBench] = None
        skipped: Optional[str] = None
        if source != 'off':
            try:
                loader = build_loader_bench(config, 'dataset' if source == 'auto' else source,
                                            bench['bench_loader_batches'], Path(folder))
            except (ValueError, OSError) as e:  # checked before minutes of step timing
                if source != 'auto':
                    hint = f'; {SYNTHETIC_HINT}' if source == 'dataset' else ''
                    parser.error(f'--bench_loader {source}: {e}{hint}')
                skipped = str(e)
        result = run(config, modes, warmup=bench['bench_warmup'], iters=bench['bench_iters'],
                     device=device, loader=loader, peak_tflops_given=bench['bench_peak_tflops'])
    if skipped:
        print(f'loader: not timed ({skipped}); {SYNTHETIC_HINT}')
        result['loader'] = {'skipped': skipped}
    write_json(bench['bench_json'], result)
    return result


def write_json(path: str, result: dict) -> None:
    """The result as indented JSON at `path` (a --bench_json-style flag), if one was given."""
    if path:
        with open(path, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
