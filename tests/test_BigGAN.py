"""Tests of BigGAN.py: 2019 checkpoint compatibility, shapes, sizes, gradients, numerics."""
import pytest
import torch

import BigGAN
import utils
from helpers import shared_file
from model_check import check_parameter_order, check_reference

TINY = dict(G_ch=4, D_ch=4, dim_z=16, shared_dim=8, hier=True, G_shared=True, n_classes=3,
            G_attn='0', D_attn='0')


@pytest.fixture(scope='module')
def upstream_ref():
    path = shared_file('fixtures/upstream_compat/biggan128_hier_shared.pt')
    return torch.load(path, weights_only=True)


def test_loads_and_reproduces_the_2019_checkpoint(upstream_ref):
    check_reference(upstream_ref)


def test_parameter_order_matches_2019(upstream_ref):
    """Adam states in 2019 optimizer files are keyed by parameter order."""
    check_parameter_order(upstream_ref)


def test_2019_imagenet_parameter_counts():
    """The 2019 release's BigGAN-128 (ch 96) reported 70,433,988 G and 87,982,370 D params."""
    cfg = dict(resolution=128, G_ch=96, D_ch=96, dim_z=120, shared_dim=128, hier=True,
               G_shared=True, n_classes=1000, skip_init=True)
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    assert sum(p.numel() for p in G.parameters()) == 70_433_988
    assert sum(p.numel() for p in D.parameters()) == 87_982_370
    assert G.dim_z == 120 and G.z_chunk_size == 20


def _expected_G_params(res, ch, dim_z, shared_dim, n_classes, hier):
    ins, outs = BigGAN.G_CHANNELS[res]
    slots = len(ins) + 1 if hier else 1
    chunk = dim_z // slots if hier else 0
    cond = shared_dim + chunk
    total = n_classes * shared_dim
    total += (dim_z // slots) * ins[0] * ch * 16 + ins[0] * ch * 16  # first linear
    for cin, cout in zip(ins, outs):
        cin, cout = cin * ch, cout * ch
        total += cin * cout * 9 + cout + cout * cout * 9 + cout + cin * cout + cout
        total += 2 * cond * cin + 2 * cond * cout  # ccbn gain/bias maps, no bias
    return total + 2 * outs[-1] * ch + outs[-1] * ch * 3 * 9 + 3


def _expected_D_params(res, ch, n_classes):
    ins, outs, down, _ = BigGAN.D_CHANNELS[res]
    total = 0
    for cin, cout, d in zip([3] + [m * ch for m in ins], [m * ch for m in outs], down):
        total += cin * cout * 9 + cout + cout * cout * 9 + cout
        total += (cin * cout + cout) if (cin != cout or d) else 0  # 1x1 shortcut conv
    return total + outs[-1] * ch + 1 + n_classes * outs[-1] * ch


@pytest.mark.parametrize('res', [32, 64, 128, 256, 512])
def test_shapes_and_parameter_counts_at_every_resolution(res):
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=res, skip_init=True)
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    assert sum(p.numel() for p in G.parameters()) == _expected_G_params(res, 4, 16, 8, 3, True)
    assert sum(p.numel() for p in D.parameters()) == _expected_D_params(res, 4, 3)
    z, y = torch.randn(2, G.dim_z), torch.randint(0, 3, (2,))
    with torch.no_grad():
        x = G(z, G.shared(y))
        assert x.shape == (2, 3, res, res) and x.abs().max() <= 1
        assert D(x, y).shape == (2, 1)


def test_attention_placement_follows_the_tables():
    cfg = dict(TINY, resolution=64, G_ch=8, D_ch=8, G_attn='16_64', D_attn='32')
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    assert [len(stage) for stage in G.blocks] == [1, 2, 1, 2]
    assert [len(stage) for stage in D.blocks] == [2, 1, 1, 1, 1]
    assert 'blocks.3.1.gamma' in G.state_dict() and 'blocks.0.1.gamma' in D.state_dict()


def test_no_hier_no_shared_and_two_svs():
    cfg = dict(TINY, resolution=32, hier=False, G_shared=False, num_G_SVs=2, num_D_SVs=2)
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    assert isinstance(G.shared, torch.nn.Module) and not list(G.shared.parameters())
    assert G.blocks[0][0].bn1.gain.weight.shape == (3, 16)  # class embedding per ccbn
    assert 'linear.u1' in G.state_dict() and 'embed.sv1' in D.state_dict()
    y = torch.randint(0, 3, (2,))
    x = G(torch.randn(2, 16), G.shared(y))
    assert D(x, y).shape == (2, 1)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=32, G_attn='16', D_attn='16')
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    for net in (G, D):  # attention gains start at 0, which blocks the branch's gradient
        for name, p in net.named_parameters():
            if name.endswith('gamma'):
                p.data.fill_(0.5)
    GD = BigGAN.G_D(G, D)
    y = torch.randint(0, 3, (4,))
    _, (D_fake, D_real) = GD(torch.randn(4, G.dim_z), y, [torch.randn(4, 3, 32, 32)], [y])
    (D_fake.square().mean() + D_real.mean()).backward()
    for net in (G, D):
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_G_D_concatenated_pass_equals_split_pass():
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=32)
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    G.eval(), D.eval()
    z, y, x = torch.randn(3, G.dim_z), torch.randint(0, 3, (3,)), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        G_z, cat = BigGAN.G_D(G, D)(z, y, [x, x.flip(3)], [y, y])
        _, split = BigGAN.G_D(G, D, split_D=True)(z, y, [x, x.flip(3)], [y, y])
        alone = [D(G_z, y), D(x, y), D(x.flip(3), y)]
    assert G_z.shape == (3, 3, 32, 32) and [o.shape for o in cat] == [(3, 1)] * 3
    for a, b, c in zip(cat, split, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_D_pass_augments_every_image_D_sees_once():
    """DiffAugment is applied in one place: D_pass, to fakes and reals alike, in one call."""
    cfg = dict(TINY, resolution=32)
    D = BigGAN.Discriminator(**cfg).eval()
    calls = []

    def augment(x):
        calls.append(x.shape[0])
        return x.flip(2)
    x, y = torch.randn(5, 3, 32, 32), torch.randint(0, 3, (5,))
    with torch.no_grad():
        out = BigGAN.D_pass(D, augment=augment)([x[:2], x[2:]], [y[:2], y[2:]])
        torch.testing.assert_close(torch.cat(out), D(x.flip(2), y), atol=1e-5, rtol=1e-5)
    assert calls == [5]


def test_unconditional_D_has_no_projection():
    cfg = dict(TINY, resolution=32, n_classes=1)
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    assert not hasattr(D, 'embed') and 'embed.weight' not in D.state_dict()
    y = torch.zeros(2, dtype=torch.long)
    assert D(G(torch.randn(2, G.dim_z), G.shared(y))).shape == (2, 1)


def test_whole_run_config_is_accepted_and_typos_are_errors():
    config = vars(utils.prepare_parser().parse_args([]))
    config.update(TINY, resolution=32)
    BigGAN.Generator(**config), BigGAN.Discriminator(**config)
    with pytest.raises(TypeError, match='G_chh'):
        BigGAN.Generator(**dict(config, G_chh=4))
    with pytest.raises(ValueError, match='resolution 48'):
        BigGAN.Discriminator(**dict(config, resolution=48))


@pytest.mark.parametrize('init', ['ortho', 'N02', 'glorot', 'xavier'])
def test_init_styles(init):
    torch.manual_seed(0)
    G = BigGAN.Generator(**dict(TINY, resolution=32, G_init=init))
    w = G.blocks[0][0].conv1.weight.detach()
    if init == 'N02':
        assert abs(w.std().item() - 0.02) < 0.005
    if init == 'ortho':
        m = G.linear.weight.detach()  # [out, in], out > in: orthonormal columns
        torch.testing.assert_close(m.t() @ m, torch.eye(m.shape[1]), atol=1e-5, rtol=0)


def test_ortho_param_uses_plain_layers():
    G = BigGAN.Generator(**dict(TINY, resolution=32, G_param='ortho'))
    D = BigGAN.Discriminator(**dict(TINY, resolution=32, D_param='ortho'))
    assert not any('.u0' in k for k in list(G.state_dict()) + list(D.state_dict()))


def test_autocast_keeps_sn_and_bn_statistics_in_fp32():
    """Under bf16 autocast, SN vectors and BN stats are computed and stored in fp32."""
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=32, G_attn='32', D_attn='16')
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    G_ref, D_ref = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    G_ref.load_state_dict(G.state_dict()), D_ref.load_state_dict(D.state_dict())
    z, y = torch.randn(8, G.dim_z), torch.randint(0, 3, (8,))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        x = G(z, G.shared(y))
        D(x, y)
    assert x.dtype == torch.bfloat16  # the rest really ran in bf16
    x_ref = G_ref(z, G_ref.shared(y))
    D_ref(x_ref, y)
    for net, ref in ((G, G_ref), (D, D_ref)):
        ref_state = ref.state_dict()
        for key, value in net.state_dict().items():
            if '.u' in key or '.sv' in key:  # power iteration: fp32, bit-identical
                assert value.dtype == torch.float32
                torch.testing.assert_close(value, ref_state[key], atol=1e-6, rtol=1e-6)
            if 'stored_' in key:  # statistics of bf16 activations, accumulated in fp32
                assert value.dtype == torch.float32
                torch.testing.assert_close(value, ref_state[key], atol=0.05, rtol=0.05)


def test_forward_makes_no_host_syncs(monkeypatch):
    """No .item()/bool()/float() on tensors inside G or D forward and backward."""
    cfg = dict(TINY, resolution=32, G_attn='16', D_attn='16', mybn=True)
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    y = torch.randint(0, 3, (4,))

    def refuse(*args):
        raise AssertionError('host sync in the hot path')
    for name in ('item', 'tolist', '__bool__', '__float__', '__int__'):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    D(G(torch.randn(4, G.dim_z), G.shared(y)), y).sum().backward()


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    cfg = dict(TINY, resolution=32, G_attn='16', D_attn='16', G_ortho=0.1)
    G, D = BigGAN.Generator(**cfg), BigGAN.Discriminator(**cfg)
    z, y, x_real = torch.randn(2, G.dim_z), torch.randint(0, 3, (2,)), torch.rand(2, 3, 32, 32)
    G.eval(), D.eval()
    with torch.no_grad():
        x, d = G(z, G.shared(y)), D(x_real, y)
    G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    assert G.blocks[0][0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = D(G(z, G.shared(y)), y)
    out.sum().backward()
    utils.ortho(G, 0.1)  # works on channels_last weights too
    with torch.no_grad():
        torch.testing.assert_close(G(z, G.shared(y)), x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(D(x_real.contiguous(memory_format=torch.channels_last), y),
                                   d, atol=1e-4, rtol=1e-5)
