"""Images by class and seed: `sample.py --classes 207,980 --seeds 0-63` and biggan_api.py.

The z of a seed is drawn from a generator seeded by the seed alone (on the CPU, with the run's
truncation style), so a seed gives the same z on every call and device, and for every class:
a grid's column shows one z across the classes. Each image is made by its own forward pass of
G in eval mode: a batched convolution or matrix product may sum in another order and change
pixels by float rounding, so batching would make an image depend on its batch size and on the
other images asked for. The same (run, class, seed, truncation) on the same device therefore
gives the same image whatever --G_batch_size, and the Python API gives sample.py's pixels.

BN statistics: standing ones with --accumulate_stats (from --num_standing_accumulations
batches of the run's --batch_size drawn from its --seed, so --G_batch_size changes nothing),
else a converted G's for the truncation, else those stored with the weights. G's buffers and
mode are restored afterwards, so other outputs of the same call are unchanged.

    samples/<exp>/seeds/class<c>[_<name>]_seed<seed>.png    one per class and seed
    samples/<exp>/seeds/grid<i>.png                         a row per class, a column per seed
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import bn_stats
import class_names
import grids
import utils
from sample_outputs import Sampler

MAX_SEEDS = 10_000  # per call: larger sample sets are what --sample_npz is for
GRID_PIXELS = 2 ** 25  # the most pixels in one grid file; further classes go to the next


def parse_seeds(text: str) -> list[int]:
    """'0-63', '1,5,9' or '0-3,10' -> the seeds in order, each once (ValueError if bad)."""
    seeds: list[int] = []
    for part in text.split(','):
        m = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
        low = int(m[1]) if m else 0
        high = int(m[2]) if m and m[2] else low
        if not m or high < low or high >= 2 ** 63:
            raise ValueError(f'{text!r}: expected seeds and ranges low-high of integers from 0 '
                             f'to 2^63 - 1, comma-separated, e.g. 0-63 or 1,5,9')
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise ValueError(f'{text!r}: at most {MAX_SEEDS:,} seeds per call (for large sample '
                             f'sets use --sample_npz)')
        seeds.extend(range(low, high + 1))
    return list(dict.fromkeys(seeds))


def seeded_z(seed: int, dim_z: int, truncation: float = 0.0, style: str = 'resample',
             z_var: float = 1.0) -> torch.Tensor:
    """z [1, dim_z] of one seed, on the CPU: truncated at `truncation` when > 0 (see
    utils.truncated_normal), else N(0, z_var^2)."""
    generator = torch.Generator().manual_seed(seed)
    if truncation > 0:
        return utils.truncated_normal((1, dim_z), truncation, 'cpu', generator, style=style)
    return torch.randn((1, dim_z), generator=generator) * z_var


def standing_stats(s: Sampler, truncation: float) -> None:
    """Standing BN statistics of G for seeded images, drawn from the run's --seed with batches
    of its --batch_size (the global RNGs are left as they were)."""
    config, G = s.config, s.G
    B, n = config['batch_size'], config['n_classes']
    cuda = range(torch.cuda.device_count()) if s.device.type == 'cuda' else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config['seed'])
        if truncation > 0:
            latents = utils.TruncatedLatents(B, G.dim_z, n, s.device, truncation=truncation,
                                             style=config['truncation_style'])
        else:
            latents = utils.Latents(B, G.dim_z, n, s.device, z_var=config['z_var'])
        s.accumulate_stats(latents)


@contextlib.contextmanager
def seeded_sampling(s: Sampler, truncation: float) -> Iterator[Callable[[int, int], torch.Tensor]]:
    """Within: image(class, seed) -> G's float32 image [3, R, R] in [-1, 1], on the CPU, of that
    class from the z of that seed (see the module docstring); G is restored on exit."""
    G, config, cudnn = s.G, s.config, torch.backends.cudnn
    was_training = G.training
    # Autotuned cuDNN may pick another algorithm (other rounding) in another process.
    fixed_algorithms = cudnn.flags(enabled=cudnn.enabled, benchmark=False, deterministic=True,
                                   allow_tf32=cudnn.allow_tf32)
    with torch.no_grad(), utils.preserved_buffers(G), fixed_algorithms:
        try:
            if config['accumulate_stats']:
                standing_stats(s, truncation)
            elif s.bn_table is not None and truncation > 0:
                bn_stats.apply(G, s.bn_table, truncation)
            G.eval()

            def image(c: int, seed: int) -> torch.Tensor:
                """G's image [3, R, R] of class c from the z of `seed`, alone in its batch."""
                z = seeded_z(seed, G.dim_z, truncation, config['truncation_style'],
                             config['z_var']).to(s.device)
                with s.precision.autocast():
                    out = G(z, G.shared(torch.tensor([c], device=s.device)))
                return out[0].float().cpu()
            yield image
        finally:
            G.train(was_training)


def seed_images(s: Sampler, classes: Sequence[int], seeds: Sequence[int],
                truncation: float) -> torch.Tensor:
    """Images [len(classes) * len(seeds), 3, R, R] in [-1, 1], class-major: row i * S + j is
    classes[i] from seeds[j]."""
    with seeded_sampling(s, truncation) as image:
        return torch.stack([image(c, seed) for c in classes for seed in seeds])


def save_seed_images(s: Sampler, classes: list[int], seeds: list[int]) -> dict:
    """--classes/--seeds: one PNG per class and seed, and grids with a labelled row per class
    (see the module docstring); returns their paths."""
    names, folder = s.config['class_names'], os.path.join(s.out_dir, 'seeds')
    side = s.config['resolution'] + grids.PADDING
    rows = max(1, min(s.config['classes_per_sheet'], GRID_PIXELS // (len(seeds) * side ** 2)))
    os.makedirs(folder, exist_ok=True)
    done: dict = {'images': [], 'grids': []}
    with seeded_sampling(s, s.config['truncation']) as image, tqdm(
            total=len(classes) * len(seeds), desc='seed images', unit='img',
            file=sys.stdout) as bar:
        for first in range(0, len(classes), rows):
            block = []
            for c in classes[first:first + rows]:
                for seed in seeds:
                    x = utils.to_uint8(image(c, seed)[None])[0]  # uint8 [R, R, 3]
                    done['images'].append(os.path.join(
                        folder, f'{class_names.file_label(c, names)}_seed{seed}.png'))
                    Image.fromarray(np.ascontiguousarray(x.numpy())).save(done['images'][-1])
                    block.append(x.permute(2, 0, 1))
                    bar.update(1)
            labels = [class_names.label(c, names) for c in classes[first:first + rows]]
            grid = grids.label_rows(grids.uint8_grid(torch.stack(block), len(seeds)), labels,
                                    row_height=side)
            done['grids'].append(os.path.join(folder, f"grid{len(done['grids'])}.png"))
            grid.save(done['grids'][-1])
    mode = '' if s.config['G_eval_mode'] else ' (G in eval mode: its BN would mix them in train)'
    print(f"Wrote {len(done['images'])} images{mode} and {len(done['grids'])} grid(s) (a row "
          f"per class, a column per seed) to {folder}")
    return done
