"""Tests of calculate_inception_moments.py on a tiny HDF5 dataset and random-weight networks."""
import urllib.error

import h5py
import numpy as np
import pytest
import torch

import calculate_inception_moments as cim
import inception_utils as iu


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


@pytest.fixture
def hdf5(tmp_path) -> tuple:
    """A 10-image 32x32 HDF5 dataset in the make_hdf5.py layout: (path, uint8 images)."""
    rng = np.random.default_rng(0)
    imgs = np.repeat(np.repeat(rng.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8), 4, 2), 4, 3)
    path = tmp_path / 'tiny.hdf5'
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=imgs)
        f.create_dataset('labels', data=np.arange(10, dtype=np.int64) % 3)
    return path, imgs


def run(path, weights_path, *extra) -> None:
    """The script on the tiny dataset: batches of 4 (the last one short), no workers."""
    cim.main(['--dataset', str(path), '--batch_size', '4', '--num_workers', '0',
              '--inception_weights', str(weights_path), '--num_splits', '2', *extra])


def test_moments_equal_numpy_over_the_same_features(hdf5, weights, capsys):
    path, imgs = hdf5
    run(path, weights['torchvision'])
    assert 'has IS of' in capsys.readouterr().out
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


def test_tf_network_writes_its_own_file(hdf5, weights):
    path, _ = hdf5
    run(path, weights['tf'], '--inception', 'tf', '--shuffle')
    mu, sigma = iu.load_moments(path.parent / 'tiny_inception_moments_tf.npz', 'tf')
    assert np.isfinite(sigma).all() and np.abs(mu).max() > 0
    assert not (path.parent / 'tiny_inception_moments.npz').exists()


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
