"""Tests of image_transforms.py: the exact pixels of each transform on non-square images
(coded so the expected output is computed by hand), a folder loader and a training run that
use one, and an HDF5 run that records its file's and refuses another (make_hdf5.py's side is in
test_make_hdf5.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_image_files import random_hdf5

import make_hdf5
import train
import utils
from datasets import get_data_loaders, to_float
from image_files import load_image
from image_transforms import ImageTransform
from test_train import TINY_FLAGS


def coded(w: int, h: int) -> Image.Image:
    """A w x h image whose red is the column, green the row and blue 200 at every pixel."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 200)], -1).astype(np.uint8))


def non_square_folder(root: Path) -> Path:
    """Two classes of coded images (see `coded`): 64x32 and 100x37, 32x64 and 40x90."""
    for name, sizes in {'a_wide': [(64, 32), (100, 37)], 'b_tall': [(32, 64), (40, 90)]}.items():
        (root / name).mkdir(parents=True)
        for w, h in sizes:
            coded(w, h).save(root / name / f'{w}x{h}.png')
    return root


def transformed(tmp_path: Path, img: Image.Image, r: int, *args) -> np.ndarray:
    """The image saved as PNG and read by load_image with ImageTransform(*args): (R, R, 3)."""
    img.save(tmp_path / 'img.png')
    return load_image(tmp_path / 'img.png', r, ImageTransform(*args)).transpose(1, 2, 0)


@pytest.mark.parametrize('size, left, top', [((64, 32), 16, 0), ((32, 64), 0, 16),
                                             ((100, 37), 32, 0)])
def test_center_crop_keeps_the_middle_square(tmp_path, size, left, top):
    s = min(size)
    out = transformed(tmp_path, coded(*size), s, 'center-crop')
    assert out.shape == (s, s, 3)
    assert (out[..., 0] == np.arange(left, left + s)[None]).all()
    assert (out[..., 1] == np.arange(top, top + s)[:, None]).all() and (out[..., 2] == 200).all()
    assert np.array_equal(out, transformed(tmp_path, coded(*size), s))  # the default


@pytest.mark.parametrize('size, r, columns, rows, band', [
    ((64, 32), 64, (0, 64), (0, 32), (16, 48)),    # exactly 2:1: all of it
    ((100, 37), 74, (13, 87), (0, 37), (18, 55)),  # wider: the middle 74 columns
    ((32, 64), 32, (0, 32), (24, 40), (8, 24)),    # narrower: the middle 16 rows
])
def test_center_crop_wide_letterboxes_the_middle_2_to_1_window(tmp_path, size, r, columns,
                                                                rows, band):
    out = transformed(tmp_path, coded(*size), r, 'center-crop-wide')
    assert out.shape == (r, r, 3)
    inside = out[band[0]:band[1]]
    assert (inside[..., 0] == np.arange(*columns)[None]).all()
    assert (inside[..., 1] == np.arange(*rows)[:, None]).all() and (inside[..., 2] == 200).all()
    assert (out[:band[0]] == 0).all() and (out[band[1]:] == 0).all()  # black bars


def test_center_crop_wide_resizes_the_window_to_half_height(tmp_path):
    thirds = np.zeros((50, 300, 3), np.uint8)  # 6:1, red | green | blue thirds
    thirds[:, :100, 0], thirds[:, 100:200, 1], thirds[:, 200:, 2] = 255, 255, 255
    out = transformed(tmp_path, Image.fromarray(thirds), 32, 'center-crop-wide')
    assert (out[8:24] == [0, 255, 0]).all()  # the 100 x 50 window is the green third
    assert (out[:8] == 0).all() and (out[24:] == 0).all()


@pytest.mark.parametrize('size, above, below', [((64, 32), 16, 16), ((100, 37), 31, 32)])
def test_pad_reflects_or_fills_the_rows_above_and_below(tmp_path, size, above, below):
    w, h = size
    out = transformed(tmp_path, coded(w, h), w, 'pad')
    # Reflection without repeating the edge: rows (above..1), 0..h-1, (h-2..h-1-below).
    source = [*range(above, 0, -1), *range(h), *range(h - 2, h - 2 - below, -1)]
    assert out.shape == (w, w, 3) and (out[..., 1] == np.array(source)[:, None]).all()
    assert (out[..., 0] == np.arange(w)[None]).all() and (out[..., 2] == 200).all()
    out = transformed(tmp_path, coded(w, h), w, 'pad-constant', 9)
    assert (out[:above] == 9).all() and (out[above + h:] == 9).all()
    assert np.array_equal(out[above:above + h], np.asarray(coded(w, h)))


def test_pad_of_a_tall_image_fills_columns(tmp_path):
    out = transformed(tmp_path, coded(32, 64), 64, 'pad')
    assert (out[..., 0] == np.array([*range(16, 0, -1), *range(32), *range(30, 14, -1)])).all()
    out = transformed(tmp_path, coded(32, 64), 32, 'pad-constant', 255)  # then resized 2x
    assert out.shape == (32, 32, 3) and (out[:, :7] == 255).all() and (out[:, 25:] == 255).all()


def test_transform_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match="unknown transform 'crop': choose from center-crop, "
                                         'center-crop-wide, pad, pad-constant'):
        ImageTransform('crop')
    with pytest.raises(ValueError, match='pad_value 5 is the fill of the pad-constant'):
        ImageTransform('pad', 5)
    with pytest.raises(ValueError, match='an integer in 0-255'):
        ImageTransform('pad-constant', 256)


def test_folder_loader_applies_the_transform(tmp_path):
    folder = non_square_folder(tmp_path / 'shapes')
    loader = get_data_loaders(str(folder), resolution=32, batch_size=4, num_workers=0,
                              shuffle=False, transform='pad-constant', pad_value=7)[0]
    x, _ = next(iter(loader))
    paths = loader.dataset.paths
    pad = ImageTransform('pad-constant', 7)
    assert torch.equal(x, torch.stack([to_float(load_image(p, 32, pad)) for p in paths]))
    assert x[0, :, 0].eq(7 / 127.5 - 1).all()  # 64x32: the top rows are the fill


def test_a_folder_run_trains_on_the_transform_and_records_it(tmp_path):
    folder = non_square_folder(tmp_path / 'shapes')
    state = train.main(['--dataset', str(folder), '--resolution', '32', '--transform', 'pad',
                        '--base_root', str(tmp_path / 'run'), *TINY_FLAGS, '--num_epochs', '1'])
    assert state['itr'] == 1
    [config_file] = (tmp_path / 'run' / 'weights').glob('*/config.json')
    assert config_file.parent.name.endswith('_ema_transform-pad')  # the default adds nothing
    config = json.loads(config_file.read_text())
    assert (config['transform'], config['pad_value']) == ('pad', 0)


def test_an_hdf5_run_records_the_files_transform_and_refuses_another(tmp_path):
    folder = non_square_folder(tmp_path / 'shapes')
    packed = make_hdf5.pack_folder(folder, tmp_path / 'wide.hdf5', 32, num_workers=0,
                                   progress=False, transform=ImageTransform('center-crop-wide'))
    old = random_hdf5(tmp_path / 'old.hdf5', r=32)  # no transform attribute: packed before
    for path, typed, recorded in [(packed.path, [], 'center-crop-wide'),
                                  (packed.path, ['--transform', 'center-crop-wide'],
                                   'center-crop-wide'),
                                  (old, [], 'center-crop')]:
        argv = ['--dataset', str(path), '--base_root', str(tmp_path / 'run'), *typed]
        config = train.prepare_config(*utils.parse_given(utils.prepare_parser, argv))
        assert (config['transform'], config['pad_value']) == (recorded, 0)
        assert 'transform' not in config['experiment_name'] or typed
    for typed in (['--transform', 'pad'], ['--transform', 'center-crop']):
        with pytest.raises(ValueError, match=f'--transform {typed[1]}: .*wide.hdf5 was packed '
                                             'with the transform center-crop-wide.*repack'):
            train.main(['--dataset', str(packed.path), '--base_root', str(tmp_path / 'run'),
                        *typed])
    assert not (tmp_path / 'run').exists()
