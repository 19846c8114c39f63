"""Tests of calculate_inception_moments.py on a tiny HDF5 dataset and random-weight networks.

The random weights are not the published ones: their InceptionWeightsWarning is silenced.
"""
import shlex
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import calculate_inception_moments as cim
import datasets
import inception_utils as iu

pytestmark = pytest.mark.filterwarnings('ignore::inception_utils.InceptionWeightsWarning')


@pytest.fixture(scope='module')
def weights(tmp_path_factory) -> dict:
    """{kind: path} of random-weight state dicts, He-init convs so features are not ~0."""
    root = tmp_path_factory.mktemp('weights')
    torch.manual_seed(0)
    paths = {}
    for kind in iu.INCEPTIONS:
        net = iu._inception_v3(kind)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
        paths[kind] = root / f'{kind}.pth'
        torch.save(net.state_dict(), paths[kind])
    return paths


def write_hdf5(path: Path) -> np.ndarray:
    """A 10-image 32x32 HDF5 dataset in the make_hdf5.py layout; returns its uint8 images."""
    rng = np.random.default_rng(0)
    imgs = np.repeat(np.repeat(rng.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8), 4, 2), 4, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=imgs)
        f.create_dataset('labels', data=np.arange(10, dtype=np.int64) % 3)
    return imgs


def write_folder(root: Path) -> None:
    """A 10-image folder dataset, two classes of 48x40 PNGs."""
    rng = np.random.default_rng(1)
    for i in range(10):
        (root / f'class{i % 2}').mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f'class{i % 2}' / f'{i}.png')


@pytest.fixture
def hdf5(tmp_path) -> tuple:
    """A 10-image 32x32 HDF5 dataset: (path, uint8 images)."""
    path = tmp_path / 'tiny.hdf5'
    return path, write_hdf5(path)


def run(path, weights_path, *extra) -> None:
    """The script on the tiny dataset: batches of 4 (the last one short), no workers."""
    cim.main(['--dataset', str(path), '--batch_size', '4', '--num_workers', '0',
              '--inception_weights', str(weights_path), '--num_splits', '2', *extra])


def test_moments_and_features_equal_numpy_over_the_same_features(hdf5, weights, capsys):
    path, imgs = hdf5
    run(path, weights['torchvision'])
    assert 'has IS of' in capsys.readouterr().out
    features = iu.load_features(path.parent / 'tiny_inception_moments_features.npz')
    with np.load(path.parent / 'tiny_inception_moments.npz') as f:
        mu, sigma, kind = f['mu'], f['sigma'], str(f['inception'])
    assert mu.dtype == sigma.dtype == np.float64 and kind == 'torchvision'
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)

    net = iu.load_inception_net(inception='torchvision', inception_weights=weights['torchvision'],
                                device='cpu')
    with torch.no_grad():
        pool, _ = net(torch.from_numpy(imgs).float() / 127.5 - 1)  # as datasets.to_float
    feats = pool.double().numpy()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-5, atol=1e-6 * np.abs(mu).max())
    ref = np.cov(feats, rowvar=False)
    np.testing.assert_allclose(sigma, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # The same pass kept every image's features (10 < --num_features 50000), in order.
    assert features.dtype == np.float32 and features.shape == (10, 2048)
    np.testing.assert_allclose(features, feats, rtol=1e-4, atol=1e-5 * np.abs(feats).max())
    # At most --num_features: a subset drawn with a fixed seed.
    run(path, weights['torchvision'], '--num_features', '6')
    assert 'Saved the features of 6 of them' in capsys.readouterr().out
    with np.load(path.parent / 'tiny_inception_moments_features.npz') as f:
        subset, count = f['features'], int(f['num_images'])
    rows = iu.feature_subset(10, 6)
    assert count == 10 and len(set(rows)) == 6
    np.testing.assert_allclose(subset, feats[rows], rtol=1e-4, atol=1e-5 * np.abs(feats).max())


def test_tf_network_writes_its_own_file(hdf5, weights):
    path, _ = hdf5
    run(path, weights['tf'], '--inception', 'tf', '--shuffle', '--num_features', '0')
    mu, sigma = iu.load_moments(path.parent / 'tiny_inception_moments_tf.npz', 'tf')
    assert np.isfinite(sigma).all() and np.abs(mu).max() > 0
    assert not (path.parent / 'tiny_inception_moments.npz').exists()
    assert not list(path.parent.glob('*features*'))  # --num_features 0: no features file


def test_fewer_images_than_splits_is_an_error(hdf5, weights):
    with pytest.raises(ValueError, match='got 10 samples for 20 splits'):
        run(hdf5[0], weights['torchvision'], '--num_splits', '20')


def test_missing_weights_fail_before_the_data_pass(hdf5, tmp_path, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05-6726825d.pth'):
        cim.main(['--dataset', str(hdf5[0]), '--num_workers', '0', '--inception', 'tf'])
    assert not list(tmp_path.glob('*.npz'))


def test_2019_flags_and_defaults():
    args = cim.prepare_parser().parse_args([])
    assert (args.dataset, args.data_root, args.batch_size, args.num_workers) == (
        'I128_hdf5', 'data', 64, 8)
    assert (args.parallel, args.augment, args.shuffle, args.seed) == (False, False, False, 0)
    assert (args.inception, args.inception_weights) == ('torchvision', '')
    assert args.num_features == 50000


def suggested_command(spec: datasets.DatasetSpec, inception: str, weights: Path,
                      **kwargs) -> list[str]:
    """The flags of the command the missing-moments error of `spec` suggests."""
    with pytest.raises(FileNotFoundError, match='make it with: ') as err:
        iu.check_inception_ready(spec.moments_path, inception, weights, **kwargs)
    argv = shlex.split(str(err.value).split('make it with: ')[1])
    assert argv[:2] == ['python', 'calculate_inception_moments.py']
    return argv[2:]


@pytest.mark.parametrize('layout', ['hdf5 path', 'folder path', pytest.param(
    '2019 name', marks=pytest.mark.filterwarnings('ignore:.*classes have no images'))])
def test_missing_moments_error_suggests_a_command_that_writes_them(tmp_path, weights, layout):
    """The command the error suggests, run as given, writes the very file that was missing."""
    data = tmp_path / 'data'
    inception, resolution = 'tf' if layout == '2019 name' else 'torchvision', None
    if layout == 'hdf5 path':
        write_hdf5(data / 'mini_32.hdf5')
        dataset, expected = str(data / 'mini_32.hdf5'), [str(data / 'mini_32.hdf5')]
    elif layout == 'folder path':
        write_folder(data / 'mini')
        dataset, resolution = str(data / 'mini'), 32
        expected = [str(data / 'mini'), '--resolution', '32']
    else:
        write_hdf5(data / 'ILSVRC32.hdf5')
        dataset, expected = 'I32_hdf5', ['I32_hdf5', '--data_root', str(data)]
    spec = datasets.resolve_dataset(dataset, str(data), resolution=resolution)
    argv = suggested_command(spec, inception, weights[inception], resolution=resolution)
    assert argv[argv.index('--dataset') + 1:][:len(expected)] == expected
    missing = iu.moments_file(spec.moments_path, inception)
    assert not missing.exists()
    cim.main(argv + ['--num_workers', '0'])  # as suggested; no loader processes in a test
    mu, sigma = iu.load_moments(missing, inception)
    assert np.isfinite(sigma).all() and np.abs(mu).max() > 0


def test_suggested_command_names_only_data_that_writes_the_missing_file(tmp_path):
    data = tmp_path / 'data'
    write_folder(data / 'mini')  # mini_32's moments come from mini_32.hdf5, not from mini/
    with pytest.raises(FileNotFoundError) as err:
        iu.load_moments(data / 'mini_32_inception_moments.npz')
    assert '--dataset PATH' in str(err.value) and str(data / 'mini_32.hdf5') in str(err.value)
    with pytest.raises(FileNotFoundError, match='--dataset .*mini --resolution RESOLUTION'):
        iu.load_moments(data / 'mini_inception_moments.npz')  # no resolution given
    with pytest.raises(FileNotFoundError, match=r'--dataset C10 --data_root \S*data$'):
        iu.load_moments(data / 'C10_inception_moments.npz')
    (data / 'ImageNet').mkdir()  # the folder I64 reads, and no ILSVRC64.hdf5
    with pytest.raises(FileNotFoundError, match='--dataset I64 --data_root .* --inception tf'):
        iu.load_moments(data / 'I64_inception_moments_tf.npz', 'tf')


def test_missing_features_error_suggests_a_command_that_writes_them(tmp_path, weights):
    """--which_best KID's check: the error names the features file and a command that,
    run as given, writes it (the moments exist: a 2019 moments file, say)."""
    data = tmp_path / 'data'
    write_hdf5(data / 'mini_32.hdf5')
    spec = datasets.resolve_dataset(str(data / 'mini_32.hdf5'), str(data))
    iu.save_moments(spec.moments_path, np.zeros(2048), np.eye(2048), 'torchvision')
    iu.check_inception_ready(spec.moments_path, 'torchvision', weights['torchvision'])
    missing = iu.features_file(spec.moments_path, 'torchvision')
    assert missing == data / 'mini_32_inception_moments_features.npz'
    with pytest.raises(FileNotFoundError, match='make it .* with: ') as err:
        iu.check_inception_ready(spec.moments_path, 'torchvision', weights['torchvision'],
                                 features=True)
    assert str(missing) in str(err.value)
    argv = shlex.split(str(err.value).split(' with: ')[1])
    assert argv[:2] == ['python', 'calculate_inception_moments.py']
    cim.main(argv[2:] + ['--num_workers', '0'])
    iu.check_inception_ready(spec.moments_path, 'torchvision', weights['torchvision'],
                             features=True)
    assert len(iu.load_features(missing)) == 10
