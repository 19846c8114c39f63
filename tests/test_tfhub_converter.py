"""Tests of TFHub/converter.py: exact round trips, EMA selection, TF layouts, clear errors.

G has the TF-Hub 128 structure (hier, shared 128-d embedding, attention at 64, 1000 classes)
with G_ch 4, so everything runs on a CPU in seconds.
"""
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import BigGAN
import layers
from helpers import ROOT

_spec = importlib.util.spec_from_file_location('tfhub_converter', ROOT / 'TFHub' / 'converter.py')
converter = importlib.util.module_from_spec(_spec)
sys.modules['tfhub_converter'] = converter  # dataclasses look their module up there
_spec.loader.exec_module(converter)

CONFIG = {**converter.tfhub_config(128), 'G_ch': 4}
TF_LINEAR = 'module/Generator/G_Z/G_linear'


def random_G(seed: int) -> BigGAN.Generator:
    """A G whose every tensor is random (biases, gains, attention gamma and BN stats too)."""
    torch.manual_seed(seed)
    G = BigGAN.Generator(**{**CONFIG, 'skip_init': False})
    with torch.no_grad():
        for key, t in G.state_dict().items():
            if key.endswith('stored_var'):
                t.uniform_(0.5, 1.5)
            elif not key.endswith('weight') and '.sv' not in key:
                t.add_(0.3 * torch.randn_like(t))
    return G.eval()


def samples(G, seed=1, n=3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.dim_z, generator=gen)
    y = torch.randint(0, G.n_classes, (n,), generator=gen)
    with torch.no_grad():
        return G.eval()(z, G.shared(y))


def load(state):
    G = BigGAN.Generator(**CONFIG)
    G.load_state_dict(state, strict=True)
    return G.eval()


def assert_same_tensors(state, G):
    """Every tensor equal, except the log-only `sv0`s, which must be the eval estimate."""
    ref = G.state_dict()
    assert set(state) == set(ref)
    for key, t in ref.items():
        if '.sv' not in key:
            assert torch.equal(state[key], t), key
    converted = load(state)
    for m in converted.modules():
        if isinstance(m, layers.SN):
            sigma = (m.weight / m.W_()).flatten()[0]
            torch.testing.assert_close(m.sv0[0], sigma, rtol=1e-4, atol=0)


@pytest.fixture(scope='module')
def G():
    return random_G(0)


@pytest.fixture(scope='module')
def tf_vars(G):
    return converter.tf_variables(G)


@pytest.mark.parametrize('suffix', ['.npz', '.h5'])
def test_round_trip_reproduces_every_tensor_and_the_samples(G, tmp_path, suffix):
    path = tmp_path / f'biggan{suffix}'
    converter.dump_tf_variables(G, path)
    variables = converter.load_variables(path)
    assert all(k.startswith('module/') and k.endswith(':0') for k in variables)
    state = converter.convert(variables, CONFIG)
    assert_same_tensors(state, G)
    assert torch.equal(samples(load(state)), samples(G))


def test_ema_and_raw_weights_are_selected(tmp_path):
    G_ema, G_raw = random_G(1), random_G(2)
    path = tmp_path / 'both.npz'
    converter.dump_tf_variables(G_ema, path, raw=G_raw)
    variables = converter.load_variables(path)
    assert f'{TF_LINEAR}/w/{converter.EMA_SUFFIX}:0' in variables
    assert f'{TF_LINEAR}/u0:0' in variables and f'{TF_LINEAR}/u0/ema_b999900:0' not in variables

    assert_same_tensors(converter.convert(variables, CONFIG), G_ema)
    raw = converter.convert(variables, CONFIG, ema=False)
    ema_state, raw_state = G_ema.state_dict(), G_raw.state_dict()
    for key, t in raw.items():
        # TF keeps one copy of u0 and of the BN statistics: those come with the EMA G.
        once = key.endswith(('.u0', 'stored_mean', 'stored_var'))
        if '.sv' not in key:
            assert torch.equal(t, (ema_state if once else raw_state)[key]), key
    assert not torch.equal(raw['linear.weight'], ema_state['linear.weight'])


def test_accumulated_statistics_are_divided_by_the_counter(G, tf_vars):
    variables = dict(tf_vars)
    for name in list(variables):
        if 'accumulated_' in name:
            variables[name] = variables[name] * 8
        elif 'accumulation_counter' in name:
            variables[name] = np.array([8.0], np.float32)  # a [1] counter is accepted too
    assert_same_tensors(converter.convert(variables, CONFIG), G)


def test_first_linear_output_is_channels_last_in_tf(G, tf_vars):
    """TF computes z @ w + b and reshapes to [B, 4, 4, C]; ours is [B, C, 4, 4]."""
    w = torch.from_numpy(tf_vars[f'{TF_LINEAR}/w/{converter.EMA_SUFFIX}:0'])
    b = torch.from_numpy(tf_vars[f'{TF_LINEAR}/b/{converter.EMA_SUFFIX}:0'])
    z = torch.randn(2, G.z_chunk_size)
    tf_out = (z @ w + b).view(2, 4, 4, -1).permute(0, 3, 1, 2)
    ours = F.linear(z, G.linear.weight, G.linear.bias).view(2, -1, 4, 4)
    torch.testing.assert_close(tf_out, ours)
    # The permutation is real: a dump taking our units in order differs...
    assert not np.array_equal(w.numpy(), G.linear.weight.detach().numpy().T)

    # ...and converting such an unpermuted dump gives a different G.
    naive = dict(tf_vars)
    for suffix in (f'/{converter.EMA_SUFFIX}:0', ':0'):
        naive[f'{TF_LINEAR}/w{suffix}'] = G.linear.weight.detach().numpy().T.copy()
        naive[f'{TF_LINEAR}/b{suffix}'] = G.linear.bias.detach().numpy().copy()
    naive[f'{TF_LINEAR}/u0:0'] = G.linear.u0.numpy().copy()
    assert not torch.allclose(samples(load(converter.convert(naive, CONFIG))), samples(G))


def test_conv_weights_are_HWIO_and_compute_tf_convolutions(G, tf_vars):
    w = tf_vars[f'module/Generator/GBlock/conv0/w/{converter.EMA_SUFFIX}:0']
    conv = G.blocks[0][0].conv1
    assert w.shape == (3, 3, conv.in_channels, conv.out_channels)
    # TF NHWC convolution at one output pixel: sum over kh, kw, in of x * w[kh, kw, in, out].
    x = torch.randn(2, 3, 3, conv.in_channels)
    tf_out = torch.einsum('bhwi,hwio->bo', x, torch.from_numpy(w))
    ours = F.conv2d(x.permute(0, 3, 1, 2), conv.weight)[:, :, 0, 0]
    torch.testing.assert_close(tf_out, ours, rtol=1e-4, atol=1e-5)


def test_hyperbn_inputs_are_z_then_y_in_tf(G, tf_vars):
    w = torch.from_numpy(tf_vars[f'module/Generator/GBlock_2/HyperBN_1/gamma/w/'
                                 f'{converter.EMA_SUFFIX}:0'])
    y, z = torch.randn(2, G.shared_dim), torch.randn(2, G.z_chunk_size)
    ours = F.linear(torch.cat([y, z], 1), G.blocks[2][0].bn2.gain.weight)
    torch.testing.assert_close(torch.cat([z, y], 1) @ w, ours)


@pytest.mark.parametrize('tf, ours', [
    ('Generator/G_Z/G_linear', lambda G: G.linear),
    ('Generator/GBlock_1/conv1', lambda G: G.blocks[1][0].conv2),
    ('Generator/GBlock/HyperBN/beta', lambda G: G.blocks[0][0].bn1.bias),
    ('Generator/attention/o_conv', lambda G: G.blocks[3][1].o),
])
def test_tf_spectral_norm_of_the_dump_matches_ours(G, tf_vars, tf, ours):
    """TF's SN (w viewed [-1, out], u [1, out]) on the dump gives our layer's sigma."""
    w = torch.from_numpy(tf_vars[f'module/{tf}/w/{converter.EMA_SUFFIX}:0']).double()
    w = w.reshape(-1, w.shape[-1])
    u = torch.from_numpy(tf_vars[f'module/{tf}/u0:0']).double()
    v = F.normalize(u @ w.t(), eps=1e-4)
    u = F.normalize(v @ w, eps=1e-4)
    layer = ours(G)
    W = layer.weight.detach().double().view(layer.weight.size(0), -1)
    us, vs = layers.power_iteration(W, [layer.u0.double()], 1e-4)
    torch.testing.assert_close(v @ w @ u.t(), vs[0] @ W.t() @ us[0].t())


def test_missing_variable_is_named(tf_vars):
    name = f'module/Generator/GBlock_3/conv_sc/w/{converter.EMA_SUFFIX}:0'
    variables = {k: v for k, v in tf_vars.items() if k != name}
    with pytest.raises(converter.ConversionError, match='missing') as err:
        converter.convert(variables, CONFIG)
    assert f'{name}  expected shape (1, 1, 16, 8)' in str(err.value)


def test_wrong_shape_is_named_with_both_shapes(tf_vars):
    name = 'module/Generator/GBlock_1/CrossReplicaBN_1/accumulated_var:0'
    variables = {**tf_vars, name: np.ones(7, np.float32)}
    with pytest.raises(converter.ConversionError) as err:
        converter.convert(variables, CONFIG)
    assert f'{name}  has (7,), expected (32,)' in str(err.value)


def test_unexpected_variable_is_named_unless_ignored(G, tf_vars):
    name = 'module/Generator/extra/w:0'
    variables = {**tf_vars, name: np.zeros((2, 3), np.float32)}
    with pytest.raises(converter.ConversionError, match=f'{name}  shape \\(2, 3\\)'):
        converter.convert(variables, CONFIG)
    with pytest.warns(UserWarning, match=name):
        state = converter.convert(variables, CONFIG, ignore_unexpected=True)
    assert_same_tensors(state, G)


def test_missing_ema_twins_suggest_no_ema(G, tf_vars):
    raw_only = {k: v for k, v in tf_vars.items() if converter.EMA_SUFFIX not in k}
    with pytest.raises(converter.ConversionError, match='use --no_ema'):
        converter.convert(raw_only, CONFIG)
    assert_same_tensors(converter.convert(raw_only, CONFIG, ema=False), G)


def test_cli_writes_a_strictly_loading_run_and_a_check_grid(G, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(converter, 'tfhub_config', lambda resolution: dict(CONFIG))
    dump = tmp_path / 'biggan128.h5'
    converter.dump_tf_variables(G, dump)
    rc = converter.main(['--resolution', '128', '--dump', str(dump), '--weights_root',
                         str(tmp_path / 'weights'), '--name', 'tfhub', '--check',
                         '--check_num', '4'])
    assert rc == 0
    run = tmp_path / 'weights' / 'tfhub'
    assert json.loads((run / 'config.json').read_text())['G_ch'] == 4
    converted = converter.load_run(run)
    assert torch.equal(samples(converted), samples(G))
    assert Image.open(run / 'tfhub_check.png').size == (2 * 130 + 2, 2 * 130 + 2)

    broken = tmp_path / 'broken.npz'
    converter.save_variables({k: v for k, v in converter.load_variables(dump).items()
                              if 'ScaledCrossReplicaBN/gamma' not in k}, broken)
    assert converter.main(['--dump', str(broken), '--weights_root', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f'module/Generator/ScaledCrossReplicaBN/gamma/{converter.EMA_SUFFIX}:0' in err
    assert 'Traceback' not in err


def test_unreadable_dump_is_a_clear_error(tmp_path):
    bad = tmp_path / 'bad.npz'
    bad.write_bytes(b'not a zip')
    with pytest.raises(converter.ConversionError, match='cannot read'):
        converter.load_variables(bad)
    with pytest.raises(converter.ConversionError, match='no such file'):
        converter.load_variables(tmp_path / 'absent.h5')


def test_module_reading_without_tensorflow_says_what_to_do():
    if importlib.util.find_spec('tensorflow') and importlib.util.find_spec('tensorflow_hub'):
        pytest.skip('TensorFlow is installed: the module reader runs instead')
    with pytest.raises(converter.ConversionError, match='--save_dump'):
        converter.read_tfhub_module('/nonexistent')
