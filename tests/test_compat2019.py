"""Tests of the 2019 names (the "2019 names (compatibility)" sections of utils.py, datasets.py
and inception_utils.py, and losses.py): each resolves and behaves as in 2019 on small inputs,
and the 2019 release's own sample.py, run beside these modules, samples a 2019 run folder."""
import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import BigGAN
import datasets
import flags
import inception_utils as iu
import losses
import train_fns
import utils
from helpers import ROOT, TinyInception, shared_file

pytestmark = pytest.mark.filterwarnings('ignore::inception_utils.InceptionWeightsWarning')

# What the 2019 sample.py and typical notebooks use, module by module.
NAMES_2019 = {
    utils: ['prepare_parser', 'add_sample_parser', 'imsize_dict', 'root_dict', 'nclass_dict',
            'classes_per_sheet_dict', 'activation_dict', 'get_data_loaders', 'seed_rng',
            'update_config_roots', 'prepare_root', 'ema', 'ortho', 'toggle_grad',
            'join_strings', 'save_weights', 'load_weights', 'MetricsLogger', 'MyLogger',
            'sample', 'sample_sheet', 'interp', 'interp_sheet', 'get_SVs', 'name_from_config',
            'hashname', 'count_parameters', 'sample_1hot', 'Distribution', 'prepare_z_y',
            'accumulate_standing_stats'],
    iu: ['WrapInception', 'torch_cov', 'numpy_calculate_frechet_distance',
         'torch_calculate_frechet_distance', 'calculate_inception_score',
         'accumulate_inception_activations', 'load_inception_net', 'prepare_inception_metrics'],
    losses: ['loss_dcgan_dis', 'loss_dcgan_gen', 'loss_hinge_dis', 'loss_hinge_gen',
             'generator_loss', 'discriminator_loss'],
    datasets: ['root_dict', 'imsize_dict', 'nclass_dict', 'classes_per_sheet_dict'],
}


@pytest.mark.parametrize('module,name', [(m, n) for m, names in NAMES_2019.items()
                                         for n in names])
def test_the_2019_names_resolve(module, name):
    assert getattr(module, name) is not None
    if module is iu:
        assert name in iu.__all__  # `from inception_utils import *` brings them too


def tiny_G(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return BigGAN.Generator(**{'resolution': 32, 'G_ch': 4, 'dim_z': 8, 'G_shared': True,
                               'shared_dim': 8, 'n_classes': 3, 'G_attn': '0', **kwargs})


# ----------------------------------------------------------------------------------------
# utils: tables, small helpers, config keys
# ----------------------------------------------------------------------------------------


def test_dataset_dicts_hold_2019s_values():
    sizes = {'I32': 32, 'I64': 64, 'I128': 128, 'I256': 256}
    for name, res in sizes.items():
        for key in (name, f'{name}_hdf5'):
            assert utils.imsize_dict[key] == res and utils.nclass_dict[key] == 1000
            assert utils.classes_per_sheet_dict[key] == (50 if res <= 64 else 20)
        assert utils.root_dict[name] == 'ImageNet'
        assert utils.root_dict[f'{name}_hdf5'] == f'ILSVRC{res}.hdf5'
    assert [utils.imsize_dict['C10'], utils.nclass_dict['C10'],
            utils.classes_per_sheet_dict['C10'], utils.root_dict['C10']] == [32, 10, 10, 'cifar']
    assert [utils.nclass_dict['C100'], utils.classes_per_sheet_dict['C100']] == [100, 100]
    assert utils.imsize_dict is datasets.imsize_dict and set(utils.nclass_dict) == set(
        datasets.DATASETS)
    assert utils.get_data_loaders is datasets.get_data_loaders


def test_activation_dict_gives_the_2019_relus():
    for name, inplace in (('relu', False), ('inplace_relu', True), ('ir', True)):
        act = utils.activation_dict[name]
        assert isinstance(act, nn.ReLU) and act.inplace is inplace
        assert BigGAN.activation(name).inplace is inplace  # what G_nl builds


def test_small_helpers(tmp_path, capsys):
    assert utils.join_strings('_', ['G', None, '', 'copy0']) == 'G_copy0'
    assert utils.join_strings('_', ['G', '']) == 'G'
    roots = {k: str(tmp_path / 'base' / k) for k in ('weights_root', 'logs_root',
                                                     'samples_root')}
    utils.prepare_root(roots)
    utils.prepare_root(roots)  # existing folders are fine
    assert all(os.path.isdir(p) for p in roots.values())
    assert utils.count_parameters(nn.Linear(3, 2)) == 8
    assert capsys.readouterr().out == 'Number of parameters: 8\n'
    y = utils.sample_1hot(500, 7)
    assert y.shape == (500,) and y.dtype == torch.int64 and set(y.tolist()) == set(range(7))


def test_a_2019_config_builds_G():
    """2019's sample.py sets config['no_optim'] (its models built optimizers) and G_activation."""
    config = vars(utils.prepare_parser().parse_args(['--dataset', 'C10', '--G_ch', '4',
                                                     '--G_attn', '0']))
    config.update(resolution=32, n_classes=10, skip_init=True, no_optim=True,
                  G_activation=utils.activation_dict['relu'])
    assert 'no_optim' in utils.config_keys() and utils.config_keys() >= flags.config_keys()
    G = BigGAN.Generator(**config)
    assert G.activation is utils.activation_dict['relu']
    with pytest.raises(TypeError, match='unknown config keys'):
        BigGAN.Generator(**config, no_such_key=1)


# ----------------------------------------------------------------------------------------
# utils: latents, sample, standing stats, sheets
# ----------------------------------------------------------------------------------------


def test_prepare_z_y_gives_2019s_distributions():
    torch.manual_seed(0)
    z_, y_ = utils.prepare_z_y(4000, 16, 7, device='cpu', z_var=0.5)
    assert isinstance(z_, utils.Distribution) and isinstance(z_, torch.Tensor)
    assert z_.shape == (4000, 16) and z_.dtype == torch.float32 and z_.var == 0.5
    assert y_.shape == (4000,) and y_.dtype == torch.int64 and y_.num_categories == 7
    before = z_.clone()
    assert z_.sample_() is z_ and not torch.equal(z_, before)  # redrawn in place
    assert abs(float(z_.std()) - 0.5) < 0.01 and abs(float(torch.mean(z_))) < 0.01
    y_.sample_()
    assert set(y_.tolist()) == set(range(7))
    z_.var = 2.0  # 2019 sample.py's truncation sweep sets it
    assert abs(float(z_.sample_().std()) - 2.0) < 0.05
    assert type(z_[:3]) is torch.Tensor and type(z_ * 2) is torch.Tensor  # ops: plain tensors
    half, _ = utils.prepare_z_y(2, 3, 4, device='cpu', fp16=True)
    assert half.dtype == torch.float16 and half.var == 1.0
    moved = z_.to(torch.float64)
    assert isinstance(moved, utils.Distribution) and moved.dtype == torch.float64
    assert moved.var == 2.0 and moved.sample_().dtype == torch.float64


def test_sample_draws_new_latents_and_returns_a_copy_of_y():
    G = tiny_G().eval()
    z_, y_ = utils.prepare_z_y(5, G.dim_z, 3, device='cpu')
    torch.manual_seed(1)
    images, labels = utils.sample(G, z_, y_, {'parallel': False})
    assert images.shape == (5, 3, 32, 32) and images.abs().max() <= 1
    assert torch.equal(labels, y_) and labels.data_ptr() != y_.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(images, G(z_.as_subclass(torch.Tensor), G.shared(labels)))
    kept = labels.clone()
    utils.sample(G, z_, y_, {'parallel': False})
    assert torch.equal(labels, kept)  # the next draw does not overwrite returned labels


def test_standing_stats_take_2019s_call_form_and_ours():
    """2019: (G, z, y, n_classes, n) redraws z ~ N(0, 1), y uniform; with z_var 1 that is the
    draw sequence of a Latents, so both forms give the same statistics."""
    G = tiny_G(norm_style='bn')
    ours, theirs, third = G, copy.deepcopy(G), copy.deepcopy(G)
    torch.manual_seed(3)
    utils.accumulate_standing_stats(ours, utils.Latents(4, G.dim_z, 3), 3)  # train_loop's form
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 3, device='cpu', z_var=0.3)
    torch.manual_seed(3)
    utils.accumulate_standing_stats(theirs, z_, y_, 3, 3)
    torch.manual_seed(3)
    utils.accumulate_standing_stats(third, z_, y_, 3, num_accumulations=3)
    assert not theirs.training
    for a, b, c in zip(ours.buffers(), theirs.buffers(), third.buffers()):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    with pytest.raises(TypeError, match='give y and n_classes'):
        utils.accumulate_standing_stats(G, z_)


class RecordingG(nn.Module):
    """A G that records its z and makes images of them (sheets without a real G)."""

    def __init__(self, dim_z=6, n_classes=4):
        super().__init__()
        self.dim_z, self.shared = dim_z, nn.Embedding(n_classes, 5)
        self.zs = []

    def forward(self, z, y):
        self.zs.append(z.clone())
        return z[:, :3, None, None].expand(-1, 3, 8, 8).tanh() + 0 * y.sum()


def test_sheets_take_2019s_keywords(tmp_path):
    G = RecordingG()
    z_, _ = utils.prepare_z_y(8, G.dim_z, 4, device='cpu', z_var=0.0)  # z_'s draws: zeros
    where = dict(samples_root=str(tmp_path), experiment_name='run', folder_number=-1)
    paths = utils.sample_sheet(G, classes_per_sheet=4, num_classes=4, samples_per_class=3,
                               parallel=False, z_=z_, **where)
    assert len(G.zs) == 3 and all(z.shape == (4, 6) and not z.any() for z in G.zs)
    assert Image.open(paths[0]).size == (3 * 10 + 2, 4 * 10 + 2)
    G.zs.clear()  # a z_ with fewer rows than classes: z ~ N(0, 1) as in 2019
    short_z, _ = utils.prepare_z_y(2, G.dim_z, 4, device='cpu', z_var=0.0)
    utils.sample_sheet(G, classes_per_sheet=4, num_classes=4, samples_per_class=1,
                       z_=short_z, **where)
    assert G.zs[0].shape == (4, 6) and G.zs[0].any()
    path = utils.interp_sheet(G, num_per_sheet=2, num_midpoints=1, num_classes=4,
                              parallel=False, sheet_number=0, fix_z=True, fix_y=False,
                              device='cpu', **where)
    assert path.endswith(os.path.join('run', '-1', 'interpY0.jpg')) and os.path.isfile(path)


# ----------------------------------------------------------------------------------------
# utils.load_weights: 2019's positional form
# ----------------------------------------------------------------------------------------


def test_load_weights_takes_2019s_positional_form(tmp_path):
    torch.manual_seed(0)
    G, D, G_ema = nn.Linear(3, 2), nn.Linear(2, 1), nn.Linear(3, 2)
    G_optim = torch.optim.Adam(G.parameters())
    G(torch.randn(4, 3)).sum().backward()
    G_optim.step()
    saved_config = {'G_ch': 8, 'dataset': 'C10'}
    utils.save_weights(G, D, {'itr': 3, 'epoch': 1, 'config': saved_config}, str(tmp_path),
                       'run', G_ema=G_ema, G_optim=G_optim)
    # sample.py 2019: (G, D, state_dict, root, name, name_suffix, G_ema, strict, load_optim)
    target = nn.Linear(3, 2)
    state = {'itr': 0, 'epoch': 0, 'config': {'G_ch': 64}}
    utils.load_weights(None, None, state, str(tmp_path), 'run', '', target, strict=False,
                       load_optim=False)
    assert state == {'itr': 3, 'epoch': 1, 'config': saved_config}  # config too, as in 2019
    torch.testing.assert_close(target.weight, G_ema.weight)
    # load_optim loads into the .optim a 2019 model carried
    G2 = nn.Linear(3, 2)
    G2.optim = torch.optim.Adam(G2.parameters())
    utils.load_weights(G2, None, {}, str(tmp_path), 'run')
    assert G2.optim.state_dict()['state'][0]['step'] == 1
    torch.testing.assert_close(G2.weight, G.weight)
    # ours: keywords, and optimizers passed in
    optim = torch.optim.Adam(nn.Linear(3, 2).parameters())
    saved = utils.load_weights(nn.Linear(3, 2), None, {}, str(tmp_path), 'run',
                               name_suffix=None, G_optim=optim)
    assert saved['itr'] == 3 and optim.state_dict()['state'][0]['step'] == 1


# ----------------------------------------------------------------------------------------
# losses.py
# ----------------------------------------------------------------------------------------


def test_losses_are_train_fns_losses_with_2019s_values():
    assert losses.loss_hinge_dis is train_fns.loss_hinge_dis
    assert losses.loss_dcgan_gen is train_fns.loss_dcgan_gen
    assert losses.generator_loss is train_fns.loss_hinge_gen
    assert losses.discriminator_loss is train_fns.loss_hinge_dis
    fake, real = torch.tensor([[-2.0], [0.5], [3.0]]), torch.tensor([[1.5], [0.2], [-1.0]])
    real_loss, fake_loss = losses.loss_hinge_dis(fake, real)
    assert real_loss.item() == pytest.approx((0 + 0.8 + 2.0) / 3)
    assert fake_loss.item() == pytest.approx((0 + 1.5 + 4.0) / 3)
    assert losses.loss_hinge_gen(fake).item() == pytest.approx(-1.5 / 3)
    real_loss, fake_loss = losses.loss_dcgan_dis(fake, real)
    assert real_loss.item() == pytest.approx(np.mean(np.log1p(np.exp([-1.5, -0.2, 1.0]))))
    assert fake_loss.item() == pytest.approx(np.mean(np.log1p(np.exp([-2.0, 0.5, 3.0]))))
    assert losses.loss_dcgan_gen(fake).item() == pytest.approx(
        np.mean(np.log1p(np.exp([2.0, -0.5, -3.0]))))


# ----------------------------------------------------------------------------------------
# inception_utils
# ----------------------------------------------------------------------------------------


def test_calculate_inception_score_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    pred = rng.dirichlet(np.ones(4) * 0.5, size=20)  # [20, 4] class probabilities
    scores = []
    for part in np.split(pred, 2):  # 2019: exp(mean KL(p(y|x) || p(y))) per split
        p_y = part.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(p_y)), 1))))
    mean, std = iu.calculate_inception_score(pred, num_splits=2)
    assert mean == pytest.approx(np.mean(scores), rel=1e-5)
    assert std == pytest.approx(np.std(scores), rel=1e-4, abs=1e-6)


def test_frechet_distance_and_cov_match_scipy_and_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) * 1.5 + 0.3
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert iu.numpy_calculate_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    assert iu.numpy_calculate_frechet_distance(mu1, s1, mu2, s2, eps=1e-6) == pytest.approx(
        expected)
    torch.testing.assert_close(iu.torch_cov(torch.from_numpy(a)), torch.from_numpy(s1))
    torch.testing.assert_close(iu.torch_cov(torch.from_numpy(a.T), rowvar=True),
                               torch.from_numpy(s1))
    torch.testing.assert_close(iu.torch_cov(torch.from_numpy(a[:, 0])),
                               torch.tensor(np.var(a[:, 0], ddof=1), dtype=torch.float64))


def test_accumulate_inception_activations_keeps_whole_batches():
    net, batches = TinyInception(), iter(range(10))

    def sample():
        torch.manual_seed(next(batches))
        return torch.rand(4, 3, 16, 16) * 2 - 1, torch.arange(4)

    pool, probs, labels = iu.accumulate_inception_activations(sample, net, 10)
    assert pool.shape == (12, 2048) and probs.shape == (12, 10) and labels.shape == (12,)
    torch.testing.assert_close(probs.sum(1), torch.ones(12))
    torch.manual_seed(0)
    first = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(probs[:4], F.softmax(net(first)[1], 1))


@pytest.fixture(scope='module')
def random_inception():
    torch.manual_seed(0)
    return iu._inception_v3('torchvision')


def test_load_inception_net_and_WrapInception_take_2019s_forms(monkeypatch, random_inception):
    monkeypatch.setattr(iu, '_load_weights', lambda inception, weights: random_inception)
    net = iu.load_inception_net(True, device='cpu')  # 2019: load_inception_net(parallel)
    assert isinstance(net, nn.DataParallel) and isinstance(net.module, iu.InceptionNet)
    assert isinstance(iu.load_inception_net(device='cpu'), iu.InceptionNet)
    wrapped = iu.WrapInception(random_inception)
    assert isinstance(wrapped, iu.InceptionNet) and wrapped.inception == 'torchvision'


def offline(monkeypatch, tmp_path):
    """No Inception weights in the hub cache and no network."""
    def no_download(url, dst, *args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)


def test_2019_prepare_inception_metrics_fails_only_when_metrics_are_computed(
        tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)  # 2019 read <dataset>_inception_moments.npz from here
    G = tiny_G().eval()
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 3, device='cpu')

    def sample():
        return utils.sample(G, z_, y_, {})

    get_metrics = iu.prepare_inception_metrics('C10', False, False)  # sample.py 2019's call
    with pytest.raises(FileNotFoundError, match='calculate_inception_moments.py'):
        get_metrics(sample, 8, num_splits=2, prints=False)
    get_is_only = iu.prepare_inception_metrics('I128_hdf5', parallel=False, no_fid=True)
    with pytest.raises(FileNotFoundError, match='--inception_weights'):
        get_is_only(sample, 8, num_splits=2, prints=False)


def test_2019_get_inception_metrics_gives_ours_with_9999_for_no_fid(monkeypatch):
    net = TinyInception()
    monkeypatch.setattr(iu, 'load_inception_net', lambda **kwargs: net)
    G = tiny_G().eval()
    z_, y_ = utils.prepare_z_y(4, G.dim_z, 3, device='cpu')

    def sample():
        return utils.sample(G, z_, y_, {})

    torch.manual_seed(0)
    IS_mean, IS_std, FID = iu.prepare_inception_metrics('C10', False, True)(
        sample, 8, num_splits=2, prints=False)
    torch.manual_seed(0)
    ours = iu.prepare_inception_metrics('unused.npz', 'torchvision', no_fid=True,
                                        device='cpu')(sample, 8, num_splits=2)
    assert (IS_mean, IS_std) == (ours[0], ours[1]) and IS_mean > 1 and FID == 9999.0


# ----------------------------------------------------------------------------------------
# The 2019 release's sample.py on the 2019 run folder
# ----------------------------------------------------------------------------------------


def run2019_flags(readme: str) -> list[str]:
    """The flags block of fixtures/run2019/README.md (the indented lines after "flags")."""
    block = re.search(r"The run's flags[^\n]*\n\n((?:    .*\n)+)", readme)
    assert block, 'fixtures/run2019/README.md no longer lists the run\'s flags'
    return shlex.split(block.group(1))


def test_the_2019_sample_script_samples_the_2019_run(tmp_path):
    script = shared_file('fixtures/sample2019/sample.py').read_text()
    run = shared_file('fixtures/run2019')
    shared_file('fixtures/run2019/weights/run2019/G_ema.pth')
    # Only the hard-coded device changes, as the fixture's README says for a CPU-only machine.
    (tmp_path / 'sample.py').write_text(script.replace("'cuda'", "'cpu'")
                                        .replace('.cuda()', '.cpu()'))
    base = tmp_path / 'base'
    shutil.copytree(run, base)
    # A 2019 training run left samples/<experiment>/ (its sheets); --sample_npz writes there.
    (base / 'samples' / 'run2019').mkdir(parents=True)
    flags = run2019_flags((run / 'README.md').read_text())
    assert flags[:2] == ['--dataset', 'C10'] and '--experiment_name' in flags
    flags += ['--base_root', str(base), '--sample_sheets', '--sample_interps', '--sample_random',
              '--sample_npz', '--sample_num_npz', '20']
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, 'sample.py', *flags], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert 'Experiment name is run2019' in done.stdout
    assert re.search(r'Number of parameters: \d+', done.stdout)
    samples = base / 'samples' / 'run2019'
    sizes = {'-1/samples0.jpg': (10 * 34 + 2, 10 * 34 + 2),  # 10 classes x 10 samples
             '-1/interpZY0.jpg': (10 * 34 + 2, 16 * 34 + 2),  # 16 rows of 8 midpoints + ends
             '-1/interpZ0.jpg': (342, 546), '-1/interpY0.jpg': (342, 546),
             'random_samples.jpg': (2 * 34 + 2, 2 * 34 + 2)}  # batch 4 on a 2x2 grid
    for name, size in sizes.items():
        with Image.open(samples / name) as im:
            assert (im.format, im.mode, im.size) == ('JPEG', 'RGB', size), name
            pixels = np.asarray(im)
        assert pixels.std() > 10, f'{name} is flat'  # G's samples, not a blank sheet
    npz = np.load(samples / 'samples.npz')
    assert npz['x'].shape == (20, 3, 32, 32) and npz['x'].dtype == np.uint8
    assert npz['y'].shape == (20,) and npz['y'].max() < 10
    assert len({tuple(npz['y'][i:i + 4]) for i in range(0, 20, 4)}) > 1  # each batch's own
