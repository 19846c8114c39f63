"""Tests of nearest_neighbours.py on tiny HDF5 data and a tiny run (CPU), with TinyInception
standing in for the Inception network as in test_evaluate.py: a training image is its own
nearest neighbour at distance 0, the neighbours are a brute-force search's, the sheet and the
CSV agree, a --num_samples run is searched in its subset, and bad input writes nothing."""
import csv
import functools
import re

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import stand_in
from test_sample import TRAIN_FLAGS

import biggan_api
import calculate_inception_moments as cim
import datasets
import grids
import inception_utils as iu
import nearest_neighbours as nn_py
import train
import utils
from flags import run_cli
from helpers import TinyInception, write_hdf5

pytestmark = [pytest.mark.filterwarnings('ignore::inception_utils.InceptionWeightsWarning'),
              pytest.mark.usefixtures('one_thread')]

N_IMAGES, R = 40, 32
NAMES = [f'shape{c}' for c in range(10)]


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Data (40 images, 10 named classes) with its features file made by
    calculate_inception_moments.py (shuffled order, batches of 7), a tiny run trained on it,
    and a stand-in weights file."""
    root = tmp_path_factory.mktemp('nn')
    (root / 'data').mkdir()
    data = write_hdf5(root / 'data' / 'shapes.hdf5', n=N_IMAGES, n_classes=10, resolution=R)
    with h5py.File(data, 'a') as f:
        f.attrs['classes'] = NAMES
    weights = root / 'stand_in.pth'
    weights.write_bytes(b'stand-in')
    with pytest.MonkeyPatch.context() as mp:
        stand_in(mp, TinyInception())
        cim.main(['--dataset', str(data), '--batch_size', '7', '--num_workers', '0',
                  '--shuffle', '--seed', '3', '--inception_weights', str(weights)])
    make_run(root, data, 'full')
    return dict(root=root, data=data, weights=weights)


def make_run(root, data, name, extra=None, *flags) -> dict:
    """A run folder on `data` as train.py leaves it (with `extra` in its state_dict.pth)."""
    argv = TRAIN_FLAGS + ['--base_root', str(root), '--dataset', str(data),
                          '--experiment_name', name, *flags]
    config = train.prepare_config(vars(utils.prepare_parser().parse_args(argv)))
    torch.manual_seed(0)
    G, D, G_ema = train.build_models(config, torch.device('cpu'))
    state = {'itr': 7, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
             'best_FID': 999999, 'config': config}
    utils.save_weights(G, D, state, config['weights_root'], name, G_ema=G_ema, extra=extra)
    return config


@pytest.fixture
def tiny_net(monkeypatch):
    """TinyInception in place of Inception; returns it."""
    net = TinyInception()
    stand_in(monkeypatch, net)
    return net


def training_images(data, indices) -> np.ndarray:
    """uint8 [n, 3, R, R] images of the HDF5 file at `indices`."""
    with h5py.File(data) as f:
        return f['imgs'][()][indices]


def run_nn(world, tmp_path, *argv) -> tuple[dict, list[dict], Image.Image]:
    """nearest_neighbours.run with the stand-in weights and --out; (result, CSV rows, sheet)."""
    out = tmp_path / 'out'
    done = nn_py.run([*map(str, argv), '--inception_weights', str(world['weights']),
                      '--out', str(out)])
    with open(done['csv'], newline='') as f:
        rows = list(csv.DictReader(f))
    return done, rows, Image.open(done['sheet']).convert('RGB')


def sheet_cell(sheet: Image.Image, k: int, row: int, col: int) -> np.ndarray:
    """uint8 [3, R, R] image at (row, col) of a sheet of k neighbours (its grid is on the
    right: the labels are on the left)."""
    side = R + grids.PADDING
    left = sheet.width - (k + 1) * side + col * side
    top = grids.PADDING + row * side
    return np.asarray(sheet.crop((left, top, left + R, top + R))).transpose(2, 0, 1)


def test_stored_indices_are_the_images_of_the_features(world, tiny_net):
    """calculate_inception_moments.py records which image each kept feature is, shuffled and
    subsampled alike: row j is TinyInception's features of image indices[j]."""
    path = world['root'] / 'data' / 'shapes_inception_moments_features.npz'
    with np.load(path) as f:
        feats, labels, indices = f['features'], f['labels'], f['indices']
    assert sorted(indices) == list(range(N_IMAGES)) and list(indices) != sorted(indices)
    x = datasets.to_float(training_images(world['data'], indices))
    with torch.no_grad():
        np.testing.assert_allclose(feats, tiny_net(x)[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, indices % 10)


def test_a_training_image_is_its_own_nearest_neighbour_at_distance_0(world, tmp_path,
                                                                       tiny_net):
    """Training images fed as samples (--images): rank 1 is the image itself at distance
    exactly 0; the next neighbour is farther."""
    picks = [3, 17, 39]
    np.savez(tmp_path / 'train.npz', x=training_images(world['data'], picks),
             y=np.array(picks) % 10)
    done, rows, _ = run_nn(world, tmp_path, '--images', tmp_path / 'train.npz', '--dataset',
                           world['data'], '--k', 3)
    first = [r for r in rows if r['rank'] == '1']
    assert [int(r['train_index']) for r in first] == picks
    assert [float(r['distance']) for r in first] == [0.0, 0.0, 0.0]
    assert [r['copy'] for r in rows] == ['1', '0', '0'] * 3
    assert (done['distances'][:, 1] > 0).all()
    assert first[0]['sample_class_name'] == 'shape3' == first[0]['train_class_name']


def test_a_features_file_from_before_indices_is_read_when_it_holds_every_image_in_order(
        world, tmp_path, tiny_net):
    """A file without indices that kept every image, labels in the data's order (made without
    --shuffle), is taken as rows = dataset indices."""
    data = tmp_path / 'data.hdf5'
    data.write_bytes(world['data'].read_bytes())
    with np.load(world['root'] / 'data' / 'shapes_inception_moments_features.npz') as f:
        kept = {key: f[key] for key in f if key != 'indices'}
        order = np.argsort(f['indices'])
    kept.update(features=kept['features'][order], labels=kept['labels'][order])
    np.savez(tmp_path / 'data_inception_moments_features.npz', **kept)
    np.savez(tmp_path / 'one.npz', x=training_images(world['data'], [21]))
    _, rows, _ = run_nn(world, tmp_path, '--images', tmp_path / 'one.npz', '--dataset', data,
                        '--k', 2)
    assert (rows[0]['train_index'], rows[0]['distance'], rows[1]['copy']) == ('21', '0.0', '0')


def test_neighbours_are_a_brute_force_search_and_the_sheet_shows_the_csv(world, tmp_path,
                                                                       tiny_net):
    """Noise images: the CSV's neighbours and distances are numpy's brute-force k nearest of
    the stored features, sorted; the sheet is N rows of the sample then the CSV's training
    images, (k + 1) columns plus a label margin, labelled 'sample i' (no labels)."""
    n, k = 5, 4
    x = np.random.default_rng(1).integers(0, 256, (n, R, R, 3), dtype=np.uint8)
    np.savez(tmp_path / 'noise.npz', x=x)
    done, rows, sheet = run_nn(world, tmp_path, '--images', tmp_path / 'noise.npz',
                               '--dataset', world['data'], '--k', k)
    path = world['root'] / 'data' / 'shapes_inception_moments_features.npz'
    with np.load(path) as f:
        feats, indices = f['features'].astype(np.float64), f['indices']
    with torch.no_grad():
        query = tiny_net(datasets.to_float(x.transpose(0, 3, 1, 2)))[0].double().numpy()
    brute = np.sqrt(((query[:, None] - feats[None]) ** 2).sum(-1))  # [n, 40]
    order = np.argsort(brute, axis=1, kind='stable')[:, :k]
    assert [(int(r['sample']), int(r['rank'])) for r in rows] == [
        (s, j) for s in range(n) for j in range(1, k + 1)]
    got = np.array([int(r['train_index']) for r in rows]).reshape(n, k)
    np.testing.assert_array_equal(got, indices[order])
    np.testing.assert_allclose([float(r['distance']) for r in rows],
                               np.take_along_axis(brute, order, 1).ravel(), rtol=1e-9)
    assert all(r['searched_images'] == r['dataset_images'] == str(N_IMAGES) for r in rows)
    side = R + grids.PADDING
    assert sheet.height == n * side + grids.PADDING
    margin = sheet.width - ((k + 1) * side + grids.PADDING)
    assert margin > 0 and margin % 16 == 0 and np.asarray(sheet)[:, :margin].min() < 128
    for s in range(n):
        np.testing.assert_array_equal(sheet_cell(sheet, k, s, 0), x[s].transpose(2, 0, 1))
        np.testing.assert_array_equal(
            np.stack([sheet_cell(sheet, k, s, j + 1) for j in range(k)]),
            training_images(world['data'], got[s]))


def test_a_runs_samples_are_sample_pys_seeded_images(world, tmp_path, tiny_net):
    """--classes by name and index, --num per class from --seed: each row's sample is the
    image biggan_api (sample.py --classes --seeds) gives for its class and seed, labelled with
    the class name; the CSV's seeds and classes say which."""
    flags = ['--base_root', world['root'], '--experiment_name', 'full']
    done, rows, sheet = run_nn(world, tmp_path, *flags, '--classes', 'shape2,7', '--num', 2,
                               '--seed', 5, '--k', 2)
    first = [r for r in rows if r['rank'] == '1']
    assert [(r['sample_class'], r['seed']) for r in first] == [
        ('2', '5'), ('2', '6'), ('7', '5'), ('7', '6')]
    assert first[2]['sample_class_name'] == 'shape7'
    run = biggan_api.load(world['root'] / 'weights' / 'full', device='cpu')
    images = torch.cat([run.sample([c], seeds=[s]) for c, s in [(2, 5), (2, 6), (7, 5), (7, 6)]])
    expected = utils.to_uint8(images).permute(0, 3, 1, 2).numpy()
    for s in range(4):
        np.testing.assert_array_equal(sheet_cell(sheet, 2, s, 0), expected[s])
    assert done['sheet'] == tmp_path / 'out' / 'nn_sheet.png'


def test_a_num_samples_run_searches_only_its_subset(world, tmp_path, tiny_net):
    """A --num_samples 12 run: the neighbours come from the 12 images train.py drew with the
    run's seed (not the --seed given for sampling), or from the subset its checkpoint
    recorded; --data_pass finds the same neighbours as the features file; k 13 is refused."""
    root, data = world['root'], world['data']
    make_run(root, data, 'small', None, '--num_samples', '12', '--seed', '1')
    recorded = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 39]
    make_run(root, data, 'kept', {'subset': recorded}, '--num_samples', '12')
    drawn = datasets.choose_subset(N_IMAGES, 12, 1)
    for name, subset in (('small', drawn), ('kept', recorded)):
        flags = ['--base_root', root, '--experiment_name', name, '--num', 6, '--seed', 4,
                 '--num_workers', 0]
        done, rows, _ = run_nn(world, tmp_path, *flags, '--k', 12)
        assert {int(r['train_index']) for r in rows} == set(subset), name
        assert {r['searched_images'] for r in rows} == {'12'}, name
        passed, _, _ = run_nn(world, tmp_path, *flags, '--k', 12, '--data_pass')
        np.testing.assert_array_equal(passed['neighbours'], done['neighbours'])
        np.testing.assert_allclose(passed['distances'], done['distances'], rtol=1e-5)
        with pytest.raises(ValueError, match='--k 13: only 12 training images are searched'):
            nn_py.run([*map(str, flags), '--k', '13', '--inception_weights',
                       str(world['weights']), '--out', str(tmp_path / 'never')])
    assert not (tmp_path / 'never').exists()


def bad_inputs(world, tmp_path) -> dict:
    """{name: (argv, what the error says)} of inputs nearest_neighbours.py must refuse."""
    root, data = world['root'], world['data']
    run = ['--base_root', str(root), '--experiment_name', 'full']
    np.savez(tmp_path / 'small.npz', x=np.zeros((3, 16, 16, 3), np.uint8))
    bare = write_hdf5(tmp_path / 'bare.hdf5', n=N_IMAGES, n_classes=10, resolution=R)
    old = tmp_path / 'old.hdf5'
    old.write_bytes(data.read_bytes())
    with np.load(root / 'data' / 'shapes_inception_moments_features.npz') as f:
        kept = {key: f[key] for key in f if key != 'indices'}  # as written before indices
    np.savez(tmp_path / 'old_inception_moments_features.npz', **kept)
    return {
        'class_index': ([*run, '--classes', '10'], r'--classes: .*10'),
        'class_name': ([*run, '--classes', 'shape2,circle'], r"--classes: .*'circle'"),
        'resolution': ([*run, '--images', str(tmp_path / 'small.npz')],
                       r'small.npz holds 16x16 images; the training data are 32x32'),
        'no_features': ([*run, '--dataset', str(bare)],
                        r'bare_inception_moments_features.npz not found; make it .* with: '
                        r'python calculate_inception_moments.py --dataset .*bare.hdf5.*; or '
                        r'pass --data_pass'),
        'no_indices': ([*run, '--dataset', str(old)],
                       r'does not record which training images .* remake it with: python '
                       r'calculate_inception_moments.py .*; or pass --data_pass'),
        'k': ([*run, '--k', '41'], r'--k 41: only 40 training images are searched'),
        'images_no_dataset': (['--images', str(tmp_path / 'small.npz')],
                              r'--images without a run .* needs --dataset'),
        'no_run': (['--base_root', str(root), '--experiment_name', 'absent'],
                   r'no run folder .*absent'),
        'num': ([*run, '--num', '0'], r'0 samples: give 1 to'),
    }


def test_bad_input_is_one_error_line_and_writes_nothing(world, tmp_path, monkeypatch, capsys):
    """Each bad input: one `nearest_neighbours.py: error:` line saying what is wrong, before
    G or the Inception network is loaded, and no output folder."""
    def no_work(*args, **kwargs):
        pytest.fail('a network was loaded for a bad input')
    monkeypatch.setattr(iu, 'load_inception_net', no_work)
    monkeypatch.setattr(nn_py.sample, 'build_sampler', no_work)
    for name, (argv, message) in bad_inputs(world, tmp_path).items():
        out = tmp_path / 'out'
        argv = [*argv, '--inception_weights', str(world['weights']), '--out', str(out)]
        status = run_cli(functools.partial(nn_py.main, argv), 'nearest_neighbours.py')
        err = capsys.readouterr().err.splitlines()
        assert status == 1, (name, err)
        assert err[0].startswith('nearest_neighbours.py: error: '), (name, err)
        assert re.search(message, err[0]), (name, err[0])
        assert not out.exists(), name
