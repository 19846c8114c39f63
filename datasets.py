"""Datasets, transforms, samplers and loaders for BigGAN training (SPEC.md §5).

`resolve_dataset` turns a name from the one table `DATASETS` (I32..I256, their `_hdf5`
forms, C10, C100) or a path to an image folder / HDF5 file into a `DatasetSpec`;
`get_data_loaders` builds the loader train.py iterates. Every image file goes through
`load_image` (RGB, centre crop on the long edge, PIL bilinear resize, as the 2019 release's
torchvision `Resize` did), so a folder and the HDF5 file `make_hdf5.py` packs from it give
identical pixels. A folder's images are the files directly inside its class folders with an
extension PIL opens (an animated GIF gives its first frame); `find_images` lists every other
file under it with the reason it is left out. An image PIL cannot decode is named in a
warning and replaced by the next one that does, with its label (`ImageFolderDataset.item`).
`--augment` shifts by up to R/8 pixels (reflect padding) and flips left-right, on folder,
HDF5 and CIFAR data alike, drawn from (seed, position in the data stream) so that worker
counts and resuming do not change it.
`make_demo_folder` writes the built-in demo dataset (`python make_hdf5.py --make_demo
data/demo` writes and packs it).

Samplers: `MultiEpochSampler` (`--use_multiepoch_sampler`) always shuffles (with or without
`--shuffle`, as in 2019) and makes the data order a pure function of (seed, iteration), so a
resumed run sees the uninterrupted run's batches; otherwise `EpochSampler` reshuffles each
pass from (seed, epoch) if `--shuffle`, else reads in file order. Both shard global batches
across DDP ranks, and `batch_size` is always per rank.

Example:
    loader = get_data_loaders('data/demo_32.hdf5', batch_size=64, num_workers=2)[0]
    x, y = next(iter(loader))  # x: float32 [64, 3, 32, 32] in [-1, 1], y: int64 [64]
"""
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFile
from torch.utils.data import DataLoader, Dataset, Sampler


def _image_extensions() -> frozenset[str]:
    """Lower-case extensions of every format PIL decodes.

    Not PDF and PALM (PIL only writes them), nor the formats it identifies but cannot decode
    on its own: stubs (BUFR, GRIB, HDF5, WMF/EMF) and MPEG video.
    """
    Image.init()  # registers every plugin, not only the five PIL imports up front
    readable = {fmt for fmt, (factory, _) in Image.OPEN.items()
                if fmt != 'MPEG' and not (isinstance(factory, type)
                                          and issubclass(factory, ImageFile.StubImageFile))}
    readable.add('MPO')  # MPO files open through the JPEG opener
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in readable)


IMG_EXTENSIONS = _image_extensions()
RESAMPLE = Image.BILINEAR


@dataclass(frozen=True)
class DatasetSpec:
    """What the code needs to know about a dataset; `path` is resolved against data_root."""
    name: str
    kind: str  # 'folder' | 'hdf5' | 'cifar10' | 'cifar100'
    path: Path
    resolution: int
    n_classes: int
    classes_per_sheet: int
    moments_dir: Path  # where `<name>_inception_moments.npz` lives

    @property
    def moments_path(self) -> Path:
        """The FID moments file of this dataset (written by calculate_inception_moments.py).

        A folder and its packed HDF5 file hold the same images, so `I128` and `I128_hdf5`
        share `I128_inception_moments.npz`, the name the 2019 release wrote and read.
        """
        return self.moments_dir / f'{self.name.removesuffix("_hdf5")}_inception_moments.npz'


def _named(name: str, kind: str, relpath: str, resolution: int, n_classes: int,
           classes_per_sheet: int) -> DatasetSpec:
    return DatasetSpec(name, kind, Path(relpath), resolution, n_classes, classes_per_sheet,
                       Path('.'))


# The 2019 release's datasets; `path` and `moments_dir` are relative to data_root.
DATASETS = {spec.name: spec for spec in [
    *(_named(f'I{r}', 'folder', 'ImageNet', r, 1000, 50 if r <= 64 else 20)
      for r in (32, 64, 128, 256)),
    *(_named(f'I{r}_hdf5', 'hdf5', f'ILSVRC{r}.hdf5', r, 1000, 50 if r <= 64 else 20)
      for r in (32, 64, 128, 256)),
    _named('C10', 'cifar10', 'cifar', 32, 10, 10),
    _named('C100', 'cifar100', 'cifar', 32, 100, 100),
]}


# ----------------------------------------------------------------------------- images

def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white, 16-bit grey is scaled."""
    if img.mode.startswith('I'):
        # 16-bit greyscale (I;16*, or I from 16-bit PNGs): PIL's own convert clips to white.
        grey = np.clip(np.round(np.asarray(img, dtype=np.float64) / 257.0), 0, 255)
        img = Image.fromarray(grey.astype(np.uint8), 'L')
    if img.mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
        rgba = img.convert('RGBA')
        white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img if img.mode == 'RGB' else img.convert('RGB')


def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop the long edge to a square (torchvision's rounding), resize to resolution."""
    w, h = img.size
    s = min(w, h)
    left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
    img = img.crop((left, top, left + s, top + s))
    return img if s == resolution else img.resize((resolution, resolution), RESAMPLE)


def load_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """Decode an image file into uint8 [3, R, R]: the one preprocessing path for all data."""
    with Image.open(path) as img:
        img = center_crop_resize(to_rgb(img), resolution)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def to_float(img: np.ndarray) -> torch.Tensor:
    """uint8 [3, R, R] -> float32 in [-1, 1] (the 2019 ToTensor + Normalize(0.5, 0.5))."""
    return torch.from_numpy(np.ascontiguousarray(img)).float().div_(127.5).sub_(1.0)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment: shift by up to R/8 pixels (reflect padding), then flip left-right half the time."""
    r = x.shape[-1]
    p = max(1, r // 8)
    padded = F.pad(x[None], (p, p, p, p), mode='reflect')[0]
    i, j = torch.randint(0, 2 * p + 1, (2,), generator=generator).tolist()
    x = padded[:, i:i + r, j:j + r]
    return x.flip(-1) if torch.rand((), generator=generator) < 0.5 else x


def draw_generator(seed: int, draw: int) -> torch.Generator:
    """The RNG of one draw of the data stream: augmentations as a pure function of (seed, draw)."""
    state = np.random.SeedSequence([seed, draw]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# ----------------------------------------------------------------------------- folders

class SkippedFile(NamedTuple):
    """A file under an image folder that is not read as one of its images, and why."""
    path: str
    kind: str  # for counts: 'non-image', 'hidden', 'nested' (make_hdf5 adds 'unreadable')
    reason: str


def _not_an_image(entry: os.DirEntry) -> SkippedFile | None:
    """Why a file directly inside a class folder is not an image of it, or None if it is one.

    Decided by name alone (startup must not decode 1.28M files): an extension PIL opens.
    Hidden files are OS metadata (.DS_Store, macOS's ._name.jpg copies), never images.
    """
    if entry.name.startswith('.'):
        return SkippedFile(entry.path, 'hidden', "hidden file (name starts with '.')")
    if not entry.is_file():
        return SkippedFile(entry.path, 'non-image', 'not a regular file (a broken link?)')
    ext = os.path.splitext(entry.name)[1].lower()
    if ext not in IMG_EXTENSIONS:
        what = f'extension {ext}' if ext else 'no extension'
        return SkippedFile(entry.path, 'non-image', f'not an image file PIL reads ({what})')
    return None


def _is_image(entry: os.DirEntry) -> bool:
    return _not_an_image(entry) is None


def _files_below(folder: str) -> list[str]:
    """Every file in a folder and its subfolders, in sorted order."""
    found = []
    for path, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(path, f) for f in sorted(files))
    return found


def _sorted_entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _subdirs(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith('.')),
                      key=lambda e: e.name)


def find_classes(root: str | os.PathLike, single_class_ok: bool = False) -> list[str]:
    """Sorted class subfolder names of an image folder; raises on layouts that mislabel data.

    One class is an error (every label 0 is the classic mistake) unless `single_class_ok`,
    for unconditional data: one subfolder holding all the images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'image folder {root} does not exist (or is not a folder)')
    with os.scandir(root) as it:
        n_loose = sum(_is_image(e) for e in it)
    classes = [e.name for e in _subdirs(root)]
    layout = f'expected one subfolder per class: {root}/<class>/<image>'
    if n_loose:
        raise ValueError(f'{root} has {n_loose} images directly inside it; {layout}. Move them '
                         f'into class subfolders (one subfolder is not enough: see below).')
    if not classes:
        raise ValueError(f'{root} is empty: no class subfolders; {layout}.')
    if len(classes) == 1 and not (single_class_ok and not _subdirs(root / classes[0])):
        inner = root / classes[0]
        hint = (f'it looks nested one level too deep: point --dataset at {inner}'
                if _subdirs(inner) else 'a one-class folder would label every image 0 (for '
                'unconditional data that is what you want: pass --unconditional)')
        raise ValueError(f'{root} has only one class subfolder ({classes[0]!r}); {hint}. '
                         f'{layout}.')
    return classes


@dataclass(frozen=True)
class FolderImages:
    """An image folder as listed: (path, label) samples, class names, every other file."""
    samples: list[tuple[str, int]]
    classes: list[str]
    skipped: list[SkippedFile]


def find_images(root: str | os.PathLike, single_class_ok: bool = False) -> FolderImages:
    """The images of a class-per-subfolder folder in sorted order, and why the rest are not.

    The images of a class are the files directly inside its folder whose extension PIL
    opens; every other file under root is listed in `skipped` with its reason.
    """
    root = Path(root)
    classes = find_classes(root, single_class_ok)
    samples, skipped = [], _outside_classes(root)
    for label, name in enumerate(classes):
        files = _class_images(root / name, skipped)
        if not files:
            deeper = _subdirs(root / name)
            hint = (f'its images are nested one level too deep (in {root / name}/'
                    f'{deeper[0].name}/...): point --dataset at {root / name}' if deeper
                    else 'remove it or add its images')
            raise ValueError(f'class folder {root / name} has no images; {hint}.')
        samples.extend((str(root / name / f), label) for f in files)
    return FolderImages(samples, classes, skipped)


def _class_images(folder: Path, skipped: list[SkippedFile]) -> list[str]:
    """Sorted image names of one class folder; its other files go to `skipped`, with why."""
    nested = (f'in a subfolder of class folder {folder.name!r}: only files directly inside a '
              f'class folder are images of that class')
    files = []
    for entry in _sorted_entries(folder):
        if entry.is_dir():
            skipped.extend(SkippedFile(p, 'nested', nested) for p in _files_below(entry.path))
        elif (why := _not_an_image(entry)) is None:
            files.append(entry.name)
        else:
            skipped.append(why)
    return files


def _outside_classes(root: Path) -> list[SkippedFile]:
    """The files under root in no class folder: loose at the top, or in hidden folders."""
    skipped = []
    for entry in _sorted_entries(root):
        if entry.is_dir() and entry.name.startswith('.'):
            skipped.extend(SkippedFile(p, 'hidden', f'in the hidden folder {entry.name!r}, '
                                       f'which is not a class') for p in _files_below(entry.path))
        elif not entry.is_dir():  # not an image: find_classes refuses loose images
            skipped.append(_not_an_image(entry))
    return skipped


def unreadable(path: str, err: Exception) -> SkippedFile:
    """The SkippedFile of an image PIL failed to decode, with PIL's error."""
    return SkippedFile(path, 'unreadable', f'PIL failed to decode it: {type(err).__name__}: {err}')


def count_kinds(skipped: list[SkippedFile]) -> str:
    """Skipped files counted by kind, e.g. '2 non-image, 1 nested, 1 unreadable'."""
    return ', '.join(f'{n} {kind}' for kind, n in Counter(s.kind for s in skipped).items())


def _skipped_warning(root: str | os.PathLike, skipped: list[SkippedFile]) -> str:
    """One line: how many files under root are not images of a class, why, a few examples."""
    return (f'{root}: ignoring {len(skipped)} files that are not images of a class '
            f'({count_kinds(skipped)}): {_examples(root, skipped)}. Images are the files PIL '
            f'opens (by extension) directly inside a class folder; make_hdf5.py lists every '
            f'skipped file with its reason')


def _examples(root: str | os.PathLike, skipped: list[SkippedFile], limit: int = 3) -> str:
    """The first `limit` paths relative to root, e.g. 'a/x.txt, b/y.jpg and 4 more'."""
    more = f' and {len(skipped) - limit} more' if len(skipped) > limit else ''
    return ', '.join(os.path.relpath(s.path, root) for s in skipped[:limit]) + more


# ----------------------------------------------------------------------------- HDF5

@dataclass(frozen=True)
class HDF5Info:
    """Shape facts of a packed file, validated: image count, resolution, classes, labels."""
    n_images: int
    resolution: int
    n_classes: int
    labels: np.ndarray
    compression: str | None = None  # the imgs filter, e.g. 'lzf'
    chunk_images: int = 0  # images per imgs chunk (0: not chunked)
    n_classes_from: str = 'attribute'  # or 'given' (by the caller), 'labels' (largest + 1)


# Why a file has the class count it has, for the warning about classes with no images.
_CLASS_COUNT_FROM = {
    'attribute': "the class count is the file's n_classes attribute",
    'given': 'the class count is the one given for this dataset',
    'labels': 'the file has no n_classes attribute, so the class count is its largest label + 1 '
              '(one stray label inflates it); make_hdf5.py records n_classes',
}
_warned_empty: set[tuple[str, int]] = set()  # (file, class count) warned about in this process


def inspect_hdf5(path: str | os.PathLike, n_classes: int | None = None) -> HDF5Info:
    """Validate an HDF5 file's `imgs`/`labels` and read its class count (attr or max+1).

    Classes with no images are reported in a warning, once per file in a process.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'HDF5 file {path} does not exist; make it with '
                                f'`python make_hdf5.py --dataset <folder or name> ...`')
    try:
        f = h5py.File(path, 'r')
    except OSError as e:
        raise ValueError(f'{path} is not a readable HDF5 file ({e})') from e
    with f:
        for key in ('imgs', 'labels'):
            if key not in f:
                raise ValueError(f'{path} has no {key!r} dataset (it has {sorted(f.keys())}); '
                                 f'pack it with make_hdf5.py, which writes imgs and labels')
        shape, chunks = f['imgs'].shape, f['imgs'].chunks
        compression = f['imgs'].compression
        labels = f['labels'][()].astype(np.int64)
        attr = int(f.attrs.get('n_classes', 0))
    source = 'given' if n_classes else 'attribute' if attr else 'labels'
    n_classes = n_classes or attr or int(labels.max()) + 1
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise ValueError(f'{path}: imgs has shape {shape}; expected [N, 3, R, R] uint8')
    if labels.shape != (shape[0],):
        raise ValueError(f'{path}: labels has shape {labels.shape}; expected [{shape[0]}]')
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f'{path}: labels span [{labels.min()}, {labels.max()}] but must lie in '
                         f'[0, {n_classes}); the file and the class count disagree')
    _warn_empty_classes(path, labels, n_classes, source)
    return HDF5Info(shape[0], shape[2], n_classes, labels, compression,
                    chunks[0] if chunks else 0, source)


def _warn_empty_classes(path: Path, labels: np.ndarray, n_classes: int, source: str) -> None:
    """Warn once per (file, class count) in this process, on rank 0 under DDP, about the
    classes with no images."""
    empty = np.setdiff1d(np.arange(n_classes), labels)
    key = (str(path.resolve()), n_classes)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if len(empty) and key not in _warned_empty and rank0:
        _warned_empty.add(key)
        warnings.warn(f'{path}: {len(empty)} of its {n_classes} classes have no images (labels '
                      f'{_ranges(empty)}); {_CLASS_COUNT_FROM[source]}', stacklevel=3)


def _ranges(values: np.ndarray, limit: int = 10) -> str:
    """Sorted integers as ranges, e.g. [3, 4, 5, 9] -> '3-5, 9' (the first `limit` of them)."""
    runs = np.split(values, np.flatnonzero(np.diff(values) != 1) + 1)
    text = [f'{r[0]}-{r[-1]}' if len(r) > 1 else f'{r[0]}' for r in runs[:limit]]
    return ', '.join(text) + (f' and {len(runs) - limit} more ranges' if len(runs) > limit else '')


# ----------------------------------------------------------------------------- resolving

def resolve_dataset(dataset: str, data_root: str = 'data', resolution: int | None = None,
                    single_class_ok: bool = False) -> DatasetSpec:
    """A 2019 dataset name, or the path of an image folder / .hdf5 file, as a DatasetSpec.

    `single_class_ok` accepts one class (unconditional data): a folder with one class
    subfolder, or an HDF5 file with no n_classes attribute whose labels are all 0.
    """
    if dataset in DATASETS:
        spec = DATASETS[dataset]
        if resolution and resolution != spec.resolution:
            raise ValueError(f'{dataset} is {spec.resolution}x{spec.resolution} but '
                             f'--resolution {resolution} was given; drop --resolution (a '
                             f'named dataset fixes it) or pick the name of that resolution')
        root = Path(data_root)
        return DatasetSpec(spec.name, spec.kind, root / spec.path, spec.resolution,
                           spec.n_classes, spec.classes_per_sheet, root)
    path = Path(dataset).expanduser()
    if not path.exists():
        if os.sep in dataset or path.suffix:
            raise FileNotFoundError(f'dataset path {path} does not exist')
        raise ValueError(f'unknown dataset {dataset!r}: use one of {", ".join(DATASETS)}, or '
                         f'the path of an image folder (one subfolder per class) or .hdf5 file')
    path = path.resolve()
    if path.is_dir():
        if not resolution:
            raise ValueError(f'{path} is an image folder: give the training resolution with '
                             f'--resolution (e.g. 32, 64, 128)')
        from BigGAN import G_CHANNELS  # not at the top: loader workers need not load torchvision
        if resolution not in G_CHANNELS:
            raise ValueError(f'--resolution {resolution}: the models have no architecture for '
                             f'{resolution}x{resolution} images; use one of '
                             f'{", ".join(map(str, sorted(G_CHANNELS)))}')
        n_classes = len(find_classes(path, single_class_ok))
    else:
        info = inspect_hdf5(path)
        if resolution and resolution != info.resolution:
            raise ValueError(f'{path} holds {info.resolution}x{info.resolution} images but '
                             f'--resolution {resolution} was given; repack it with make_hdf5.py'
                             f' --resolution {resolution}, or drop --resolution')
        if info.n_classes_from == 'labels' and info.n_classes == 1 and not single_class_ok:
            raise ValueError(_one_class_file(path))
        resolution, n_classes = info.resolution, info.n_classes
    return DatasetSpec(path.stem, 'folder' if path.is_dir() else 'hdf5', path, resolution,
                       n_classes, min(n_classes, 50 if resolution <= 64 else 20), path.parent)


def _one_class_file(path: Path) -> str:
    """Why an HDF5 file without n_classes whose labels are all 0 is refused, and what to do."""
    return (f'{path} has no n_classes attribute and every label is 0: one class, so a '
            f'conditional run would learn nothing from its labels (the 2019 make_hdf5.py wrote '
            f'such files from a folder with one class subfolder, or nested a level too deep). '
            f'For unconditional training pass --unconditional. Repack the image folder with '
            f'make_hdf5.py, which checks its classes and records n_classes (1 with '
            f'--unconditional: a file that says so is accepted by every script)')


# ----------------------------------------------------------------------------- datasets

class ImageDataset(Dataset):
    """Base: subclasses give uint8 [3, R, R] images; yields (float image in [-1, 1], label)."""

    def __init__(self, labels: np.ndarray, augment: bool = False):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augment = augment
        self.augment_seed = 0  # get_data_loaders sets the run's seed

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        """The uint8 [3, R, R] image at index."""
        raise NotImplementedError

    def item(self, index: int) -> tuple[np.ndarray, int]:
        """The uint8 [3, R, R] image at index and its label."""
        return self.image(index), int(self.labels[index])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Image and label at `key`: an index, or (index, draw) from a sampler with draws=True,
        whose augmentation then depends only on (augment_seed, draw), not on which loader
        worker reads it or whether the run was resumed."""
        index, draw = key if isinstance(key, tuple) else (key, None)
        img, label = self.item(index)
        x = to_float(img)
        if self.augment:
            gen = None if draw is None else draw_generator(self.augment_seed, draw)
            x = random_crop_flip(x, gen)
        return x, label


class ArrayDataset(ImageDataset):
    """Images held in memory as a uint8 [N, 3, R, R] array (CIFAR, or load_in_mem)."""

    def __init__(self, imgs: np.ndarray, labels: np.ndarray, augment: bool = False):
        super().__init__(labels, augment)
        self.imgs = imgs

    def image(self, index: int) -> np.ndarray:
        return self.imgs[index]


class ImageFolderDataset(ImageDataset):
    """A class-per-subfolder image folder, decoded on the fly (or all at once: load_in_mem).

    Files that are not images of a class (see find_images) are left out with a warning,
    unless `warn` is off (on ranks other than 0). Images PIL cannot decode are replaced (see
    `item`) or, with load_in_mem, dropped at load time and added to `skipped`.
    """

    def __init__(self, root: str | os.PathLike, resolution: int, augment: bool = False,
                 load_in_mem: bool = False, single_class_ok: bool = False, warn: bool = True):
        listing = find_images(root, single_class_ok)
        super().__init__([label for _, label in listing.samples], augment)
        self.classes, self.skipped = listing.classes, listing.skipped
        if self.skipped and warn:
            warnings.warn(_skipped_warning(root, self.skipped), stacklevel=2)
        self.root, self.paths = Path(root), [p for p, _ in listing.samples]
        self.resolution = resolution
        self.imgs = self._load_all(warn) if load_in_mem else None
        self._unreadable: set[int] = set()  # indices this process failed to decode (warned)

    def _load_all(self, warn: bool) -> np.ndarray:
        """Decode every image (load_in_mem), dropping unreadable ones with one warning."""
        imgs, keep, bad = [], [], []
        for i, path in enumerate(self.paths):
            try:
                imgs.append(load_image(path, self.resolution))
                keep.append(i)
            except Exception as e:  # as make_hdf5.py: any decoder failure skips one image
                bad.append(unreadable(path, e))
        if not imgs:
            raise ValueError(_none_readable(self.root, len(self.paths), bad[0].reason))
        if bad and warn:
            warnings.warn(f'{self.root}: leaving out {len(bad)} images PIL cannot decode: '
                          f'{_examples(self.root, bad, 10)}. make_hdf5.py lists each with its '
                          f'error', stacklevel=3)
        self.paths, self.labels = [self.paths[i] for i in keep], self.labels[keep]
        self.skipped.extend(bad)
        return np.stack(imgs)

    def image(self, index: int) -> np.ndarray:
        return self.item(index)[0]

    def item(self, index: int) -> tuple[np.ndarray, int]:
        """Image and label at index; an image PIL cannot decode is replaced by the next that
        decodes (index + 1, + 2, ... mod N), with that image's label: a function of index
        alone, so worker counts and resuming give the same substitute. Each unreadable file
        is named in a warning once per process (loader worker) that meets it."""
        if self.imgs is not None:
            return self.imgs[index], int(self.labels[index])
        n, error = len(self.paths), ''
        for i in (k % n for k in range(index, index + n)):
            if i in self._unreadable:
                continue
            try:
                return load_image(self.paths[i], self.resolution), int(self.labels[i])
            except Exception as e:  # one corrupt file must not end a run hours in
                self._unreadable.add(i)
                error = unreadable(self.paths[i], e).reason
                warnings.warn(f'{self.paths[i]}: {error}; training uses the next image of the '
                              f'folder that decodes (with its label) in its place. make_hdf5.py '
                              f'lists every unreadable file of a folder', stacklevel=2)
        raise ValueError(_none_readable(self.root, n, error))


def _none_readable(root: Path, n: int, error: str) -> str:
    example = f' (e.g. {error})' if error else ''
    return (f'none of the {n} images under {root} can be decoded{example}; run make_hdf5.py '
            f'on the folder to list each with its error')


class HDF5Dataset(ImageDataset):
    """A file written by make_hdf5.py; each process (loader worker) opens its own handle."""

    def __init__(self, path: str | os.PathLike, n_classes: int | None = None,
                 augment: bool = False, load_in_mem: bool = False):
        info = inspect_hdf5(path, n_classes)
        super().__init__(info.labels, augment)
        self.path, self.resolution = Path(path), info.resolution
        self.imgs = None
        if load_in_mem:
            with h5py.File(self.path, 'r') as f:
                self.imgs = f['imgs'][()]
        self.chunk_images, self.compression = info.chunk_images, info.compression
        self._imgs, self._pid = None, None  # h5py dataset of this process's own handle

    def image(self, index: int) -> np.ndarray:
        if self.imgs is not None:
            return self.imgs[index]
        # An h5py handle must not cross a fork: reopen in every new process.
        if self._pid != os.getpid():
            self._imgs, self._pid = self._open_images(), os.getpid()
        return self._imgs[index]

    def _open_images(self) -> h5py.Dataset:
        """`imgs` opened for single-image reads in shuffled order.

        HDF5 caches whole chunks (500 images by default). An uncompressed chunk that fits the
        cache (HDF5 2.0's 8 MiB holds a 64x64 one) is read whole for every random image and
        evicted by the next: 60x slower than reading the one image directly, which a cache of
        size 0 makes HDF5 do. A compressed chunk must be decompressed whole anyway: there the
        default cache at least serves sequential (unshuffled) reads.
        """
        cache = {} if self.compression else {'rdcc_nbytes': 0}
        return h5py.File(self.path, 'r', **cache)['imgs']

    def __getstate__(self) -> dict:
        return {**self.__dict__, '_imgs': None, '_pid': None}


def _cifar(spec: DatasetSpec, augment: bool) -> ArrayDataset:
    """CIFAR train split via torchvision (downloads when online), as an in-memory array."""
    from torchvision.datasets import CIFAR10, CIFAR100
    cls, folder = ((CIFAR10, 'cifar-10-batches-py') if spec.kind == 'cifar10'
                   else (CIFAR100, 'cifar-100-python'))
    try:
        data = cls(str(spec.path), train=True, download=False)
    except RuntimeError:
        try:
            data = cls(str(spec.path), train=True, download=True)
        except Exception as e:
            raise FileNotFoundError(
                f'{spec.name}: no CIFAR data in {spec.path} and the download failed ({e}). '
                f'Put the extracted {folder}/ folder (from {cls.url}) in {spec.path}') from e
    return ArrayDataset(data.data.transpose(0, 3, 1, 2), np.asarray(data.targets), augment)


def build_dataset(spec: DatasetSpec, augment: bool = False, load_in_mem: bool = False,
                  warn: bool = True) -> ImageDataset:
    """The Dataset of a resolved spec, checked against the spec's class count.

    `warn`: warn about the files of an image folder that are not images of a class.
    """
    if spec.kind in ('cifar10', 'cifar100'):
        return _cifar(spec, augment)
    if spec.kind == 'hdf5':
        dataset = HDF5Dataset(spec.path, spec.n_classes, augment, load_in_mem)
        if dataset.resolution != spec.resolution:
            raise ValueError(f'{spec.path} holds {dataset.resolution}x{dataset.resolution} '
                             f'images but {spec.name} is {spec.resolution}x{spec.resolution}; '
                             f'repack it with make_hdf5.py')
        return dataset
    dataset = ImageFolderDataset(spec.path, spec.resolution, augment, load_in_mem,
                                 single_class_ok=spec.n_classes == 1, warn=warn)
    if len(dataset.classes) != spec.n_classes:
        raise ValueError(f'{spec.path} has {len(dataset.classes)} class folders but {spec.name} '
                         f'expects {spec.n_classes}; to train on this folder as it is, pass its '
                         f'path as --dataset with --resolution')
    return dataset


# ----------------------------------------------------------------------------- samplers

def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The data order of one epoch: a pure function of (seed, epoch)."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class MultiEpochSampler(Sampler[int]):
    """Indices for num_epochs epochs of per-epoch permutations, from iteration start_itr.

    It always shuffles, as the 2019 `--use_multiepoch_sampler` did whatever `--shuffle` said:
    epoch k is epoch_order(seed, k), the order EpochSampler gives epoch k when shuffling.
    The epochs form one stream cut into global batches of batch_size * world_size (batches
    run across epoch ends, so none is short); rank r takes slice r of each global batch.
    With `minibatches` > 1 (D steps x accumulations) each global batch is that many global
    minibatches and rank r takes slice r of each, so N ranks see exactly the minibatches one
    process with the N-times batch sees. Only the current epoch's permutation is held.
    With `draws` it yields (index, position in the stream) pairs (see ImageDataset).
    """

    def __init__(self, num_samples: int, num_epochs: int, batch_size: int, start_itr: int = 0,
                 seed: int = 0, rank: int = 0, world_size: int = 1, minibatches: int = 1,
                 draws: bool = False):
        _check_minibatches(batch_size, minibatches)
        self.num_samples, self.num_epochs, self.batch_size = num_samples, num_epochs, batch_size
        self.start_itr, self.seed = start_itr, seed
        self.rank, self.world_size, self.minibatches = rank, world_size, minibatches
        self.draws = draws
        self.num_itrs = num_samples * num_epochs // (batch_size * world_size)

    def __len__(self) -> int:
        return max(0, self.num_itrs - self.start_itr) * self.batch_size

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        slice_len = self.batch_size // self.minibatches  # one rank's part of a minibatch
        epoch, order = -1, None
        for itr in range(self.start_itr, self.num_itrs):
            for m in range(self.minibatches):
                start = ((itr * self.minibatches + m) * self.world_size + self.rank) * slice_len
                for pos in range(start, start + slice_len):
                    pos_epoch, offset = divmod(pos, self.num_samples)
                    if pos_epoch != epoch:
                        epoch = pos_epoch
                        order = epoch_order(self.num_samples, self.seed, epoch)
                    yield (int(order[offset]), pos) if self.draws else int(order[offset])


def _check_minibatches(batch_size: int, minibatches: int) -> None:
    if minibatches < 1 or batch_size % minibatches:
        raise ValueError(f'a batch of {batch_size} cannot be cut into {minibatches} equal '
                         f'minibatches')


class EpochSampler(Sampler[int]):
    """One epoch per pass, epoch k in the order epoch_order(seed, k); advances each pass.

    With world_size > 1 every rank takes its slice of each full global batch (the short
    global batch at the end is dropped so all ranks step together), or with `minibatches`
    > 1 its slice of each global minibatch, as MultiEpochSampler does. `set_epoch(k, b)`
    resumes at batch b of epoch k. With `draws` it yields (index, draw) pairs, the draw
    numbering epoch k's positions k * num_samples + i (see ImageDataset).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, minibatches: int = 1,
                 draws: bool = False):
        _check_minibatches(batch_size, minibatches)
        self.num_samples, self.batch_size, self.seed, self.shuffle = (num_samples, batch_size,
                                                                      seed, shuffle)
        self.rank, self.world_size, self.epoch, self.start_batch = rank, world_size, 0, 0
        self.minibatches, self.draws = minibatches, draws

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next pass be epoch `epoch`, from its batch `start_batch` (for resuming)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _epoch_length(self) -> int:
        if self.world_size == 1:
            return self.num_samples
        return self.num_samples // (self.batch_size * self.world_size) * self.batch_size

    def __len__(self) -> int:
        return max(self._epoch_length() - self.start_batch * self.batch_size, 0)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.start_batch * self.batch_size
        self.epoch, self.start_batch = self.epoch + 1, 0
        positions = np.arange(self.num_samples)
        if self.world_size > 1:
            n = self._epoch_length()
            slices = positions[:n * self.world_size].reshape(
                -1, self.minibatches, self.world_size, self.batch_size // self.minibatches)
            positions = slices[:, :, self.rank].reshape(-1)
        positions = positions[skip:]
        indices = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)[positions]
        if self.draws:
            yield from zip(indices.tolist(), (epoch * self.num_samples + positions).tolist())
        else:
            yield from indices.tolist()


# ----------------------------------------------------------------------------- loaders

def get_data_loaders(dataset: str, data_root: str = 'data', resolution: int | None = None,
                     augment: bool = False, batch_size: int = 64, num_workers: int = 8,
                     shuffle: bool = True, load_in_mem: bool = False, pin_memory: bool = True,
                     drop_last: bool = True, start_itr: int = 0, num_epochs: int = 500,
                     use_multiepoch_sampler: bool = False, seed: int = 0, rank: int = 0,
                     world_size: int = 1, unconditional: bool = False, minibatches: int = 1,
                     **kwargs) -> list[DataLoader]:
    """[DataLoader] of (x float32 [B,3,R,R] in [-1,1], y int64 [B]); B is the per-rank batch.

    `shuffle` applies without `use_multiepoch_sampler` only: that sampler always shuffles.
    `minibatches`: how many minibatches train.py cuts each batch into (D steps x
    accumulations); under DDP each rank's batch holds its slice of every global minibatch.
    Other run-config keys in kwargs are ignored (train.py passes its whole config).
    """
    spec = resolve_dataset(dataset, data_root, resolution, single_class_ok=unconditional)
    data = build_dataset(spec, augment=augment, load_in_mem=load_in_mem, warn=rank == 0)
    slow_reads = isinstance(data, HDF5Dataset) and data.compression and data.imgs is None
    if (shuffle or use_multiepoch_sampler) and slow_reads and rank == 0:
        warnings.warn(
            f'{spec.path} is {data.compression}-compressed and --load_in_mem is off: every '
            f'shuffled image read decompresses a whole chunk of {data.chunk_images} images '
            f'(chunks of 500 on a 2-core CPU: 48 img/s per loader worker at 64x64, 8 img/s at '
            f'128x128), which starves training of data. Pass --load_in_mem, or repack '
            f'without --compression.', stacklevel=2)
    if use_multiepoch_sampler:
        sampler = MultiEpochSampler(len(data), num_epochs, batch_size, start_itr, seed, rank,
                                    world_size, minibatches, draws=augment)
    else:
        sampler = EpochSampler(len(data), batch_size, seed, rank, world_size, shuffle,
                               minibatches, draws=augment)
    # Augmentations are drawn per stream position, from the run's seed: the same crops and
    # flips whatever the worker count, on every rank count, and after a resume.
    data.augment_seed = seed
    generator = torch.Generator().manual_seed(seed * 1000 + rank)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=pin_memory and torch.cuda.is_available(),
                        drop_last=drop_last, generator=generator)
    return [loader]


# ----------------------------------------------------------------------------- demo data

DEMO_SHAPES = ('circle', 'square', 'triangle', 'cross', 'ring')
DEMO_COLOURS = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (50, 80, 230),
                'yellow': (240, 210, 30)}


def demo_classes() -> list[tuple[str, str]]:
    """The demo's (shape, colour) classes, ordered so any prefix mixes shapes and colours."""
    colours = list(DEMO_COLOURS)
    return [(shape, colours[(s + d) % len(colours)])
            for d in range(len(colours)) for s, shape in enumerate(DEMO_SHAPES)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                angle: float, fill: tuple[int, int, int]) -> None:
    """Draw one shape of radius r centred at (cx, cy), rotated by angle (radians)."""
    def polygon(points: list[tuple[float, float]]) -> None:
        c, s = np.cos(angle), np.sin(angle)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in points], fill=fill)

    if shape == 'circle':
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == 'ring':
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, int(r * 0.4)))
    elif shape == 'square':
        polygon([(-r, -r), (r, -r), (r, r), (-r, r)])
    elif shape == 'triangle':
        polygon([(r * np.cos(a), r * np.sin(a)) for a in np.pi * (np.array([-0.5, 1 / 6, 5 / 6]))])
    else:  # cross: two bars
        w = r * 0.35
        polygon([(-r, -w), (r, -w), (r, w), (-r, w)])
        polygon([(-w, -r), (w, -r), (w, r), (-w, r)])


def demo_image(shape: str, colour: str, resolution: int, rng: np.random.Generator) -> Image.Image:
    """One demo image: a jittered shape on a two-tone gradient background (4x supersampled)."""
    size = resolution * 4
    top, bottom = rng.integers(0, 256, 3) // 3 + 40, rng.integers(0, 256, 3) // 3 + 40
    ramp = np.linspace(0, 1, size)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1).astype(np.uint8)
    img = Image.fromarray(bg, 'RGB')
    r = size * rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(v) for v in np.clip(np.array(DEMO_COLOURS[colour]) + rng.integers(-25, 26, 3),
                                         0, 255))
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, rng.uniform(0, 2 * np.pi), fill)
    return img.resize((resolution, resolution), Image.LANCZOS)


def make_demo_folder(root: str | os.PathLike, resolution: int = 32, images_per_class: int = 500,
                     n_classes: int = 10, seed: int = 0) -> Path:
    """Write the demo dataset, root/<NN_colour_shape>/<i>.png, from a seed; returns root."""
    classes = demo_classes()
    if not 2 <= n_classes <= len(classes):
        raise ValueError(f'the demo has 2 to {len(classes)} classes; got n_classes={n_classes}')
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f'{root} exists and is not empty; remove it or pick another path')
    rng = np.random.default_rng(seed)
    for label, (shape, colour) in enumerate(classes[:n_classes]):
        folder = root / f'{label:02d}_{colour}_{shape}'
        folder.mkdir(parents=True)
        for i in range(images_per_class):
            demo_image(shape, colour, resolution, rng).save(folder / f'{i:05d}.png')
    return root
