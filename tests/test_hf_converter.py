"""Tests of TFHub/hf_converter.py (converter.py --hf) and the per-truncation BN statistics.

The reference is the `pytorch-pretrained-biggan` package itself: a random BigGAN-deep of its
128/256/512 architecture (channel_width 4-8, z_dim 16, few classes) with random weights, BN
statistics per truncation, gains and biases, its spectral-norm vectors converged by train-mode
forwards, saved as the package's folder (pytorch_model.bin, config.json). The converted G must
give the package's images at every truncation; sample.py and train.py --load_weights use the
converted run. Torch runs on one thread here: these tiny models are several times faster so.
"""
import importlib.util
import json
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import BigGANdeep
import bn_stats
import flags
import resume
import sample
import train
import train_loop
import utils
from helpers import ROOT, write_hdf5

pytest.importorskip('pytorch_pretrained_biggan')
from pytorch_pretrained_biggan import BigGAN as HFBigGAN  # noqa: E402
from pytorch_pretrained_biggan import BigGANConfig  # noqa: E402
from pytorch_pretrained_biggan.convert_tf_to_pytorch import (  # noqa: E402
    BigGAN128,
    BigGAN256,
    BigGAN512,
)

if 'tfhub_converter' in sys.modules:  # test_tfhub_converter.py loaded it already
    converter = sys.modules['tfhub_converter']
else:
    _spec = importlib.util.spec_from_file_location('tfhub_converter',
                                                   ROOT / 'TFHub' / 'converter.py')
    converter = importlib.util.module_from_spec(_spec)
    sys.modules['tfhub_converter'] = converter  # dataclasses look their module up there
    _spec.loader.exec_module(converter)
import hf_converter  # noqa: E402  (converter.py put TFHub/ on sys.path)

PACKAGE_CONFIGS = {128: BigGAN128, 256: BigGAN256, 512: BigGAN512}
Z_DIM, N_CLASSES = 16, 10
TOL = 2e-4  # what converter.py --check accepts; the conversion is exact to ~1e-7
# Grid points, midpoints, float-quirk grid points (0.14 / 0.02 = 7.000...01,
# 0.58 / 0.02 = 28.999...) and an off-grid point.
TRUNCATIONS = [0.02, 0.4, 1.0, 0.41, 0.55, 0.14, 0.58, 0.333]


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Two threads on two cores are ~4x slower than one for these tiny convolutions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def package_config(resolution: int, ch: int, n_classes: int) -> dict:
    """The package's config of a resolution, shrunk to channel_width ch and z_dim 16."""
    config = PACKAGE_CONFIGS[resolution].to_dict()
    config.update(channel_width=ch, num_classes=n_classes, z_dim=Z_DIM, class_embed_dim=Z_DIM)
    config['layers'] = [list(layer) for layer in config['layers']]
    return config


def make_hf_folder(path: Path, resolution: int, ch: int = 8, n_classes: int = N_CLASSES,
                   seed: int = 0, converge: bool = True) -> Path:
    """A package folder of a random BigGAN-deep: every tensor random (SN weights with a strong
    rank-one part, so a few power iterations converge), SN vectors converged unless not
    `converge` (then they are unrelated to the weights)."""
    config = package_config(resolution, ch, n_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = HFBigGAN(BigGANConfig.from_dict(config))
        with torch.no_grad():
            for name, m in model.named_modules():
                if hasattr(m, 'weight_orig'):
                    W = m.weight_orig
                    W.normal_(0, 0.05)
                    a, b = torch.randn(W.shape[0]), torch.randn(W[0].numel())
                    W.add_(0.5 * (a[:, None] * b[None]).view_as(W))
                if hasattr(m, 'running_means'):
                    m.running_means.normal_(0, 0.3)
                    m.running_vars.uniform_(0.5, 2.0)
                if name == 'generator.bn':
                    m.weight.normal_(1, 0.1)
                    m.bias.normal_(0, 0.1)
            for name, p in model.named_parameters():
                if name.endswith(('bias', 'gamma')):
                    p.normal_(0, 0.1)
            model.embeddings.weight.normal_(0, 1)
            if converge:
                model.train()
                for _ in range(10):
                    model(torch.randn(2, Z_DIM), torch.eye(n_classes)[:2], 0.5)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / 'pytorch_model.bin')
    (path / 'config.json').write_text(json.dumps(config))
    return path


def package_model(hf_dir: Path) -> HFBigGAN:
    """The package's BigGAN of a folder, loaded strictly, in eval mode."""
    model = HFBigGAN(BigGANConfig.from_json_file(str(hf_dir / 'config.json')))
    model.load_state_dict(torch.load(hf_dir / 'pytorch_model.bin', weights_only=True))
    return model.eval()


def draw(t: float, n_classes: int, n: int = 3, seed: int = 1):
    """z as the package samples it (t * N(0, 1) truncated to +-2) and labels."""
    gen = torch.Generator().manual_seed(seed)
    z = t * torch.nn.init.trunc_normal_(torch.empty(n, Z_DIM), a=-2, b=2, generator=gen)
    return z, torch.randint(0, n_classes, (n,), generator=gen)


@torch.no_grad()
def outputs(G, ref, t: float, seed: int = 1):
    """(ours, the package's) images for the same z, y at truncation t."""
    z, y = draw(t, G.n_classes, seed=seed)
    ours = G.eval()(z, G.shared(y))
    theirs = ref(z, F.one_hot(y, G.n_classes).float(), t)
    return ours, theirs


def difference(G, ref, t: float) -> float:
    ours, theirs = outputs(G, ref, t)
    assert theirs.std() > 0.02  # images, not a constant: a difference means something
    return float((ours - theirs).abs().max())


def bn_modules(G) -> dict:
    return {n: m for n, m in G.named_modules() if getattr(m, 'stored_mean', None) is not None}


def run_converter(hf_dir, weights_root, name, *extra) -> int:
    return converter.main(['--hf', str(hf_dir), '--weights_root', str(weights_root),
                           '--name', name, *extra])


def load_converted(run_dir: Path):
    """G built from the run's config.json alone, G.pth loaded strictly; and the config."""
    config = json.loads((run_dir / 'config.json').read_text())
    G = BigGANdeep.Generator(**config)
    G.load_state_dict(torch.load(run_dir / 'G.pth', weights_only=True), strict=True)
    return G.eval(), config


@pytest.fixture(scope='module')
def hf_dirs(tmp_path_factory):
    """Package folders of the 128, 256 and 512 architectures (channel_width 8)."""
    root = tmp_path_factory.mktemp('hf')
    return {r: make_hf_folder(root / f'biggan-deep-{r}', r, seed=r) for r in (128, 256, 512)}


@pytest.fixture(scope='module')
def refs(hf_dirs):
    return {r: package_model(d) for r, d in hf_dirs.items()}


@pytest.fixture(scope='module')
def converted(hf_dirs):
    """(G, config, table) per resolution, converted with the statistics of t = 1."""
    out = {}
    for r, d in hf_dirs.items():
        hf, state = hf_converter.read_folder(d)
        out[r] = hf_converter.convert(state, hf, 1.0)
    return out


@pytest.fixture(scope='module')
def small_hf(tmp_path_factory):
    """A 128 folder with channel_width 4 and 5 classes: for the CLI, sample.py and train.py."""
    return make_hf_folder(tmp_path_factory.mktemp('hf_small') / 'biggan-deep-128', 128, ch=4,
                          n_classes=5, seed=7)


@pytest.fixture(scope='module')
def small_run(small_hf, tmp_path_factory):
    """The small folder converted by the CLI with the statistics of t = 1: (weights_root, name)."""
    root = tmp_path_factory.mktemp('weights')
    assert run_converter(small_hf, root, 'hf128', '--truncation', '1.0') == 0
    return root, 'hf128'


# ----------------------------------------------------------------------------------------
# Equality with the package
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('t', TRUNCATIONS)
@pytest.mark.parametrize('resolution', [128, 256, 512])
def test_converted_G_equals_the_package(converted, refs, resolution, t):
    """With the table's statistics for t, G(z, shared(y)) is the package's BigGAN(z, y, t)."""
    G, _, table = converted[resolution]
    assert bn_stats.apply(G, table, t) == len(bn_modules(G))
    assert difference(G, refs[resolution], t) <= TOL


@pytest.mark.parametrize('resolution', [128, 512])
def test_neighbouring_statistics_are_far_off(converted, refs, resolution):
    """Control: the statistics of t + 0.02 instead of t's give a difference far above TOL."""
    G, _, table = converted[resolution]
    bn_stats.apply(G, table, 0.42)
    assert difference(G, refs[resolution], 0.4) > 100 * TOL
    bn_stats.apply(G, table, 0.4)
    assert difference(G, refs[resolution], 0.4) <= TOL


def test_three_channel_output_conv_is_far_off(converted, refs):
    """Control: slicing the output conv to its 3 image channels (G_output_conv_ch 3) changes
    its spectral norm, and the images, far above TOL: the test can tell."""
    G, config, table = converted[128]
    bn_stats.apply(G, table, 0.4)
    G3 = BigGANdeep.Generator(**{**config, 'G_output_conv_ch': 3})
    state = G.state_dict()
    for key in ('output_layer.2.weight', 'output_layer.2.bias'):
        state[key] = state[key][:3]
    state['output_layer.2.u0'] = state['output_layer.2.u0'][:, :3]
    G3.load_state_dict(state, strict=True)
    hf_converter.set_singular_values(G3)
    assert difference(G3, refs[128], 0.4) > 100 * TOL
    assert difference(G, refs[128], 0.4) <= TOL


@pytest.mark.parametrize('resolution', [128, 256, 512])
def test_cli_run_loads_strictly_from_its_config_and_equals_the_package(
        hf_dirs, refs, tmp_path, resolution, capsys):
    """converter.py --hf writes G.pth that BigGANdeep.Generator(**config.json) loads strictly,
    equal to the package at the --truncation given; --check compares and passes."""
    assert run_converter(hf_dirs[resolution], tmp_path, 'hf', '--truncation', '0.4',
                         '--check', '--check_num', '4') == 0
    out = capsys.readouterr().out
    assert 'max |ours - package|' in out and 'at truncation 0.4' in out
    run_dir = tmp_path / 'hf'
    G, config = load_converted(run_dir)
    assert config['experiment_name'] == 'hf' and config['resolution'] == resolution
    assert config['truncation_style'] == 'scaled' and config['model'] == 'BigGANdeep'
    assert (run_dir / bn_stats.TABLE_FILE).is_file() and (run_dir / 'hf_check.png').is_file()
    assert difference(G, refs[resolution], 0.4) <= TOL


def test_check_fails_when_the_package_divides_by_other_vectors(small_hf, tmp_path, capsys):
    """--check has teeth: a stored u of the output conv moved off the singular vector (the
    package divides by u.W v, ours by the power iteration's estimate) gives exit code 1."""
    hf_dir = tmp_path / 'moved'
    hf_dir.mkdir()
    (hf_dir / 'config.json').write_bytes((small_hf / 'config.json').read_bytes())
    state = torch.load(small_hf / 'pytorch_model.bin', weights_only=True)
    u = state['generator.conv_to_rgb.weight_u']
    gen = torch.Generator().manual_seed(0)
    state['generator.conv_to_rgb.weight_u'] = F.normalize(
        u + 0.5 * torch.randn(u.shape, generator=gen), dim=0)
    torch.save(state, hf_dir / 'pytorch_model.bin')
    assert run_converter(hf_dir, tmp_path / 'w', 'moved', '--truncation', '0.4', '--check',
                         '--check_num', '4') == 1
    out, err = capsys.readouterr()
    assert 'differs from the package' in err
    diff = float(out.split('max |ours - package| ')[1].split()[0])
    assert 100 * TOL < diff < 2  # finite, and far off


def outputs_of_package(hf_dir: Path, t: float) -> torch.Tensor:
    z, y = draw(t, N_CLASSES)
    return package_model(hf_dir)(z, F.one_hot(y, N_CLASSES).float(), t)


def test_check_fails_when_the_package_gives_nan(tmp_path, capsys):
    """--check with SN vectors never converged (the package divides by u.W v of random u, v,
    near 0 for some layers, and gives NaN images): the check must fail, not pass on NaN."""
    hf_dir = make_hf_folder(tmp_path / 'raw', 128, ch=4, converge=False)
    with torch.no_grad():
        assert not torch.isfinite(outputs_of_package(hf_dir, 0.4)).all()
    code = run_converter(hf_dir, tmp_path / 'w', 'raw', '--truncation', '0.4', '--check',
                         '--check_num', '4')
    assert 'max |ours - package| nan' in capsys.readouterr().out
    assert code == 1


# ----------------------------------------------------------------------------------------
# Interpolation between grid points
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def rows(converted):
    """The per-truncation statistics [51, C] of the output BN, from the 128 table."""
    return converted[128][2]['stats']['output_layer.0']['mean']


def test_table_rows_are_the_package_running_statistics(converted, hf_dirs):
    """The table keeps the package's running_means/vars, one row per grid truncation."""
    _, state = hf_converter.read_folder(hf_dirs[128])
    stats = converted[128][2]['stats']
    assert torch.equal(stats['output_layer.0']['mean'], state['generator.bn.running_means'])
    assert torch.equal(stats['output_layer.0']['var'], state['generator.bn.running_vars'])
    assert torch.equal(stats['blocks.0.0.bn1']['var'],
                       state['generator.layers.0.bn_0.running_vars'])
    assert len(stats) == len(bn_modules(converted[128][0]))


@pytest.mark.parametrize('t', [0.4, 0.41, 0.55, 1.0])
def test_linear_equals_package_at_grid_points_and_midpoints(rows, t):
    """At grid points and midpoints both interpolations give the same statistics."""
    torch.testing.assert_close(bn_stats.stats_at(rows, t, 'linear'),
                               bn_stats.stats_at(rows, t, 'package'), rtol=0, atol=1e-6)


@pytest.mark.parametrize('t', [0.333, 0.305, 0.427, 0.999])
def test_linear_is_linear_between_grid_points(rows, t):
    """'linear' is (1 - f) * row[i] + f * row[i + 1] with i + f = t * 50; 'package' swaps
    the weights, so off grid points and midpoints it differs."""
    i = int(t * 50)
    f = t * 50 - i
    expected = (1 - f) * rows[i] + f * rows[i + 1]
    torch.testing.assert_close(bn_stats.stats_at(rows, t, 'linear'), expected,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(bn_stats.stats_at(rows, t, 'package'),
                               f * rows[i] + (1 - f) * rows[i + 1], rtol=0, atol=1e-6)
    assert (bn_stats.stats_at(rows, t, 'package') - expected).abs().max() > 1e-2


def test_linear_is_continuous_where_package_jumps(rows):
    """Just below grid point 0.4, 'linear' is at row 20 and 'package' near row 19."""
    t = 0.4 - 1e-7
    torch.testing.assert_close(bn_stats.stats_at(rows, t, 'linear'), rows[20],
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(bn_stats.stats_at(rows, t, 'package'), rows[19],
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize('t, package_row, linear_row', [(0.14, 8, 7), (0.58, 28, 29)])
def test_float_quirk_grid_points(rows, t, package_row, linear_row):
    """At 0.14 and 0.58 the package's t / step falls just beside the grid point, and it takes
    the neighbouring row (the images it gives there); 'linear' takes the point's own row."""
    torch.testing.assert_close(bn_stats.stats_at(rows, t, 'package'), rows[package_row],
                               rtol=0, atol=1e-6)
    assert torch.equal(bn_stats.stats_at(rows, t, 'linear'), rows[linear_row])


@pytest.mark.parametrize('t, same', [(0.4, True), (0.41, True), (0.333, False),
                                     (0.14, False)])
def test_linear_conversion_against_the_package(hf_dirs, refs, t, same):
    """convert(..., 'linear') gives the package's images at grid points and midpoints only."""
    hf, state = hf_converter.read_folder(hf_dirs[128])
    G, _, table = hf_converter.convert(state, hf, t, 'linear')
    assert table['interpolation'] == 'linear'
    diff = difference(G, refs[128], t)
    assert diff <= TOL if same else diff > 100 * TOL


# ----------------------------------------------------------------------------------------
# The stored statistics and the table
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('interpolation', ['package', 'linear'])
def test_stored_statistics_are_the_tables_at_the_truncation(small_hf, tmp_path,
                                                            interpolation):
    """G.pth holds the table's statistics for --truncation (under --bn_interpolation)."""
    assert run_converter(small_hf, tmp_path, 'hf', '--truncation', '0.333',
                         '--bn_interpolation', interpolation) == 0
    G, _ = load_converted(tmp_path / 'hf')
    table = bn_stats.load_table(str(tmp_path / 'hf'))
    assert table['interpolation'] == interpolation
    expected = bn_stats.table_stats(table, 0.333)
    modules = bn_modules(G)
    assert set(expected) == set(modules)
    for name, (mean, var) in expected.items():
        assert torch.equal(modules[name].stored_mean, mean), name
        assert torch.equal(modules[name].stored_var, var), name
    other = bn_stats.table_stats(table, 0.5)['output_layer.0'][0]
    assert not torch.allclose(modules['output_layer.0'].stored_mean, other)


def test_table_is_refused_for_changed_weights(small_run):
    """The table fits the weights it came with; for changed weights use_for_truncation warns,
    leaves G's statistics alone and returns None."""
    root, name = small_run
    run_dir = root / name
    G, _ = load_converted(run_dir)
    table = bn_stats.load_table(str(run_dir))
    assert bn_stats.fits(table, G)
    assert bn_stats.use_for_truncation(G, str(run_dir), 0.4) is not None
    torch.testing.assert_close(G.output_layer[0].stored_mean,
                               bn_stats.table_stats(table, 0.4)['output_layer.0'][0])
    with torch.no_grad():
        G.blocks[0][0].conv2.weight.mul_(1.1)
    assert not bn_stats.fits(table, G)
    before = G.output_layer[0].stored_mean.clone()
    with pytest.warns(UserWarning, match='belongs to other weights'):
        assert bn_stats.use_for_truncation(G, str(run_dir), 0.8) is None
    assert torch.equal(G.output_layer[0].stored_mean, before)


def test_run_without_table_keeps_its_statistics(tmp_path):
    """No table beside the weights: load_table and use_for_truncation return None."""
    assert bn_stats.load_table(str(tmp_path)) is None
    G = BigGANdeep.Generator(**hf_converter.run_config(package_config(128, 4, 5)))
    assert bn_stats.use_for_truncation(G, str(tmp_path), 0.4) is None


# ----------------------------------------------------------------------------------------
# Errors: exit code 1, what was expected, nothing written
# ----------------------------------------------------------------------------------------


def _edit_config(**changes):
    def edit(folder: Path):
        config = json.loads((folder / 'config.json').read_text())
        config.update(changes)
        (folder / 'config.json').write_text(json.dumps(config))
    return edit


def _edit_state(fn):
    def edit(folder: Path):
        state = torch.load(folder / 'pytorch_model.bin', weights_only=True)
        fn(state)
        torch.save(state, folder / 'pytorch_model.bin')
    return edit


def _drop_layer(folder: Path):
    config = json.loads((folder / 'config.json').read_text())
    config['layers'] = config['layers'][:-1]
    (folder / 'config.json').write_text(json.dumps(config))


def _all_wrong(state):
    del state['generator.layers.3.conv_1.weight_orig']
    state['generator.gen_z.bias'] = torch.zeros(5)
    state['generator.extra.weight'] = torch.zeros(2)


ERRORS = {
    'no weights': (lambda f: (f / 'pytorch_model.bin').unlink(), ['missing pytorch_model.bin']),
    'no config': (lambda f: (f / 'config.json').unlink(), ['missing config.json']),
    'config not JSON': (lambda f: (f / 'config.json').write_text('{"output_dim": 128,'),
                        ['config.json is not readable JSON']),
    'config a list': (lambda f: (f / 'config.json').write_text('[1, 2]'),
                      ['expected a JSON object']),
    'weights not torch': (lambda f: (f / 'pytorch_model.bin').write_bytes(b'not a pickle'),
                          ['not a readable torch state_dict']),
    'layers not in pairs': (_drop_layer, ['expected pairs']),
    'layers not triples': (_edit_config(layers=[[False, 16]]), ['[upsample, in, out] triples']),
    'unknown output_dim': (_edit_config(output_dim=64), ['output_dim 64',
                                                         'no such generator']),
    'odd attention position': (_edit_config(attention_layer_position=7),
                               ['attention_layer_position 7', 'even block index']),
    'missing key': (_edit_state(lambda s: s.pop('generator.layers.3.conv_1.weight_orig')),
                    ['missing (1): generator.layers.3.conv_1.weight_orig']),
    'wrong shape': (_edit_state(lambda s: s.update({'generator.gen_z.bias': torch.zeros(5)})),
                    ['wrong shape (1): generator.gen_z.bias: (5,), expected (1024,)']),
    'extra key': (_edit_state(lambda s: s.update({'generator.extra.weight': torch.zeros(2)})),
                  ['unexpected (1): generator.extra.weight']),
    'all at once': (_edit_state(_all_wrong), ['missing (1)', 'wrong shape (1)',
                                              'unexpected (1)']),
    'stats of another n_stats': (_edit_config(n_stats=11),
                                 ['running_means: (51, 64), expected (11, 64)']),
}


@pytest.mark.parametrize('case', sorted(ERRORS))
def test_bad_folder_is_a_clear_error_and_writes_nothing(small_hf, tmp_path, capsys, case):
    """A folder the converter cannot read: exit code 1, `error: ...` naming what was
    expected (and every wrong key), nothing written."""
    folder = tmp_path / 'hf'
    folder.mkdir()
    for f in ('pytorch_model.bin', 'config.json'):
        (folder / f).write_bytes((small_hf / f).read_bytes())
    edit, expected = ERRORS[case]
    edit(folder)
    assert run_converter(folder, tmp_path / 'w', 'run', '--truncation', '0.4') == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ')
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('extra, expected', [
    (['--truncation', '1.5'], 'give 0 < t <= 1'),
    (['--truncation', '0', '--check'], 'give 0 < t <= 1'),
    (['--truncation', '0.4', '--resolution', '256'], 'output_dim 128'),
])
def test_bad_flags_are_clear_errors(small_hf, tmp_path, capsys, extra, expected):
    """A truncation outside the table, or --resolution other than the folder's: exit 1."""
    assert run_converter(small_hf, tmp_path / 'w', 'run', *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and expected in err
    assert not (tmp_path / 'w').exists()


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    """--hf of a folder that does not exist: exit 1 saying what the folder should hold."""
    assert run_converter(tmp_path / 'nope', tmp_path / 'w', 'run', '--truncation', '0.4') == 1
    err = capsys.readouterr().err
    assert 'no such folder' in err and 'pytorch_model.bin' in err and 'config.json' in err
    assert not (tmp_path / 'w').exists()


# ----------------------------------------------------------------------------------------
# sample.py on a converted run
# ----------------------------------------------------------------------------------------


def sample_args(small_run, tmp_path, *flags) -> list[str]:
    root, name = small_run
    return ['--weights_root', str(root), '--experiment_name', name,
            '--samples_root', str(tmp_path / 'samples'), '--logs_root', str(tmp_path / 'logs'),
            *flags]


@pytest.fixture
def spies(monkeypatch):
    """Records the latents sample.py draws, the statistics it applies and its Sampler."""
    seen = types.SimpleNamespace(latents=[], applied=[], draw_z=[], sampler=None)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    real_sample_ = sample.TruncatedLatents.sample_

    def sample_(self):
        z, y = real_sample_(self)
        seen.latents.append((self.truncation, self.style, z.clone(), y.clone()))
        return z, y
    monkeypatch.setattr(sample.TruncatedLatents, 'sample_', sample_)
    real_apply = bn_stats.apply

    def apply(G, table, t):
        seen.applied.append(t)
        return real_apply(G, table, t)
    monkeypatch.setattr(bn_stats, 'apply', apply)
    real_build = sample.build_sampler

    def build_sampler(*args, **kwargs):
        seen.sampler = real_build(*args, **kwargs)
        return seen.sampler
    monkeypatch.setattr(sample, 'build_sampler', build_sampler)
    real_draw_z = utils.draw_z

    def draw_z(shape, device='cpu', truncation=0.0, style='resample'):
        z = real_draw_z(shape, device, truncation, style)
        seen.draw_z.append((truncation, style, z.clone()))
        return z
    monkeypatch.setattr(utils, 'draw_z', draw_z)
    return seen


def assert_scaled(z: torch.Tensor, t: float) -> None:
    """t * N(0, 1) truncated to +-2: within 2t, and (enough draws) often beyond t."""
    assert z.abs().max() <= 2 * t + 1e-6
    assert (z.abs() > t).float().mean() > 0.1


def test_sample_npz_equals_the_package_at_the_truncation(small_run, small_hf, tmp_path,
                                                        spies):
    """--truncation 0.4 --sample_npz: the G sample.py loads has the table's statistics for
    0.4, z has the package's law, and the images are the package's for those z, y."""
    done = sample.run(sample_args(small_run, tmp_path, '--sample_npz', '--sample_num_npz',
                                  '20', '--truncation', '0.4', '--G_batch_size', '10'))
    assert done['config']['truncation_style'] == 'scaled'
    assert spies.applied == [0.4]
    s = spies.sampler
    table = bn_stats.load_table(str(small_run[0] / small_run[1]))
    assert s.bn_table is not None
    modules = bn_modules(s.G)
    for name, (mean, var) in bn_stats.table_stats(table, 0.4).items():
        assert torch.equal(modules[name].stored_mean, mean), name
        assert torch.equal(modules[name].stored_var, var), name
    assert [(t, style) for t, style, _, _ in spies.latents] == [(0.4, 'scaled')] * 2
    z = torch.cat([z for _, _, z, _ in spies.latents])
    y = torch.cat([y for _, _, _, y in spies.latents])
    assert_scaled(z, 0.4)
    with torch.no_grad():
        theirs = package_model(small_hf)(z, F.one_hot(y, 5).float(), 0.4)
    with np.load(done['npz']) as f:
        x, labels = f['x'], f['y']
    np.testing.assert_array_equal(labels, y.numpy())
    assert x.shape == (20, 128, 128, 3) and x.std() > 1
    assert np.abs(x.astype(int) - utils.to_uint8(theirs).numpy().astype(int)).max() <= 1


def test_sheets_interps_random_use_the_scaled_truncation(small_run, tmp_path, spies,
                                                         monkeypatch):
    """Sheets, interps and the random grid are drawn with t * N(0, 1) truncated to +-2 and
    the statistics for t (interps cut to 2 rows: 480 images at 128 take too long here)."""
    real_interp = utils.interp_sheet
    interps = []

    def interp_sheet(G, **kwargs):
        interps.append(kwargs)
        return real_interp(G, **{**kwargs, 'num_per_sheet': 2})
    monkeypatch.setattr(utils, 'interp_sheet', interp_sheet)
    done = sample.run(sample_args(small_run, tmp_path, '--sample_sheets', '--sample_interps',
                                  '--sample_random', '--truncation', '0.4',
                                  '--G_batch_size', '4'))
    assert spies.applied == [0.4]
    assert all(Path(p).is_file() for p in done['sheets'] + done['interps'] + [done['random']])
    assert len(done['interps']) == 3
    assert [(k['truncation'], k['truncation_style']) for k in interps] == [(0.4, 'scaled')] * 3
    assert spies.draw_z and all((t, style) == (0.4, 'scaled') for t, style, _ in spies.draw_z)
    assert_scaled(torch.cat([z.flatten() for _, _, z in spies.draw_z]), 0.4)
    assert [(t, style) for t, style, _, _ in spies.latents] == [(0.4, 'scaled')]


def fake_inception(monkeypatch, seen: list, stats_of):
    """No Inception here: made-up metrics that record G's output-BN mean when measured."""
    def get_inception_metrics(sample_fn, num, num_splits=10, prints=True, use_torch=True):
        images, y = sample_fn()
        assert images.shape[1:] == (3, 128, 128)
        seen.append(stats_of().clone())
        return 5.0, 0.1, None
    fake = types.SimpleNamespace(check_inception_ready=lambda *a, **k: None,
                                 prepare_inception_metrics=lambda *a, **k: get_inception_metrics)
    monkeypatch.setitem(sys.modules, 'inception_utils', fake)


def test_trunc_curves_set_the_statistics_per_truncation(small_run, tmp_path, spies,
                                                        monkeypatch):
    """--sample_trunc_curves: each t is measured with the table's statistics for t and the
    scaled z of t."""
    measured = []
    fake_inception(monkeypatch, measured,
                   lambda: spies.sampler.G.output_layer[0].stored_mean)
    done = sample.run(sample_args(small_run, tmp_path, '--sample_trunc_curves', '0.2_0.2_1.0',
                                  '--no_fid', '--num_inception_images', '10',
                                  '--G_batch_size', '10'))
    ts = [0.2, 0.4, 0.6, 0.8, 1.0]
    assert [r['truncation'] for r in done['trunc_curves']] == ts
    assert spies.applied == ts
    table = bn_stats.load_table(str(small_run[0] / small_run[1]))
    for t, mean in zip(ts, measured):
        assert torch.equal(mean, bn_stats.table_stats(table, t)['output_layer.0'][0]), t
    assert [(t, style) for t, style, _, _ in spies.latents] == [(t, 'scaled') for t in ts]
    for t, _, z, _ in spies.latents:
        assert_scaled(z, t)


@pytest.mark.parametrize('flags', [['--truncation', '1.5', '--sample_random'],
                                   ['--sample_trunc_curves', '0.5_0.5_1.5', '--no_fid']])
def test_truncation_beyond_the_table_is_a_clean_error(small_run, tmp_path, capsys, flags,
                                                      monkeypatch):
    """t > 1 on a converted run: exit code 1, saying the statistics cover 0 to 1."""
    fake_inception(monkeypatch, [], lambda: torch.zeros(1))
    assert sample.main(sample_args(small_run, tmp_path, *flags)) == 1
    err = capsys.readouterr().err
    assert 'sample.py: error:' in err and '0 to 1' in err and 'Traceback' not in err


# ----------------------------------------------------------------------------------------
# Fine-tuning the converted G with train.py --load_weights
# ----------------------------------------------------------------------------------------


def finetune_argv(small_run, tmp_path, g_flags: list[str], *extra) -> list[str]:
    root, name = small_run
    return [*g_flags, '--D_ch', '4', '--D_depth', '2', '--D_attn', '0',
            '--dataset', str(write_hdf5(tmp_path / 'data.hdf5', n=4, resolution=128)),
            '--base_root', str(tmp_path / 'ft'), '--experiment_name', 'ft',
            '--load_weights', str(root / name), '--batch_size', '2', '--num_D_steps', '1',
            '--num_epochs', '1', '--test_every', '0', '--num_workers', '0',
            '--G_lr', '1e-4', *extra]


def G_params(state: dict, G) -> dict:
    names = {n for n, _ in G.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def test_finetune_starts_from_the_converted_G(small_run, tmp_path, monkeypatch):
    """--load_weights of a converted run with finetune_flags and --D_warmup 1: iteration 1
    trains D only (G's weights stay the converted ones), iteration 2 takes one G step from
    them; the class embedding is re-initialised for the 3 classes; D is saved."""
    monkeypatch.setattr(train_loop, '_write_samples', lambda *a, **k: None)  # sheets: slow
    root, name = small_run
    converted_G, config = load_converted(root / name)
    flags = hf_converter.finetune_flags(config).split()
    state = train.main(finetune_argv(small_run, tmp_path, flags, '--D_warmup', '1',
                                     '--save_every', '1', '--num_save_copies', '2'))
    assert state['itr'] == 2
    run = tmp_path / 'ft' / 'weights' / 'ft'
    assert (run / 'D.pth').is_file()
    ref = G_params(converted_G.state_dict(), converted_G)
    first = utils.load_file(str(run / 'G_copy0.pth'))  # saved at iteration 1
    last = utils.load_file(str(run / 'G.pth'))  # iteration 2
    assert utils.load_file(str(run / 'state_dict_copy0.pth'))['itr'] == 1
    for saved in (first, last):
        assert set(G_params(saved, converted_G)) == set(ref)
        assert saved['shared.weight'].shape == (3, Z_DIM)
    stepped = 0
    for key, value in ref.items():
        if key == 'shared.weight':
            continue
        assert torch.equal(first[key], value), key  # the warm-up left G as converted
        step = (last[key] - value).abs().max()
        assert step <= 1.01e-4, key  # one Adam step of lr 1e-4 from the converted weights
        stepped += bool(step > 0)
    assert stepped > len(ref) // 2  # and G did step


def test_finetune_refuses_other_G_flags(small_run, tmp_path, monkeypatch):
    """Flags that build G otherwise than the converted run (BN_eps dropped): ValueError
    naming BN_eps and the flag to give, before anything is written."""
    root, name = small_run
    config = json.loads((root / name / 'config.json').read_text())
    flags = hf_converter.finetune_flags(config).split()
    i = flags.index('--BN_eps')
    del flags[i:i + 2]
    with pytest.raises(ValueError, match=r'BN_eps.*--BN_eps 0\.0001'):
        train.main(finetune_argv(small_run, tmp_path, flags, '--save_every', '1'))
    assert not (tmp_path / 'ft' / 'weights' / 'ft').exists()
    assert not list((tmp_path / 'ft').rglob('*.*'))


# ----------------------------------------------------------------------------------------
# The fine-tuning launcher
# ----------------------------------------------------------------------------------------


def script_args(path: Path) -> list[str]:
    """The flags of the one python train.py command of a launcher ("$@" dropped)."""
    text = path.read_text().replace('\\\n', ' ')
    commands = [shlex.split(line, comments=True) for line in text.splitlines()]
    commands = [c for c in commands if c and c[0] in ('python', 'python3')]
    assert len(commands) == 1 and commands[0][1] == 'train.py', commands
    return [t for t in commands[0][2:] if t != '$@']


def test_finetune_launcher_builds_the_converted_128_G():
    """scripts/finetune_BigGAN_deep.sh parses, and its G-building flags are those of the
    converted BigGAN-deep 128 (so train.py's check passes), as finetune_flags prints them."""
    argv = script_args(ROOT / 'scripts' / 'finetune_BigGAN_deep.sh')
    parsed = vars(utils.prepare_parser().parse_args(argv))
    config = hf_converter.run_config(BigGAN128.to_dict())
    from_flags = vars(utils.prepare_parser().parse_args(
        hf_converter.finetune_flags(config).split()))
    for key in flags.G_BUILD_KEYS:
        assert parsed[key] == config[key], key
        assert from_flags[key] == config[key], key
    assert parsed['load_weights'] and parsed['D_warmup'] > 0 and parsed['resolution'] == 128


def test_finetune_check_names_a_G_flag_the_source_config_lacks(tmp_path):
    """A source config from before a G flag existed (2019 runs): its default is what built
    that G, so a different value given now is refused by name, not a KeyError."""
    (tmp_path / 'config.json').write_text(json.dumps({'model': 'BigGAN', 'G_ch': 64}))
    config = vars(utils.prepare_parser().parse_args(['--G_output_BN_eps', '1e-4']))
    with pytest.raises(ValueError, match=r"G_output_BN_eps=1e-05 \(given: 0\.0001\)"
                                         r".*--G_output_BN_eps 1e-05"):
        resume.check_source_G(config, str(tmp_path))
    resume.check_source_G(vars(utils.prepare_parser().parse_args([])), str(tmp_path))
