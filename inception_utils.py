"""The Inception networks and their weights, the data moments and features files, and the
metrics of a G (IS, FID, KID, precision/recall).

Two networks, both giving (pool [B, 2048], logits) from one forward of images in [-1, 1]:
- 'torchvision': torchvision's ImageNet Inception-v3, the 2019 release's default; its
  numbers are "for monitoring" only.
- 'tf': the TensorFlow FID Inception (2015-12-05 weights) as ported by `pytorch_fid`; with
  its 1008-way logits for IS, numbers are comparable to the TF code papers reported.
Weights come from a local file, else the torch hub cache, else a download; nothing falls
back to random weights, and a file that is not the published one (by its SHA-256) is warned
about, since its numbers compare with no one's.

`accumulate_inception_stats` runs a network over N images in constant memory, feeding the
IS and moments accumulators of metrics.py (where the metric mathematics lives), and keeps
the pool features when KID and precision/recall need them.
`prepare_inception_metrics` returns the function training and sample.py call for the
metrics: IS and FID as in 2019, and KID and precision/recall when the data's real-features
file (`features_file`, written with the moments) exists.

Example:
    get_metrics = prepare_inception_metrics('data/I128_inception_moments.npz', device='cuda')
    IS_mean, IS_std, FID = result = get_metrics(sample, 50000)  # sample() -> (images, labels)
    result.KID_mean, result.precision  # None without data/I128_inception_moments_features.npz
"""
from __future__ import annotations

import itertools
import os
import shlex
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from pytorch_fid.inception import (
    FID_WEIGHTS_URL,
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE_1,
    FIDInceptionE_2,
)

import datasets
from checkpoints import file_sha256, state_dict_diff
from metrics import (
    Array,
    InceptionMetrics,
    ISAccumulator,
    MomentsAccumulator,
    kernel_inception_distance,
    knn_radii,
    precision_recall,
    torch_calculate_frechet_distance,
)

INCEPTIONS = ('torchvision', 'tf')
WEIGHTS_URLS = {'torchvision': torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url,
                'tf': FID_WEIGHTS_URL}
# First 8 hex digits of the published files' SHA-256, as their names carry them.
WEIGHTS_SHA256 = {'torchvision': '0cc3c7bd', 'tf': '6726825d'}
POOL_DIM = 2048
NUM_FEATURES = 50000  # real features kept for KID and precision/recall (a random subset)
PR_K = 3  # the k of the precision/recall k-NN balls (Kynkaenniemi et al.)

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- weights

def _check_kind(inception: str) -> None:
    """Refuse a network name other than those in INCEPTIONS."""
    if inception not in INCEPTIONS:
        raise ValueError(f'unknown Inception network {inception!r}: use one of {INCEPTIONS}')


def hub_weights_path(inception: str) -> Path:
    """Where the torch hub cache keeps this network's weights file."""
    _check_kind(inception)
    name = os.path.basename(WEIGHTS_URLS[inception])
    return Path(torch.hub.get_dir()) / 'checkpoints' / name


def resolve_inception_weights(inception: str = 'torchvision',
                              inception_weights: Optional[PathLike] = None,
                              download: bool = True) -> Path:
    """The weights file to load: the given one, else the hub cache, else downloaded into it.

    Raises FileNotFoundError saying which file to put where when none can be had.
    """
    if inception_weights:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f'--inception_weights {path} does not exist')
        return path
    cached = hub_weights_path(inception)
    if cached.is_file():
        return cached
    url = WEIGHTS_URLS[inception]
    if download:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached))
            return cached
        except Exception as err:  # offline, proxy, disk: all end in the same advice
            reason = f'downloading {url} failed ({type(err).__name__}: {err})'
    else:
        reason = 'downloads are off'
    raise FileNotFoundError(
        f'no weights for the {inception!r} Inception network: {reason}. Get the file {url} '
        f'on a machine that is online and either put it at {cached} (the torch hub cache) or '
        f'pass --inception_weights /path/to/{cached.name}')


class InceptionWeightsWarning(UserWarning):
    """A weights file that is not the published one: its IS/FID compare with no one's."""


_hashed: set[tuple] = set()  # (file, size, mtime, network) already checked in this process


def check_weights_hash(path: PathLike, inception: str) -> None:
    """Warn if a weights file's SHA-256 is not the published file's (once per file and process).

    A warning, not an error: a re-saved copy of the published weights has other bytes but the
    same numbers. The file is ~100 MB (~0.3 s to hash), so each is hashed once; under DDP only
    rank 0 hashes and warns.
    """
    _check_kind(inception)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, inception)
    if key in _hashed:
        return
    _hashed.add(key)
    got, expected = file_sha256(path)[:8], WEIGHTS_SHA256[inception]
    if got != expected:
        url = WEIGHTS_URLS[inception]
        warnings.warn(
            f'{path} is not the published {inception!r} Inception weights file: its SHA-256 '
            f'starts {got}, the published {os.path.basename(url)} starts {expected}. IS/FID '
            f'measured with it are not comparable with anyone else\'s (random weights give '
            f'FID ~0 and IS ~1). Unless it is a re-saved copy of the published weights, get '
            f'{url} and put it at {hub_weights_path(inception)} or pass it with '
            f'--inception_weights.', InceptionWeightsWarning, stacklevel=3)


# ----------------------------------------------------------------------------- networks

def _inception_v3(inception: str) -> torchvision.models.Inception3:
    """The bare architecture (no weights); init skipped since weights are loaded next."""
    if inception == 'torchvision':
        return torchvision.models.inception_v3(weights=None, aux_logits=True,
                                               init_weights=False)
    # pytorch_fid.inception.fid_inception_v3() downloads on construction, so patch the
    # blocks here the way it does: TF's pooling differs from torchvision's in these.
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                          init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


# Inception3's layers from the image to the 2048-d average pool, in order.
TRUNK = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'maxpool1', 'Conv2d_3b_1x1',
         'Conv2d_4a_3x3', 'maxpool2', 'Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a',
         'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c',
         'avgpool')


class InceptionNet(nn.Module):
    """Images in [-1, 1] [B, 3, H, W] -> (pool [B, 2048], logits [B, 1000 or 1008])."""

    def __init__(self, net: torchvision.models.Inception3, inception: str):
        super().__init__()
        _check_kind(inception)
        self.net, self.inception = net, inception
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool features, logits) of a batch of images in [-1, 1]."""
        x = x.float()
        if self.inception == 'torchvision':
            # As the 2019 release: ImageNet normalisation, corner-aligned bilinear resize.
            x = ((x + 1) / 2 - self.mean) / self.std
            if x.shape[-2:] != (299, 299):
                x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=True)
        elif x.shape[-2:] != (299, 299):
            # As pytorch_fid; the TF network takes [-1, 1] as it is.
            x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
        for name in TRUNK:
            x = getattr(self.net, name)(x)
        pool = torch.flatten(x, 1)  # [B, 2048]
        if self.inception == 'torchvision':
            return pool, self.net.fc(pool)
        # The TF IS code (openai/improved-gan, the 2019 inception_tf13.py) multiplies pool_3
        # by the softmax layer's weight without its bias; do the same for comparable IS.
        return pool, F.linear(pool, self.net.fc.weight)


def _load_weights(inception: str, inception_weights: Optional[PathLike]
                  ) -> torchvision.models.Inception3:
    """The network's architecture with its weights file loaded, on the CPU; a file that is
    not its state dict is refused saying what it holds instead."""
    _check_kind(inception)
    path = resolve_inception_weights(inception, inception_weights)
    net = _inception_v3(inception)
    url = WEIGHTS_URLS[inception]
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # not a file of tensors: say what it is
        raise ValueError(f'{path} is not a state dict of the {inception!r} Inception-v3: it is '
                         f'{_file_kind(path)}, which torch.load cannot read as weights '
                         f'({type(err).__name__}). Get {url} and pass it with '
                         f'--inception_weights') from None
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    problem = _state_dict_problem(state, net.state_dict())
    if problem:
        raise ValueError(f'{path} is not a state dict of the {inception!r} Inception-v3: '
                         f'{problem}. Get {url} and pass it with --inception_weights')
    net.load_state_dict(state)
    check_weights_hash(path, inception)  # it loads: now say if it is not the published file
    return net


def _file_kind(path: Path) -> str:
    """'1,000 bytes of text ("not a che...")', '... of binary data', '... of a zip archive'."""
    with open(path, 'rb') as f:
        head = f.read(32)
    size = f'{os.path.getsize(path):,} bytes'
    kinds = {b'PK\x03\x04': 'a zip archive', b'\x89HDF': 'an HDF5 file',
             b'\x93NUMPY': 'a NumPy .npy array', b'\x80': 'a Python pickle'}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return f'{size}: {kind}'
    if not head:
        return 'empty (0 bytes)'
    text = head.decode('ascii') if head.isascii() else ''
    if text and all(c.isprintable() or c in '\r\n\t' for c in text):
        return f'{size} of text starting {text[:24]!r}'
    return f'{size} of binary data'


def _state_dict_problem(state: object, own: dict) -> Optional[str]:
    """Why `state` does not load into a network with state dict `own` (None if it does)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        return f'it holds a {type(state).__name__}, not a dict of tensors'
    missing, unexpected, reshaped = state_dict_diff(own, state)
    shapes = [f'{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})' for k in reshaped]
    if not (missing or unexpected or shapes):
        return None
    example = ', '.join(list(state)[:3]) or 'none'
    parts = [f'it holds {len(state)} tensors (e.g. {example}) and matches {len(own) - len(missing)}'
             f' of the network\'s {len(own)}']
    if missing:
        parts.append(f'{len(missing)} are missing (e.g. {", ".join(missing[:2])})')
    if unexpected:
        parts.append(f'{len(unexpected)} are not in the network (e.g. '
                     f'{", ".join(unexpected[:2])})')
    if shapes:
        parts.append(f'{len(shapes)} have other shapes (e.g. {shapes[0]})')
    return '; '.join(parts)


def load_inception_net(*, inception: str = 'torchvision',
                       inception_weights: Optional[PathLike] = None,
                       device: Optional[Union[str, torch.device]] = None) -> InceptionNet:
    """The Inception network with its weights, in eval mode on `device` (default: cuda if any)."""
    net = _load_weights(inception, inception_weights)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    return InceptionNet(net, inception).eval().requires_grad_(False).to(device)


# ----------------------------------------------------------------------------- statistics

def feature_subset(num_images: int, max_features: int = NUM_FEATURES, seed: int = 0
                   ) -> np.ndarray:
    """Sorted positions of at most `max_features` of `num_images` images, drawn at random
    without replacement with a fixed seed (all positions when there are no more)."""
    if max_features >= num_images:
        return np.arange(num_images)
    return np.sort(np.random.RandomState(seed).choice(num_images, max_features, replace=False))


def _all_gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every rank's rows x [counts[rank], d], concatenated in rank order on every rank.

    all_gather wants equal shapes: each rank's rows go padded to the largest count.
    """
    most = max(counts)
    padded = x.new_zeros(most, x.shape[1])
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def accumulate_inception_stats(net: nn.Module, batches: Iterable, num_images: int, *,
                               num_splits: int = 10, moments: bool = True,
                               features: bool = False, feature_rows: Optional[Array] = None,
                               progress: Optional[Callable[[int], None]] = None
                               ) -> Union[tuple[ISAccumulator, Optional[MomentsAccumulator]],
                                          tuple[ISAccumulator, Optional[MomentsAccumulator],
                                                torch.Tensor]]:
    """Run `net` over the first `num_images` images of `batches` (tensors or (x, y) pairs).

    Under DDP each rank runs its 1/world_size share and gets the statistics of all of them.

    Returns the IS accumulator and, with `moments`, the pool-feature moments accumulator;
    `progress(n)` is called with the number of images of each batch. With `features` a
    third item: the pool features [n, 2048] (float32, on the net's device, in sample order;
    under DDP every rank gets all ranks'), of every image, or of those at the sorted
    positions `feature_rows` among the num_images (see `feature_subset`).
    """
    device = next(net.parameters()).device
    # Under DDP each rank draws its share of the samples; the sums are all-reduced below.
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    start = rank * num_images // world
    total, num_images = num_images, (rank + 1) * num_images // world - start
    is_acc = ISAccumulator(total, num_splits, start)
    mom_acc = MomentsAccumulator(POOL_DIM, device) if moments else None
    if features:  # positions of the kept features, and how many each rank keeps
        rows = (torch.arange(total) if feature_rows is None
                else torch.as_tensor(np.unique(np.asarray(feature_rows)), dtype=torch.long))
        if len(rows) and (rows[0] < 0 or rows[-1] >= total):
            raise ValueError(f'feature_rows must lie in [0, {total}), got {int(rows[0])} to '
                             f'{int(rows[-1])}')
        bounds = torch.tensor([r * total // world for r in range(world + 1)])
        counts = torch.searchsorted(rows, bounds).diff().tolist()
        rows = rows[(rows >= start) & (rows < start + num_images)] - start  # this rank's
        kept = []
    seen = 0
    with torch.no_grad():
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[:num_images - seen].to(device)
            pool, logits = net(x)
            is_acc.update(F.softmax(logits.double(), dim=1))
            if mom_acc is not None:
                mom_acc.update(pool)
            if features:
                mine = rows[(rows >= seen) & (rows < seen + x.shape[0])] - seen
                kept.append(pool[mine.to(device)].float())
            seen += x.shape[0]
            if progress is not None:
                progress(x.shape[0])
            if seen >= num_images:
                break
    if seen < num_images:
        raise ValueError(f'expected {num_images} images but the batches ran out at {seen}')
    if world > 1:
        is_acc.all_reduce_()
        if mom_acc is not None:
            mom_acc.all_reduce_()
    if not features:
        return is_acc, mom_acc
    feats = torch.cat(kept) if kept else torch.zeros(0, POOL_DIM, device=device)
    return is_acc, mom_acc, _all_gather_rows(feats, counts) if world > 1 else feats


# ----------------------------------------------------------------------------- moments files

def moments_file(moments_path: PathLike, inception: str = 'torchvision') -> Path:
    """The moments file for a network: the dataset's own file, or `<stem>_tf.npz` beside it.

    `moments_path` is the dataset's moments file (datasets.DatasetSpec.moments_path), which
    holds the torchvision network's moments as in 2019; the TF network's live beside it.
    """
    _check_kind(inception)
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


def save_features(path: PathLike, feats: Array, inception: str, num_images: int) -> None:
    """Write real pool features [n, 2048] (float32), the network's name and the number of
    images they were drawn from, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, features=np.asarray(torch.as_tensor(feats).cpu(), np.float32),
             inception=np.array(inception), num_images=np.array(num_images))
    os.replace(tmp, path)


def load_features(path: PathLike, inception: str = 'torchvision', *,
                  resolution: Optional[int] = None,
                  inception_weights: Optional[PathLike] = None) -> np.ndarray:
    """Real pool features [n, 2048] (float32) from a features file, checking it exists and
    fits the network, as `load_moments` does; the errors name the command that writes it."""
    path = Path(path)
    moments = path.with_name(path.name.removesuffix(f'_features{path.suffix}') + path.suffix)
    command = _moments_command(moments, inception, resolution, inception_weights)
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


# ----------------------------------------------------------------------------- metrics of G

def check_inception_ready(moments_path: PathLike, inception: str = 'torchvision',
                          inception_weights: Optional[PathLike] = None,
                          no_fid: bool = False, *, resolution: Optional[int] = None,
                          features: bool = False) -> None:
    """Fail now, not at the first test hours later: weights load and moments are usable.

    `moments_path` is the dataset's moments file (see `moments_file`); `resolution`, the
    data's, completes the command suggested for a missing folder dataset's moments. With
    `features` (--which_best KID) the real-features file must be usable too. Raises
    FileNotFoundError or ValueError saying what to do.
    """
    if features and no_fid:
        raise ValueError('--which_best KID needs KID, which --no_fid switches off with FID: '
                         'drop --no_fid, or keep the best checkpoints by IS')
    resolve_inception_weights(inception, inception_weights)  # cheap checks first
    if not no_fid:
        load_moments(moments_file(moments_path, inception), inception, resolution=resolution,
                     inception_weights=inception_weights)
    if features:
        load_features(features_file(moments_path, inception), inception,
                      resolution=resolution, inception_weights=inception_weights)
    _load_weights(inception, inception_weights)


def prepare_inception_metrics(moments_path: PathLike, inception: str = 'torchvision',
                              inception_weights: Optional[PathLike] = None, *,
                              device: Optional[Union[str, torch.device]] = None,
                              no_fid: bool = False) -> Callable:
    """Load the network, data moments and real features; return get_inception_metrics.

    `moments_path` is the dataset's moments file (datasets.DatasetSpec.moments_path); the
    'tf' network reads `moments_file(moments_path, 'tf')`. With `no_fid` no moments are
    read or computed and FID is returned as None. When the real-features file
    (`features_file`) exists, KID and precision/recall are computed too (not with `no_fid`).
    """
    data_mu = data_sigma = real_feats = None
    if not no_fid:
        data_mu, data_sigma = load_moments(moments_file(moments_path, inception), inception,
                                           inception_weights=inception_weights)
        path = features_file(moments_path, inception)
        if path.is_file():  # on the CPU until used: 400 MB for 50k
            real_feats = torch.from_numpy(load_features(path, inception,
                                                        inception_weights=inception_weights))
    net = load_inception_net(inception=inception, inception_weights=inception_weights,
                             device=device)
    real_radii = []  # the real features' k-NN radii, computed at the first call

    def get_inception_metrics(sample: Callable, num_inception_images: int, num_splits: int = 10
                              ) -> InceptionMetrics:
        """(IS mean, IS std, FID or None) of num_inception_images drawn by repeated sample(),
        with .KID_mean, .KID_std, .precision, .recall (None without real features).

        A metrics.InceptionMetrics: unpacks into the three values 2019's function returned;
        .record() gives the computed ones as a dict. sample() returns (images in [-1, 1]
        [B, 3, R, R], labels). One pass over the samples feeds every metric; FID, KID and
        precision/recall are computed on the network's device. Prints nothing: under DDP
        every rank calls it (and gets the same numbers).
        """
        batches = (sample()[0] for _ in itertools.count())  # stops at N images
        is_acc, mom_acc, *fake = accumulate_inception_stats(
            net, batches, num_inception_images, num_splits=num_splits, moments=not no_fid,
            features=real_feats is not None)
        IS_mean, IS_std = is_acc.compute()
        if no_fid:
            return InceptionMetrics(IS_mean, IS_std, None)
        mu, sigma = mom_acc.compute()
        FID = torch_calculate_frechet_distance(mu, sigma, data_mu, data_sigma)
        if real_feats is None:
            return InceptionMetrics(IS_mean, IS_std, FID)
        fake = fake[0]
        real = real_feats.to(fake.device)
        if not real_radii:
            real_radii.append(knn_radii(real, PR_K))
        KID_mean, KID_std = kernel_inception_distance(real, fake)
        precision, recall = precision_recall(real, fake, k=PR_K, real_radii=real_radii[0])
        return InceptionMetrics(IS_mean, IS_std, FID, KID_mean=KID_mean, KID_std=KID_std,
                                precision=precision, recall=recall)

    return get_inception_metrics
