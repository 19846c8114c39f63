"""Time one training save: G, D, G_ema, both Adam states and state_dict.pth, plus the rotating
copy, as train.py writes them (BigGAN-128 by default; files go to a temporary folder), and
one load of the main set as a resume reads it (utils.load_file of each file, checksums
checked where the revision records them).

    python benchmarks/bench_save.py --G_ch 64 --D_ch 64 --repeats 3

Prints the set's size and the best and median seconds per save and per load. Works on older
revisions too (it calls save_weights twice where there is no `also_as`), to compare before
and after.
"""
import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import BigGAN  # noqa: E402
import utils  # noqa: E402


def build(args: argparse.Namespace):
    """G, D, G_ema and Adam optimizers holding state (one step on zero gradients)."""
    config = dict(resolution=args.resolution, G_ch=args.G_ch, D_ch=args.D_ch, dim_z=120,
                  shared_dim=128, hier=True, G_shared=True, n_classes=1000, skip_init=True)
    G, D, G_ema = BigGAN.Generator(**config), BigGAN.Discriminator(**config), \
        BigGAN.Generator(**config)
    optims = []
    for net in (G, D):
        optim = torch.optim.Adam(net.parameters())
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        optim.step()
        optims.append(optim)
    return G, D, G_ema, optims


def save(G, D, G_ema, optims, root: str) -> None:
    """One save with its rotating copy, through whichever save_weights this revision has."""
    state = {'itr': 1000, 'epoch': 0, 'save_num': 0, 'config': {}}
    parts = dict(G_ema=G_ema, G_optim=optims[0], D_optim=optims[1])
    if 'also_as' in inspect.signature(utils.save_weights).parameters:
        utils.save_weights(G, D, state, root, 'run', also_as=('copy0',), **parts)
    else:
        for suffix in (None, 'copy0'):
            utils.save_weights(G, D, state, root, 'run', name_suffix=suffix, **parts)


def main() -> None:
    """Parse flags, time the saves, print the figures."""
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--resolution', type=int, default=128)
    p.add_argument('--G_ch', type=int, default=64)
    p.add_argument('--D_ch', type=int, default=64)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--root', default=None, help='folder to save into (default: a temp folder)')
    args = p.parse_args()
    G, D, G_ema, optims = build(args)
    times = []
    with tempfile.TemporaryDirectory(dir=args.root) as root:
        for _ in range(args.repeats):
            start = time.perf_counter()
            save(G, D, G_ema, optims, root)
            times.append(time.perf_counter() - start)
        run = os.path.join(root, 'run')
        main_set = [os.path.join(run, f) for f in os.listdir(run)
                    if f.endswith('.pth') and '_copy' not in f]
        size = sum(os.path.getsize(f) for f in main_set)
        loads = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for path in main_set:
                utils.load_file(path)
            loads.append(time.perf_counter() - start)
    print(f'set of {size / 2 ** 20:,.0f} MiB (+ its copy): best {min(times):.2f} s, median '
          f'{statistics.median(times):.2f} s per save over {args.repeats}; load of the set: '
          f'best {min(loads):.2f} s, median {statistics.median(loads):.2f} s')


if __name__ == '__main__':
    main()
