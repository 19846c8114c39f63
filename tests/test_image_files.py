"""Tests of image_files.py: reading images, listing folders, the layout and HDF5 checks.

The checks are exercised through resolve_dataset and get_data_loaders, where users meet them.
The folder and file helpers here are shared with test_datasets.py and test_make_hdf5.py.
"""
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import image_files
from datasets import get_data_loaders, resolve_dataset
from image_files import load_image, to_rgb


def write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 9),
                 seed: int = 0) -> Path:
    """A class-per-subfolder folder of random RGB PNGs: {class name: image count}."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f'{i}.png')
    return root


def messy_folder(root: Path) -> Path:
    """Two classes of PNG, GIF (animated, transparent, upper-case .GIF) and TGA images, a
    corrupt JPEG, and files that are not images of a class: text, hidden, nested."""
    write_folder(root, {'a': 2, 'b': 2})
    (root / 'README.txt').write_text('loose notes')
    (root / '.DS_Store').write_bytes(b'\0\0')
    (root / '.cache').mkdir()  # a hidden folder is not a class
    Image.new('RGB', (8, 8)).save(root / '.cache' / 'thumb.png')
    (root / 'a' / '.DS_Store').write_bytes(b'\0\0')
    (root / 'a' / 'notes.txt').write_text('not an image')
    (root / 'a' / 'sub').mkdir()
    Image.new('RGB', (8, 8), (9, 9, 9)).save(root / 'a' / 'sub' / 'x.png')
    (root / 'a' / 'broken.jpg').write_bytes(b'not a jpeg at all')
    red, blue = Image.new('RGB', (12, 9), (255, 0, 0)), Image.new('RGB', (12, 9), (0, 0, 255))
    red.save(root / 'b' / 'anim.GIF', save_all=True, append_images=[blue], duration=100)
    clear = Image.new('P', (8, 8), 0)  # left half: transparent index 0; right half: index 1
    clear.putpalette([0, 0, 0, 200, 10, 10])
    clear.paste(1, (4, 0, 8, 8))
    clear.save(root / 'b' / 'clear.gif', transparency=0)
    Image.new('RGB', (10, 10), (1, 2, 3)).save(root / 'b' / 'pic.tga')
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (11, 13, 3), dtype=np.uint8)).save(root / 'b/still.gif')
    return root


# messy_folder's images (by name: broken.jpg too), and its other files with their reasons.
MESSY_IMAGES = ['a/0.png', 'a/1.png', 'a/broken.jpg', 'b/0.png', 'b/1.png', 'b/anim.GIF',
                'b/clear.gif', 'b/pic.tga', 'b/still.gif']
NOT_IMAGE = 'not an image file PIL reads (extension .txt)'
MESSY_SKIPPED = {'.DS_Store': 'hidden file', '.cache/thumb.png': "hidden folder '.cache'",
                 'README.txt': NOT_IMAGE, 'a/.DS_Store': 'hidden file', 'a/notes.txt': NOT_IMAGE,
                 'a/sub/x.png': "subfolder of class folder 'a': only files directly inside a "
                                'class folder are images'}


def relative(paths: list[str], root: Path) -> list[str]:
    """Paths as 'class/name' strings relative to root."""
    return [Path(p).relative_to(root).as_posix() for p in paths]


def write_hdf5(path: Path, imgs: np.ndarray, labels: np.ndarray, **attrs) -> Path:
    """A minimal packed file with the given arrays and attrs."""
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=imgs)
        f.create_dataset('labels', data=labels)
        f.attrs.update(attrs)
    return path


def random_hdf5(path: Path, n: int = 24, r: int = 8, n_classes: int = 3) -> Path:
    """A packed file of n random r x r images with labels cycling over n_classes."""
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (n, 3, r, r), dtype=np.uint8)
    return write_hdf5(path, imgs, np.arange(n) % n_classes, n_classes=n_classes, resolution=r)


# ----------------------------------------------------------------------------- layout checks

def test_folder_checks_fire_with_helpful_messages(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ValueError, match='empty'):
        resolve_dataset(str(empty), resolution=32)

    loose = write_folder(tmp_path / 'loose', {'a': 1, 'b': 1})
    Image.new('RGB', (8, 8)).save(loose / 'stray.png')
    with pytest.raises(ValueError, match='1 images directly inside'):
        resolve_dataset(str(loose), resolution=32)

    one = write_folder(tmp_path / 'one', {'only': 2})
    with pytest.raises(ValueError, match='only one class subfolder') as info:
        resolve_dataset(str(one), resolution=32)
    assert 'label every image 0' in str(info.value)

    # ImageNet/train/<class>/...: one level too deep, the 2019 silent all-zero labels.
    nested = write_folder(tmp_path / 'ImageNet' / 'train', {'n01': 1, 'n02': 1})
    with pytest.raises(ValueError, match='nested one level too deep') as info:
        resolve_dataset(str(nested.parent), resolution=32)
    assert str(nested) in str(info.value)

    two = write_folder(tmp_path / 'two', {'a': 1, 'b': 1})
    with pytest.raises(ValueError, match='--resolution 33: the models have no architecture for '
                                         '33x33 images; use one of 32, 64, 128, 256, 512'):
        resolve_dataset(str(two), resolution=33)

    # train/ and val/ side by side: two "classes" whose images are one level deeper.
    write_folder(tmp_path / 'ImageNet' / 'val', {'n01': 1, 'n02': 1})
    with pytest.raises(ValueError, match='nested one level too deep'):
        get_data_loaders(str(tmp_path / 'ImageNet'), resolution=32, num_workers=0)


def test_hdf5_without_n_classes_reports_empty_classes_once(tmp_path):
    """A 2019 file's class count is its largest label + 1: a stray label 99 makes 96 empty
    classes, named compactly once per file however often start-up inspects it."""
    imgs = np.zeros((4, 3, 32, 32), np.uint8)
    stray = write_hdf5(tmp_path / 'stray.hdf5', imgs, np.array([0, 1, 2, 99]))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')  # Python's once-per-place filter off: ours must hold
        assert resolve_dataset(str(stray)).n_classes == 100
        resolve_dataset(str(stray))
        get_data_loaders(str(stray), num_workers=0)
    assert len(record) == 1
    message = str(record[0].message)
    assert '96 of its 100 classes have no images (labels 3-98)' in message
    assert 'no n_classes attribute' in message and 'largest label' in message
    attr = write_hdf5(tmp_path / 'attr.hdf5', imgs, np.array([0, 2, 2, 5]), n_classes=7)
    with pytest.warns(UserWarning, match=r"4 of its 7 classes have no images \(labels 1, 3-4, "
                                         r"6\); the class count is the file's n_classes attr"):
        assert resolve_dataset(str(attr)).n_classes == 7
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # every class has images: nothing to say
        full = str(random_hdf5(tmp_path / 'full.hdf5', r=32))
        assert resolve_dataset(full).n_classes == 3
        get_data_loaders(full, num_workers=0)


# ----------------------------------------------------------------------------- images

def test_modes_become_rgb():
    grey = Image.new('L', (4, 4), 100)
    assert np.asarray(to_rgb(grey))[0, 0].tolist() == [100, 100, 100]
    rgba = Image.new('RGBA', (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    half = Image.new('LA', (4, 4), (0, 128))
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [127, 127, 127]
    palette = Image.new('P', (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10])
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [200, 10, 10]
    palette.info['transparency'] = 1
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]
    cmyk = Image.new('CMYK', (4, 4), (0, 255, 255, 0))
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]
    deep = Image.fromarray(np.full((4, 4), 257 * 50, np.uint16))
    assert deep.mode.startswith('I') and np.asarray(to_rgb(deep))[0, 0].tolist() == [50] * 3
    for img in (grey, rgba, half, palette, cmyk, deep):
        assert to_rgb(img).mode == 'RGB'


def test_load_image_crops_the_centre_of_the_long_edge(tmp_path):
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, 4:12] = 255  # the centre square is white, the sides black
    Image.fromarray(pixels).save(tmp_path / 'wide.png')
    img = load_image(tmp_path / 'wide.png', 8)
    assert img.shape == (3, 8, 8) and img.dtype == np.uint8 and (img == 255).all()
    assert load_image(tmp_path / 'wide.png', 4).shape == (3, 4, 4)


def test_images_are_the_files_pil_opens_directly_inside_a_class_folder(tmp_path):
    assert {'.gif', '.tga', '.ico', '.jpeg', '.png', '.webp'} <= image_files.IMG_EXTENSIONS
    assert not {'.txt', '.pdf', ''} & image_files.IMG_EXTENSIONS  # PIL only writes PDF
    root = messy_folder(tmp_path / 'messy')
    listing = image_files.find_images(root)
    assert relative([p for p, _ in listing.samples], root) == MESSY_IMAGES
    assert [y for _, y in listing.samples] == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    skipped = dict(zip(relative([s.path for s in listing.skipped], root), listing.skipped))
    assert list(skipped) == list(MESSY_SKIPPED)
    assert all(words in skipped[name].reason for name, words in MESSY_SKIPPED.items())
    assert [s.kind for s in skipped.values()] == ['hidden', 'hidden', 'non-image', 'hidden',
                                                  'non-image', 'nested']


def test_gifs_give_their_first_frame_with_white_for_transparency(tmp_path):
    root = messy_folder(tmp_path / 'messy')
    anim = load_image(root / 'b' / 'anim.GIF', 8).transpose(1, 2, 0)  # (R, R, 3)
    assert (anim == [255, 0, 0]).all()  # the red first frame, not the blue second
    clear = load_image(root / 'b' / 'clear.gif', 8).transpose(1, 2, 0)
    assert (clear[:, :4] == 255).all() and (clear[:, 4:] == [200, 10, 10]).all()
