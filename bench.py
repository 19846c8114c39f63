"""Time the full BigGAN training iteration on synthetic data, once per precision mode.

One iteration is what train.py runs per batch: `train_fns.GAN_training_function`'s
num_D_steps D steps of num_D_accumulations minibatches, one G step of num_G_accumulations
minibatches and the EMA update, with models and Adam built by `train.build_models` /
`train.build_optimizers`. Real images and labels are random tensors already on the device,
so no data loading is timed. Figures per mode:

    img/s     real images consumed per second: batch_size * num_D_steps * num_D_accumulations
              per iteration (what train.py's loader yields per iteration) / s per iteration
    G img/s   images G generates per second: batch_size per D minibatch plus
              G_batch_size * num_G_accumulations in the G step
    ms/iter   wall time of one iteration (the device is synchronised around the timed loop)
    peak mem  torch.cuda.max_memory_allocated during the mode (CPU: the process's peak RSS)
    TFLOP/s   FLOPs of one iteration / s per iteration; FLOPs are counted once, in eager
              fp32, by FlopCounterMode (convs and matmuls with their gradients, SN power
              iterations included; every mode does the same ones)

Examples:
    # CPU, tiny (seconds per mode; on a shared, busy CPU one OpenMP thread avoids stalls):
    OMP_NUM_THREADS=1 python bench.py --resolution 32 --G_ch 16 --D_ch 16 --batch_size 16 \\
        --G_attn 0 --D_attn 0 --num_D_steps 1 --bench_modes fp32,bf16,bf16_cl --bench_iters 3 \\
        --bench_warmup 1 --bench_json bench_cpu.json
    # GPU, BigGAN-128 ch96, one batch of 256 per iteration:
    bash scripts/bench.sh --bench_json bench_I128.json
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import datasets
import train
import train_fns
import utils

MODES = {  # name: (--amp, --channels_last, --compile)
    'fp32': ('none', False, False),
    'bf16': ('bf16', False, False),
    'bf16_cl': ('bf16', True, False),
    'bf16_compile': ('bf16', False, True),
    'bf16_cl_compile': ('bf16', True, True),
}
ANALYTIC_GFLOP_PER_IMAGE = 370  # BigGAN-128 ch96, counted by hand from its layer shapes


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
    amp, channels_last, compile_ = MODES[mode]
    return {**config, 'amp': amp, 'channels_last': channels_last, 'compile': compile_}


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


def bench_mode(config: dict, mode: str, device: torch.device, *, warmup: int, iters: int,
               flops: int) -> dict:
    """One row of the table; a mode that fails (compile, out of memory) reports its error."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row: dict = {'mode': mode}
    try:
        seconds = time_step(build_step(mode_config(config, mode), device), device, warmup, iters)
    except Exception as e:  # report it in the row and bench the next mode
        lines = [line for line in str(e).splitlines() if line.strip()] or ['']
        row['error'] = f'{type(e).__name__}: {lines[0][:300]}'
        return row
    row.update(images_per_s=train.images_per_itr(config) / seconds,
               G_images_per_s=G_images_per_iter(config) / seconds, ms_per_iter=seconds * 1e3,
               peak_mem_GiB=peak_memory_gib(device), TFLOP_per_s=flops / seconds / 1e12)
    return row


def print_table(rows: list[dict], device: torch.device) -> None:
    """The rows as an aligned table."""
    mem = 'peak GPU GiB' if device.type == 'cuda' else 'peak RSS GiB'
    print(f"{'mode':<16}{'img/s':>10}{'G img/s':>10}{'ms/iter':>10}{mem:>14}{'TFLOP/s':>10}")
    for r in rows:
        if 'error' in r:
            print(f"{r['mode']:<16}failed: {r['error']}")
            continue
        peak = 'n/a' if r['peak_mem_GiB'] is None else f"{r['peak_mem_GiB']:.2f}"
        print(f"{r['mode']:<16}{r['images_per_s']:>10.1f}{r['G_images_per_s']:>10.1f}"
              f"{r['ms_per_iter']:>10.1f}{peak:>14}{r['TFLOP_per_s']:>10.3f}")


def run(config: dict, modes: list[str], *, warmup: int, iters: int,
        device: Optional[torch.device] = None) -> dict:
    """Count FLOPs once, bench every mode, print the table; returns the JSON-able result."""
    device = device or torch.device('cuda' if torch.cuda.is_available() else 'cpu')
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
    print_table(rows, device)
    return {'device': name, 'torch': torch.__version__, 'warmup': warmup, 'iters': iters,
            'flops_per_iter': flops, 'gflop_per_image': gflop_per_image,
            'real_images_per_iter': train.images_per_itr(config),
            'G_images_per_iter': G_images_per_iter(config), 'rows': rows,
            'config': utils.plain_config(config)}


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
    device = torch.device(bench['bench_device']) if bench['bench_device'] else None
    result = run(config, modes, warmup=bench['bench_warmup'], iters=bench['bench_iters'],
                 device=device)
    if bench['bench_json']:
        with open(bench['bench_json'], 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
