"""Tests of datasets.py: the table, the startup checks, transforms, samplers, loaders."""
import urllib.error
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_image_files import (
    MESSY_IMAGES,
    messy_folder,
    random_hdf5,
    relative,
    write_folder,
    write_hdf5,
)

import datasets
from datasets import (
    EpochSampler,
    MultiEpochSampler,
    get_data_loaders,
    random_crop_flip,
    resolve_dataset,
    to_float,
)
from image_files import load_image


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """All batches of one pass over a loader."""
    return [(x.clone(), y.clone()) for x, y in loader]


# ----------------------------------------------------------------------------- table

def test_named_datasets_follow_the_2019_table():
    spec = resolve_dataset('I128_hdf5', 'data')
    assert (spec.kind, spec.path, spec.resolution) == ('hdf5', Path('data/ILSVRC128.hdf5'), 128)
    assert (spec.n_classes, spec.classes_per_sheet) == (1000, 20)
    # The 2019 name: the folder and its HDF5 packing share one moments file.
    assert spec.moments_path == Path('data/I128_inception_moments.npz')
    assert resolve_dataset('I128', 'data').moments_path == spec.moments_path
    i32 = resolve_dataset('I32', 'root')
    assert (i32.kind, i32.path, i32.classes_per_sheet) == ('folder', Path('root/ImageNet'), 50)
    c100 = resolve_dataset('C100', 'd')
    assert (c100.kind, c100.path, c100.n_classes, c100.resolution) == ('cifar100',
                                                                       Path('d/cifar'), 100, 32)
    with pytest.raises(AttributeError):
        spec.name = 'x'  # frozen


def test_path_datasets_read_resolution_and_classes_from_the_data(tmp_path):
    folder = write_folder(tmp_path / 'pets', {'cat': 1, 'dog': 1, 'eel': 1})
    spec = resolve_dataset(str(folder), resolution=64)
    assert (spec.name, spec.kind, spec.resolution, spec.n_classes) == ('pets', 'folder', 64, 3)
    assert spec.moments_path == tmp_path / 'pets_inception_moments.npz'
    h5 = random_hdf5(tmp_path / 'toy_8.hdf5', n_classes=5)
    spec = resolve_dataset(str(h5))
    assert (spec.name, spec.kind, spec.resolution, spec.n_classes) == ('toy_8', 'hdf5', 8, 5)
    assert spec.moments_path == tmp_path / 'toy_8_inception_moments.npz'
    # Without the n_classes attr (a 2019 file), the class count is max(label) + 1.
    bare = write_hdf5(tmp_path / 'bare.hdf5', np.zeros((4, 3, 8, 8), np.uint8), np.arange(4))
    assert resolve_dataset(str(bare)).n_classes == 4


# ----------------------------------------------------------------------------- startup checks

@pytest.mark.parametrize('make, error, words', [
    (lambda p: None, ValueError, ['unknown dataset', 'I128_hdf5']),
    (lambda p: str(p / 'missing.hdf5'), FileNotFoundError, ['does not exist']),
    (lambda p: str(write_folder(p / 'f', {'a': 1, 'b': 1})), ValueError, ['--resolution']),
])
def test_resolve_errors(tmp_path, make, error, words):
    dataset = make(tmp_path) or 'I512'
    with pytest.raises(error) as info:
        resolve_dataset(dataset)
    assert all(w in str(info.value) for w in words)


def test_named_dataset_rejects_another_resolution():
    with pytest.raises(ValueError, match='--resolution 64'):
        resolve_dataset('I128_hdf5', resolution=64)


def test_named_folder_must_have_its_class_count(tmp_path):
    write_folder(tmp_path / 'ImageNet', {'a': 1, 'b': 1})
    with pytest.raises(ValueError, match='has 2 class folders but I32 expects 1000'):
        get_data_loaders('I32', data_root=str(tmp_path), num_workers=0)


def test_hdf5_checks_fire_with_helpful_messages(tmp_path):
    no_imgs = tmp_path / 'no_imgs.hdf5'
    with h5py.File(no_imgs, 'w') as f:
        f.create_dataset('labels', data=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="no 'imgs' dataset"):
        resolve_dataset(str(no_imgs))

    imgs = np.zeros((3, 3, 8, 8), np.uint8)
    bad_labels = write_hdf5(tmp_path / 'bad.hdf5', imgs, np.array([0, 1, 5]), n_classes=3)
    with pytest.raises(ValueError, match=r'labels span \[0, 5\] but must lie in \[0, 3\)'):
        resolve_dataset(str(bad_labels))
    negative = write_hdf5(tmp_path / 'neg.hdf5', imgs, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match='must lie in'):
        resolve_dataset(str(negative))

    with pytest.raises(ValueError, match='holds 8x8 images but --resolution 32'):
        resolve_dataset(str(random_hdf5(tmp_path / 'ok.hdf5')), resolution=32)

    # A named file is checked against the table's class count, and must exist.
    write_hdf5(tmp_path / 'ILSVRC32.hdf5', np.zeros((2, 3, 32, 32), np.uint8),
               np.array([0, 1000]))
    with pytest.raises(ValueError, match=r'\[0, 1000\)'):
        get_data_loaders('I32_hdf5', data_root=str(tmp_path), num_workers=0)
    write_hdf5(tmp_path / 'ILSVRC64.hdf5', np.zeros((2, 3, 32, 32), np.uint8), np.array([0, 1]))
    with (pytest.raises(ValueError, match='holds 32x32 images but I64_hdf5 is 64x64'),
          pytest.warns(UserWarning, match='998 of its 1000 classes have no images .* given')):
        get_data_loaders('I64_hdf5', data_root=str(tmp_path), num_workers=0)
    with pytest.raises(FileNotFoundError, match='make_hdf5.py'):
        get_data_loaders('I128_hdf5', data_root=str(tmp_path), num_workers=0)


def test_hdf5_whose_labels_are_all_0_needs_unconditional(tmp_path):
    """Without n_classes, all-zero labels are a one-class file: refused as a one-class
    folder is, unless unconditional training is asked for."""
    imgs = np.zeros((3, 3, 32, 32), np.uint8)
    zeros = str(write_hdf5(tmp_path / 'zeros.hdf5', imgs, np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match='every label is 0') as info:
        resolve_dataset(zeros)
    assert '--unconditional' in str(info.value)
    with pytest.raises(ValueError, match='--unconditional'):
        get_data_loaders(zeros, num_workers=0)
    assert resolve_dataset(zeros, single_class_ok=True).n_classes == 1
    loader = get_data_loaders(zeros, batch_size=3, num_workers=0, unconditional=True)[0]
    assert next(iter(loader))[1].tolist() == [0, 0, 0]
    # make_hdf5.py --unconditional records n_classes = 1: that file chose one class.
    one = write_hdf5(tmp_path / 'one.hdf5', imgs, np.zeros(3, np.int64), n_classes=1)
    assert resolve_dataset(str(one)).n_classes == 1


def test_cifar_offline_names_the_folder_and_what_to_put_there(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    def offline(self):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(CIFAR10, 'download', offline)
    with pytest.raises(FileNotFoundError) as info:
        get_data_loaders('C10', data_root=str(tmp_path), num_workers=0)
    message = str(info.value)
    assert str(tmp_path / 'cifar') in message and 'cifar-10-batches-py' in message


# ----------------------------------------------------------------------------- transforms

def test_augment_is_a_shift_and_flip_of_the_image(tmp_path):
    h5 = random_hdf5(tmp_path / 'a.hdf5', n=4, r=8)
    plain = datasets.HDF5Dataset(h5)
    augmented = datasets.HDF5Dataset(h5, augment=True)
    torch.manual_seed(0)
    padded = torch.nn.functional.pad(plain[0][0][None], (1, 1, 1, 1), mode='reflect')[0]
    candidates = [c for i in range(3) for j in range(3)
                  for c in (padded[:, i:i + 8, j:j + 8], padded[:, i:i + 8, j:j + 8].flip(-1))]
    outs = [augmented[0][0] for _ in range(20)]
    assert all(any(torch.equal(o, c) for c in candidates) for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 1


# ----------------------------------------------------------------------------- samplers

def test_multiepoch_sampler_resumes_exactly_across_epochs():
    n, epochs, b = 10, 3, 4  # batches straddle epoch ends
    full = list(MultiEpochSampler(n, epochs, b, seed=7))
    assert len(full) == n * epochs // b * b
    for e in range(2):  # every whole epoch in the stream is a permutation
        assert sorted(full[e * n:(e + 1) * n]) == list(range(n))
    for k in (1, 2, 3, 5, 7):
        resumed = MultiEpochSampler(n, epochs, b, start_itr=k, seed=7)
        assert list(resumed) == full[k * b:] and len(resumed) == len(full) - k * b
    assert full == list(MultiEpochSampler(n, epochs, b, seed=7))  # a pure function of seed
    assert full != list(MultiEpochSampler(n, epochs, b, seed=8))
    past_end = MultiEpochSampler(n, epochs, b, start_itr=100, seed=7)
    assert len(past_end) == 0 and list(past_end) == []


def test_multiepoch_sampler_shards_across_ranks():
    n, epochs, b = 10, 3, 2
    single = list(MultiEpochSampler(n, epochs, 2 * b, seed=3))
    ranks = [list(MultiEpochSampler(n, epochs, b, seed=3, rank=r, world_size=2))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) // 2
    for itr in range(len(single) // (2 * b)):
        shares = [ranks[r][itr * b:(itr + 1) * b] for r in range(2)]
        # Together the ranks see exactly the single-process global batch, split in two.
        assert shares[0] + shares[1] == single[itr * 2 * b:(itr + 1) * 2 * b]
    resumed = list(MultiEpochSampler(n, epochs, b, start_itr=3, seed=3, rank=1, world_size=2))
    assert resumed == ranks[1][3 * b:]


@pytest.mark.parametrize('multiepoch', [True, False])
def test_ranks_take_their_slice_of_every_minibatch(multiepoch):
    """With 3 minibatches per batch (D steps x accumulations) rank r's minibatch m is slice r
    of the single process's minibatch m: under DDP each accumulation pass sees the images it
    would see in one process (SN's power iteration advances per pass, so this matters)."""
    n, world, mb, slice_len = 50, 2, 3, 2

    def sampler(batch, rank=0, world_size=1, **kw):
        if multiepoch:
            return MultiEpochSampler(n, 2, batch, seed=4, rank=rank, world_size=world_size,
                                     minibatches=mb, **kw)
        return EpochSampler(n, batch, seed=4, rank=rank, world_size=world_size,
                            minibatches=mb)
    single = list(sampler(mb * slice_len * world))
    ranks = [list(sampler(mb * slice_len, r, world)) for r in range(world)]
    assert len(ranks[0]) == len(ranks[1])
    for k in range(len(ranks[0]) // slice_len):  # k counts (iteration, minibatch) pairs
        together = sum((ranks[r][k * slice_len:(k + 1) * slice_len] for r in range(world)), [])
        assert together == single[k * world * slice_len:(k + 1) * world * slice_len]
    if multiepoch:  # and a resumed rank continues its own order
        resumed = list(sampler(mb * slice_len, 1, world, start_itr=2))
        assert resumed == ranks[1][2 * mb * slice_len:]
    with pytest.raises(ValueError, match='minibatches'):
        sampler(7)


def test_epoch_sampler_reshuffles_each_pass_and_resumes_by_epoch():
    sampler = EpochSampler(10, 3, seed=1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    again = EpochSampler(10, 3, seed=1)
    again.set_epoch(1)
    assert list(again) == second
    shares = [list(EpochSampler(10, 2, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 4 and not set(shares[0]) & set(shares[1])
    assert list(EpochSampler(5, 2, shuffle=False)) == [0, 1, 2, 3, 4]


def test_epoch_sampler_resumes_mid_epoch():
    """set_epoch(k, b) yields exactly the rest of epoch k after its first b batches."""
    for world_size in (1, 2):
        for rank in range(world_size):
            full = EpochSampler(50, 4, seed=3, rank=rank, world_size=world_size)
            full.set_epoch(2)
            order = list(full)
            resumed = EpochSampler(50, 4, seed=3, rank=rank, world_size=world_size)
            resumed.set_epoch(2, start_batch=3)
            assert len(resumed) == len(order) - 12
            assert list(resumed) == order[12:]
            assert resumed.epoch == 3 and len(resumed) == len(order)  # next pass is whole


# ----------------------------------------------------------------------------- loaders

def test_loader_yields_scaled_images_and_int64_labels(tmp_path):
    h5 = random_hdf5(tmp_path / 'toy.hdf5')
    loader = get_data_loaders(str(h5), batch_size=5, num_workers=0, G_lr=1e-4, model='BigGAN')
    assert isinstance(loader, list) and len(loader) == 1
    x, y = next(iter(loader[0]))
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    with h5py.File(h5) as f:
        raw = torch.from_numpy(f['imgs'][()]).float() / 127.5 - 1
        labels = torch.from_numpy(f['labels'][()])
    index = [int(torch.nonzero((raw == xi).flatten(1).all(1))[0]) for xi in x]
    assert torch.equal(labels[index], y)
    assert len(list(loader[0])) == 24 // 5  # drop_last


def test_multiepoch_loader_shuffles_with_or_without_shuffle(tmp_path):
    """As in 2019, --use_multiepoch_sampler draws a permutation per epoch whatever --shuffle
    says: without it an ImageNet file would be read class by class."""
    n = 10
    imgs = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 3, 8, 8))
    h5 = str(write_hdf5(tmp_path / 'ids.hdf5', imgs.copy(), np.arange(n) % 2, n_classes=2))
    kw = dict(batch_size=4, num_workers=0, use_multiepoch_sampler=True, num_epochs=3, seed=5)

    def order(**extra) -> list[int]:
        """The indices of the images the loader yields (image i is filled with i)."""
        loader = get_data_loaders(h5, **kw, **extra)[0]
        return [int(i) for x, _ in loader for i in ((x[:, 0, 0, 0] + 1) * 127.5).round()]
    unshuffled = order(shuffle=False)
    assert unshuffled == order(shuffle=True) and len(unshuffled) == 28
    first, second = unshuffled[:n], unshuffled[n:2 * n]
    assert sorted(first) == sorted(second) == list(range(n))  # whole epochs are permutations
    assert first != list(range(n)) and first != second  # not file order, a new one per epoch
    assert order(shuffle=False, start_itr=3) == unshuffled[3 * 4:]  # and resuming still works


def test_resumed_loader_sees_the_uninterrupted_batches(tmp_path):
    h5 = str(random_hdf5(tmp_path / 'toy.hdf5', n=10))
    kw = dict(batch_size=4, num_workers=0, use_multiepoch_sampler=True, num_epochs=3, seed=5)
    full = batches(get_data_loaders(h5, **kw)[0])
    resumed = batches(get_data_loaders(h5, start_itr=4, **kw)[0])
    assert len(full) == 7 and len(resumed) == 3
    for (x, y), (rx, ry) in zip(full[4:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_workers_and_load_in_mem_give_identical_batches(tmp_path):
    h5 = str(random_hdf5(tmp_path / 'toy.hdf5'))
    kw = dict(batch_size=4, seed=2)
    reference = batches(get_data_loaders(h5, num_workers=0, **kw)[0])
    for variant in (dict(num_workers=2), dict(num_workers=0, load_in_mem=True)):
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in
                   zip(reference, batches(get_data_loaders(h5, **variant, **kw)[0])))
    other_seed = batches(get_data_loaders(h5, num_workers=0, batch_size=4, seed=3)[0])
    assert not torch.equal(reference[0][1], other_seed[0][1])


def test_folder_dataset_warns_once_about_the_files_it_leaves_out(tmp_path):
    root = messy_folder(tmp_path / 'messy')
    why = (r'ignoring 6 files .*\(3 hidden, 2 non-image, 1 nested\): \.DS_Store, '
           r'\.cache/thumb\.png, README\.txt and 3 more\. ')
    with pytest.warns(UserWarning, match=why) as record:
        data = datasets.ImageFolderDataset(root, 8)
    assert len(record) == 1 and relative(data.paths, root) == MESSY_IMAGES
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('default')  # Python's own setting: once per place in the code
        for _ in range(3):
            datasets.ImageFolderDataset(root, 8)
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # only rank 0 warns: N ranks would repeat it N times
        datasets.ImageFolderDataset(root, 8, warn=False)
        get_data_loaders(str(root), resolution=32, num_workers=0, rank=1, world_size=2)


def test_folder_dataset_labels_follow_sorted_class_names(tmp_path):
    folder = write_folder(tmp_path / 'f', {'zebra': 2, 'ant': 1, 'moose': 3})
    data = datasets.ImageFolderDataset(folder, 8)
    assert data.classes == ['ant', 'moose', 'zebra']
    assert data.labels.tolist() == [0, 1, 1, 1, 2, 2]
    in_mem = datasets.ImageFolderDataset(folder, 8, load_in_mem=True)
    assert all(torch.equal(data[i][0], in_mem[i][0]) for i in range(len(data)))


def corrupt_folder(root: Path) -> Path:
    """Classes a and b of two PNGs each, then a corrupt JPEG (indices 2 and 5): garbage in a,
    a JPEG cut in half in b."""
    write_folder(root, {'a': 2, 'b': 2})
    (root / 'a' / 'z_broken.jpg').write_bytes(b'not a jpeg at all')
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / 'b' / 'z_broken.jpg')
    whole = (root / 'b' / 'z_broken.jpg').read_bytes()
    (root / 'b' / 'z_broken.jpg').write_bytes(whole[:len(whole) // 2])
    return root


@pytest.mark.parametrize('num_workers', [0, 2])
def test_folder_training_replaces_a_corrupt_image_by_the_next_with_its_label(tmp_path,
                                                                             num_workers):
    """Index 2 (a/z_broken.jpg) gives image 3 (b/0.png) with its label 1; index 5 wraps
    round to image 0. Augmentation is still drawn from the stream position."""
    root = corrupt_folder(tmp_path / 'f')
    kw = dict(resolution=32, batch_size=6, num_workers=num_workers, shuffle=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        loader = get_data_loaders(str(root), **kw)[0]
        (x, y), = batches(loader)
        assert len(batches(loader)) == 1  # a second epoch: no second warning
    names = ['a/0.png', 'a/1.png', 'b/0.png', 'b/0.png', 'b/1.png', 'a/0.png']
    expected = torch.stack([to_float(load_image(root / name, 32)) for name in names])
    assert torch.equal(x, expected) and y.tolist() == [0, 0, 1, 1, 1, 0]
    if num_workers == 0:  # loader workers warn in their own processes
        named = [[c for c in 'ab' if str(root / c / 'z_broken.jpg') in str(w.message)]
                 for w in record]
        assert named == [['a'], ['b']]  # each file once, over two epochs
        assert 'truncated' in str(record[1].message)  # with PIL's error
        assert all('make_hdf5.py' in str(w.message) for w in record)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a new dataset object: the same warnings again
        (augmented, _), = batches(get_data_loaders(str(root), augment=True, **kw)[0])
    for draw in range(6):
        want = random_crop_flip(expected[draw], datasets.draw_generator(0, draw))
        assert torch.equal(augmented[draw], want)


def test_load_in_mem_leaves_out_corrupt_images_with_one_warning(tmp_path):
    root = corrupt_folder(tmp_path / 'f')
    with pytest.warns(UserWarning, match=r'leaving out 2 images PIL cannot decode: '
                                         r'a/z_broken\.jpg, b/z_broken\.jpg\.') as record:
        data = datasets.ImageFolderDataset(root, 32, load_in_mem=True)
    assert len(record) == 1 and [s.kind for s in data.skipped] == ['unreadable'] * 2
    names = ['a/0.png', 'a/1.png', 'b/0.png', 'b/1.png']
    assert relative(data.paths, root) == names and data.labels.tolist() == [0, 0, 1, 1]
    for i, name in enumerate(names):
        assert torch.equal(data[i][0], to_float(load_image(root / name, 32)))
    # Nothing decodes: a clear error, whether loaded up front or on the fly.
    hopeless = tmp_path / 'hopeless'
    for name in ('a', 'b'):
        (hopeless / name).mkdir(parents=True)
        (hopeless / name / 'x.jpg').write_bytes(b'junk')
    with pytest.raises(ValueError, match='none of the 2 images under .* can be decoded'):
        datasets.ImageFolderDataset(hopeless, 32, load_in_mem=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match='none of the 2 images'):
        datasets.ImageFolderDataset(hopeless, 32)[1]


def chunked_hdf5(path: Path, imgs: np.ndarray, labels: np.ndarray,
                 compression: str | None = None) -> Path:
    """A file laid out as make_hdf5.py writes it: imgs in chunks of whole images."""
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=imgs, chunks=(len(imgs),) + imgs.shape[1:],
                         compression=compression)
        f.create_dataset('labels', data=labels)
    return path


def test_uncompressed_reads_bypass_the_chunk_cache(tmp_path):
    """A cached chunk is read whole per shuffled image (60x slower at 64x64): cache off."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8)
    data = datasets.HDF5Dataset(chunked_hdf5(tmp_path / 'c.hdf5', imgs, np.arange(12) % 3))
    for i in rng.permutation(12):
        np.testing.assert_array_equal(data.image(int(i)), imgs[i])
    assert data._imgs.file.id.get_access_plist().get_cache()[2] == 0  # rdcc_nbytes


def test_compressed_shuffled_reads_warn_and_give_the_same_batches(tmp_path):
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8), np.arange(12) % 3
    plain = str(chunked_hdf5(tmp_path / 'plain.hdf5', imgs, labels))
    lzf = str(chunked_hdf5(tmp_path / 'lzf.hdf5', imgs, labels, compression='lzf'))
    kw = dict(batch_size=4, seed=1, num_workers=0)
    with pytest.warns(UserWarning, match='load_in_mem'):
        compressed = batches(get_data_loaders(lzf, **kw)[0])
    reference = batches(get_data_loaders(plain, **kw)[0])
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(reference, compressed))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # in memory, or read in order: nothing to warn about
        get_data_loaders(lzf, load_in_mem=True, **kw)
        get_data_loaders(lzf, shuffle=False, **kw)
    with pytest.warns(UserWarning, match='load_in_mem'):  # the multi-epoch sampler shuffles
        get_data_loaders(lzf, shuffle=False, use_multiepoch_sampler=True, **kw)


@pytest.mark.parametrize('multiepoch', [True, False])
def test_augmented_batches_repeat_across_workers_and_resume(tmp_path, multiepoch):
    """--augment crops and flips are a function of (seed, draw): worker count and resuming
    change nothing, while a new epoch (a new draw of the same image) re-augments it."""
    h5 = str(random_hdf5(tmp_path / 'toy.hdf5', n=12, r=8))
    kw = dict(batch_size=4, seed=5, augment=True, num_epochs=3,
              use_multiepoch_sampler=multiepoch)

    def stream(start_itr=0, start_epoch=0, start_batch=0, passes=3, **extra):
        loader = get_data_loaders(h5, start_itr=start_itr, **kw, **extra)[0]
        if multiepoch:
            return batches(loader)
        out = []
        for epoch in range(start_epoch, passes):
            loader.sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            out += batches(loader)
        return out
    reference = stream(num_workers=0)
    assert len(reference) == 9
    assert all(torch.equal(a[0], b[0]) for a, b in zip(reference, stream(num_workers=2)))
    resumed = stream(4, num_workers=0) if multiepoch else stream(1, 1, 1, num_workers=0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(reference[4:], resumed)) and len(resumed) == 5
    plain = get_data_loaders(h5, **{**kw, 'augment': False}, num_workers=0)[0]
    if not multiepoch:
        plain.sampler.set_epoch(0)
    assert not torch.equal(reference[0][0], next(iter(plain))[0])  # it did augment
    # One image, three epochs: three draws, not one augmentation repeated.
    data = datasets.HDF5Dataset(h5, augment=True)
    views = {data[(0, draw)][0].numpy().tobytes() for draw in (0, 12, 24, 36, 48)}
    assert len(views) > 1
