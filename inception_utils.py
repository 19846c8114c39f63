"""The Inception networks' weights, the Inception statistics of N images, and the metrics of
a G (IS, FID, KID, precision/recall, density/coverage).

The two networks (inception_net.py: 'torchvision', the 2019 release's default, whose numbers
are "for monitoring" only; 'tf', the TensorFlow FID Inception whose numbers compare with the
TF code papers reported) both give (pool [B, 2048], logits) from images in [-1, 1].
Weights come from a local file, else the torch hub cache, else a download; nothing falls
back to random weights, and a file that is not the published one (by its SHA-256) is warned
about, since its numbers compare with no one's.

`accumulate_inception_stats` runs a network over N images in constant memory, feeding the
IS and moments accumulators of metrics.py (where the metric mathematics lives), and keeps
the pool features when KID, precision/recall and density/coverage need them
(`compare_features` computes those four from real and fake features).
`prepare_inception_metrics` returns the function training and sample.py call for the
metrics: IS and FID as in 2019, and KID, precision/recall and density/coverage when the
data's real-features file (`features_file`, written with the moments) exists. The data's
moments and features files are moments_files.py's; their functions are importable from here
too.

Example:
    get_metrics = prepare_inception_metrics('data/I128_inception_moments.npz', device='cuda')
    IS_mean, IS_std, FID = result = get_metrics(sample, 50000)  # sample() -> (images, labels)
    result.KID_mean, result.density  # None without data/I128_inception_moments_features.npz
"""
from __future__ import annotations

import argparse
import itertools
import os
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
from pytorch_fid.inception import FID_WEIGHTS_URL

import metrics
from checkpoints import file_sha256, state_dict_diff
from inception_net import INCEPTIONS, POOL_DIM, TRUNK, InceptionNet, check_network
from inception_net import inception_v3 as _inception_v3
from metrics import (
    Array,
    InceptionMetrics,
    ISAccumulator,
    MomentsAccumulator,
    density_coverage,
    kernel_inception_distance,
    knn_radii,
    precision_recall,
    torch_calculate_frechet_distance,
)
from moments_files import (
    PathLike,
    features_file,
    load_feature_labels,
    load_features,
    load_moments,
    moments_file,
    save_features,
    save_moments,
)

# Public names, with those of inception_net.py and moments_files.py kept importable from here.
__all__ = ['INCEPTIONS', 'WEIGHTS_URLS', 'WEIGHTS_SHA256', 'POOL_DIM', 'NUM_FEATURES', 'PR_K',
           'DC_K', 'TRUNK', 'InceptionNet', 'InceptionWeightsWarning', 'hub_weights_path',
           'resolve_inception_weights', 'check_weights_hash', 'add_inception_args',
           'load_inception_net',
           'feature_subset', 'accumulate_inception_stats', 'compare_features', 'moments_file',
           'save_moments', 'load_moments', 'features_file', 'save_features', 'load_features',
           'load_feature_labels', 'check_inception_ready', 'prepare_inception_metrics']

WEIGHTS_URLS = {'torchvision': torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url,
                'tf': FID_WEIGHTS_URL}
# First 8 hex digits of the published files' SHA-256, as their names carry them.
WEIGHTS_SHA256 = {'torchvision': '0cc3c7bd', 'tf': '6726825d'}
NUM_FEATURES = 50000  # real features kept for KID, P/R, density/coverage (a random subset)
PR_K = 3  # the k of the precision/recall k-NN balls (Kynkaenniemi et al.)
DC_K = 5  # the k of the density/coverage k-NN balls (Naeem et al.; the prdc package's)


# ----------------------------------------------------------------------------- weights

def add_inception_args(parser: argparse.ArgumentParser) -> None:
    """The scripts' --inception, --inception_weights and --num_splits (of the IS)."""
    parser.add_argument('--inception', type=str, default='torchvision', choices=INCEPTIONS,
                        help="'torchvision' (2019 default) or 'tf' (the TF FID weights)")
    parser.add_argument('--inception_weights', type=str, default='',
                        help='local weights file of that network (else the torch hub cache)')
    parser.add_argument('--num_splits', type=int, default=10, help='splits of the IS')


def hub_weights_path(inception: str) -> Path:
    """Where the torch hub cache keeps this network's weights file."""
    check_network(inception)
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
    check_network(inception)
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

def _load_weights(inception: str, inception_weights: Optional[PathLike]
                  ) -> torchvision.models.Inception3:
    """The network's architecture with its weights file loaded, on the CPU; a file that is
    not its state dict is refused saying what it holds instead."""
    check_network(inception)
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


def load_inception_net(parallel: bool = False, *, inception: str = 'torchvision',
                       inception_weights: Optional[PathLike] = None,
                       device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """The Inception network with its weights, in eval mode on `device` (default: cuda if any).

    `parallel`, 2019's one argument, wraps it in nn.DataParallel (over the visible GPUs).
    """
    net = _load_weights(inception, inception_weights)
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    net = InceptionNet(net, inception).eval().requires_grad_(False).to(device)
    return nn.DataParallel(net) if parallel else net


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


def _rank_share(num_images: int) -> tuple[int, int, int]:
    """(world size, first image, number of images) of this rank's share of `num_images`."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    start = rank * num_images // world
    return world, start, (rank + 1) * num_images // world - start


def _kept_rows(feature_rows: Optional[Array], total: int, world: int, start: int, share: int
               ) -> tuple[torch.Tensor, list[int]]:
    """(positions of this rank's kept features among its `share` images, how many each rank
    keeps): every image's, or those at `feature_rows` among the `total`."""
    rows = (torch.arange(total) if feature_rows is None
            else torch.as_tensor(np.unique(np.asarray(feature_rows)), dtype=torch.long))
    if len(rows) and (rows[0] < 0 or rows[-1] >= total):
        raise ValueError(f'feature_rows must lie in [0, {total}), got {int(rows[0])} to '
                         f'{int(rows[-1])}')
    bounds = torch.tensor([r * total // world for r in range(world + 1)])
    counts = torch.searchsorted(rows, bounds).diff().tolist()
    return rows[(rows >= start) & (rows < start + share)] - start, counts


def _feed(net: nn.Module, batches: Iterable, num_images: int, is_acc: ISAccumulator,
          mom_acc: Optional[MomentsAccumulator], rows: Optional[torch.Tensor],
          progress: Optional[Callable[[int], None]]) -> list[torch.Tensor]:
    """Run `net` over the first `num_images` images into the accumulators; the pool features
    at positions `rows` (none when None), one tensor per batch."""
    device = next(net.parameters()).device
    seen, kept = 0, []
    with torch.no_grad():
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x[:num_images - seen].to(device)
            pool, logits = net(x)
            is_acc.update(F.softmax(logits.double(), dim=1))
            if mom_acc is not None:
                mom_acc.update(pool)
            if rows is not None:
                mine = rows[(rows >= seen) & (rows < seen + x.shape[0])] - seen
                kept.append(pool[mine.to(device)].float())
            seen += x.shape[0]
            if progress is not None:
                progress(x.shape[0])
            if seen >= num_images:
                break
    if seen < num_images:
        raise ValueError(f'expected {num_images} images but the batches ran out at {seen}')
    return kept


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
    world, start, share = _rank_share(num_images)
    is_acc = ISAccumulator(num_images, num_splits, start)
    mom_acc = MomentsAccumulator(POOL_DIM, device) if moments else None
    rows = counts = None
    if features:
        rows, counts = _kept_rows(feature_rows, num_images, world, start, share)
    kept = _feed(net, batches, share, is_acc, mom_acc, rows, progress)
    if world > 1:
        is_acc.all_reduce_()
        if mom_acc is not None:
            mom_acc.all_reduce_()
    if not features:
        return is_acc, mom_acc
    feats = torch.cat(kept) if kept else torch.zeros(0, POOL_DIM, device=device)
    return is_acc, mom_acc, _all_gather_rows(feats, counts) if world > 1 else feats


# ----------------------------------------------------------------------------- metrics of G

def compare_features(real: torch.Tensor, fake: torch.Tensor,
                     real_radii: Optional[dict] = None) -> dict[str, float]:
    """KID_mean, KID_std, precision, recall, density and coverage of fake [m, 2048] against
    real [n, 2048] pool features, on fake's device, with the defaults every caller shares (k
    PR_K and DC_K). `real_radii`, a dict kept by the caller, caches the reals' k-NN radii by k
    for the next call with the same real features."""
    real = real.to(fake.device)
    radii = {} if real_radii is None else real_radii
    for k in (PR_K, DC_K):
        if k not in radii:
            radii[k] = knn_radii(real, k)
    KID_mean, KID_std = kernel_inception_distance(real, fake)
    precision, recall = precision_recall(real, fake, k=PR_K, real_radii=radii[PR_K])
    density, coverage = density_coverage(real, fake, k=DC_K, real_radii=radii[DC_K])
    return dict(KID_mean=KID_mean, KID_std=KID_std, precision=precision, recall=recall,
                density=density, coverage=coverage)


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


def prepare_inception_metrics(moments_path: PathLike, inception: Union[str, bool] = 'torchvision',
                              inception_weights: Union[PathLike, bool, None] = None, *,
                              device: Optional[Union[str, torch.device]] = None,
                              no_fid: bool = False, parallel: Optional[bool] = None) -> Callable:
    """Load the network, data moments and real features; return get_inception_metrics.

    Also takes 2019's form (dataset, parallel, no_fid=False), told apart by its bool second
    argument (or the `parallel` keyword): see `_prepare_inception_metrics_2019`.

    `moments_path` is the dataset's moments file (datasets.DatasetSpec.moments_path); the
    'tf' network reads `moments_file(moments_path, 'tf')`. With `no_fid` no moments are
    read or computed and FID is returned as None. When the real-features file
    (`features_file`) exists, KID, precision/recall and density/coverage are computed too
    (not with `no_fid`).
    """
    if isinstance(inception, bool) or parallel is not None:
        return _prepare_inception_metrics_2019(str(moments_path),
                                               no_fid or bool(inception_weights), device)
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
    real_radii = {}  # the real features' k-NN radii by k, computed at the first call

    def get_inception_metrics(sample: Callable, num_inception_images: int, num_splits: int = 10
                              ) -> InceptionMetrics:
        """(IS mean, IS std, FID or None) of num_inception_images drawn by repeated sample(),
        with .KID_mean, .KID_std, .precision, .recall, .density, .coverage (None without
        real features).

        A metrics.InceptionMetrics: unpacks into the three values 2019's function returned;
        .record() gives the computed ones as a dict. sample() returns (images in [-1, 1]
        [B, 3, R, R], labels). One pass over the samples feeds every metric; FID and the
        `compare_features` are computed on the network's device. Prints nothing: under DDP
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
        return InceptionMetrics(IS_mean, IS_std, FID,
                                **compare_features(real_feats, fake[0], real_radii))

    return get_inception_metrics


# ----------------------------------------------------------------------------- 2019 names
# 2019 names (compatibility): what 2019 code calls on inception_utils, under its 2019 name and
# call form (also load_inception_net(parallel) and prepare_inception_metrics(dataset,
# parallel, no_fid) above). Left out: sqrt_newton_schulz, the fp32 Newton-Schulz square root
# behind 2019's NaN FIDs (FID takes eigenvalues here). torch_calculate_frechet_distance
# (metrics.py) returns a float where 2019's returned a tensor.
__all__ += ['calculate_inception_score', 'numpy_calculate_frechet_distance',
            'torch_calculate_frechet_distance', 'torch_cov', 'WrapInception',
            'accumulate_inception_activations']

calculate_inception_score = metrics.calculate_inception_score


# They are defined in compat2019.py.
from compat2019 import (  # noqa: E402
    WrapInception,
    accumulate_inception_activations,
    numpy_calculate_frechet_distance,
    torch_cov,
)
from compat2019 import prepare_inception_metrics_2019 as _prepare_inception_metrics_2019  # noqa: E402
