"""Tests for project.py on the tiny 32x32 run of test_sample.py (untrained G and D, CPU)."""
import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_sample import NAME, make_run

import BigGAN
import project
import sample
import utils

TRUE_CLASS = 3


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """The tiny run, with a G_ema whose class embedding is 4x stronger: its classes differ
    clearly, so a sample's class is unambiguous (read-only use)."""
    root = tmp_path_factory.mktemp('base')
    make_run(root)
    path = root / 'weights' / NAME / 'G_ema.pth'
    state = torch.load(path)
    state['shared.weight'] *= 4
    torch.save(state, path)
    (root / 'weights' / NAME / 'checkpoint_checksums.json').unlink(missing_ok=True)
    return root


def G_and_D(base):
    """The run's G (as project.py loads it, in eval mode) and D."""
    config, weights_file, _ = sample.resolve_config(run_flags(base))
    G = sample.load_generator(config, weights_file, torch.device('cpu')).eval()
    D = project.load_D(config, weights_file.parent / 'D.pth', torch.device('cpu'))
    return G, D


@pytest.fixture(scope='module')
def target(base, tmp_path_factory):
    """(PNG path, z, image [1, 3, 32, 32]) of a G sample of TRUE_CLASS, quantised as saved."""
    G, _ = G_and_D(base)
    z = torch.randn(1, G.dim_z, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = G(z, G.shared(torch.tensor([TRUE_CLASS])))
    path = tmp_path_factory.mktemp('target') / 'sample.png'
    Image.fromarray(utils.to_uint8(x)[0].numpy()).save(path)
    return path, z, project.read_target(path, 32)


def run_flags(base, *more) -> list[str]:
    """The tiny run by name, and more flags."""
    return ['--base_root', str(base), '--experiment_name', NAME, *map(str, more)]


def test_projection_recovers_a_G_sample(base, target, tmp_path, one_thread):
    path, _, x = target
    done = project.run(run_flags(base, '--target', path, '--class', TRUE_CLASS, '--steps', 150,
                                 '--out', tmp_path / 'out'))
    found = done['projection']
    assert found.losses[0] > 0.1 and found.loss < 0.02 * found.losses[0]  # dropped > 50x
    G, D = G_and_D(base)
    with torch.no_grad():
        recon = G(found.z, G.shared(torch.tensor([TRUE_CLASS])))
        distance = project.perceptual(D.stage_outputs(recon), D.stage_outputs(x))
    assert float(distance) < 0.01  # summed over D's 4 maps, each in [0, 4]
    assert (recon - x).abs().mean() < 0.01  # in [-1, 1] pixels
    names = sorted(p.name for p in (tmp_path / 'out').iterdir())
    assert names == ['interp_to_class4_deer.png', 'latent.npz', 'progress.png',
                     'target_vs_projection.png']  # C10: class 3 is 'cat', the next 'deer'
    with np.load(tmp_path / 'out' / 'latent.npz') as f:
        assert int(f['class_index']) == TRUE_CLASS and f['z'].shape == (1, 16)
        assert int(f['steps']) == 150 and f['losses'].shape == (150,)
        assert float(f['loss']) == pytest.approx(found.loss) and 'embedding' not in f.files
    with Image.open(tmp_path / 'out' / 'interp_to_class4_deer.png') as im:
        assert im.height == 32 + 4 and im.width > 10 * 34  # one labelled row of 10


def test_same_seed_same_latent(base, target, tmp_path, one_thread):
    def latent(seed, out):
        project.run(run_flags(base, '--target', target[0], '--class', TRUE_CLASS, '--steps', 30,
                              '--seed', seed, '--out', tmp_path / out))
        with np.load(tmp_path / out / 'latent.npz') as f:
            return {k: f[k] for k in f.files}
    a, b, c = latent(1, 'a'), latent(1, 'b'), latent(2, 'c')
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a['z'], c['z'])


def test_truncation_bounds_z(base, target, tmp_path, one_thread):
    done = project.run(run_flags(base, '--target', target[0], '--class', TRUE_CLASS, '--steps',
                                 40, '--truncation', 0.3, '--out', tmp_path))
    z = done['projection'].z
    assert z.abs().max() <= 0.3 and (z.abs() == 0.3).sum() > 0  # clamped: some at the bound
    with np.load(tmp_path / 'latent.npz') as f:
        assert float(f['truncation']) == 0.3 and np.abs(f['z']).max() <= 0.3


def test_optimize_embedding_changes_only_the_latents(base, target, tmp_path, one_thread):
    weights = base / 'weights' / NAME
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in weights.iterdir()}
    flags = ('--target', target[0], '--class', 7, '--steps', 40)
    plain = project.run(run_flags(base, *flags, '--out', tmp_path / 'a'))['projection']
    tuned = project.run(run_flags(base, *flags, '--optimize_embedding', '--out',
                                  tmp_path / 'b'))['projection']
    G, _ = G_and_D(base)
    row = G.shared(torch.tensor([7])).detach()
    assert torch.equal(plain.y, row)  # without the flag the class's own embedding
    assert not torch.allclose(tuned.y, row) and tuned.loss < plain.loss
    with np.load(tmp_path / 'b' / 'latent.npz') as f:
        assert np.array_equal(f['embedding'], tuned.y.numpy())
        with torch.no_grad():  # the saved (z, embedding) reproduce the final loss's image
            recon = G(torch.from_numpy(f['z']), torch.from_numpy(f['embedding']))
    assert (recon - G(tuned.z, tuned.y)).abs().max() < 1e-5
    assert digest == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in weights.iterdir()}  # the run is untouched


def test_top_k_picks_the_true_class(base, target, tmp_path, one_thread):
    """All 10 classes are candidates, so the untrained D's ranking does not decide."""
    done = project.run(run_flags(base, '--target', target[0], '--top_k', 10, '--search_steps',
                                 30, '--steps', 30, '--out', tmp_path))
    losses = {r['class']: r['loss'] for r in done['trials']}
    assert done['class_index'] == TRUE_CLASS and len(losses) == 10
    assert min(v for c, v in losses.items() if c != TRUE_CLASS) > 3 * losses[TRUE_CLASS]


def test_top_k_rule_with_a_stand_in_ranking(base, target, tmp_path, monkeypatch, one_thread):
    """D's ranking chooses the candidates, the short projections' losses the winner."""
    _, D = G_and_D(base)
    x = target[2]
    with torch.no_grad():
        scores = D(x.expand(10, -1, -1, -1), torch.arange(10))[:, 0]
    assert project.rank_classes(D, x, 4) == scores.argsort(descending=True)[:4].tolist()
    monkeypatch.setattr(project, 'rank_classes', lambda D, x, k: [8, 1, TRUE_CLASS, 0][:k])
    done = project.run(run_flags(base, '--target', target[0], '--top_k', 3, '--search_steps',
                                 20, '--steps', 10, '--out', tmp_path))
    assert [r['class'] for r in done['trials']] == [8, 1, TRUE_CLASS]
    assert done['class_index'] == TRUE_CLASS


def bad_run(capsys, *argv):
    """project.main's status and its stderr lines."""
    status = project.main(list(map(str, argv)))
    return status, capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_line_and_writes_nothing(base, target, tmp_path, capsys):
    big = tmp_path / 'big.png'
    Image.new('RGB', (64, 48)).save(big)
    out = tmp_path / 'out'
    status, err = bad_run(capsys, *run_flags(base, '--target', big, '--class', 1, '--out', out))
    assert status == 1 and len(err) == 1 and 'is 64x48 but the run makes 32x32' in err[0]
    for cls, words in (('12', 'out of range'), ('zebra', "'zebra' is not one of")):
        status, err = bad_run(capsys, *run_flags(base, '--target', target[0], '--class', cls,
                                                 '--out', out))
        assert status == 1 and len(err) == 1 and words in err[0]
        assert err[0].startswith('project.py: error: --class')
    no_D = tmp_path / 'no_D'
    shutil.copytree(base / 'weights', no_D / 'weights')
    (no_D / 'weights' / NAME / 'D.pth').unlink()
    status, err = bad_run(capsys, *run_flags(no_D, '--target', target[0], '--class', 1,
                                             '--out', out))
    assert status == 1 and len(err) == 1 and 'use --features inception' in err[0]
    assert not out.exists() and not (base / 'samples').exists()


def test_soft_classes_one_hot_is_the_class_index():
    """Without a shared embedding, a one-hot class vector gives the image of the index (and
    the embedding tables read it as a vector only within soft_classes)."""
    torch.manual_seed(0)
    G = BigGAN.Generator(resolution=32, G_ch=4, dim_z=16, G_shared=False, hier=False,
                         n_classes=10, G_attn='0', G_init='N02').eval()
    z, y = torch.randn(2, 16), torch.tensor([3, 7])
    with torch.no_grad():
        by_index = G(z, y)
        with project.soft_classes(G):
            one_hot = torch.cat([project.class_vector(G, c, 10) for c in (3, 7)])
            assert torch.equal(G(z, one_hot), by_index)
            assert not torch.allclose(G(z, one_hot.flip(0)), by_index)
        assert torch.equal(G(z, y), by_index)  # restored


class StandInInception(torch.nn.Module):
    """Images -> (pool, logits) through three small convs named as Inception's hooked maps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Module()
        self.net.Mixed_5d = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.net.Mixed_6e = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.net.Mixed_7c = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):
        h = self.net.Mixed_7c(self.net.Mixed_6e(self.net.Mixed_5d(x).relu()).relu())
        return h.mean((2, 3)), h.mean((2, 3))


def test_inception_features_without_D(base, target, tmp_path, monkeypatch, capsys, one_thread):
    """A run without D (as converted ones) projects on Inception's maps; the real network's
    weights cannot be had here, so a small stand-in with its layer names takes its place."""
    import inception_utils
    no_D = tmp_path / 'no_D'
    shutil.copytree(base / 'weights', no_D / 'weights')
    (no_D / 'weights' / NAME / 'D.pth').unlink()
    def no_weights(*args):
        raise FileNotFoundError('no weights for the Inception network: pass --inception_weights')
    monkeypatch.setattr(inception_utils, 'resolve_inception_weights', no_weights)
    flags = ('--target', target[0], '--features', 'inception', '--out', tmp_path / 'out')
    status, err = bad_run(capsys, *run_flags(no_D, *flags, '--class', 1))
    assert status == 1 and len(err) == 1 and '--features inception: no weights' in err[0]
    monkeypatch.setattr(inception_utils, 'resolve_inception_weights', lambda *a: 'here.pth')
    status, err = bad_run(capsys, *run_flags(no_D, *flags))  # --top_k needs D's ranking
    assert status == 1 and len(err) == 1 and 'classes are ranked by D' in err[0]
    assert not (tmp_path / 'out').exists()
    monkeypatch.setattr(inception_utils, 'load_inception_net',
                        lambda **kw: StandInInception().requires_grad_(False))
    done = project.run(run_flags(no_D, '--target', target[0], '--class', TRUE_CLASS,
                                 '--features', 'inception', '--steps', 60, '--out', tmp_path))
    found = done['projection']
    assert done['features'] == 'inception' and found.loss < 0.1 * found.losses[0]
    assert (found.snapshots[-1] - target[2]).abs().mean() < 0.05
