"""Benchmark: G's sampling throughput (as sample.py --sample_npz) and the time of one IS/FID test.

G is built from the training flags with random weights, or loaded from a run as sample.py finds
one (--experiment_name, the training flags, or --weights; its saved config then supplies the
model flags and n_classes), and always runs in eval mode (sample.py --G_eval_mode).

Part 1, once per --bench_modes mode: batches of G_batch_size samples drawn by sample.py's own
`Sampler.sample_fn` (latents as sample.py draws them), each turned into a uint8 array and CPU
labels as the npz writer `utils.write_npz` does, without the writing to disk:

    img/s      images per second over --bench_batches batches after --bench_warmup untimed ones
    ms/batch   wall time of one batch (the device is synchronised around the timed loop)
    peak mem   torch.cuda.max_memory_allocated during the mode (CPU: the process's peak RSS)

Part 2 (unless --skip_metrics): one IS/FID test of --num_inception_images samples, G under
--bench_metrics_mode, by sample.py's own path (`sample.measure` calling the function
`inception_utils.prepare_inception_metrics` returns, the one train.py's tests call) with the
Inception net on the same device. Reported: total seconds, split into G sampling (the device
is synchronised before and after each G batch) and the rest (Inception forwards, IS/FID
arithmetic); loading the net and moments is timed apart. Inception weights: --inception_weights,
else the torch hub cache, else (no machine here can download them) a file of random weights for
the same network, written to a temporary folder. FID's reference: --moments, else random
moments of the right shape. With either random, the IS/FID *values* are meaningless (the
output says so): the figures are timing only. With --moments, a real-features file beside it
(calculate_inception_moments.py writes one) adds KID and precision/recall, as in training.

Examples:
    # GPU, BigGAN-128 ch96 (the 2019 bs256x8 model), and a 50k-sample IS/FID test:
    python benchmarks/bench_sample.py --resolution 128 --G_ch 96 --dim_z 120 --shared_dim 128 \\
        --hier --G_shared --G_attn 64 --n_classes 1000 --G_batch_size 256 \\
        --bench_modes fp32,bf16 --num_inception_images 50000 --bench_json bench_sample_I128.json
    # CPU, tiny (seconds; the real Inception net takes ~0.2 s per image on one CPU thread):
    OMP_NUM_THREADS=1 python benchmarks/bench_sample.py --resolution 32 --G_ch 4 --dim_z 16 \\
        --shared_dim 8 --hier --G_shared --G_attn 0 --n_classes 10 --G_batch_size 8 \\
        --bench_modes fp32,bf16,bf16_cl --bench_batches 3 --bench_warmup 1 \\
        --num_inception_images 20 --bench_json bench_sample_cpu.json
    # A trained run's G_ema (model flags from the run), sampling only:
    python benchmarks/bench_sample.py --experiment_name my_run --bench_modes bf16 --skip_metrics
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import datasets  # noqa: E402
import inception_utils  # noqa: E402
import sample  # noqa: E402
import train_fns  # noqa: E402
import utils  # noqa: E402
from benchmarks.bench_fid import random_moments  # noqa: E402

MODES = {  # name: (--amp, channels_last); sample.py itself has no channels_last
    'fp32': ('none', False),
    'bf16': ('bf16', False),
    'bf16_cl': ('bf16', True),
}
# Flags of this script only: taken out of the config before G sees it.
BENCH_KEYS = ('bench_modes', 'bench_batches', 'bench_warmup', 'bench_json', 'bench_device',
              'bench_metrics_mode', 'skip_metrics', 'moments', 'weights')
RANDOM = 'random'  # what the JSON says for weights or moments made up here


# ----------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------


def add_bench_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of this script only (and --n_classes: no dataset is read for a random G)."""
    parser.add_argument('--n_classes', type=int, default=1000,
                        help='classes of a random-init G (a loaded run has its own)')
    parser.add_argument('--bench_modes', default='fp32,bf16',
                        help=f"comma-separated modes out of {', '.join(MODES)}")
    parser.add_argument('--bench_batches', type=int, default=20, help='timed batches per mode')
    parser.add_argument('--bench_warmup', type=int, default=3, help='untimed batches first')
    parser.add_argument('--bench_metrics_mode', default='bf16',
                        help='the mode G samples in for the IS/FID test')
    parser.add_argument('--skip_metrics', action='store_true', help='no IS/FID test timing')
    parser.add_argument('--moments', default='',
                        help='FID reference moments file (default: random ones, timing only)')
    parser.add_argument('--bench_json', default='', help='also write the results here')
    parser.add_argument('--bench_device', default='', help='cpu or cuda (default: cuda if any)')
    return parser


def prepare_parser() -> argparse.ArgumentParser:
    """sample.py's flags (training flags, sampling flags, --weights) plus this script's."""
    parser = add_bench_flags(sample.build_parser())
    parser.description = __doc__.splitlines()[0]
    return parser


def check_bench_flags(parser: argparse.ArgumentParser, config: dict, bench_flags: dict) -> None:
    """Refuse, by parser.error, flags that cannot work, before anything is built."""
    modes = [m for m in bench_flags['bench_modes'].split(',') if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--bench_modes {bench_flags['bench_modes']!r}: unknown {unknown}; choose "
                     f"from {', '.join(MODES)}")
    if bench_flags['bench_batches'] < 1:
        parser.error(f"--bench_batches {bench_flags['bench_batches']}: give at least 1")
    if bench_flags['bench_warmup'] < 0:
        parser.error(f"--bench_warmup {bench_flags['bench_warmup']}: give 0 or more")
    if bench_flags['skip_metrics']:
        return
    if bench_flags['bench_metrics_mode'] not in MODES:
        parser.error(f"--bench_metrics_mode {bench_flags['bench_metrics_mode']!r}: choose from "
                     f"{', '.join(MODES)}")
    if config['num_inception_images'] < 10:  # the IS's 10 splits
        parser.error(f"--num_inception_images {config['num_inception_images']}: the Inception "
                     f"Score needs at least one sample in each of its 10 splits")
    for flag, path in (('--moments', bench_flags['moments']),
                       ('--inception_weights', config['inception_weights'])):
        if path and not Path(path).is_file():
            parser.error(f'{flag} {path} does not exist')


def resolve(argv: Optional[list[str]]) -> tuple[dict, dict, Optional[Path], int]:
    """(config for G, this script's flags, the run's weights file or None, its iteration)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = prepare_parser()
    config = vars(parser.parse_args(argv))
    bench_flags = {k: config.pop(k) for k in BENCH_KEYS}
    weights_file, itr = None, 0
    if bench_flags['weights'] or config['experiment_name']:
        # A run: sample.py resolves it from the flags that are not this script's.
        own = add_bench_flags(argparse.ArgumentParser(allow_abbrev=False, add_help=False))
        run_argv = own.parse_known_args(argv)[1]
        try:
            config, weights_file, itr = sample.resolve_config(run_argv)
        except sample.SampleError as err:
            parser.error(str(err))
    else:
        config['G_batch_size'] = train_fns.G_batch_size(config)
        if not config['resolution']:  # a dataset name fixes it (I128_hdf5 by default)
            config['resolution'] = datasets.resolve_dataset(config['dataset']).resolution
    if config['G_batch_size'] < 1:
        parser.error(f"--G_batch_size {config['G_batch_size']}: give at least 1")
    check_bench_flags(parser, config, bench_flags)  # with the run's values, if one was read
    config['G_eval_mode'] = True  # G_ema in eval mode, as sampled
    return config, bench_flags, weights_file, itr


# ----------------------------------------------------------------------------------------
# Sampling throughput
# ----------------------------------------------------------------------------------------


def build_generator(config: dict, weights_file: Optional[Path], device: torch.device
                    ) -> nn.Module:
    """G in eval mode: the run's weights as sample.py loads them, else random init."""
    if weights_file is not None:
        return sample.load_generator(config, weights_file, device)
    model = importlib.import_module(config['model'])
    with torch.device(device):  # ortho init on the GPU: seconds on the CPU at ch96
        G = model.Generator(**config)
    return G.eval()


def make_sampler(config: dict, G: nn.Module, mode: str, device: torch.device,
                 weights_file: Optional[Path], itr: int) -> sample.Sampler:
    """sample.py's Sampler of G under a mode's precision and memory format."""
    amp, channels_last = MODES[mode]
    G.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    name = config['experiment_name'] or 'bench_sample'
    return sample.Sampler(config=config, G=G, net=G,
                          latents=sample.sampling_latents(config, G, device),
                          precision=train_fns.Precision.from_config(amp, device), device=device,
                          weights_file=weights_file or Path(RANDOM), itr=itr, name=name,
                          out_dir=os.path.join(config['samples_root'], name), folder=itr)


def bench_mode(config: dict, G: nn.Module, mode: str, device: torch.device, *, warmup: int,
               batches: int, weights_file: Optional[Path], itr: int) -> dict:
    """One row of the table; a mode that fails (out of memory, say) reports its error."""
    bench.reset_peak_memory(device)
    row: dict = {'mode': mode}
    try:
        sample_fn = make_sampler(config, G, mode, device, weights_file, itr).sample_fn()
        # each batch as the npz writer makes it (uint8, CPU labels), without the disk
        seconds = bench.time_step(lambda: utils.npz_batch(*sample_fn()), device, warmup,
                                  batches)
    except Exception as e:  # report it in the row and bench the next mode
        row['error'] = bench.error_text(e)
        return row
    B = config['G_batch_size']
    row.update(images=B * batches, images_per_s=B / seconds, ms_per_batch=seconds * 1e3,
               peak_mem_GiB=bench.peak_memory_gib(device))
    return row


# ----------------------------------------------------------------------------------------
# The IS/FID test
# ----------------------------------------------------------------------------------------


def he_init_(net: nn.Module) -> nn.Module:
    """He-normal conv weights: the default init shrinks activations ~1e-8 by the pool, where
    CPU arithmetic on denormals would slow down and distort the timing."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    return net


def inception_weights_file(inception: str, given: str, folder: Path) -> tuple[str, bool]:
    """(the Inception weights file, whether its weights are random): the given file, else the
    hub cache, else random weights for the same network written into `folder` (no download)."""
    if given:
        return given, False
    cached = inception_utils.hub_weights_path(inception)
    if cached.is_file():
        return str(cached), False
    torch.manual_seed(0)
    path = folder / f'random_{inception}_inception.pth'
    # The bare architecture inception_utils loads weights into (torchvision's or the TF port).
    torch.save(he_init_(inception_utils._inception_v3(inception)).state_dict(), path)
    return str(path), True


def random_moments_file(folder: Path, inception: str) -> str:
    """A dataset moments path whose file for `inception` holds random 2048-d mu and sigma."""
    path = folder / 'random_inception_moments.npz'
    mu, sigma = random_moments(inception_utils.POOL_DIM, inception_utils.POOL_DIM, seed=0)
    inception_utils.save_moments(inception_utils.moments_file(path, inception), mu, sigma,
                                 inception)
    return str(path)


def timed_sample(sample_fn: Callable, device: torch.device, seconds: list[float]) -> Callable:
    """sample_fn, appending the seconds of each call (the device synchronised around it)."""
    def timed() -> tuple[torch.Tensor, torch.Tensor]:
        bench.synchronize(device)  # the queued Inception work is not G's
        start = time.perf_counter()
        out = sample_fn()
        bench.synchronize(device)
        seconds.append(time.perf_counter() - start)
        return out
    return timed


def bench_metrics(config: dict, G: nn.Module, device: torch.device, *, mode: str, moments: str,
                  weights_file: Optional[Path], itr: int) -> dict:
    """Time one IS/FID test of num_inception_images samples as sample.py runs it."""
    kind, n = config['inception'], config['num_inception_images']
    bench.reset_peak_memory(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # read by prepare_inception_metrics, then gone
        weights, random_weights = inception_weights_file(kind, config['inception_weights'],
                                                         Path(tmp))
        random_ref = not (moments or config['no_fid'])
        moments_path = random_moments_file(Path(tmp), kind) if random_ref else moments
        with warnings.catch_warnings():
            if random_weights:  # said below, more plainly
                warnings.simplefilter('ignore', inception_utils.InceptionWeightsWarning)
            get_metrics = inception_utils.prepare_inception_metrics(
                moments_path, kind, weights, device=device, no_fid=config['no_fid'])
    setup_s = time.perf_counter() - start
    if random_weights or random_ref:
        made_up = ' and '.join(what for what, random in (
            ('Inception weights', random_weights), ('FID reference moments', random_ref))
            if random)
        print(f'Random {made_up}: the IS/FID values below are meaningless; the times are '
              f'those of the real computation.')

    s = make_sampler(config, G, mode, device, weights_file, itr)
    G_seconds: list[float] = []
    s.get_metrics = lambda sample_fn, num, num_splits: get_metrics(
        timed_sample(sample_fn, device, G_seconds), num, num_splits=num_splits)
    bench.synchronize(device)
    start = time.perf_counter()
    record = sample.measure(s, s.latents, bench_mode=mode)
    bench.synchronize(device)
    seconds = time.perf_counter() - start
    values = {k: record[k] for k in ('IS_mean', 'IS_std', 'FID', 'KID_mean', 'KID_std',
                                     'precision', 'recall') if k in record}
    return {'mode': mode, 'num_inception_images': n, 'inception': kind,
            'inception_weights': RANDOM if random_weights else weights,
            'moments': None if config['no_fid'] else RANDOM if random_ref else moments,
            'values_meaningful': not (random_weights or random_ref), 'setup_s': setup_s,
            'seconds': seconds, 'G_seconds': sum(G_seconds),
            'inception_seconds': seconds - sum(G_seconds), 'G_batches': len(G_seconds),
            'G_images': len(G_seconds) * config['G_batch_size'], 'images_per_s': n / seconds,
            'peak_mem_GiB': bench.peak_memory_gib(device), **values}


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def print_table(rows: list[dict], metrics: Optional[dict], device: torch.device) -> None:
    """The rows as an aligned table, then the IS/FID test's times."""
    mem = 'peak GPU GiB' if device.type == 'cuda' else 'peak RSS GiB'
    print(f"{'mode':<10}{'img/s':>12}{'ms/batch':>12}{mem:>14}")
    for r in rows:
        if 'error' in r:
            print(f"{r['mode']:<10}failed: {r['error']}")
            continue
        peak = 'n/a' if r['peak_mem_GiB'] is None else f"{r['peak_mem_GiB']:.2f}"
        print(f"{r['mode']:<10}{r['images_per_s']:>12.1f}{r['ms_per_batch']:>12.1f}{peak:>14}")
    if metrics is not None:
        m = metrics
        peak = 'n/a' if m['peak_mem_GiB'] is None else f"{m['peak_mem_GiB']:.2f} GiB"
        print(f"IS/FID test, {m['num_inception_images']} samples, G in {m['mode']}: "
              f"{m['seconds']:.2f} s ({m['images_per_s']:.1f} img/s) = G {m['G_seconds']:.2f} s "
              f"({m['G_batches']} batches) + Inception and IS/FID "
              f"{m['inception_seconds']:.2f} s; loading the net and moments {m['setup_s']:.2f} s; "
              f"peak {peak}")


def run(config: dict, bench_flags: dict, weights_file: Optional[Path] = None, itr: int = 0
        ) -> dict:
    """Bench every mode, then (unless skipped) the IS/FID test; returns the JSON-able result."""
    device = bench.pick_device(bench_flags['bench_device'])
    utils.configure_backends(device)  # as sample.py sets them
    utils.seed_rng(config['seed'])
    G = build_generator(config, weights_file, device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    params = sum(p.numel() for p in G.parameters())
    print(f"{config['model']}-{config['resolution']} G_ch {config['G_ch']} ({params / 1e6:.2f}M "
          f"parameters, {weights_file or 'random weights'}) in eval mode on {name}, torch "
          f"{torch.__version__}: batches of {config['G_batch_size']}")
    modes = [m for m in bench_flags['bench_modes'].split(',') if m]
    warmup, batches = bench_flags['bench_warmup'], bench_flags['bench_batches']
    with torch.inference_mode():
        rows = [bench_mode(config, G, mode, device, warmup=warmup, batches=batches,
                           weights_file=weights_file, itr=itr) for mode in modes]
        metrics = None if bench_flags['skip_metrics'] else bench_metrics(
            config, G, device, mode=bench_flags['bench_metrics_mode'],
            moments=bench_flags['moments'], weights_file=weights_file, itr=itr)
    print_table(rows, metrics, device)
    return {'device': name, 'torch': torch.__version__,
            'weights': str(weights_file) if weights_file else RANDOM, 'parameters': params,
            'G_batch_size': config['G_batch_size'], 'warmup': warmup, 'batches': batches,
            'rows': rows, 'metrics': metrics, 'config': utils.plain_config(config)}


def main(argv: Optional[list[str]] = None) -> dict:
    """Parse the flags, bench, print and optionally write the JSON."""
    config, bench_flags, weights_file, itr = resolve(argv)
    result = run(config, bench_flags, weights_file, itr)
    bench.write_json(bench_flags['bench_json'], result)
    return result


if __name__ == '__main__':
    main()
