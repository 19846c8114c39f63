"""Where the time of one training iteration goes: a torch.profiler breakdown by category.

Builds the iteration exactly as bench.py does (bench.py's flags, synthetic data), runs
`--warmup` untimed iterations, then profiles `--iters` iterations and splits the wall time:

    conv        convolutions (aten::conv2d and below) and their backward (ConvolutionBackward)
    spectral    SN.W_: power iteration, sigma, W / sigma, the u/sv buffer copies, its backward
    batchnorm   the norms of G's ccbn/bn (statistics, the affine, the gain/bias linears)
    attention   Attention's softmax-attention and reshapes (its 1x1 convs count as conv)
    optimizer   Adam's step and zero_grad
    ema         utils.ema.update
    ortho       utils.ortho (0 unless --G_ortho/--D_ortho)
    other ops   every other aten op: activations, up/down-sampling, sums, losses, latents,
                linears outside SN/BN, the autograd engine's own accumulation
    python      wall time not inside any op: the interpreter and framework overhead

On a GPU it also reports the kernels' time per iteration by the same categories, how busy
the GPU was (kernel time / wall time: low means launch overhead or host syncs bound the
step, not the arithmetic), kernel launches and host syncs per iteration, and the top kernels.

Forward ops are assigned by the innermost labelled range they run in (SN/BN/attention/EMA/
ortho are wrapped in record_function ranges for the run); backward ops by the forward op
they differentiate (the profiler's sequence numbers link them), so an SN division's backward
counts as spectral. Self times are summed, so nothing is counted twice.

Example (the issue-16 CPU command):
    python benchmarks/profile_step.py --resolution 64 --G_ch 32 --D_ch 32 --batch_size 8 \\
        --n_classes 10 --profile_iters 3 --profile_warmup 2
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import time
from typing import Optional

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import layers  # noqa: E402
import train_fns  # noqa: E402
import utils  # noqa: E402

CATEGORIES = ('conv', 'spectral', 'batchnorm', 'attention', 'optimizer', 'ema', 'ortho',
              'other ops', 'python')
LABEL = 'profile_step::'  # prefix of the ranges this script adds
CONV_OPS = ('aten::conv2d', 'aten::convolution', 'aten::_convolution', 'aten::conv_')


def _labelled(category: str, fn):
    """fn inside a record_function range named for its category."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(LABEL + category):
            return fn(*args, **kwargs)
    return wrapper


@contextlib.contextmanager
def instrumented():
    """Inside the block, the functions reported by name run in labelled ranges."""
    targets = [(layers.SN, 'W_', 'spectral'), (layers.ccbn, 'forward', 'batchnorm'),
               (layers.bn, 'forward', 'batchnorm'), (layers.Attention, 'forward', 'attention'),
               (utils.ema, 'update', 'ema'), (utils, 'ortho', 'ortho')]
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
    try:
        for owner, name, category in targets:
            setattr(owner, name, _labelled(category, owner.__dict__[name]))
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def _range_category(event) -> Optional[str]:
    """The category of the innermost labelled range or optimizer range around an event."""
    while event is not None:
        name = event.name
        if name.startswith(LABEL):
            return name[len(LABEL):]
        if name.startswith('Optimizer.'):  # Optimizer.step#Adam.step, Optimizer.zero_grad#...
            return 'optimizer'
        event = event.cpu_parent
    return None


def _outermost_op(event):
    """The outermost aten op an event runs inside (itself if it is one)."""
    outer = event if event.name.startswith('aten::') else None
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith('aten::'):
            outer = parent
        parent = parent.cpu_parent
    return outer


def _backward_node(event):
    """The `autograd::engine::evaluate_function: XBackward0` event above a backward op."""
    while event is not None:
        if event.name.startswith('autograd::engine::evaluate_function'):
            return event
        event = event.cpu_parent
    return None


def categorize(events, time_of=lambda e: e.self_cpu_time_total) -> dict[str, float]:
    """Microseconds per category (without 'python'): each event's self CPU time, or with
    `time_of` another of its times (e.g. the GPU time of the kernels it launched)."""
    # Sequence number of a forward op -> its category. Every op since the last autograd node
    # was made (no-grad ops too) carries the number the next node gets; the node's own op
    # is the last of them to start, so later events overwrite earlier ones.
    forward_category = {}
    for e in sorted(events, key=lambda e: e.time_range.start):
        if getattr(e, 'sequence_nr', -1) >= 0 and _backward_node(e) is None:
            category = _range_category(e)
            outer = _outermost_op(e)
            if category is None and outer is not None and outer.name.startswith(CONV_OPS):
                category = 'conv'
            forward_category[(e.sequence_nr, e.thread)] = category
    totals: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.name.startswith(LABEL) or e.name.startswith('ProfilerStep'):
            continue
        category = _range_category(e)
        if category is None:
            node = _backward_node(e)
            if node is not None:
                fwd = forward_category.get((node.sequence_nr, node.fwd_thread))
                category = fwd or ('conv' if 'ConvolutionBackward' in node.name else None)
        if category is None:
            outer = _outermost_op(e)
            category = 'conv' if outer is not None and outer.name.startswith(CONV_OPS) else None
        totals[category or 'other ops'] += time_of(e)
    return totals


def device_time(event) -> float:
    """GPU microseconds of the kernels a CPU op launched itself (0 for kernels' own events)."""
    if event.device_type != torch.autograd.DeviceType.CPU:
        return 0.0
    return getattr(event, 'self_device_time_total', 0.0)


def gpu_figures(events, wall_us: float, iters: int) -> dict:
    """Per iteration: GPU kernel time by category, how busy the GPU was, kernel launches and
    host syncs, and the kernels that take the most time: what a slow GPU step is short of."""
    kernel_us = sum(device_time(e) for e in events)
    calls = collections.Counter(e.name for e in events)
    launches = sum(n for name, n in calls.items() if 'LaunchKernel' in name)
    syncs = sum(n for name, n in calls.items() if 'Synchronize' in name)
    kernels = collections.defaultdict(float)
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CPU:
            kernels[e.name] += e.device_time_total
    top = sorted(kernels.items(), key=lambda kv: kv[1], reverse=True)[:10]
    return {'kernel_ms_per_iter': kernel_us / iters / 1e3,
            'gpu_busy': kernel_us / wall_us if wall_us else 0.0,
            'kernel_ms_by_category': {c: v / iters / 1e3 for c, v in
                                      categorize(events, device_time).items()},
            'kernel_launches_per_iter': launches / iters,
            'host_syncs_per_iter': syncs / iters,
            'top_kernels': [{'name': name, 'ms_per_iter': us / iters / 1e3}
                            for name, us in top]}


def profile_iterations(step: bench.Step, device: torch.device, *, warmup: int, iters: int,
                       trace: str = '') -> dict:
    """Milliseconds per iteration by category, the total, and the top ops by self time."""
    for _ in range(warmup):
        step()
    bench.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            step()
        bench.synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    if trace:
        prof.export_chrome_trace(trace)
    events = prof.events()
    totals = categorize(events)
    totals['python'] = max(wall_us - sum(totals.values()), 0.0)
    per_iter = {c: totals.get(c, 0.0) / iters / 1e3 for c in CATEGORIES}
    top = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:15]
    gpu = gpu_figures(events, wall_us, iters) if device.type == 'cuda' else None
    return {'ms_per_iter': wall_us / iters / 1e3, 'categories_ms': per_iter, 'gpu': gpu,
            'top_ops': [{'name': a.key, 'calls_per_iter': a.count / iters,
                         'self_ms_per_iter': a.self_cpu_time_total / iters / 1e3}
                        for a in top],
            'op_calls_per_iter': sum(a.count for a in prof.key_averages()
                                     if a.key.startswith('aten::')) / iters}


def print_report(result: dict) -> None:
    """The category table and the top ops."""
    total = result['ms_per_iter']
    print(f"{'category':<12}{'ms/iter':>10}{'share':>8}")
    for c in CATEGORIES:
        ms = result['categories_ms'][c]
        print(f'{c:<12}{ms:>10.1f}{ms / total:>8.1%}')
    print(f"{'total':<12}{total:>10.1f}   ({result['op_calls_per_iter']:.0f} aten op calls "
          f'per iteration, profiler on)')
    print(f"\n{'top ops by self time':<48}{'calls':>8}{'ms/iter':>10}")
    for op in result['top_ops']:
        print(f"{op['name'][:47]:<48}{op['calls_per_iter']:>8.0f}{op['self_ms_per_iter']:>10.1f}")
    gpu = result['gpu']
    if gpu is None:
        return
    print(f"\nGPU: kernels {gpu['kernel_ms_per_iter']:.1f} ms of {total:.1f} ms per iteration "
          f"(busy {gpu['gpu_busy']:.0%}); {gpu['kernel_launches_per_iter']:.0f} kernel launches "
          f"and {gpu['host_syncs_per_iter']:.1f} host syncs per iteration")
    if gpu['gpu_busy'] < 0.8:
        print('  the GPU waits on the host: launch overhead or syncs, not kernels, bound this '
              'step (CUDA graphs: --compile_mode reduce-overhead; fewer, larger kernels)')
    print(f"{'kernel time by category':<48}{'ms/iter':>10}")
    for c, ms in sorted(gpu['kernel_ms_by_category'].items(), key=lambda kv: -kv[1]):
        print(f'  {c:<46}{ms:>10.1f}')
    print(f"{'top kernels':<48}{'ms/iter':>10}")
    for k in gpu['top_kernels']:
        print(f"  {k['name'][:46]:<46}{k['ms_per_iter']:>10.1f}")


def main(argv: Optional[list[str]] = None) -> dict:
    parser = bench.prepare_parser()
    parser.description = 'Profile the BigGAN training iteration by category (see the docstring).'
    parser.add_argument('--profile_mode', default='fp32', choices=sorted(bench.MODES),
                        help='precision/layout mode, as bench.py names them (default: fp32)')
    parser.add_argument('--profile_iters', type=int, default=3, help='profiled iterations')
    parser.add_argument('--profile_warmup', type=int, default=2, help='untimed iterations first')
    parser.add_argument('--profile_trace', default='', help='also write a Chrome trace here')
    parser.add_argument('--profile_json', default='', help='also write the results here')
    config = vars(parser.parse_args(argv))
    options = {k: config.pop(k) for k in [k for k in config if k.startswith(('bench_',
                                                                              'profile_'))]}
    device = bench.pick_device(options['bench_device'])
    utils.configure_backends(device)
    config = {**config, 'G_batch_size': train_fns.G_batch_size(config)}
    step = bench.build_step(bench.mode_config(config, options['profile_mode']), device)
    with instrumented():
        result = profile_iterations(step, device, warmup=options['profile_warmup'],
                                    iters=options['profile_iters'],
                                    trace=options['profile_trace'])
    result['mode'] = options['profile_mode']
    print(f"{options['profile_mode']} on {device}, torch {torch.__version__}, "
          f'{torch.get_num_threads()} threads')
    print_report(result)
    bench.write_json(options['profile_json'], result)
    return result


if __name__ == '__main__':
    main()
