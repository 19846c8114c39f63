"""Tests of inception_utils: the networks, their weights, moments files, IS/FID end to end.

The networks carry random weights saved to temp files (no download is possible here); conv
weights get He init so random features keep a useful scale through the 90-odd layers. Those
files are not the published ones, so their InceptionWeightsWarning is expected and silenced,
except in the tests of that warning.
"""
import hashlib
import math
import shutil
import urllib.error
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import inception_utils as iu
import metrics

pytestmark = pytest.mark.filterwarnings('ignore::inception_utils.InceptionWeightsWarning')


def he_init_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """He-normal conv weights (the default init shrinks activations ~1e-8 by the pool)."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    return net


@pytest.fixture(scope='session')
def weights(tmp_path_factory) -> dict:
    """{kind: path} of random-weight state dicts in each network's own file format."""
    root = tmp_path_factory.mktemp('inception_weights')
    paths = {}
    for kind in iu.INCEPTIONS:
        paths[kind] = root / f'{kind}.pth'
        torch.save(he_init_(iu._inception_v3(kind)).state_dict(), paths[kind])
    return paths


def images(n: int, seed: int, res: int = 64) -> torch.Tensor:
    """n random smooth images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return F.interpolate(low, size=(res, res), mode='bilinear', align_corners=False)


# ----------------------------------------------------------------------------- moments files

def test_moments_file_round_trip_and_errors(tmp_path):
    mu, sigma = np.arange(2048.0), np.eye(2048)
    path = tmp_path / 'I128_hdf5_inception_moments.npz'
    iu.save_moments(path, mu, sigma, 'torchvision')
    got_mu, got_sigma = iu.load_moments(path, 'torchvision')
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)
    assert iu.moments_file(path, 'tf').name == 'I128_hdf5_inception_moments_tf.npz'
    with pytest.raises(ValueError, match="made with the 'torchvision' Inception"):
        iu.load_moments(path, 'tf')
    with pytest.raises(FileNotFoundError, match='python calculate_inception_moments.py '
                       '--dataset I128_hdf5 --data_root .* --inception tf'):
        iu.load_moments(iu.moments_file(path, 'tf'), 'tf')
    np.savez(path, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match=r'mu \(64,\).*needs Inception pool features'):
        iu.load_moments(path)


# ----------------------------------------------------------------------------- networks

def test_torchvision_loader_matches_torchvision_model(weights):
    net = iu.load_inception_net(inception='torchvision', inception_weights=weights['torchvision'],
                                device='cpu')
    ref = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    ref.load_state_dict(torch.load(weights['torchvision'], weights_only=True))
    ref.eval()
    x = images(3, seed=0)
    # The 2019 input handling: [-1, 1] -> ImageNet mean/std, bilinear to 299.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x_ref = F.interpolate(((x + 1) / 2 - mean) / std, size=(299, 299), mode='bilinear',
                          align_corners=True)
    with torch.no_grad():
        pool, logits = net(x)
        ref_logits = ref(x_ref)
        ref.fc = torch.nn.Identity()
        ref_pool = ref(x_ref)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1000)
    assert pool.std(0).mean() > 1e-3  # images give distinct features
    torch.testing.assert_close(pool, ref_pool, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)


def test_tf_loader_matches_pytorch_fid(weights, monkeypatch):
    import pytorch_fid.inception as pfi
    state = torch.load(weights['tf'], weights_only=True)
    assert state['fc.weight'].shape == (1008, 2048)
    monkeypatch.setattr(pfi, 'load_state_dict_from_url', lambda *a, **k: state)
    ref = pfi.InceptionV3([3]).eval()  # pytorch_fid's own FID network, our weights
    net = iu.load_inception_net(inception='tf', inception_weights=weights['tf'], device='cpu')
    x = images(3, seed=1)
    with torch.no_grad():
        pool, logits = net(x)
        ref_pool = ref((x + 1) / 2)[0].flatten(1)  # pytorch_fid takes [0, 1]
    torch.testing.assert_close(pool, ref_pool, rtol=1e-4, atol=1e-5)
    # IS logits as the TF code: pool_3 times the softmax weight, no bias.
    torch.testing.assert_close(logits, pool @ state['fc.weight'].T)


def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch, weights):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    for kind, name in (('torchvision', 'inception_v3_google-0cc3c7bd.pth'),
                       ('tf', 'pt_inception-2015-12-05-6726825d.pth')):
        cached = tmp_path / 'checkpoints' / name
        with pytest.raises(FileNotFoundError) as err:
            iu.load_inception_net(inception=kind, device='cpu')
        assert str(cached) in str(err.value) and '--inception_weights' in str(err.value)
        # The hub cache is used when the file is there.
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.symlink_to(weights[kind])
        assert iu.resolve_inception_weights(kind) == cached
    with pytest.raises(FileNotFoundError, match='--inception_weights .*nope.pth does not exist'):
        iu.resolve_inception_weights('tf', tmp_path / 'nope.pth')
    with pytest.raises(ValueError, match="not a state dict of the 'torchvision'"):
        iu.check_inception_ready(tmp_path / 'x.npz', 'torchvision', weights['tf'], no_fid=True)


def test_a_file_that_is_not_inception_weights_says_what_it_holds(tmp_path):
    """A junk --inception_weights file ended in torch's internals ('pop from empty list', or
    a list of 580 missing keys): say what was found instead."""
    junk, text, other = tmp_path / 'junk.pth', tmp_path / 'text.pth', tmp_path / 'other.pth'
    junk.write_bytes(bytes(range(256)) * 100)
    text.write_text('not a checkpoint\n')
    torch.save({'a': torch.zeros(3)}, other)
    expected = {junk: r'it is 25,600 bytes of binary data, which torch.load cannot read as '
                      r'weights \(\w+\)\. Get https://\S+ and pass it with --inception_weights',
                text: r"it is 17 bytes of text starting 'not a checkpoint\\n', which",
                other: r"it holds 1 tensors \(e.g. a\) and matches 0 of the network's 580; 580 "
                       r'are missing \(e.g. Conv2d_1a_3x3.conv.weight, Conv2d_1a_3x3.bn.weight\); '
                       r'1 are not in the network \(e.g. a\)\. Get https://'}
    for path, message in expected.items():
        with pytest.raises(ValueError, match=f"{path} is not a state dict of the 'torchvision' "
                                             f'Inception-v3: {message}'):
            iu.load_inception_net(inception='torchvision', inception_weights=path, device='cpu')


# ----------------------------------------------------------------------------- weights hash

def test_expected_hash_prefixes_are_the_ones_in_the_published_names():
    for kind in iu.INCEPTIONS:
        assert iu.hub_weights_path(kind).name.endswith(f'-{iu.WEIGHTS_SHA256[kind]}.pth')


def test_unpublished_weights_warn_with_both_prefixes_once(tmp_path, monkeypatch):
    fake = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'  # the published name, not bytes
    fake.write_bytes(b'a random network, not the published weights')
    got = hashlib.sha256(fake.read_bytes()).hexdigest()[:8]
    with pytest.warns(iu.InceptionWeightsWarning) as record:
        iu.check_weights_hash(fake, 'tf')
    message = str(record[0].message)
    for part in (str(fake), f'starts {got}', 'starts 6726825d', iu.WEIGHTS_URLS['tf']):
        assert part in message
    # Once per file per process: neither hashed nor warned about again.
    monkeypatch.setattr(iu, 'file_sha256', lambda path: pytest.fail(f'hashed {path} again'))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        iu.check_weights_hash(fake, 'tf')


def test_published_weights_give_no_warning(tmp_path, monkeypatch):
    content = b'stands in for the published file'
    prefix = hashlib.sha256(content).hexdigest()[:8]
    path = tmp_path / f'pt_inception-2015-12-05-{prefix}.pth'  # name and content agree
    path.write_bytes(content)
    monkeypatch.setitem(iu.WEIGHTS_SHA256, 'tf', prefix)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        iu.check_weights_hash(path, 'tf')


def test_hub_cache_file_is_checked_and_hashed_once(tmp_path, monkeypatch, weights):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path))
    cached = iu.hub_weights_path('torchvision')
    cached.parent.mkdir(parents=True)
    shutil.copy(weights['torchvision'], cached)
    hashed, sha256 = [], iu.file_sha256
    monkeypatch.setattr(iu, 'file_sha256', lambda path: hashed.append(path) or sha256(path))
    with pytest.warns(iu.InceptionWeightsWarning, match=f'{cached}.*starts 0cc3c7bd'):
        iu.check_inception_ready(tmp_path / 'absent.npz', 'torchvision', no_fid=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the metrics' own load: no second hash or warning
        iu.prepare_inception_metrics(tmp_path / 'absent.npz', 'torchvision', device='cpu',
                                     no_fid=True)
    assert hashed == [cached]


# ----------------------------------------------------------------------------- end to end

def test_prepare_inception_metrics_end_to_end(tmp_path, weights, capsys):
    real = images(8, seed=2)
    batches = list(torch.split(real, 4))
    net = iu.load_inception_net(inception='torchvision', inception_weights=weights['torchvision'],
                                device='cpu')
    _, moments = iu.accumulate_inception_stats(net, batches, 8, num_splits=2)
    path = tmp_path / 'demo_inception_moments.npz'
    iu.save_moments(path, *moments.compute(), 'torchvision')
    iu.check_inception_ready(path, 'torchvision', weights['torchvision'])

    def sampler(batches):
        """A fake G: cycles through fixed batches, as (images, labels)."""
        state = {'i': 0}

        def sample():
            x = batches[state['i'] % len(batches)]
            state['i'] += 1
            return x, torch.zeros(len(x), dtype=torch.long)
        return sample

    get_metrics = iu.prepare_inception_metrics(path, 'torchvision', weights['torchvision'],
                                               device='cpu')
    IS_mean, IS_std, FID = get_metrics(sampler(batches), 8, num_splits=2)
    assert capsys.readouterr().out == ''  # every DDP rank calls it: the caller reports
    assert 1.0 <= IS_mean < 1000 and IS_std >= 0
    assert 0.0 <= FID < 1e-6  # the moments came from these very images
    fake = list(torch.split(images(9, seed=3), 3))  # 3 + 3 + 2 of the third batch
    IS2, _, FID2 = get_metrics(sampler(fake), 8, num_splits=2)
    assert math.isfinite(IS2) and FID2 > 1e-3
    get_is_only = iu.prepare_inception_metrics(tmp_path / 'absent.npz', 'torchvision',
                                               weights['torchvision'], device='cpu', no_fid=True)
    assert get_is_only(sampler(batches), 8, num_splits=2) == (
        pytest.approx(IS_mean), pytest.approx(IS_std), None)
    with pytest.raises(FileNotFoundError, match='calculate_inception_moments.py'):
        iu.check_inception_ready(tmp_path / 'absent.npz', 'torchvision', weights['torchvision'])


# ----------------------------------------------------------------------------- KID, P/R

class TinyNet(torch.nn.Module):
    """A cheap stand-in network: (pool [B, 2048], logits [B, 10]) of 8x8 images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = torch.nn.Linear(3 * 8 * 8, iu.POOL_DIM)
        self.fc = torch.nn.Linear(iu.POOL_DIM, 10)

    def forward(self, x):
        pool = self.pool(x.flatten(1)).relu()
        return pool, self.fc(pool)


def test_accumulate_keeps_the_features_of_the_chosen_rows():
    net, x = TinyNet(), torch.rand(23, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        pool = net(x)[0]
    batches = list(x.split(5)) + [x[:5]]  # more than needed: the 23rd image ends the pass
    assert len(iu.accumulate_inception_stats(net, batches, 23, num_splits=2)) == 2
    _, mom_acc, feats = iu.accumulate_inception_stats(net, batches, 23, num_splits=2,
                                                      features=True)
    assert feats.dtype == torch.float32 and feats.shape == (23, iu.POOL_DIM)
    torch.testing.assert_close(feats, pool)
    torch.testing.assert_close(mom_acc.compute()[0], pool.double().mean(0))
    rows = iu.feature_subset(23, 9)
    assert len(rows) == 9 and list(rows) == sorted(set(rows)) and rows[-1] < 23
    assert list(iu.feature_subset(23, 9)) == list(rows)  # a fixed seed
    assert list(iu.feature_subset(23, 50)) == list(range(23))  # no more than there are
    _, none, feats = iu.accumulate_inception_stats(net, batches, 23, num_splits=2,
                                                   moments=False, features=True,
                                                   feature_rows=rows)
    assert none is None
    torch.testing.assert_close(feats, pool[torch.from_numpy(rows)])
    with pytest.raises(ValueError, match=r'feature_rows must lie in \[0, 23\)'):
        iu.accumulate_inception_stats(net, batches, 23, features=True, feature_rows=[3, 23])


def test_features_file_round_trip_and_errors(tmp_path):
    moments = tmp_path / 'I128_hdf5_inception_moments.npz'
    path = iu.features_file(moments, 'torchvision')
    assert path.name == 'I128_hdf5_inception_moments_features.npz'
    assert iu.features_file(moments, 'tf').name == 'I128_hdf5_inception_moments_tf_features.npz'
    with pytest.raises(FileNotFoundError, match=f'features file {path} not found; make it .*'
                       'python calculate_inception_moments.py --dataset I128_hdf5 '):
        iu.load_features(path)
    feats = np.random.default_rng(0).random((5, 2048)).astype(np.float64)
    iu.save_features(path, feats, 'torchvision', num_images=9)
    got = iu.load_features(path, 'torchvision')
    assert got.dtype == np.float32 and np.array_equal(got, feats.astype(np.float32))
    with np.load(path) as f:
        assert str(f['inception']) == 'torchvision' and int(f['num_images']) == 9
    with pytest.raises(ValueError, match="made with the 'torchvision' Inception network, not "
                       "'tf'; remake it with: .* --inception tf"):
        iu.load_features(path, 'tf')
    iu.save_features(path, feats[:, :64], 'torchvision', num_images=9)
    with pytest.raises(ValueError, match=r'shape \(5, 64\).*Remake it with'):
        iu.load_features(path)


def test_get_inception_metrics_adds_kid_and_pr_from_the_same_pass(tmp_path, monkeypatch):
    """KID and P/R when the features file exists, computed by metrics.py on the features of
    the one pass that gives IS and FID. The network is TinyNet: this tests the plumbing."""
    net = TinyNet()
    monkeypatch.setattr(iu, 'load_inception_net', lambda **kwargs: net)
    real = torch.rand(40, 3, 8, 8) * 2 - 1
    _, moments, feats = iu.accumulate_inception_stats(net, real.split(16), 40, features=True)
    path = tmp_path / 'demo_inception_moments.npz'
    iu.save_moments(path, *moments.compute(), 'torchvision')

    def prepare(no_fid=False):
        get_metrics = iu.prepare_inception_metrics(path, 'torchvision', device='cpu',
                                                   no_fid=no_fid)

        def metrics_of(x):  # a fake G: batches of 8 of fixed images, as (images, labels)
            batches = iter(x.split(8))
            return get_metrics(lambda: (next(batches), torch.zeros(8)), len(x), num_splits=2)
        return metrics_of

    fake = torch.cat([real[:16] * 0.98, torch.rand(16, 3, 8, 8) * 2 - 1])  # half near data
    without = prepare()(fake)  # no features file yet: IS and FID only
    assert without.KID_mean is None and without.precision is None
    assert set(without.record()) == {'IS_mean', 'IS_std', 'FID'}
    iu.save_features(iu.features_file(path), feats, 'torchvision', num_images=40)

    seen = {}  # spies: the features the metrics were computed on

    def spy_on(name):
        original = getattr(iu, name)

        def spy(real, fake, **kwargs):
            seen[name] = (real.clone(), fake.clone())
            return original(real, fake, **kwargs)
        monkeypatch.setattr(iu, name, spy)
    spy_on('kernel_inception_distance')
    spy_on('precision_recall')
    result = prepare()(fake)
    IS_mean, IS_std, FID = result  # the 2019 three values
    assert (IS_mean, IS_std, FID) == without
    real_seen, fake_seen = seen['kernel_inception_distance']
    assert torch.equal(real_seen, feats)
    with torch.no_grad():
        torch.testing.assert_close(fake_seen, net(fake)[0])  # the samples' pool features
    assert all(torch.equal(a, b) for a, b in zip(seen['precision_recall'], (real_seen,
                                                                            fake_seen)))
    assert (result.KID_mean, result.KID_std) == (
        metrics.kernel_inception_distance(real_seen, fake_seen))
    assert (result.precision, result.recall) == metrics.precision_recall(real_seen, fake_seen)
    assert result.KID_std > 0 and 0 < result.precision < 1 and 0 < result.recall < 1
    assert set(result.record()) == set(metrics.InceptionMetrics.KEYS)
    is_only = prepare(no_fid=True)(fake)  # --no_fid: no FID, KID or P/R
    assert is_only == (pytest.approx(IS_mean), pytest.approx(IS_std), None)
    assert is_only.KID_mean is None and is_only.precision is None
