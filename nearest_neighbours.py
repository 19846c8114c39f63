"""Nearest training images of samples, in Inception pool-feature space: the memorisation check.

For N samples of a trained run (or given images), finds the k training images whose 2048-d
Inception pool features lie nearest (L2) and writes a sheet, one row per sample: the sample,
then its k neighbours, nearest first, each row labelled with the sample's class; and a CSV
with one line per (sample, rank). The run is found and configured as sample.py finds it (any
sample.py flag: --experiment_name, --weights, --base_root, --use_ema, --truncation, ...), and
its samples are sample.py's seeded images: row i is class c from seed s, the image `sample.py
--classes c --seeds s` writes. Seeds are --seed, --seed + 1, ...; with --classes, --num samples
of each class (the same seeds in each), else --num samples of classes drawn from --seed.

Training features are those calculate_inception_moments.py wrote beside the moments
(`<data_root>/<dataset>_inception_moments_features.npz`, `..._tf_features.npz` for --inception
tf): all images of a set up to 50k, else a fixed random 50k, whose dataset indices the file
records. --data_pass computes the features of every training image here instead. A run trained
on --num_samples images is searched in that subset only, the images it saw (the CSV's
searched_images column says how many were searched of the dataset's dataset_images).
A training image equal to a sample pixel for pixel is a copy (the CSV's `copy` column) at
distance 0: its stored features differ from the sample's only by the float rounding of another
batch layout. So a training image fed as a sample (--images) is its own nearest neighbour, at 0.

    python nearest_neighbours.py --experiment_name my_run --num 16 --k 8 \\
        --inception_weights pt_inception-2015-12-05-6726825d.pth --inception tf
    python nearest_neighbours.py --weights weights/my_run --classes "daisy,rose" --num 4 \\
        --truncation 0.5 --data_pass
    python nearest_neighbours.py --images samples/my_run/samples.npz --dataset I128_hdf5 --k 5

Outputs (atomically; nothing is written when any input is bad):
    samples/<exp>/nearest_neighbours/nn_sheet.png   a row per sample: it, then k neighbours
    samples/<exp>/nearest_neighbours/nn.csv         sample, sample_class, sample_class_name,
        seed, rank, train_index, train_class, train_class_name, distance, copy,
        searched_images, dataset_images (train_index: the image's index in the dataset, as
        datasets.py reads it; copy: 1 for a pixel copy of the sample)
With --images X the default folder is X's path without its suffix + `_nearest_neighbours`;
--out DIR puts both files in DIR.
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import class_names
import datasets
import evaluate
import grids
import inception_utils
import sample
import seeded_samples
import utils
from atomic_io import atomic_write
from flags import run_cli
from moments_files import load_feature_indices

MAX_ROWS = 1024  # samples per sheet
CHUNK = 8192  # training features per distance block


@dataclass
class Samples:
    """The images whose neighbours are looked for."""
    images: np.ndarray  # uint8 [N, 3, R, R]
    labels: Optional[np.ndarray]  # [N] classes, or None (unlabelled images)
    seeds: Optional[list[int]]  # the seed of each (a run's samples), or None


@dataclass
class Training:
    """The training images searched: the dataset, which of its images, and their features."""
    data: datasets.ImageDataset
    indices: np.ndarray  # [M] dataset indices of the images searched
    features: Optional[torch.Tensor]  # [M, 2048] float32; None until --data_pass computes them
    note: str  # where the features come from, what was searched


# ----------------------------------------------------------------------------- config

def build_parser() -> argparse.ArgumentParser:
    """This script's own flags; every other flag goes to sample.py's parser (the run)."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.splitlines()[0],
        epilog='Any sample.py flag finds and configures the run (--experiment_name, --weights, '
               '--base_root, --seed, --classes, --truncation, --use_ema, --inception, '
               '--inception_weights, --num_workers, ...); with --images and no run, '
               '--dataset (--data_root, --resolution, --num_samples) names the training data.')
    parser.add_argument('--num', type=int, default=None,
                        help='samples (per class of --classes); default 16, or every image of '
                             '--images (then its first N)')
    parser.add_argument('--k', type=int, default=8, help='neighbours per sample')
    parser.add_argument('--images', type=str, default='',
                        help='an .npz (x or arr_0, optional y) or image folder to look up '
                             'instead of samples of the run')
    parser.add_argument('--data_pass', action='store_true',
                        help="compute the training images' features here (no features file)")
    parser.add_argument('--inception_batch_size', type=int, default=64,
                        help='images per Inception batch')
    parser.add_argument('--out', type=str, default='', help='output folder')
    return parser


def names_a_run(argv: list[str]) -> bool:
    """Whether sample.py flags name a run (--weights or --experiment_name)."""
    return any(a.split('=')[0] in ('--weights', '--experiment_name') for a in argv)


def resolve(args: argparse.Namespace, rest: list[str]) -> tuple[dict, Optional[Path], int, dict]:
    """(config, G weights file or None, the run's iteration, the run's saved config or {})."""
    if args.images and not names_a_run(rest):
        config, given = sample.parse_flags(rest)
        if 'dataset' not in given:
            raise sample.SampleError('--images without a run (--weights or --experiment_name) '
                                     'needs --dataset: the training data to search')
        utils.update_config_roots(config)
        sample.resolve_data(config, given, None)
        return config, None, 0, {}
    config, weights_file, itr = sample.resolve_config(rest)
    saved, _ = sample.read_run(weights_file.parent, utils.checkpoint_suffix(weights_file.name))
    return config, weights_file, itr, utils.plain_config(saved or {})


def check_counts(args: argparse.Namespace, rows: int, resolution: int) -> None:
    """Refuse counts the sheet cannot hold."""
    if args.k < 1 or args.inception_batch_size < 1:
        raise ValueError(f'--k {args.k}, --inception_batch_size {args.inception_batch_size}: '
                         f'give at least 1')
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f'{rows} samples: give 1 to {MAX_ROWS} (--num, per class of --classes)')
    side = resolution + grids.PADDING
    if rows * (args.k + 1) * side ** 2 > seeded_samples.GRID_PIXELS:
        raise ValueError(f'{rows} rows of {args.k + 1} images of {resolution}x{resolution} '
                         f'make too large a sheet: give fewer --num or --k')


# ----------------------------------------------------------------------------- samples

def sample_plan(config: dict, num: int) -> tuple[list[int], list[int]]:
    """(class, seed) of each sample: --num seeds from --seed for each of --classes, else --num
    seeds with classes drawn from --seed."""
    seeds = [config['seed'] + i for i in range(num)]
    if config['classes'].strip():
        classes, _ = sample.seed_request({**config, 'seeds': '0'})
        return [c for c in classes for _ in seeds], seeds * len(classes)
    generator = torch.Generator().manual_seed(config['seed'])
    return torch.randint(config['n_classes'], (num,), generator=generator).tolist(), seeds


def run_samples(config: dict, weights_file: Path, itr: int, plan: tuple[list[int], list[int]]
                ) -> Samples:
    """The run's seeded images of the plan (see seeded_samples.py), as 8-bit images."""
    s = sample.build_sampler(config, weights_file, itr)
    classes, seeds = plan
    with torch.inference_mode(), seeded_samples.seeded_sampling(s, config['truncation']) as image:
        x = torch.stack([image(c, seed) for c, seed in zip(classes, seeds)])
    return Samples(utils.to_uint8(x).permute(0, 3, 1, 2).numpy(), np.array(classes), seeds)


def read_images(images: evaluate.Images, n: int, resolution: int) -> Samples:
    """The first n images of an .npz or folder (evaluate.open_images), checked to be of the
    data's resolution."""
    batches, count = [], 0
    for x in images.read(64):
        if x.shape[1:] != (3, resolution, resolution):
            raise ValueError(f'{images.path} holds {x.shape[3]}x{x.shape[2]} images; the '
                             f'training data are {resolution}x{resolution}: resize them first')
        batches.append(x[:n - count])
        count += len(batches[-1])
        if count >= n:
            break
    return Samples(np.concatenate(batches), None if images.labels is None
                   else images.labels[:n], None)


# ----------------------------------------------------------------------------- training data

def run_subset(config: dict, saved: dict, weights_file: Optional[Path], num_images: int
               ) -> Optional[np.ndarray]:
    """The dataset indices a --num_samples run trained on (as its checkpoint recorded them, or
    as train.py draws them from the run's seed), or None for the whole dataset."""
    recorded = None
    if weights_file is not None:
        suffix = utils.checkpoint_suffix(weights_file.name)
        state_path = weights_file.parent / utils.checkpoint_file('state_dict', suffix)
        if state_path.is_file():
            recorded = utils.load_file(str(state_path)).get('subset')
    run = saved or config  # --seed here draws samples: the subset is the run's seed's
    n = len(recorded) if recorded is not None else run.get('num_samples', 0)
    if not n:
        return None
    return datasets.choose_subset(num_images, n, run.get('seed', 0), recorded)


def training_set(config: dict, saved: dict, weights_file: Optional[Path], data_pass: bool
                 ) -> Training:
    """The training images to search and, without --data_pass, their stored features."""
    spec = datasets.resolve_dataset(config['dataset'], config['data_root'],
                                    resolution=config['resolution'] or None,
                                    single_class_ok=config['unconditional'])
    data = datasets.build_dataset(spec)
    subset = run_subset(config, saved, weights_file, len(data))
    searched = np.arange(len(data)) if subset is None else subset
    what = (f'all {len(data)} images of {spec.name}' if subset is None else
            f"the run's --num_samples subset: {len(subset)} of the {len(data)} images of "
            f'{spec.name}')
    if data_pass:
        return Training(data, searched, None, f'{what}, features computed here')
    where = dict(resolution=spec.resolution, inception_weights=config['inception_weights'] or None)
    path = inception_utils.features_file(spec.moments_path, config['inception'])
    try:
        feats = inception_utils.load_features(path, config['inception'], **where)
    except FileNotFoundError as err:
        raise FileNotFoundError(f'{err}; or pass --data_pass to compute the features of the '
                                f'training images here') from None
    try:
        indices = load_feature_indices(path, len(feats), data.labels, config['inception'],
                                       **where)
    except ValueError as err:
        raise ValueError(f'{err}; or pass --data_pass') from None
    keep = np.isin(indices, searched)
    note = f'{what}, features from {path}'
    if keep.sum() < len(searched):
        note += (f' ({keep.sum()} of them have features there: --data_pass searches all of '
                 f'them)')
    return Training(data, indices[keep], torch.from_numpy(feats[keep]), note)


def data_features(net: torch.nn.Module, train: Training, config: dict, batch_size: int
                  ) -> torch.Tensor:
    """Pool features [M, 2048] of the searched training images, read as training reads them
    (no augmentation), in index order."""
    loader = datasets.get_data_loaders(
        config['dataset'], config['data_root'], resolution=config['resolution'] or None,
        batch_size=batch_size, num_workers=config['num_workers'], shuffle=False,
        drop_last=False, unconditional=config['unconditional'],
        num_samples=len(train.indices), subset=train.indices)[0]
    return features(net, loader, len(train.indices), 'training images')


def features(net: torch.nn.Module, batches, num: int, desc: str) -> torch.Tensor:
    """Pool features [num, 2048] (float32, on the CPU) of image batches in [-1, 1]."""
    with tqdm(total=num, desc=desc, unit='img', file=sys.stdout) as bar:
        *_, feats = inception_utils.accumulate_inception_stats(
            net, batches, num, num_splits=1, moments=False, features=True,
            progress=bar.update)
    return feats.float().cpu()


# ----------------------------------------------------------------------------- search

def candidates(queries: torch.Tensor, keys: torch.Tensor, n: int, device: torch.device
               ) -> tuple[np.ndarray, np.ndarray]:
    """(L2 distances [N, n] float64, rows of `keys` [N, n]) of each query's n nearest keys,
    nearest first (ties: lower row first). They are found with the float64 matrix product
    form in blocks of CHUNK keys, then their distances are recomputed from the differences,
    so a key equal to its query is at distance exactly 0."""
    q = queries.to(device, torch.float64)  # [N, D]
    q2 = (q * q).sum(1, keepdim=True)  # [N, 1]
    best_d = torch.empty(len(q), 0, dtype=torch.float64, device=device)
    best_i = torch.empty(len(q), 0, dtype=torch.long, device=device)
    for start in range(0, len(keys), CHUNK):
        x = keys[start:start + CHUNK].to(device, torch.float64)  # [C, D]
        d2 = q2 + (x * x).sum(1) - 2 * q @ x.T  # [N, C] squared distances
        rows = torch.arange(start, start + len(x), device=device).expand(len(q), -1)
        best_d, pick = torch.cat([best_d, d2], 1).topk(n, 1, largest=False)
        best_i = torch.cat([best_i, rows], 1).gather(1, pick)
    best_i, _ = best_i.sort(1)  # ties in distance: lower row first (the sort below is stable)
    cand = keys.to(device)[best_i].to(torch.float64)  # [N, n, D]
    exact, order = (cand - q[:, None]).norm(dim=2).sort(dim=1, stable=True)
    return exact.cpu().numpy(), best_i.gather(1, order).cpu().numpy()


def rank(samples: Samples, train: Training, dist: np.ndarray, rows: np.ndarray, k: int
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances [N, k], dataset indices [N, k], copy flags [N, k]) of the k nearest of the
    candidates. A training image equal to the sample pixel for pixel is a copy, at distance 0:
    its features differ from the sample's only by the float rounding of another batch layout
    (the training features were computed in batches of other images)."""
    indices = train.indices[rows]  # [N, n]
    copies = np.array([[np.array_equal(train.data.image(int(i)), x) for i in row]
                       for x, row in zip(samples.images, indices)])
    dist = np.where(copies, 0.0, dist)
    order = np.lexsort((indices, dist), axis=1)[:, :k]  # by distance, then index
    pick = functools.partial(np.take_along_axis, indices=order, axis=1)
    return pick(dist), pick(indices), pick(copies)


# ----------------------------------------------------------------------------- outputs

def sheet(samples: Samples, neighbours: np.ndarray, data: datasets.ImageDataset,
          names: Optional[list[str]]) -> Image.Image:
    """One row per sample: it, then its neighbours' training images; rows labelled with the
    sample's class (or its number, unlabelled)."""
    rows = []
    for x, row in zip(samples.images, neighbours):
        rows += [torch.from_numpy(np.ascontiguousarray(x))]
        rows += [torch.from_numpy(np.ascontiguousarray(data.image(int(i)))) for i in row]
    grid = grids.uint8_grid(torch.stack(rows), neighbours.shape[1] + 1)
    labels = ([f'sample {i}' for i in range(len(samples.images))] if samples.labels is None
              else [class_names.label(int(c), names) for c in samples.labels])
    return grids.label_rows(grid, labels, row_height=samples.images.shape[-1] + grids.PADDING)


def csv_text(samples: Samples, dist: np.ndarray, neighbours: np.ndarray, copies: np.ndarray,
             train: Training, names: Optional[list[str]]) -> str:
    """The CSV: a line per (sample, rank), in the sheet's order (see the module docstring)."""
    def name(c: Optional[int]) -> str:
        """A class's name, or '' when there is none."""
        return names[c] if names is not None and c is not None and c < len(names) else ''
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['sample', 'sample_class', 'sample_class_name', 'seed', 'rank',
                     'train_index', 'train_class', 'train_class_name', 'distance', 'copy',
                     'searched_images', 'dataset_images'])
    for s, (row_d, row_i, row_c) in enumerate(zip(dist, neighbours, copies)):
        c = None if samples.labels is None else int(samples.labels[s])
        seed = '' if samples.seeds is None else samples.seeds[s]
        for j, (d, i, copy) in enumerate(zip(row_d, row_i, row_c), 1):
            t = int(train.data.labels[i])
            writer.writerow([s, '' if c is None else c, name(c), seed, j, int(i), t, name(t),
                             repr(float(d)), int(copy), len(train.indices), len(train.data)])
    return out.getvalue()


def out_folder(args: argparse.Namespace, config: dict) -> Path:
    """--out, else beside --images, else samples/<exp>/nearest_neighbours."""
    if args.out:
        return Path(args.out).expanduser()
    if args.images:
        path = Path(args.images).expanduser()
        return path.with_name(f'{path.stem if path.is_file() else path.name}_nearest_neighbours')
    return Path(config['samples_root']) / config['experiment_name'] / 'nearest_neighbours'


def write(folder: Path, image: Image.Image, text: str) -> tuple[Path, Path]:
    """Write the sheet and the CSV, each atomically; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    png, table = folder / 'nn_sheet.png', folder / 'nn.csv'
    atomic_write(str(table), lambda f: f.write(text), mode='w')
    atomic_write(str(png), lambda f: image.save(f, format='PNG'))
    return png, table


# ----------------------------------------------------------------------------- main

def run(argv: Optional[list[str]] = None) -> dict:
    """Find the neighbours as the flags say; returns the paths written and the results."""
    args, rest = build_parser().parse_known_args(argv)

    # Config, and every check that can fail, before any network is loaded:
    config, weights_file, itr, saved = resolve(args, rest)
    resolution, names = config['resolution'], config['class_names']
    if args.images:
        images = evaluate.open_images(args.images)
        rows = images.num if args.num is None else min(args.num, images.num)
        check_counts(args, rows, resolution)
        samples = read_images(images, rows, resolution)
    else:
        sample.check_truncation(config['truncation'], config)
        plan = sample_plan(config, 16 if args.num is None else args.num)
        rows = len(plan[0])
        check_counts(args, rows, resolution)
    train = training_set(config, saved, weights_file, args.data_pass)
    if args.k > len(train.indices):
        raise ValueError(f'--k {args.k}: only {len(train.indices)} training images are '
                         f'searched ({train.note})')
    inception, weights = config['inception'], config['inception_weights'] or None
    inception_utils.resolve_inception_weights(inception, weights)
    folder = out_folder(args, config)

    # Samples (the run's G), then the Inception features of both sides:
    if not args.images:
        samples = run_samples(config, weights_file, itr, plan)
    net = inception_utils.load_inception_net(inception=inception, inception_weights=weights)
    device = next(net.parameters()).device
    B = args.inception_batch_size
    query = features(net, (datasets.to_float(samples.images[i:i + B])
                           for i in range(0, rows, B)), rows, 'samples')
    if train.features is None:
        train.features = data_features(net, train, config, B)

    # Search, sheet and CSV:
    print(f'Searching {train.note}; {inception} Inception on {device}')
    dist, pos = candidates(query, train.features, min(args.k + 8, len(train.indices)), device)
    dist, neighbours, copies = rank(samples, train, dist, pos, args.k)
    png, table = write(folder, sheet(samples, neighbours, train.data, names),
                       csv_text(samples, dist, neighbours, copies, train, names))
    print(f'{rows} samples: nearest distance median {np.median(dist[:, 0]):.4g}, min '
          f'{dist[:, 0].min():.4g}; {int(copies[:, 0].sum())} with a pixel copy in the '
          f'training images. Wrote {png} and {table}')
    return {'sheet': png, 'csv': table, 'distances': dist, 'neighbours': neighbours,
            'copies': copies, 'config': config}


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: find the neighbours, or print what was wrong (no traceback) and return 1."""
    try:
        run(argv)
    except sample.SampleError as err:
        print(f'nearest_neighbours.py: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main, 'nearest_neighbours.py'))
