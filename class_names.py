"""Class names: where a run's come from, and reading the classes a user asks for.

A dataset's names, in label order:
- ImageNet (I32..I256, their _hdf5 forms, and the converted TF-Hub / Hugging Face
  generators, which are ImageNet's): the 1000 standard category names, as torchvision ships
  them (`imagenet_class_names()[207]` is 'golden retriever'); no download.
- An image folder: its class folder names (sorted, as the labels are).
- CIFAR-10 / CIFAR-100 (C10, C100): the names of the datasets' own meta files, in label
  order (CIFAR-100's fine labels, which are alphabetical); no download.
- An HDF5 file: the folder names make_hdf5.py recorded in it (attribute `classes`).
Files packed before make_hdf5.py recorded them (2019's) have none. train.py saves
the names in the run config (`class_names`); sample.py takes them from there, else from the
run's dataset. Without names, classes are asked for by index.

    >>> class_indices(['golden retriever', 980], imagenet_class_names(), 1000)
    [207, 980]
"""
from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Sequence
from typing import Optional, Union

import datasets
from image_files import find_classes, hdf5_class_names

ClassRef = Union[int, str]  # a class index, or a name (or index) as typed

# `label_names` of CIFAR-10's batches.meta and `fine_label_names` of CIFAR-100's meta, which
# torchvision's CIFAR datasets read (as .classes) once the data is downloaded.
CIFAR_CLASS_NAMES = {
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                'truck'),
    'cifar100': (
        'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle',
        'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle',
        'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch',
        'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest',
        'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower',
        'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain',
        'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear',
        'pickup_truck', 'pine_tree', 'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit',
        'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk',
        'skyscraper', 'snail', 'snake', 'spider', 'squirrel', 'streetcar', 'sunflower',
        'sweet_pepper', 'table', 'tank', 'telephone', 'television', 'tiger', 'tractor', 'train',
        'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman',
        'worm'),
}


class ClassError(ValueError):
    """A class that is not in the run (index out of range, unknown name), saying why."""


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet category names in label order (torchvision's, shipped with it)."""
    from torchvision.models import ResNet50_Weights
    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta['categories'])


def dataset_class_names(dataset: str, spec: datasets.DatasetSpec) -> Optional[list[str]]:
    """The class names of a resolved dataset (`dataset` as given to --dataset), or None."""
    if spec.kind in CIFAR_CLASS_NAMES:
        return list(CIFAR_CLASS_NAMES[spec.kind])
    if dataset in datasets.DATASETS:  # the 2019 table's ImageNet forms
        return list(imagenet_class_names()) if spec.n_classes == 1000 else None
    if spec.kind == 'folder':
        return find_classes(spec.path, single_class_ok=spec.n_classes == 1)
    if spec.kind == 'hdf5':
        return hdf5_class_names(spec.path)
    return None


def run_class_names(names: Optional[Sequence[str]], n_classes: int) -> Optional[list[str]]:
    """`names` as a run config keeps them: one per class, else None (names unavailable)."""
    if names is None or len(names) != n_classes or n_classes < 2:
        return None
    return [str(name) for name in names]


def label(index: int, names: Optional[Sequence[str]]) -> str:
    """How a class is shown (sheet rows, file names): '207 golden retriever', or '207'."""
    return f'{index} {names[index]}' if names else str(index)


def file_label(index: int, names: Optional[Sequence[str]]) -> str:
    """A class in a file name: 'class207_golden_retriever', or 'class207' without names."""
    if not names:
        return f'class{index}'
    slug = re.sub(r'[^0-9A-Za-z]+', '_', names[index]).strip('_')[:40]
    return f'class{index}_{slug}' if slug else f'class{index}'


def class_indices(classes: Union[ClassRef, Sequence[ClassRef]], names: Optional[Sequence[str]],
                  n_classes: int) -> list[int]:
    """The class index of each of `classes` (indices, or names of `names`), in order.

    A string of digits is an index. A name matches exactly, else ignoring case when only one
    name does. Raises ClassError for an index out of range or a name not in `names` (naming
    the closest ones), or for any name when the names are unknown (None).
    """
    if isinstance(classes, (int, str)):
        classes = [classes]
    return [class_index(c, names, n_classes) for c in classes]


def class_index(ref: ClassRef, names: Optional[Sequence[str]], n_classes: int) -> int:
    """The index of one class, given by index or name (see class_indices)."""
    if isinstance(ref, str) and ref.strip().isdigit():
        ref = int(ref.strip())
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise ClassError(f'class {ref!r}: give a class index (int) or a class name (str)')
    if isinstance(ref, int):
        if not 0 <= ref < n_classes:
            raise ClassError(f'class index {ref} is out of range: this run has {n_classes} '
                             f'classes, 0 to {n_classes - 1}')
        return ref
    name = ref.strip()
    if not names:
        raise ClassError(
            f'class {name!r}: this run has no class names (its config records none, as runs '
            f'trained before train.py recorded them, and its dataset gives none: an HDF5 file '
            f'packed before make_hdf5.py stored them, or data not found here). Give '
            f'class indices, 0 to {n_classes - 1}, instead')
    if name in names:
        return list(names).index(name)
    folded = [i for i, n in enumerate(names) if n.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise ClassError(unknown_name_message(name, names))


def unknown_name_message(name: str, names: Sequence[str], n: int = 5) -> str:
    """Why `name` is not a class, with the closest of `names` (difflib, ignoring case)."""
    lower = [x.casefold() for x in names]
    close = difflib.get_close_matches(name.casefold(), lower, n=n, cutoff=0.6)
    if not close:  # a word of a longer name ('retriever'), or a looser match
        close = [x for x in lower if name.casefold() in x][:n] or difflib.get_close_matches(
            name.casefold(), lower, n=n, cutoff=0.4)
    seen, hits = set(), []
    for text in close:  # every name that folds to a close one ('Cardigan', 'cardigan')
        for i, x in enumerate(lower):
            if x == text and i not in seen:
                seen.add(i)
                hits.append(f'{names[i]!r} ({i})')
    where = f"closest: {', '.join(hits)}" if hits else (
        f"none is close; the first are {', '.join(repr(x) for x in names[:5])}")
    ambiguous = ' (it matches several names when case is ignored: give the exact one)' if sum(
        x == name.casefold() for x in lower) > 1 else ''
    return f'class {name!r} is not one of this run\'s {len(names)} class names{ambiguous}; {where}'
