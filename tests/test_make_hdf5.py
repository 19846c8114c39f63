"""Tests of make_hdf5.py: pixel-exact round trip, labels, skipped files, interruption, CLI,
the demo dataset."""
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_image_files import (
    MESSY_IMAGES,
    MESSY_SKIPPED,
    messy_folder,
    relative,
    write_folder,
)
from test_image_transforms import non_square_folder

import make_hdf5
from datasets import HDF5Dataset, ImageFolderDataset, resolve_dataset
from helpers import write_hdf5
from image_files import find_classes, load_image
from image_transforms import TRANSFORMS, ImageTransform, hdf5_transform
from make_hdf5 import make_demo_folder


def by_hand(path: Path, r: int) -> torch.Tensor:
    """Decode with PIL and apply the documented transform step by step."""
    img = Image.open(path).convert('RGB')
    w, h = img.size
    s = min(w, h)
    left, top = round((w - s) / 2), round((h - s) / 2)
    img = img.crop((left, top, left + s, top + s)).resize((r, r), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()).float() / 127.5 - 1


def mixed_folder(root: Path) -> Path:
    """Three classes of odd-sized PNG and JPEG images, one greyscale."""
    write_folder(root, {'b_dog': 2, 'a_cat': 3}, size=(21, 13))
    (root / 'c_eel').mkdir()
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (30, 17, 3), dtype=np.uint8)).save(root / 'c_eel/0.jpg')
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(root / 'c_eel/1.png')
    return root


def test_round_trip_gives_the_pixels_of_decoding_by_hand(tmp_path):
    folder = mixed_folder(tmp_path / 'pets')
    result = make_hdf5.pack_folder(folder, tmp_path / 'pets_8.hdf5', 8, batch_size=3,
                                   num_workers=0, chunk_size=4, progress=False)
    assert result.n_images == 7 and result.skipped == []
    packed = HDF5Dataset(result.path)
    unpacked = ImageFolderDataset(folder, 8)
    assert len(packed) == len(unpacked) == 7
    for i, path in enumerate(unpacked.paths):
        x, y = packed[i]
        assert torch.equal(x, by_hand(Path(path), 8))
        assert torch.equal(x, unpacked[i][0]) and y == unpacked[i][1]
    with h5py.File(result.path) as f:
        assert f['imgs'].dtype == np.uint8 and f['imgs'].shape == (7, 3, 8, 8)
        assert f['labels'].dtype == np.int64 and f['imgs'].chunks == (4, 3, 8, 8)
        assert f['labels'][()].tolist() == [0, 0, 0, 1, 1, 2, 2]  # sorted class folders
        assert list(f.attrs['classes']) == ['a_cat', 'b_dog', 'c_eel']
        assert (f.attrs['n_classes'], f.attrs['resolution']) == (3, 8)
    spec = resolve_dataset(str(result.path))
    assert (spec.resolution, spec.n_classes) == (8, 3)


def test_workers_and_compression_write_the_same_data(tmp_path):
    folder = mixed_folder(tmp_path / 'pets')
    plain = make_hdf5.pack_folder(folder, tmp_path / 'a.hdf5', 8, num_workers=0,
                                  progress=False)
    lzf = make_hdf5.pack_folder(folder, tmp_path / 'b.hdf5', 8, batch_size=2, num_workers=2,
                                compression=True, progress=False)
    with h5py.File(plain.path) as a, h5py.File(lzf.path) as b:
        assert b['imgs'].compression == 'lzf' and a['imgs'].compression is None
        assert np.array_equal(a['imgs'][()], b['imgs'][()])
        assert np.array_equal(a['labels'][()], b['labels'][()])


def test_corrupt_images_are_skipped_reported_and_logged(tmp_path, capsys):
    folder = write_folder(tmp_path / 'shapes', {'a': 3, 'b': 3})
    (folder / 'a' / 'garbage.jpg').write_bytes(b'not an image at all')
    good = (folder / 'b' / '0.png').read_bytes()
    (folder / 'b' / 'truncated.png').write_bytes(good[:len(good) // 2])
    make_hdf5.main(['--dataset', str(folder), '--resolution', '32', '--data_root',
                    str(tmp_path / 'out'), '--num_workers', '2', '--batch_size', '2'])
    out = capsys.readouterr().out
    output, log_path = tmp_path / 'out' / 'shapes_32.hdf5', tmp_path / 'out/shapes_32_skipped.txt'
    assert (f'Wrote 6 images, 2 classes, to {output}; skipped 2 files (2 unreadable), listed '
            f'in {log_path}') in out
    assert 'garbage.jpg: PIL failed to decode it' in out and 'truncated.png' in out
    log = log_path.read_text().splitlines()
    assert len(log) == 2 and 'garbage.jpg' in log[0] and 'truncated.png' in log[1]
    with h5py.File(output) as f:
        assert f['labels'][()].tolist() == [0, 0, 0, 1, 1, 1] and f.attrs['n_skipped'] == 2


def test_every_file_is_packed_or_listed_with_its_reason(tmp_path, capsys):
    """GIFs (animated, transparent) and TGAs are packed; text, hidden, nested and corrupt
    files are each reported; training from the folder reads the images of the file."""
    folder = messy_folder(tmp_path / 'messy')
    make_hdf5.main(['--dataset', str(folder), '--resolution', '32', '--data_root',
                    str(tmp_path / 'out'), '--num_workers', '2', '--batch_size', '3'])
    output, log_path = tmp_path / 'out/messy_32.hdf5', tmp_path / 'out/messy_32_skipped.txt'
    assert (f'Wrote 8 images, 2 classes, to {output}; skipped 7 files (3 hidden, 2 non-image, '
            f'1 nested, 1 unreadable), listed in {log_path}') in capsys.readouterr().out
    log = dict(line.split(': ', 1) for line in log_path.read_text().splitlines())
    assert relative(list(log), folder) == [*MESSY_SKIPPED, 'a/broken.jpg']
    for name, words in [*MESSY_SKIPPED.items(), ('a/broken.jpg', 'PIL failed to decode')]:
        assert words in log[str(folder / name)]
    packed = [name for name in MESSY_IMAGES if name != 'a/broken.jpg']
    with h5py.File(output) as f:
        imgs, labels = f['imgs'][()], f['labels'][()].tolist()
        assert f.attrs['n_skipped'] == 7
    assert labels == [0, 0] + [1] * 6
    for name in ('b/anim.GIF', 'b/clear.gif', 'b/pic.tga', 'b/still.gif'):
        assert np.array_equal(imgs[packed.index(name)], load_image(folder / name, 32))
    assert (imgs[packed.index('b/anim.GIF')] == np.array([255, 0, 0])[:, None, None]).all()
    with pytest.warns(UserWarning, match='ignoring 6 files'):
        unpacked = ImageFolderDataset(folder, 32)
    kept = [i for i, name in enumerate(relative(unpacked.paths, folder)) if name in packed]
    assert len(kept) == 8  # the folder dataset has the same images, except the corrupt one
    data = HDF5Dataset(output)
    for i, j in enumerate(kept):
        assert torch.equal(data[i][0], unpacked[j][0]) and data[i][1] == unpacked[j][1]


def test_resolutions_no_model_has_are_refused_before_anything_is_written(tmp_path,
                                                                       monkeypatch):
    folder = write_folder(tmp_path / 'f', {'a': 1, 'b': 1})
    monkeypatch.setattr(make_hdf5, 'load_image', lambda *args: pytest.fail('an image was read'))
    out, demo = tmp_path / 'out', tmp_path / 'demo'
    for argv in (['--dataset', str(folder)], ['--make_demo', str(demo)]):
        with pytest.raises(SystemExit) as info:
            make_hdf5.main([*argv, '--resolution', '33', '--data_root', str(out),
                            '--num_workers', '0'])
        assert str(info.value) == ('--resolution 33: no model has an architecture for 33x33 '
                                   'images, so nothing could train on the file; use one of 32, '
                                   '64, 128, 256, 512')
    assert not out.exists() and not demo.exists()


def test_interrupted_run_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / 'f', {'a': 4, 'b': 4})
    calls = []

    def interrupt(path, resolution, transform):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return np.zeros((3, resolution, resolution), np.uint8)
    monkeypatch.setattr(make_hdf5, 'load_image', interrupt)
    with pytest.raises(KeyboardInterrupt):
        make_hdf5.pack_folder(folder, tmp_path / 'f.hdf5', 8, batch_size=2, num_workers=0,
                              progress=False)
    assert len(calls) == 5 and list(tmp_path.glob('f.hdf5*')) == []


SLOW_PACK = """
import sys, time
import make_hdf5
decode = make_hdf5.load_image
make_hdf5.load_image = lambda path, r, t: (time.sleep(0.05), decode(path, r, t))[1]
make_hdf5.main(sys.argv[1:])
"""


def test_killed_run_leaves_no_file_under_the_final_name(tmp_path):
    folder = write_folder(tmp_path / 'f', {'a': 40, 'b': 40})
    root = Path(make_hdf5.__file__).parent
    proc = subprocess.Popen([sys.executable, '-c', SLOW_PACK, '--dataset', str(folder),
                             '--resolution', '32', '--data_root', str(tmp_path / 'out'),
                             '--num_workers', '0', '--batch_size', '4'], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / 'out' / 'f_32.hdf5.partial'
    deadline = time.time() + 30
    while not partial.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert partial.exists(), 'the packer never started writing'
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert list((tmp_path / 'out').iterdir()) == []


def test_named_dataset_and_demo_command_lines(tmp_path, capsys):
    write_folder(tmp_path / 'ImageNet', {'n01': 1, 'n02': 2})
    make_hdf5.main(['--dataset', 'I32', '--data_root', str(tmp_path), '--num_workers', '0'])
    with h5py.File(tmp_path / 'ILSVRC32.hdf5') as f:
        assert f['imgs'].shape == (3, 3, 32, 32)
    demo = tmp_path / 'demo'
    argv = ['--make_demo', str(demo), '--data_root', str(tmp_path), '--num_workers', '0',
            '--demo_images_per_class', '3', '--demo_classes', '12']
    make_hdf5.main(argv)
    assert f'Wrote the demo image folder {demo}' in capsys.readouterr().out
    spec = resolve_dataset(str(tmp_path / 'demo_32.hdf5'))
    assert (spec.resolution, spec.n_classes, spec.name) == (32, 12, 'demo_32')
    make_hdf5.main(argv + ['--resolution', '64'])  # an existing demo folder is reused
    assert f'Using the existing demo folder {demo}' in capsys.readouterr().out
    assert resolve_dataset(str(tmp_path / 'demo_64.hdf5')).resolution == 64
    with pytest.raises(SystemExit, match='not an image folder dataset'):
        make_hdf5.main(['--dataset', 'I128_hdf5'])


def test_one_class_folder_packs_only_when_unconditional(tmp_path):
    import h5py
    import numpy as np
    from PIL import Image

    from make_hdf5 import pack_folder
    folder = tmp_path / 'faces' / 'all'
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(folder / f'{i}.png')
    with pytest.raises(ValueError, match='--unconditional'):
        pack_folder(tmp_path / 'faces', tmp_path / 'x.hdf5', 16, num_workers=0, progress=False)
    result = pack_folder(tmp_path / 'faces', tmp_path / 'x.hdf5', 16, num_workers=0,
                         progress=False, single_class_ok=True)
    with h5py.File(result.path) as f:
        assert f.attrs['n_classes'] == 1 and list(f['labels'][:]) == [0, 0, 0]


def test_demo_is_deterministic_with_ten_distinct_classes(tmp_path):
    def digest(root: Path) -> str:
        files = sorted(root.rglob('*.png'))
        return hashlib.sha256(b''.join(f.read_bytes() for f in files)).hexdigest()

    a = make_demo_folder(tmp_path / 'a', resolution=32, images_per_class=8, seed=0)
    b = make_demo_folder(tmp_path / 'b', resolution=32, images_per_class=8, seed=0)
    c = make_demo_folder(tmp_path / 'c', resolution=32, images_per_class=8, seed=1)
    assert digest(a) == digest(b) != digest(c)
    classes = find_classes(a)
    assert len(classes) == 10 and len({name.split('_', 1)[1] for name in classes}) == 10
    # Classes differ in what a GAN must learn: the mean object colour and the mean shape.
    data = ImageFolderDataset(a, 32)
    means = torch.stack([torch.stack([data[i][0] for i in np.flatnonzero(data.labels == k)])
                         .mean(0) for k in range(10)])
    distances = torch.cdist(means.flatten(1), means.flatten(1))
    assert distances[~torch.eye(10, dtype=bool)].min() > 1.0
    big = make_demo_folder(tmp_path / 'big', resolution=64, images_per_class=1, n_classes=12)
    assert len(list(big.iterdir())) == 12
    assert Image.open(next(big.rglob('*.png'))).size == (64, 64)
    with pytest.raises(FileExistsError):
        make_demo_folder(a)


def test_each_transform_is_packed_and_recorded(tmp_path):
    folder = non_square_folder(tmp_path / 'shapes')
    paths = ImageFolderDataset(folder, 32).paths
    for transform in [*(ImageTransform(name) for name in TRANSFORMS),
                      ImageTransform('pad-constant', 128)]:
        out = tmp_path / f'{transform.name}.hdf5'
        make_hdf5.pack_folder(folder, out, 32, num_workers=0, progress=False,
                              transform=transform)
        assert hdf5_transform(out) == transform
        with h5py.File(out) as f:
            assert f.attrs['transform'] == transform.name
            constant = transform.name == 'pad-constant'
            assert f.attrs.get('pad_value') == (transform.pad_value if constant else None)
            for i, path in enumerate(paths):
                assert np.array_equal(f['imgs'][i], load_image(path, 32, transform))
    with h5py.File(tmp_path / 'center-crop-wide.hdf5') as f:  # black bars of R/4 rows
        assert (f['imgs'][:, :, :8] == 0).all() and (f['imgs'][:, :, 24:] == 0).all()
    assert hdf5_transform(write_hdf5(tmp_path / 'old.hdf5')) == ImageTransform()  # no attrs


def test_transform_flags_are_checked_before_anything_is_written(tmp_path, capsys):
    folder = non_square_folder(tmp_path / 'shapes')
    argv = ['--dataset', str(folder), '--resolution', '32', '--data_root', str(tmp_path / 'out'),
            '--num_workers', '0']
    for extra, words in [(['--transform', 'crop'], "invalid choice: 'crop' (choose from "
                                                    "'center-crop', 'center-crop-wide', 'pad', "
                                                    "'pad-constant')"),
                         (['--transform', 'pad', '--pad_value', '9'],
                          '--pad_value is the fill of --transform pad-constant (not pad)'),
                         (['--transform', 'pad-constant', '--pad_value', '300'], '0-255')]:
        with pytest.raises(SystemExit) as info:
            make_hdf5.main(argv + extra)
        assert info.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
    make_hdf5.main(argv + ['--transform', 'pad-constant', '--pad_value', '255'])
    assert '(pad-constant (pad_value 255))' in capsys.readouterr().out
    assert hdf5_transform(tmp_path / 'out/shapes_32.hdf5') == ImageTransform('pad-constant', 255)
