"""Image files and the folders and HDF5 files that hold them: reading, listing, checking.

Every image goes through `load_image` (RGB, then by default a centre crop on the long edge
and a PIL bilinear resize, as the 2019 release's torchvision `Resize` did; the other
transforms are in image_transforms.py), so a folder and the HDF5 file `make_hdf5.py` packs
from it give identical pixels. A folder's images are the files directly inside its class
folders with an extension PIL opens (an animated GIF gives its first frame); `find_images`
lists every other file under it as a `SkippedFile` with the reason it is left out.
`find_classes` and `inspect_hdf5` refuse the layouts that would silently mislabel data (loose
images, one class, a folder nested a level too deep, labels outside the class count).

Example:
    listing = find_images('data/demo')  # listing.samples: [(path, label)], sorted
    img = load_image(listing.samples[0][0], 32)  # uint8 [3, 32, 32]
"""
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch.distributed as dist
from PIL import Image, ImageFile

from image_transforms import CENTER_CROP, ImageTransform


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


def load_image(path: str | os.PathLike, resolution: int,
               transform: ImageTransform = CENTER_CROP) -> np.ndarray:
    """Decode an image file into uint8 [3, R, R]: the one preprocessing path for all data
    (`transform`: centre crop by default, see image_transforms.py)."""
    with Image.open(path) as img:
        img = transform(to_rgb(img), resolution)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


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
    """Whether a directory entry is an image a class folder would read."""
    return _not_an_image(entry) is None


def _files_below(folder: str) -> list[str]:
    """Every file in a folder and its subfolders, in sorted order."""
    found = []
    for path, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(path, f) for f in sorted(files))
    return found


def _sorted_entries(folder: str | os.PathLike) -> list[os.DirEntry]:
    """The entries of a folder, sorted by name."""
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _subdirs(path: Path) -> list[os.DirEntry]:
    """The non-hidden subfolders of a folder, sorted by name."""
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


def skipped_warning(root: str | os.PathLike, skipped: list[SkippedFile]) -> str:
    """One line: how many files under root are not images of a class, why, a few examples."""
    return (f'{root}: ignoring {len(skipped)} files that are not images of a class '
            f'({count_kinds(skipped)}): {example_paths(root, skipped)}. Images are the files PIL '
            f'opens (by extension) directly inside a class folder; make_hdf5.py lists every '
            f'skipped file with its reason')


def example_paths(root: str | os.PathLike, skipped: list[SkippedFile], limit: int = 3) -> str:
    """The first `limit` paths relative to root, e.g. 'a/x.txt, b/y.jpg and 4 more'."""
    more = f' and {len(skipped) - limit} more' if len(skipped) > limit else ''
    return ', '.join(os.path.relpath(s.path, root) for s in skipped[:limit]) + more


# ----------------------------------------------------------------------------- HDF5

@dataclass(frozen=True, kw_only=True)
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
    return HDF5Info(n_images=shape[0], resolution=shape[2], n_classes=n_classes, labels=labels,
                    compression=compression, chunk_images=chunks[0] if chunks else 0,
                    n_classes_from=source)


def hdf5_class_names(path: str | os.PathLike) -> list[str] | None:
    """The class names make_hdf5.py recorded in a file (attribute `classes`, in label order),
    or None for a file without them (packed by 2019's make_hdf5.py or another tool)."""
    with h5py.File(path, 'r') as f:
        names = f.attrs.get('classes')
    if names is None or np.ndim(names) != 1:
        return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


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


def one_class_hdf5_message(path: Path) -> str:
    """Why an HDF5 file without n_classes whose labels are all 0 is refused, and what to do."""
    return (f'{path} has no n_classes attribute and every label is 0: one class, so a '
            f'conditional run would learn nothing from its labels (the 2019 make_hdf5.py wrote '
            f'such files from a folder with one class subfolder, or nested a level too deep). '
            f'For unconditional training pass --unconditional. Repack the image folder with '
            f'make_hdf5.py, which checks its classes and records n_classes (1 with '
            f'--unconditional: a file that says so is accepted by every script)')
