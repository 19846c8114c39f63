"""Write the FID moments of a dataset: mean and covariance of its Inception pool features.

Streams over the data with running sums (float64), so ImageNet-sized sets fit in memory,
and writes `mu` [2048] and `sigma` [2048, 2048] to the dataset's moments file
(`<data_root>/<dataset>_inception_moments.npz`; with `--inception tf`, `..._tf.npz`
beside it). In the same pass it keeps the pool features of a fixed random subset of
`--num_features` images (all of a smaller set) for KID and precision/recall, written beside
the moments (`..._inception_moments_features.npz`, `..._tf_features.npz`). Also prints the
Inception Score of the real data, as the 2019 script did.

Example:
    python calculate_inception_moments.py --dataset I128_hdf5 --data_root data
    python calculate_inception_moments.py --dataset data/my_images.hdf5 --inception tf \\
        --inception_weights pt_inception-2015-12-05-6726825d.pth
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch
from tqdm import tqdm

import datasets
import inception_utils
from flags import run_cli


def prepare_parser() -> argparse.ArgumentParser:
    """The 2019 flags with their defaults, plus the network, weights and resolution."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', type=str, default='I128_hdf5',
                        help='2019 dataset name, or the path of an image folder / .hdf5 file')
    parser.add_argument('--data_root', type=str, default='data',
                        help='where the 2019-named datasets (and their moments) live')
    parser.add_argument('--resolution', type=int, default=None,
                        help='image size of a folder dataset (named ones fix it)')
    parser.add_argument('--batch_size', type=int, default=64, help='images per batch')
    parser.add_argument('--parallel', action='store_true', help='DataParallel over GPUs')
    parser.add_argument('--augment', action='store_true',
                        help='random crop/flip the data (as 2019; off for FID moments)')
    parser.add_argument('--num_workers', type=int, default=8, help='data loader workers')
    parser.add_argument('--shuffle', action='store_true',
                        help='shuffle the data (mixes classes across the IS splits)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the shuffle')
    inception_utils.add_inception_args(parser)
    parser.add_argument('--num_features', type=int, default=inception_utils.NUM_FEATURES,
                        help='real features kept for KID and precision/recall, a fixed random '
                             'subset (0: write no features file)')
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    """Compute and save the moments (and features) of --dataset, and print its IS."""
    args = prepare_parser().parse_args(argv)

    # Data: every image once, in a fixed order unless --shuffle.
    spec = datasets.resolve_dataset(args.dataset, args.data_root, resolution=args.resolution)
    out_path = inception_utils.moments_file(spec.moments_path, args.inception)
    features_path = inception_utils.features_file(spec.moments_path, args.inception)
    loader = datasets.get_data_loaders(
        args.dataset, args.data_root, resolution=args.resolution, augment=args.augment,
        batch_size=args.batch_size, num_workers=args.num_workers, shuffle=args.shuffle,
        load_in_mem=False, drop_last=False, use_multiepoch_sampler=False, seed=args.seed)[0]
    num_images = len(loader.sampler)

    # Network: weights are checked before the long pass over the data.
    net = inception_utils.load_inception_net(inception=args.inception,
                                             inception_weights=args.inception_weights or None)
    device = next(net.parameters()).device
    if args.parallel and torch.cuda.device_count() > 1:
        net = torch.nn.DataParallel(net)  # the 2019 flag: split each batch over the GPUs
    print(f'{spec.name}: {num_images} images at {spec.resolution}x{spec.resolution}; '
          f'{args.inception} Inception on {device}')

    # One streaming pass: IS accumulators, running sums of the pool features, and the pool
    # features of the images at the chosen positions.
    rows = inception_utils.feature_subset(num_images, max(args.num_features, 0))
    labels = []  # every image's class, in order: those of the kept features are saved
    batches = (labels.append(y) or x for x, y in loader)
    with tqdm(total=num_images, unit='img') as pbar:
        is_acc, mom_acc, feats = inception_utils.accumulate_inception_stats(
            net, batches, num_images, num_splits=args.num_splits, moments=True, features=True,
            feature_rows=rows, progress=pbar.update)
    IS_mean, IS_std = is_acc.compute()
    print(f'Training data from dataset {spec.name} has IS of {IS_mean:5.5f} +/- {IS_std:5.5f}')

    mu, sigma = mom_acc.compute()
    if not (torch.isfinite(sigma).all() and torch.isfinite(feats).all()):
        raise RuntimeError('the features gave non-finite moments; nothing was saved')
    inception_utils.save_moments(out_path, mu, sigma, args.inception)
    print(f'Saved the moments of {num_images} images to {out_path}')
    if len(feats):
        order = datasets.epoch_order(num_images, args.seed, 0, args.shuffle)  # the sampler's
        inception_utils.save_features(features_path, feats, args.inception, num_images,
                                      labels=torch.cat(labels)[torch.from_numpy(rows)],
                                      indices=order[rows])
        print(f'Saved the features of {len(feats)} of them (KID, precision/recall) to '
              f'{features_path}')


if __name__ == '__main__':
    sys.exit(run_cli(main, 'calculate_inception_moments.py'))
