"""Datasets, transforms and loaders for BigGAN training (the samplers are in samplers.py).

`resolve_dataset` turns a name from the one table `DATASETS` (I32..I256, their `_hdf5`
forms, C10, C100) or the path of an image folder / HDF5 file into a `DatasetSpec`;
`build_dataset` makes its Dataset and `get_data_loaders` the loader train.py iterates.
Image files are read, and folders and HDF5 files checked, by image_files.py. `--augment`
shifts by up to R/8 pixels (reflect padding) and flips left-right, on folder, HDF5 and CIFAR
data alike. Augmentations and the data order are pure functions of the seed and the position
in the data stream, so worker counts and resuming change neither. The samplers shard global
batches across DDP ranks, and `batch_size` is always per rank.

Example:
    loader = get_data_loaders('data/demo_32.hdf5', batch_size=64, num_workers=2)[0]
    x, y = next(iter(loader))  # x: float32 [64, 3, 32, 32] in [-1, 1], y: int64 [64]
"""
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from image_files import (
    example_paths,
    find_classes,
    find_images,
    inspect_hdf5,
    load_image,
    one_class_hdf5_message,
    skipped_warning,
    unreadable,
)
from image_transforms import CENTER_CROP, ImageTransform
from node_memory import NodeArray, load_hdf5
from samplers import EpochSampler, MultiEpochSampler, epoch_order  # noqa: F401 (datasets.X)


@dataclass(frozen=True, kw_only=True)
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
    """One row of the table below, its fields in DatasetSpec's order."""
    return DatasetSpec(name=name, kind=kind, path=Path(relpath), resolution=resolution,
                       n_classes=n_classes, classes_per_sheet=classes_per_sheet,
                       moments_dir=Path('.'))


# The 2019 release's datasets; `path` and `moments_dir` are relative to data_root.
DATASETS = {spec.name: spec for spec in [
    *(_named(f'I{r}', 'folder', 'ImageNet', r, 1000, 50 if r <= 64 else 20)
      for r in (32, 64, 128, 256)),
    *(_named(f'I{r}_hdf5', 'hdf5', f'ILSVRC{r}.hdf5', r, 1000, 50 if r <= 64 else 20)
      for r in (32, 64, 128, 256)),
    _named('C10', 'cifar10', 'cifar', 32, 10, 10),
    _named('C100', 'cifar100', 'cifar', 32, 100, 100),
]}


# ----------------------------------------------------------------------------- transforms

def to_float(img: np.ndarray) -> torch.Tensor:
    """uint8 [3, R, R] -> float32 in [-1, 1] (the 2019 ToTensor + Normalize(0.5, 0.5))."""
    return torch.from_numpy(np.ascontiguousarray(img)).float().div_(127.5).sub_(1.0)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment: shift by up to R/8 pixels (reflect padding), then flip left-right half the time."""
    r = x.shape[-1]
    p = max(1, r // 8)
    padded = F.pad(x[None], (p, p, p, p), mode='reflect')[0]
    i, j = torch.randint(0, 2 * p + 1, (2,), generator=generator).tolist()
    return random_flip(padded[:, i:i + r, j:j + r], generator)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """--mirror_augment: flip left-right half the time."""
    return x.flip(-1) if torch.rand((), generator=generator) < 0.5 else x


def draw_generator(seed: int, draw: int) -> torch.Generator:
    """The RNG of one draw of the data stream: augmentations as a pure function of (seed, draw)."""
    state = np.random.SeedSequence([seed, draw]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# ----------------------------------------------------------------------------- resolving

def resolve_dataset(dataset: str, data_root: str = 'data', *, resolution: int | None = None,
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
        return replace(spec, path=Path(data_root) / spec.path, moments_dir=Path(data_root))
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
            raise ValueError(one_class_hdf5_message(path))
        resolution, n_classes = info.resolution, info.n_classes
    return DatasetSpec(name=path.stem, kind='folder' if path.is_dir() else 'hdf5', path=path,
                       resolution=resolution, n_classes=n_classes,
                       classes_per_sheet=min(n_classes, 50 if resolution <= 64 else 20),
                       moments_dir=path.parent)


# ----------------------------------------------------------------------------- datasets

class ImageDataset(Dataset):
    """Base: subclasses give uint8 [3, R, R] images; yields (float image in [-1, 1], label)."""

    def __init__(self, labels: np.ndarray, augment: bool = False):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augment = augment
        self.mirror = False  # --mirror_augment: flips only (get_data_loaders sets it)
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
        if self.augment or self.mirror:
            gen = None if draw is None else draw_generator(self.augment_seed, draw)
            x = random_crop_flip(x, gen) if self.augment else random_flip(x, gen)
        return x, label


class SubsetDataset(Dataset):
    """A fixed subset of a dataset (--num_samples), indexed 0..N-1; draws pass through."""

    def __init__(self, data: ImageDataset, indices: np.ndarray):
        self.data, self.indices = data, np.asarray(indices, dtype=np.int64)
        self.labels = data.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, draw = key if isinstance(key, tuple) else (key, None)
        i = int(self.indices[index])
        return self.data[i if draw is None else (i, draw)]


def choose_subset(num_images: int, num_samples: int, seed: int,
                  recorded: np.ndarray | None = None) -> np.ndarray:
    """The sorted indices of --num_samples images, drawn with --seed (numpy's legacy
    RandomState, whose streams never change), or the ones a run recorded (checked)."""
    if num_samples > num_images:
        raise ValueError(f'--num_samples {num_samples}, but the dataset has {num_images} '
                         f'images: give at most {num_images} (or 0 for all)')
    if recorded is not None:
        recorded = np.asarray(recorded, dtype=np.int64)
        if len(recorded) != num_samples or (len(recorded) and recorded.max() >= num_images):
            raise ValueError(f'the run trained on a subset of {len(recorded)} images (largest '
                             f'index {recorded.max() if len(recorded) else None}) that does '
                             f'not fit --num_samples {num_samples} of this dataset\'s '
                             f'{num_images} images: resume it on the data it was started on')
        return recorded
    rng = np.random.RandomState(seed)
    return np.sort(rng.choice(num_images, num_samples, replace=False))


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
    `item`) or, with load_in_mem, dropped at load time and added to `skipped`. `transform`
    makes each image square (image_transforms.py; as make_hdf5.py --transform).
    """

    def __init__(self, root: str | os.PathLike, resolution: int, *, augment: bool = False,
                 load_in_mem: bool = False, single_class_ok: bool = False, warn: bool = True,
                 transform: ImageTransform = CENTER_CROP):
        listing = find_images(root, single_class_ok)
        super().__init__([label for _, label in listing.samples], augment)
        self.classes, self.skipped = listing.classes, listing.skipped
        if self.skipped and warn:
            warnings.warn(skipped_warning(root, self.skipped), stacklevel=2)
        self.root, self.paths = Path(root), [p for p, _ in listing.samples]
        self.resolution, self.transform = resolution, transform
        self.imgs = self._load_all(warn) if load_in_mem else None
        self._unreadable: set[int] = set()  # indices this process failed to decode (warned)

    def _load_all(self, warn: bool) -> np.ndarray:
        """Decode every image (load_in_mem), dropping unreadable ones with one warning."""
        imgs, keep, bad = [], [], []
        for i, path in enumerate(self.paths):
            try:
                imgs.append(load_image(path, self.resolution, self.transform))
                keep.append(i)
            except Exception as e:  # as make_hdf5.py: any decoder failure skips one image
                bad.append(unreadable(path, e))
        if not imgs:
            raise ValueError(_none_readable(self.root, len(self.paths), bad[0].reason))
        if bad and warn:
            warnings.warn(f'{self.root}: leaving out {len(bad)} images PIL cannot decode: '
                          f'{example_paths(self.root, bad, 10)}. make_hdf5.py lists each with its '
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
                img = load_image(self.paths[i], self.resolution, self.transform)
                return img, int(self.labels[i])
            except Exception as e:  # one corrupt file must not end a run hours in
                self._unreadable.add(i)
                error = unreadable(self.paths[i], e).reason
                warnings.warn(f'{self.paths[i]}: {error}; training uses the next image of the '
                              f'folder that decodes (with its label) in its place. make_hdf5.py '
                              f'lists every unreadable file of a folder', stacklevel=2)
        raise ValueError(_none_readable(self.root, n, error))


def _none_readable(root: Path, n: int, error: str) -> str:
    """The error when no image of a folder decodes, with one example of why."""
    example = f' (e.g. {error})' if error else ''
    return (f'none of the {n} images under {root} can be decoded{example}; run make_hdf5.py '
            f'on the folder to list each with its error')


class HDF5Dataset(ImageDataset):
    """A file written by make_hdf5.py; each process (loader worker) opens its own handle.

    With load_in_mem the images are held once per node and shared by its DDP ranks and their
    loader workers (node_memory.load_hdf5, a collective: every rank must build the dataset).
    """

    def __init__(self, path: str | os.PathLike, n_classes: int | None = None, *,
                 augment: bool = False, load_in_mem: bool = False):
        info = inspect_hdf5(path, n_classes)
        super().__init__(info.labels, augment)
        self.path, self.resolution = Path(path), info.resolution
        self.imgs: NodeArray | np.ndarray | None = load_hdf5(path) if load_in_mem else None
        self.chunk_images, self.compression = info.chunk_images, info.compression
        self._imgs, self._pid = None, None  # h5py dataset of this process's own handle

    def image(self, index: int) -> np.ndarray:
        if self.imgs is not None:
            # A writable copy of the image: torch.from_numpy warns on read-only shared memory.
            return np.array(self.imgs[index])
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


def build_dataset(spec: DatasetSpec, *, augment: bool = False, load_in_mem: bool = False,
                  warn: bool = True, transform: ImageTransform = CENTER_CROP) -> ImageDataset:
    """The Dataset of a resolved spec, checked against the spec's class count.

    `warn`: warn about the files of an image folder that are not images of a class.
    `transform`: how an image folder's images are made square (HDF5 files are packed so).
    """
    if spec.kind in ('cifar10', 'cifar100'):
        return _cifar(spec, augment)
    if spec.kind == 'hdf5':
        dataset = HDF5Dataset(spec.path, spec.n_classes, augment=augment,
                              load_in_mem=load_in_mem)
        if dataset.resolution != spec.resolution:
            raise ValueError(f'{spec.path} holds {dataset.resolution}x{dataset.resolution} '
                             f'images but {spec.name} is {spec.resolution}x{spec.resolution}; '
                             f'repack it with make_hdf5.py')
        return dataset
    dataset = ImageFolderDataset(spec.path, spec.resolution, augment=augment,
                                 load_in_mem=load_in_mem, single_class_ok=spec.n_classes == 1,
                                 warn=warn, transform=transform)
    if len(dataset.classes) != spec.n_classes:
        raise ValueError(f'{spec.path} has {len(dataset.classes)} class folders but {spec.name} '
                         f'expects {spec.n_classes}; to train on this folder as it is, pass its '
                         f'path as --dataset with --resolution')
    return dataset


# ----------------------------------------------------------------------------- loaders

def get_data_loaders(dataset: str, data_root: str = 'data', *, resolution: int | None = None,
                     augment: bool = False, batch_size: int = 64, num_workers: int = 8,
                     shuffle: bool = True, load_in_mem: bool = False, pin_memory: bool = True,
                     drop_last: bool = True, start_itr: int = 0, num_epochs: int = 500,
                     use_multiepoch_sampler: bool = False, seed: int = 0, rank: int = 0,
                     world_size: int = 1, unconditional: bool = False, minibatches: int = 1,
                     mirror_augment: bool = False, num_samples: int = 0,
                     subset: np.ndarray | None = None, transform: str = 'center-crop',
                     pad_value: int = 0, **kwargs) -> list[DataLoader]:
    """[DataLoader] of (x float32 [B,3,R,R] in [-1,1], y int64 [B]); B is the per-rank batch.

    `shuffle` applies without `use_multiepoch_sampler` only: that sampler always shuffles.
    `minibatches`: how many minibatches train.py cuts each batch into (D steps x
    accumulations); under DDP each rank's batch holds its slice of every global minibatch.
    `num_samples`: train on that many images, chosen by `seed` (or the `subset` a run
    recorded); the loader's dataset then has their `indices`. `transform`, `pad_value`: how
    an image folder's images are made square (image_transforms.ImageTransform).
    Other run-config keys in kwargs are ignored (train.py passes its whole config).
    """
    spec = resolve_dataset(dataset, data_root, resolution=resolution,
                           single_class_ok=unconditional)
    data = build_dataset(spec, augment=augment, load_in_mem=load_in_mem, warn=rank == 0,
                         transform=ImageTransform(transform, pad_value))
    # Augmentations are drawn per stream position, from the run's seed: the same crops and
    # flips whatever the worker count, on every rank count, and after a resume.
    data.augment_seed, data.mirror = seed, mirror_augment
    if num_samples or subset is not None:
        data = SubsetDataset(data, choose_subset(len(data), num_samples, seed, subset))
    slow_reads = isinstance(data, HDF5Dataset) and data.compression and data.imgs is None
    if (shuffle or use_multiepoch_sampler) and slow_reads and rank == 0:
        warnings.warn(
            f'{spec.path} is {data.compression}-compressed and --load_in_mem is off: every '
            f'shuffled image read decompresses a whole chunk of {data.chunk_images} images '
            f'(chunks of 500 on a 2-core CPU: 48 img/s per loader worker at 64x64, 8 img/s at '
            f'128x128), which starves training of data. Pass --load_in_mem, or repack '
            f'without --compression.', stacklevel=2)
    shard = dict(seed=seed, rank=rank, world_size=world_size, minibatches=minibatches,
                 draws=augment or mirror_augment)
    if use_multiepoch_sampler:
        sampler = MultiEpochSampler(len(data), num_epochs, batch_size, start_itr=start_itr,
                                    **shard)
    else:
        sampler = EpochSampler(len(data), batch_size, shuffle=shuffle, **shard)
    generator = torch.Generator().manual_seed(seed * 1000 + rank)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=pin_memory and torch.cuda.is_available(),
                        drop_last=drop_last, generator=generator)
    return [loader]


# ----------------------------------------------------------------------------- 2019 names
# 2019 names (compatibility): 2019's utils.py kept one dict per property of the named datasets;
# here they are views of DATASETS (utils re-exports them). Its dset_dict is left out: its
# dataset classes took (root, transform, ...), ours are built by resolve_dataset/build_dataset.
root_dict = {name: str(spec.path) for name, spec in DATASETS.items()}
imsize_dict = {name: spec.resolution for name, spec in DATASETS.items()}
nclass_dict = {name: spec.n_classes for name, spec in DATASETS.items()}
classes_per_sheet_dict = {name: spec.classes_per_sheet for name, spec in DATASETS.items()}
