"""The data's Inception moments and real-features files: where they live, writing them, and
reading them back with checks that they fit the network.

- Moments (FID): `<root>/<name>_inception_moments.npz` holds mu [2048] and sigma [2048, 2048]
  (float64) of the torchvision network's pool features, as in 2019; the TF network's are
  `<stem>_tf.npz` beside it. Each file names the network that made it.
- Real features (KID, precision/recall, density/coverage): `<stem>_features.npz` (or
  `<stem>_tf_features.npz`), at most inception_utils.NUM_FEATURES pool features [n, 2048]
  (float32), written in the same pass as the moments, and optionally their class `labels` [n]
  (int64), which intra-class FID needs (evaluate.py), and the dataset `indices` [n] (int64) of
  the images they are, which nearest_neighbours.py needs (older files lack both).
A missing or unfit file is refused with the `calculate_inception_moments.py` command that
(re)makes it, worked out from the data found beside it.

Example:
    path = moments_file('data/I128_inception_moments.npz', 'tf')  # ..._moments_tf.npz
    mu, sigma = load_moments(path, 'tf')  # refused, saying how to remake it, if unfit
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

import datasets
from inception_net import POOL_DIM, check_network
from metrics import Array

PathLike = Union[str, os.PathLike]


def moments_file(moments_path: PathLike, inception: str = 'torchvision') -> Path:
    """The moments file for a network: the dataset's own file, or `<stem>_tf.npz` beside it.

    `moments_path` is the dataset's moments file (datasets.DatasetSpec.moments_path), which
    holds the torchvision network's moments as in 2019; the TF network's live beside it.
    """
    check_network(inception)
    path = Path(moments_path)
    return path if inception == 'torchvision' else path.with_name(f'{path.stem}_tf{path.suffix}')


def _dataset_flags(path: Path, inception: str, resolution: Optional[int]) -> tuple[str, str]:
    """(--dataset flags, a note or '') of the data whose moments file is `path`.

    Inverts datasets.DatasetSpec.moments_path: `<root>/<name>_inception_moments.npz` belongs to
    the 2019 name `name` with data_root `root` (I128 and I128_hdf5 share it), or to the .hdf5
    file or image folder `<root>/<name>`; the data found there decides which.
    """
    root, q = path.parent, shlex.quote
    name = path.name.removesuffix('.npz')
    name = (name.removesuffix('_tf') if inception == 'tf' else name).removesuffix(
        '_inception_moments')
    named = [n for n in (f'{name}_hdf5', name) if n in datasets.DATASETS]
    for n in named:
        if (root / datasets.DATASETS[n].path).exists():
            return f'--dataset {n} --data_root {q(str(root))}', ''
    for suffix in ('.hdf5', '.h5'):
        if (root / f'{name}{suffix}').is_file():
            return f'--dataset {q(str(root / name) + suffix)}', ''
    if (root / name).is_dir():  # the moments of a folder depend on the size it is read at
        return f'--dataset {q(str(root / name))} --resolution {resolution or "RESOLUTION"}', ''
    if named:  # no data there yet: the name's error message says where it looks
        return f'--dataset {named[0]} --data_root {q(str(root))}', ''
    return '--dataset PATH', (f' (PATH: the file {root / name}.hdf5, or the image folder '
                              f'{root / name} and --resolution; neither exists now)')


def _moments_command(path: Path, inception: str, resolution: Optional[int] = None,
                     inception_weights: Optional[PathLike] = None) -> str:
    """The command that writes the moments file `path`, from the data found beside it."""
    flags, note = _dataset_flags(path, inception, resolution)
    cmd = f'python calculate_inception_moments.py {flags}'
    if inception == 'tf':
        cmd += ' --inception tf'
    if inception_weights:
        cmd += f' --inception_weights {shlex.quote(str(inception_weights))}'
    return cmd + note


def save_moments(path: PathLike, mu: Array, sigma: Array, inception: str) -> None:
    """Write mu [2048] and sigma [2048, 2048] (float64) and the network's name, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, mu=np.asarray(torch.as_tensor(mu).cpu(), np.float64),
             sigma=np.asarray(torch.as_tensor(sigma).cpu(), np.float64),
             inception=np.array(inception))
    os.replace(tmp, path)


def load_moments(path: PathLike, inception: str = 'torchvision', *,
                 resolution: Optional[int] = None,
                 inception_weights: Optional[PathLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a moments file, checking it exists and fits the network.

    `resolution` and `inception_weights` only complete the command the errors suggest.
    """
    path = Path(path)
    command = _moments_command(path, inception, resolution, inception_weights)
    if not path.is_file():
        raise FileNotFoundError(f'FID moments file {path} not found; make it with: {command}')
    with np.load(path) as f:
        if 'mu' not in f or 'sigma' not in f:
            raise ValueError(f'{path} is not a moments file: it lacks mu and sigma')
        mu, sigma = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
        # Files from 2019 carry no name: they were made with the torchvision network.
        made_with = str(f['inception']) if 'inception' in f else 'torchvision'
    if mu.shape != (POOL_DIM,) or sigma.shape != (POOL_DIM, POOL_DIM):
        raise ValueError(f'{path} holds moments of shape mu {mu.shape}, sigma {sigma.shape}; '
                         f'FID needs Inception pool features: mu ({POOL_DIM},), sigma '
                         f'({POOL_DIM}, {POOL_DIM}). Remake it with: {command}')
    _check_made_with(path, made_with, inception, command)
    return mu, sigma


def _check_made_with(path: PathLike, made_with: str, inception: str, command: str) -> None:
    """Refuse a moments or features file another Inception network made."""
    if made_with != inception:
        raise ValueError(f'{path} was made with the {made_with!r} Inception network, not '
                         f'{inception!r}; remake it with: {command}')


def features_file(moments_path: PathLike, inception: str = 'torchvision') -> Path:
    """The real-features file of KID and precision/recall: the network's moments file with
    `_features` before `.npz` (`<stem>_features.npz`, `<stem>_tf_features.npz`)."""
    path = moments_file(moments_path, inception)
    return path.with_name(f'{path.stem}_features{path.suffix}')


def save_features(path: PathLike, feats: Array, inception: str, num_images: int,
                  labels: Optional[Array] = None, indices: Optional[Array] = None) -> None:
    """Write real pool features [n, 2048] (float32), the network's name, the number of images
    they were drawn from and, when given, their class labels [n] and the dataset indices [n]
    of their images (int64), atomically."""
    path = Path(path)
    feats = np.asarray(torch.as_tensor(feats).cpu(), np.float32)
    extra = {}
    for key, value in (('labels', labels), ('indices', indices)):
        if value is not None:
            extra[key] = np.asarray(torch.as_tensor(value).cpu(), np.int64)
            if extra[key].shape != (len(feats),):
                raise ValueError(f'{len(feats)} features but {key} of shape '
                                 f'{extra[key].shape}')
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, features=feats, inception=np.array(inception),
             num_images=np.array(num_images), **extra)
    os.replace(tmp, path)


def load_features(path: PathLike, inception: str = 'torchvision', *,
                  resolution: Optional[int] = None,
                  inception_weights: Optional[PathLike] = None) -> np.ndarray:
    """Real pool features [n, 2048] (float32) from a features file, checking it exists and
    fits the network, as `load_moments` does; the errors name the command that writes it."""
    path = Path(path)
    command = _features_command(path, inception, resolution, inception_weights)
    if not path.is_file():
        raise FileNotFoundError(f'KID/precision-recall features file {path} not found; make '
                                f'it (with the moments, in one pass) with: {command}')
    with np.load(path) as f:
        if 'features' not in f:
            raise ValueError(f'{path} is not a features file: it lacks features')
        feats = f['features'].astype(np.float32, copy=False)
        made_with = str(f['inception']) if 'inception' in f else 'torchvision'
    if feats.ndim != 2 or feats.shape[1] != POOL_DIM or len(feats) < 2:
        raise ValueError(f'{path} holds features of shape {feats.shape}; KID and '
                         f'precision/recall need at least 2 Inception pool features '
                         f'(n, {POOL_DIM}). Remake it with: {command}')
    _check_made_with(path, made_with, inception, command)
    return feats


def _features_command(path: Path, inception: str, resolution: Optional[int],
                      inception_weights: Optional[PathLike]) -> str:
    """The command that writes the features file `path` (with its moments file)."""
    moments = path.with_name(path.name.removesuffix(f'_features{path.suffix}') + path.suffix)
    return _moments_command(moments, inception, resolution, inception_weights)


def load_feature_labels(path: PathLike, n: int, inception: str = 'torchvision', *,
                        required: bool = False, resolution: Optional[int] = None,
                        inception_weights: Optional[PathLike] = None) -> Optional[np.ndarray]:
    """The class labels [n] (int64) of the n features `load_features` read from a features
    file, or None if it has none (files from before labels were stored); with `required`,
    none is refused naming the command that remakes the file."""
    path = Path(path)
    with np.load(path) as f:
        labels = f['labels'] if 'labels' in f else None
    if labels is None:
        if not required:
            return None
        command = _features_command(path, inception, resolution, inception_weights)
        raise ValueError(f'{path} holds no class labels of its features, which intra-class FID '
                         f'needs (files written before labels were stored lack them); remake '
                         f'it with: {command}')
    if labels.shape != (n,) or labels.dtype.kind not in 'iu':
        raise ValueError(f'{path} holds labels of shape {labels.shape} and dtype {labels.dtype}'
                         f' for {n} features; expected integers of shape ({n},)')
    return labels.astype(np.int64)


def load_feature_indices(path: PathLike, n: int, dataset_labels: np.ndarray,
                         inception: str = 'torchvision', *, resolution: Optional[int] = None,
                         inception_weights: Optional[PathLike] = None) -> np.ndarray:
    """The dataset indices [n] (int64) of the images whose n features `load_features` read,
    checked against the dataset's labels. A file from before indices were stored is taken to
    hold every image in order when it kept all of them with their labels in the dataset's
    order (calculate_inception_moments.py without --shuffle); any other is refused, naming
    the command that remakes it."""
    path, num = Path(path), len(dataset_labels)
    with np.load(path) as f:
        indices = f['indices'].astype(np.int64) if 'indices' in f else None
        labels = f['labels'] if 'labels' in f else None
        made_from = int(f['num_images']) if 'num_images' in f else None
    in_order = (made_from == n == num and labels is not None and len(np.unique(labels)) > 1
                and np.array_equal(labels, dataset_labels))
    problem = ''
    if made_from is not None and made_from != num:
        problem = f'was made from {made_from} images, not these {num}'
    elif indices is None and not in_order:
        problem = ('does not record which training images its features are (files written '
                   'before the indices were stored lack them)')
    elif indices is None:
        indices = np.arange(n)
    elif indices.shape != (n,):
        problem = f'holds indices of shape {indices.shape} for {n} features'
    elif n and (indices.min() < 0 or indices.max() >= num or (
            labels is not None and not np.array_equal(labels, dataset_labels[indices]))):
        problem = f'was made from other images than these {num} (indices or labels differ)'
    if problem:
        command = _features_command(path, inception, resolution, inception_weights)
        raise ValueError(f'{path} {problem}; remake it with: {command}')
    return indices
