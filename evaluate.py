"""Score any samples (an .npz or an image folder) against a dataset or a second .npz.

The metrics: IS, FID, KID, precision/recall, density/coverage and intra-class FID, measured
against a dataset's Inception moments and real features, or against the features of a second
.npz (as ADM's evaluator does), with either Inception network.

Samples:
- an .npz whose uint8 images are `x` (sample.py's) or `arr_0` (`np.savez(path, images)`),
  [N, H, W, 3] or [N, 3, H, W], with optional integer labels `y` (or `arr_1` beside `arr_0`,
  as ADM's sample batches). Read a batch at a time: the array never has to fit in memory.
- a folder of images (PNG, JPEG, any format PIL reads): the files directly inside it,
  unlabelled; or, when it holds none, one subfolder per class (labels by sorted subfolder
  name, as image folder datasets). Its images are scored in one fixed shuffled order
  (FOLDER_ORDER_SEED): file names often sort by class (sample.py --seeds writes class<i>_...),
  and IS splits of one class each would understate the IS. The other metrics do not depend
  on the order; an .npz is scored in its own order, as sample.py measured it.
Any resolution: the Inception network resizes each image to 299x299 as it does samples and
data (inception_net.InceptionNet; no crop, so non-square images are stretched). Images go to
[-1, 1] as the data do (datasets.to_float), and sample.py measures its samples as these 8-bit
images (sample_outputs.as_saved), so this script on sample.py's npz gives the IS/FID that
`sample.py --sample_inception_metrics` gives on the same samples.

Reference:
- `--dataset` (and `--data_root`): the moments file calculate_inception_moments.py wrote
  (FID) and, when present, its real-features file (KID, precision/recall, density/coverage,
  and, when the file stores the images' labels, intra-class FID);
- `--ref other.npz` (or folder): moments and features computed from its images.
`--intra_fid` adds intra-class FID, the mean over classes of the FID between the samples and
the reference features of each class; it needs labels on both sides, and skips (and names)
the classes with fewer than 2 samples or 2 reference features, since a covariance needs two.

Every input is checked before any work (shapes, dtypes, labels, counts, files PIL cannot
open or verify, the reference files); a bad one is refused with one error line and nothing is
written. An image whose data are cut short (a truncated JPEG passes PIL's verify) is found
when decoded: the error names it, and still nothing is written.

Examples:
    python evaluate.py samples/my_run/samples.npz --dataset I128_hdf5 --data_root data
    python evaluate.py my_pngs/ --dataset C10 --inception tf \\
        --inception_weights pt_inception-2015-12-05-6726825d.pth --json scores.json
    python evaluate.py samples.npz --ref real_images.npz --intra_fid --json scores.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import datasets
import image_files
import inception_utils
from atomic_io import atomic_write
from flags import run_cli
from metrics import InceptionMetrics, intra_class_fid, torch_calculate_frechet_distance

IMAGE_KEYS = ('x', 'arr_0')  # sample.py's name, then np.savez's first positional array
FOLDER_ORDER_SEED = 2020  # the seed of torch-fidelity's shuffle of samples before the IS


@dataclass
class Images:
    """Images checked but not yet read: count, labels, and a reader of uint8 [B, 3, H, W]."""
    path: Path
    num: int
    labels: Optional[np.ndarray]
    summary: str  # e.g. 'npz x uint8 [N, H, W, 3], 32x32, labelled'
    read: Callable[[int], Iterator[np.ndarray]]  # batch_size -> batches, in order


@dataclass
class Reference:
    """What the samples are measured against: moments, and features (with labels) if any."""
    name: str
    mu: Optional[np.ndarray] = None
    sigma: Optional[np.ndarray] = None
    features: Optional[torch.Tensor] = None
    labels: Optional[np.ndarray] = None
    images: Optional[Images] = None  # --ref: the moments and features come from these
    note: str = ''  # why the feature metrics are missing, if they are


# ----------------------------------------------------------------------------- .npz files

def _npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream f, which is left at the data."""
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f'.npy format version {version} is not supported: save with np.savez')
    return readers[version](f)


def _npz_labels(path: Path, names: list[str], key: str, num: int) -> Optional[np.ndarray]:
    """The labels `y` (or `arr_1` beside `arr_0`) of an .npz's num images, checked; or None."""
    label_key = 'y' if 'y' in names else 'arr_1' if key == 'arr_0' and 'arr_1' in names else None
    if label_key is None:
        return None
    with np.load(path, allow_pickle=False) as f:
        labels = f[label_key]
    if labels.shape != (num,) or labels.dtype.kind not in 'iu':
        raise ValueError(f'{path}: labels {label_key} have shape {labels.shape} and dtype '
                         f'{labels.dtype}; expected integers of shape ({num},), one per image')
    if num and labels.min() < 0:
        raise ValueError(f'{path}: labels {label_key} hold {labels.min()}; classes are >= 0')
    return labels.astype(np.int64)


def open_npz(path: Path) -> Images:
    """An .npz's images, checked from its headers alone (shape, dtype, size), and labels."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.removesuffix('.npy') for n in zf.namelist()]
            key = next((k for k in IMAGE_KEYS if k in names), None)
            if key is None:
                raise ValueError(f'{path} holds no images: expected an array x (as sample.py '
                                 f'writes) or arr_0 (np.savez(path, images)); it holds '
                                 f'{", ".join(names) or "nothing"}')
            with zf.open(f'{key}.npy') as f:
                shape, fortran, dtype = _npy_header(f)
                offset = f.tell()
            size = zf.getinfo(f'{key}.npy').file_size
    except zipfile.BadZipFile as err:
        raise ValueError(f'{path} is not an .npz file ({err})') from None
    if dtype != np.uint8:
        raise ValueError(f'{path}: {key} has dtype {dtype}; expected uint8 images (0 to 255). '
                         f'Images in [-1, 1] convert with ((x + 1) * 127.5).round().clip(0, '
                         f'255).astype(np.uint8)')
    if len(shape) != 4 or 3 not in (shape[1], shape[3]) or 0 in shape[1:]:
        raise ValueError(f'{path}: {key} has shape {shape}; expected images [N, H, W, 3] or '
                         f'[N, 3, H, W]')
    if size != offset + int(np.prod(shape)):
        raise ValueError(f'{path}: {key} should hold {int(np.prod(shape))} bytes of images '
                         f'{shape} but holds {size - offset}: the file is damaged')
    nhwc = shape[3] == 3  # [N, 3, H, 3] reads as NHWC, the layout of sample.py and ADM
    h, w = shape[1:3] if nhwc else shape[2:]
    labels = _npz_labels(path, names, key, shape[0])
    summary = (f"npz {key} uint8 [N, {'H, W, 3' if nhwc else '3, H, W'}], {w}x{h}"
               f"{', labelled' if labels is not None else ''}")
    return Images(path, shape[0], labels, summary,
                  lambda batch_size: _npz_batches(path, key, shape, nhwc, fortran, batch_size))


def _npz_batches(path: Path, key: str, shape: tuple, nhwc: bool, fortran: bool,
                 batch_size: int) -> Iterator[np.ndarray]:
    """uint8 [B, 3, H, W] batches of an .npz's images, read from the zip a batch at a time."""
    if fortran:  # column-major (np.save of a transposed array): rows are not contiguous
        with np.load(path) as f:
            whole = f[key]
        batches = (whole[i:i + batch_size] for i in range(0, shape[0], batch_size))
        yield from (x.transpose(0, 3, 1, 2) if nhwc else x for x in batches)
        return
    row = int(np.prod(shape[1:]))
    with zipfile.ZipFile(path) as zf, zf.open(f'{key}.npy') as f:
        _npy_header(f)
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            try:
                data = bytearray(f.read(n * row))  # writable, as torch.from_numpy wants
            except zipfile.BadZipFile as err:  # a damaged member fails its CRC check
                raise ValueError(f'{path}: {key} is damaged ({err})') from None
            x = np.frombuffer(data, np.uint8).reshape(n, *shape[1:])
            yield x.transpose(0, 3, 1, 2) if nhwc else x


# ----------------------------------------------------------------------------- image folders

def _folder_files(folder: Path) -> tuple[list[str], Optional[np.ndarray]]:
    """(image paths, labels or None) of a folder: the images directly inside it, else one
    subfolder of images per class."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    files = [e.path for e in entries if e.is_file() and not e.name.startswith('.')
             and os.path.splitext(e.name)[1].lower() in image_files.IMG_EXTENSIONS]
    if files:
        return files, None
    if any(e.is_dir() and not e.name.startswith('.') for e in entries):
        samples = image_files.find_images(folder, single_class_ok=True).samples
        return [p for p, _ in samples], np.array([y for _, y in samples], np.int64)
    others = ', '.join(e.name for e in entries[:3]) or 'nothing'
    raise ValueError(f'{folder} holds no images (it holds {others}): put the image files '
                     f'(PNG, JPEG, any format PIL reads) in it, or one subfolder of them per class')


def open_folder(folder: Path) -> Images:
    """A folder's images, each opened (and verified, where PIL can) before any is scored,
    in a fixed shuffled order (see the module docstring)."""
    paths, labels = _folder_files(folder)
    order = np.random.RandomState(FOLDER_ORDER_SEED).permutation(len(paths))
    paths = [paths[i] for i in order]
    labels = None if labels is None else labels[order]
    sizes, bad = set(), []
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.add(img.size)
                img.verify()
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
            bad.append(f'{path} ({type(err).__name__}: {err})')
    if bad:
        raise ValueError(f'{len(bad)} of the {len(paths)} images in {folder} cannot be read: '
                         f'{"; ".join(bad[:5])}{"; ..." if len(bad) > 5 else ""}. Fix or '
                         f'remove them')
    shown = sorted(f'{w}x{h}' for w, h in sizes)
    summary = (f"folder of {'/'.join(shown[:3])}{'/...' if len(shown) > 3 else ''} images"
               f"{', labelled by subfolder' if labels is not None else ''}")
    return Images(folder, len(paths), labels, summary,
                  lambda batch_size: _folder_batches(paths, batch_size))


def _read_image(path: str) -> np.ndarray:
    """An image file as uint8 [3, H, W] RGB (image_files.to_rgb, as the data are read)."""
    try:
        with Image.open(path) as img:
            return np.asarray(image_files.to_rgb(img), np.uint8).transpose(2, 0, 1)
    except OSError as err:
        raise ValueError(f'cannot read the image {path}: {err}') from None


def _folder_batches(paths: list[str], batch_size: int) -> Iterator[np.ndarray]:
    """uint8 [B, 3, H, W] batches of the images in order; a change of size starts a batch."""
    batch = []
    for path in paths:
        x = _read_image(path)
        if batch and (len(batch) == batch_size or x.shape != batch[0].shape):
            yield np.stack(batch)
            batch = []
        batch.append(x)
    if batch:
        yield np.stack(batch)


def open_images(path: str) -> Images:
    """The images of an .npz file or an image folder, checked."""
    p = Path(path).expanduser()
    if p.is_dir():
        return open_folder(p)
    if p.is_file():
        return open_npz(p)
    raise FileNotFoundError(f'{p} does not exist: give an .npz file or an image folder')


# ----------------------------------------------------------------------------- reference

def open_reference(args: argparse.Namespace) -> Reference:
    """--ref's images, or --dataset's moments and (if present) real features and labels."""
    if args.ref:
        images = open_images(args.ref)
        return Reference(str(images.path), labels=images.labels, images=images)
    spec = datasets.resolve_dataset(args.dataset, args.data_root, resolution=args.resolution,
                                    single_class_ok=True)
    where = dict(resolution=spec.resolution, inception_weights=args.inception_weights or None)
    moments = inception_utils.moments_file(spec.moments_path, args.inception)
    ref = Reference(f'{spec.name} ({moments})',
                    *inception_utils.load_moments(moments, args.inception, **where))
    path = inception_utils.features_file(spec.moments_path, args.inception)
    if not path.is_file() and not args.intra_fid:  # the metrics without features still go
        ref.note = (f'no KID, precision/recall or density/coverage: {path} is absent; '
                    f'calculate_inception_moments.py writes it with the moments')
        return ref
    feats = inception_utils.load_features(path, args.inception, **where)
    ref.features = torch.from_numpy(feats)
    ref.labels = inception_utils.load_feature_labels(path, len(feats), args.inception,
                                                     required=args.intra_fid, **where)
    ref.name = f'{spec.name} ({moments}; {len(feats)} features in {path.name})'
    return ref


def check_inputs(args: argparse.Namespace, samples: Images, ref: Reference) -> None:
    """Refuse counts and labels no metric can use, before any image is scored."""
    if samples.num < args.num_splits:
        raise ValueError(f'{samples.path} holds {samples.num} images; the Inception Score '
                         f'needs at least one in each of its {args.num_splits} splits')
    k = inception_utils.DC_K
    num_ref = (len(ref.features) if ref.features is not None
               else ref.images.num if ref.images is not None else None)
    if num_ref is not None and min(num_ref, samples.num) <= k:
        raise ValueError(f'{samples.num} samples and {num_ref} reference images: the k-NN '
                         f'balls of density/coverage (k = {k}) need more than {k} of each')
    if not args.intra_fid:
        return
    if samples.labels is None:
        raise ValueError(f'--intra_fid needs the class of each sample: {samples.path} has no '
                         f'labels (an .npz with y, as sample.py writes, or a folder with one '
                         f'subfolder per class)')
    if ref.labels is None:
        raise ValueError(f'--intra_fid needs the class of each reference image: {ref.name} '
                         f'has no labels (an .npz with y, or a folder of class subfolders)')
    fake = set(np.flatnonzero(np.bincount(samples.labels) >= 2).tolist())
    real = set(np.flatnonzero(np.bincount(ref.labels) >= 2).tolist())
    if not fake & real:
        raise ValueError(f'--intra_fid: no class has 2 samples and 2 reference images (a '
                         f'covariance needs two): {len(fake)} classes of the samples and '
                         f'{len(real)} of the reference have 2 or more, none of them in common')


# ----------------------------------------------------------------------------- scoring

def inception_pass(net: torch.nn.Module, images: Images, batch_size: int, num_splits: int,
                   features: bool, desc: str) -> tuple:
    """(IS accumulator, moments accumulator[, pool features]) of the images, in one pass."""
    batches = (datasets.to_float(x) for x in images.read(batch_size))
    with tqdm(total=images.num, desc=desc, unit='img') as bar:
        return inception_utils.accumulate_inception_stats(
            net, batches, images.num, num_splits=num_splits, features=features,
            progress=bar.update)


def score(is_acc, mom_acc, feats: Optional[torch.Tensor], labels: Optional[np.ndarray],
          ref: Reference, intra_fid: bool) -> dict:
    """The metrics record: those of sample.py's (InceptionMetrics.record), and intra_FID with
    its per-class FIDs and skipped classes when asked for."""
    IS_mean, IS_std = is_acc.compute()
    FID = torch_calculate_frechet_distance(*mom_acc.compute(), ref.mu, ref.sigma)
    more = ({} if ref.features is None
            else inception_utils.compare_features(ref.features, feats))
    record = InceptionMetrics(IS_mean, IS_std, FID, **more).record()
    if intra_fid:
        mean, per_class, skipped = intra_class_fid(ref.features, ref.labels, feats, labels)
        record.update(intra_FID=mean, intra_FID_per_class={str(c): v for c, v in
                                                           per_class.items()},
                      intra_FID_skipped={str(c): why for c, why in skipped.items()})
    return record


def table(record: dict) -> str:
    """The metrics as a two-column text table."""
    rows = [('IS', f"{record['IS_mean']:.4f} +/- {record['IS_std']:.4f}"),
            ('FID', f"{record['FID']:.4f}")]
    if 'KID_mean' in record:
        rows.append(('KID', f"{record['KID_mean']:.6f} +/- {record['KID_std']:.6f}"))
    rows += [(k, f'{record[k]:.4f}') for k in ('precision', 'recall', 'density', 'coverage')
             if k in record]
    if 'intra_FID' in record:
        skipped = list(record['intra_FID_skipped'])
        rows.append(('intra-class FID', f"{record['intra_FID']:.4f} (mean of "
                     f"{len(record['intra_FID_per_class'])} classes; {len(skipped)} skipped"
                     f"{': ' + ', '.join(skipped[:10]) if skipped else ''}"
                     f"{', ...' if len(skipped) > 10 else ''})"))
    return '\n'.join(f'{name:<16} {value}' for name, value in [('metric', 'value')] + rows)


# ----------------------------------------------------------------------------- main

def prepare_parser() -> argparse.ArgumentParser:
    """The samples, the reference (--dataset or --ref), the network, and the outputs."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument('samples', help='an .npz of uint8 images (x or arr_0) or an image folder')
    ref = parser.add_mutually_exclusive_group(required=True)
    ref.add_argument('--dataset', type=str, default=None,
                     help="a dataset's moments and features: 2019 name, or folder / .hdf5 path")
    ref.add_argument('--ref', type=str, default=None,
                     help='reference images instead: an .npz (x or arr_0) or an image folder')
    parser.add_argument('--data_root', type=str, default='data',
                        help='where the 2019-named datasets (and their moments) live')
    parser.add_argument('--resolution', type=int, default=None,
                        help='image size of a folder --dataset (named ones fix it)')
    parser.add_argument('--intra_fid', action='store_true',
                        help='also intra-class FID (needs labels of samples and reference)')
    inception_utils.add_inception_args(parser)
    parser.add_argument('--batch_size', type=int, default=64, help='images per batch')
    parser.add_argument('--json', type=str, default='',
                        help='also write the metrics to this JSON file')
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Check every input, run the Inception network over the images, print and save."""
    args = prepare_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f'--batch_size {args.batch_size}: give at least 1')

    # Inputs, all checked before any work: weights file, samples, reference, output folder.
    inception_utils.resolve_inception_weights(args.inception, args.inception_weights or None)
    samples = open_images(args.samples)
    ref = open_reference(args)
    check_inputs(args, samples, ref)
    out = Path(args.json).expanduser() if args.json else None
    if out is not None and not out.parent.is_dir():
        raise FileNotFoundError(f'--json {out}: the folder {out.parent} does not exist')

    # Network:
    net = inception_utils.load_inception_net(inception=args.inception,
                                             inception_weights=args.inception_weights or None)
    print(f'{samples.path}: {samples.num} images ({samples.summary}); reference {ref.name}; '
          f'{args.inception} Inception on {next(net.parameters()).device}')

    # The reference's moments and features, when they come from images (--ref):
    if ref.images is not None:
        _, mom_acc, ref.features = inception_pass(net, ref.images, args.batch_size, 1, True,
                                                  'reference')
        ref.mu, ref.sigma = mom_acc.compute()

    # The samples, in one pass; then every metric:
    is_acc, mom_acc, *feats = inception_pass(net, samples, args.batch_size, args.num_splits,
                                             ref.features is not None, 'samples')
    record = score(is_acc, mom_acc, feats[0] if feats else None, samples.labels, ref,
                   args.intra_fid)
    print(table(record))
    if ref.note:
        print(f'({ref.note})')
    if out is not None:
        result = dict(samples=str(samples.path), num_samples=samples.num, reference=ref.name,
                      inception=args.inception, **record)
        atomic_write(str(out), lambda f: json.dump(result, f, indent=1), mode='w')
        print(f'Wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main, 'evaluate.py'))
