"""Tests of BigGANdeep.py: block layout, shapes, gradients, state-dict round trip."""
import io

import pytest
import torch

import BigGANdeep
from helpers import shared_file
from model_check import check_parameter_order, check_reference, make_reference

TINY = dict(model='BigGANdeep', G_ch=8, D_ch=8, G_depth=2, D_depth=2, dim_z=16, shared_dim=8,
            hier=True, G_shared=True, n_classes=3, G_attn='0', D_attn='0')


@pytest.fixture(scope='module')
def upstream_ref():
    path = shared_file('fixtures/upstream_compat/biggandeep128_shared.pt')
    return torch.load(path, weights_only=True)


def test_loads_and_reproduces_the_2019_checkpoint(upstream_ref):
    """A 2019 BigGAN-deep (128, depth 2, attention at 64): eval, train and buffers to 1e-4."""
    check_reference(upstream_ref)


def test_parameter_order_matches_2019(upstream_ref):
    """Adam states in 2019 optimizer files are keyed by parameter order."""
    check_parameter_order(upstream_ref)


# The map D's last stage ends on, per resolution: 2019's deep D downsamples in every stage
# at 64/128/256 (4x4), and in the first two of three at 32 (8x8).
D_FINAL_MAP = {32: 8, 64: 4, 128: 4, 256: 4}


@pytest.mark.parametrize('res', sorted(D_FINAL_MAP))
def test_D_stages_downsample_as_in_2019(res):
    cfg = dict(TINY, resolution=res)
    D = BigGANdeep.Discriminator(**cfg)
    maps = []
    for stage in D.blocks:
        stage[0].register_forward_hook(lambda m, i, out: maps.append(out.shape[-1]))
    with torch.no_grad():
        D(torch.zeros(1, 3, res, res), torch.zeros(1, dtype=torch.long))
    expected, size = [], res
    for down in D.arch['downsample']:
        size //= 2 if down else 1
        expected.append(size)
    assert maps == expected and maps[-1] == D_FINAL_MAP[res]
    # Where D_attn puts attention: at 64-256 each stage's listed resolution is its output's.
    if res > 32:
        assert D.arch['resolution'] == maps


@pytest.mark.parametrize('res', [32, 64, 128, 256])
def test_shapes_at_every_resolution(res):
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=res)
    G, D = BigGANdeep.Generator(**cfg), BigGANdeep.Discriminator(**cfg)
    z, y = torch.randn(2, G.dim_z), torch.randint(0, 3, (2,))
    with torch.no_grad():
        x = G(z, G.shared(y))
        assert x.shape == (2, 3, res, res) and x.abs().max() <= 1
        assert D(x, y).shape == (2, 1)
    assert G.dim_z == 16  # the whole z conditions every block: no rounding to chunks
    assert G.linear.in_features == 16 + 8
    assert G.blocks[0][0].bn1.gain.in_features == 16 + 8


def test_block_layout_fixes_checkpoint_keys():
    cfg = dict(TINY, resolution=64, G_attn='32', D_attn='16', G_depth=3, D_depth=2)
    G, D = BigGANdeep.Generator(**cfg), BigGANdeep.Discriminator(**cfg)
    assert len(G.blocks) == 4 * 3 and all(len(b) == 1 for i, b in enumerate(G.blocks) if i != 8)
    assert isinstance(G.blocks[2 * 3 + 2][1], BigGANdeep.layers.Attention)  # stage 2 (32x32)
    # Only a stage's last block upsamples; the first keeps in_channels.
    assert [G.blocks[3 + j][0].upsample for j in range(3)] == [False, False, True]
    assert G.blocks[3][0].out_channels == G.blocks[3][0].in_channels == 8 * 16
    assert G.blocks[4][0].out_channels == G.blocks[5][0].out_channels == 8 * 8
    assert len(D.blocks) == 4 and len(D.blocks[1]) == 3  # 16x16 stage has attention
    assert isinstance(D.blocks[1][2], BigGANdeep.layers.Attention)
    keys = list(D.state_dict())
    assert keys[0].startswith('input_conv.') and 'blocks.0.1.conv_sc.weight' not in keys
    assert D.blocks[0][0].downsample is not None and D.blocks[0][1].downsample is None


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=32, G_attn='16', D_attn='16')
    G, D = BigGANdeep.Generator(**cfg), BigGANdeep.Discriminator(**cfg)
    for net in (G, D):
        for name, p in net.named_parameters():
            if name.endswith('gamma'):
                p.data.fill_(0.5)
    y = torch.randint(0, 3, (4,))
    _, (D_fake, D_real) = BigGANdeep.G_D(G, D)(torch.randn(4, 16), y,
                                               [torch.randn(4, 3, 32, 32)], [y])
    (D_fake.square().mean() + D_real.mean()).backward()
    for net in (G, D):
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('res,attn', [(64, '32'), (128, '64')])
def test_reloaded_from_its_own_state_dict_reproduces_outputs(res, attn):
    """The fp32 1e-4 compatibility check, on a BigGAN-deep saved and loaded by this code."""
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=res, G_attn=attn, D_attn=attn, SN_eps=1e-6)
    G, D = BigGANdeep.Generator(**cfg), BigGANdeep.Discriminator(**cfg)
    y = torch.randint(0, 3, (6,))
    for net in (G, D):  # give attention, BN stats and SN vectors non-trivial values
        for name, p in net.named_parameters():
            if name.endswith('gamma'):
                p.data.fill_(0.7)
    G.train(), D.train()
    with torch.no_grad():
        for _ in range(3):
            D(G(torch.randn(6, 16), G.shared(y)), y)
    ref = make_reference(G, D, cfg, torch.randn(6, 16), y, torch.rand(6, 3, res, res) * 2 - 1)
    buffer = io.BytesIO()
    torch.save(ref, buffer)
    buffer.seek(0)
    check_reference(torch.load(buffer, weights_only=True))


def test_non_hier_deep_conditions_on_the_class_only():
    cfg = dict(TINY, resolution=32, hier=False)
    G = BigGANdeep.Generator(**cfg)
    assert G.linear.in_features == 16 and G.blocks[0][0].bn1.gain.in_features == 8
    y = torch.randint(0, 3, (2,))
    assert G(torch.randn(2, 16), G.shared(y)).shape == (2, 3, 32, 32)
