"""Tests of train_fns.py and utils' regularisers/EMA: the step as the paper and 2019 code run it."""
import copy
import traceback

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import BigGAN
import train_fns
import utils
from helpers import FixedLatents

TINY = dict(resolution=32, G_ch=4, D_ch=4, dim_z=16, shared_dim=8, hier=True, G_shared=True,
            n_classes=3, G_attn='0', D_attn='0')


def step_config(**overrides):
    config = vars(utils.prepare_parser().parse_args([]))
    config.update(TINY, batch_size=4, G_batch_size=4, num_D_steps=1, num_D_accumulations=1,
                  num_G_accumulations=1, split_D=False, ema=True, ema_decay=0.9)
    config.update(overrides)
    return config


def test_hinge_and_dcgan_losses_match_their_formulas():
    fake, real = torch.tensor([[-2.], [0.5]]), torch.tensor([[3.], [0.2]])
    l_real, l_fake = train_fns.loss_hinge_dis(fake, real)
    assert l_real.item() == pytest.approx((0 + 0.8) / 2)
    assert l_fake.item() == pytest.approx((0 + 1.5) / 2)
    assert train_fns.loss_hinge_gen(fake).item() == pytest.approx(0.75)
    d_real, d_fake = train_fns.loss_dcgan_dis(fake, real)
    assert d_real.item() == pytest.approx(F.softplus(-real).mean().item())
    assert d_fake.item() == pytest.approx(F.softplus(fake).mean().item())
    assert train_fns.loss_dcgan_gen(fake).item() == pytest.approx(
        torch.log1p(torch.exp(-fake)).mean().item())


def test_ortho_gradient_equals_autograd_of_its_loss():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3)
    beta = 0.3
    W = conv.weight.detach().clone().requires_grad_(True)
    w = W.view(5, -1)
    loss = beta / 2 * ((w @ w.t()) * (1 - torch.eye(5))).square().sum()
    loss.backward()
    conv.weight.grad = torch.zeros_like(conv.weight)
    conv.bias.grad = torch.zeros_like(conv.bias)
    utils.ortho(conv, beta)
    torch.testing.assert_close(conv.weight.grad, W.grad, atol=1e-6, rtol=1e-5)
    assert conv.bias.grad.abs().sum() == 0  # 1-d parameters are left alone


@pytest.mark.parametrize('shape', [(300, 20), (20, 300), (64, 64), (40, 3, 1, 1)])
def test_ortho_gradient_of_tall_and_wide_weights_matches_the_float64_2019_formula(shape):
    """Tall weights use W (Wᵀ W) - diag(W Wᵀ) W (no [out, out] matrix): the same gradient."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(1, 1, bias=False)
    layer.weight = torch.nn.Parameter(torch.randn(shape) / shape[1] ** 0.5)
    layer.weight.grad = torch.randn(shape)
    w = layer.weight.detach().double().reshape(shape[0], -1)
    want = layer.weight.grad.double() + 2e-2 * ((w @ w.t()) * (1 - torch.eye(shape[0],
                                                dtype=torch.float64)) @ w).view(shape)
    utils.ortho(layer, 1e-2)
    torch.testing.assert_close(layer.weight.grad.double(), want, atol=1e-6, rtol=1e-5)


def test_ema_follows_decay_and_is_pegged_before_start():
    torch.manual_seed(0)
    G, G_ema = BigGAN.Generator(**TINY), BigGAN.Generator(**TINY)
    ema = utils.ema(G, G_ema, decay=0.9, start_itr=5)
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(),
                                                  G_ema.state_dict().values()))
    old = copy.deepcopy(G_ema.state_dict())
    for p in G.parameters():
        p.data.add_(1.0)
    G.blocks[0][0].bn1.stored_mean.add_(2.0)
    ema.update(itr=5)
    for key, value in G.state_dict().items():  # params and buffers alike
        torch.testing.assert_close(G_ema.state_dict()[key], 0.9 * old[key] + 0.1 * value)
    ema.update(itr=4)  # before ema_start: copy G
    for key, value in G.state_dict().items():
        torch.testing.assert_close(G_ema.state_dict()[key], value)


def _reference_iteration(G, D, G_optim, D_optim, x, y, z, zy, config):
    """One training iteration as the paper and 2019 code define it, by hand, for comparison."""
    bs = config['batch_size']
    D_optim.zero_grad()
    with torch.no_grad():
        fake = G(z[:bs], G.shared(zy[:bs]))
    out = D(torch.cat([fake, x]), torch.cat([zy[:bs], y]))
    loss = F.relu(1 - out[bs:]).mean() + F.relu(1 + out[:bs]).mean()
    loss.backward()
    D_optim.step()
    G_optim.zero_grad()
    g_z, g_y = z[bs:], zy[bs:]
    for p in D.parameters():
        p.requires_grad_(False)
    (-D(G(g_z, G.shared(g_y)), g_y).mean()).backward()
    G_optim.step()


def test_one_iteration_updates_G_D_and_ema_as_the_formulas_say():
    torch.manual_seed(0)
    config = step_config()
    G, D, G_ema = (BigGAN.Generator(**TINY), BigGAN.Discriminator(**TINY),
                   BigGAN.Generator(**TINY))
    G_ref, D_ref = copy.deepcopy(G), copy.deepcopy(D)
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 3, (4,))
    z, zy = torch.randn(8, G.dim_z), torch.randint(0, 3, (8,))

    def adam(net):
        return torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.999), eps=1e-8)
    G_optim, D_optim = adam(G), adam(D)
    ema = utils.ema(G, G_ema, decay=0.9, start_itr=0)
    ema_before = copy.deepcopy(G_ema.state_dict())
    state = {'itr': 1}
    nets = train_fns.Nets(G, D, None, G_optim, D_optim)
    train = train_fns.GAN_training_function(nets, BigGAN.G_D(G, D), state, config,
                                            latents=FixedLatents(z, zy, 4), ema=ema)
    losses = train(x, y)
    _reference_iteration(G_ref, D_ref, adam(G_ref), adam(D_ref), x, y, z, zy, config)

    for net, ref in ((G, G_ref), (D, D_ref)):
        for (name, p), p_ref in zip(net.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, p_ref, atol=1e-6, rtol=1e-5, msg=name)
        assert any(not torch.equal(a, b) for a, b in
                   zip(net.state_dict().values(), BigGAN.Generator(**TINY).state_dict().values())
                   if a.shape == b.shape)
    for key, value in G.state_dict().items():
        torch.testing.assert_close(G_ema.state_dict()[key], 0.9 * ema_before[key] + 0.1 * value)
    assert set(losses) == {'G_loss', 'D_loss_real', 'D_loss_fake', 'D_real', 'D_fake'}
    assert all(isinstance(v, torch.Tensor) and v.requires_grad is False
               for v in losses.values())


@pytest.mark.parametrize('k', [2, 3])
def test_gradient_accumulation_equals_one_large_batch(k):
    """k minibatches of n accumulate to the step of one batch of k*n (no BN in D; G in eval)."""
    torch.manual_seed(0)
    n = 2
    cfg = dict(TINY, D_param='ortho')
    G0, D0 = BigGAN.Generator(**cfg).eval(), BigGAN.Discriminator(**cfg)
    x, y = torch.rand(k * n, 3, 32, 32) * 2 - 1, torch.randint(0, 3, (k * n,))
    z, zy = torch.randn(2 * k * n, G0.dim_z), torch.randint(0, 3, (2 * k * n,))
    results = []
    for batch, acc in ((n, k), (k * n, 1)):
        G, D = copy.deepcopy(G0), copy.deepcopy(D0)
        config = step_config(batch_size=batch, G_batch_size=batch, num_D_accumulations=acc,
                             num_G_accumulations=acc, D_param='ortho', ema=False)
        opt = [torch.optim.SGD(net.parameters(), lr=1e-3) for net in (G, D)]
        train = train_fns.GAN_training_function(train_fns.Nets(G, D, None, *opt),
                                                BigGAN.G_D(G, D), {'itr': 1}, config,
                                                latents=FixedLatents(z, zy, batch))
        train(x, y)
        results.append((G, D))
    (G_a, D_a), (G_b, D_b) = results
    for a, b in zip(list(G_a.parameters()) + list(D_a.parameters()),
                    list(G_b.parameters()) + list(D_b.parameters())):
        # The gradients of the last step (D's from its step, G's from its step) and weights.
        scale = b.grad.abs().max().item()
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5 * scale, rtol=1e-4)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_ortho_reg_in_the_step_skips_the_shared_embedding():
    torch.manual_seed(0)
    config = step_config(G_ortho=1e-2, ema=False)
    G, D = BigGAN.Generator(**TINY), BigGAN.Discriminator(**TINY)
    shared_before = G.shared.weight.detach().clone()
    opt = [torch.optim.SGD(net.parameters(), lr=0.0) for net in (G, D)]
    train = train_fns.GAN_training_function(train_fns.Nets(G, D, None, *opt),
                                            BigGAN.G_D(G, D), {'itr': 1}, config,
                                            latents=utils.Latents(4, G.dim_z, 3))
    train(torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4,)))
    w = G.linear.weight.detach().view(G.linear.weight.shape[0], -1)
    gram = w @ w.t()
    gram.fill_diagonal_(0)
    assert G.shared.weight.grad is not None and torch.equal(G.shared.weight, shared_before)
    # The linear's grad contains the ortho term: removing it leaves the adversarial part.
    assert (G.linear.weight.grad - 2e-2 * (gram @ w)).abs().max() < G.linear.weight.grad.abs().max()


def test_non_finite_losses_stop_with_the_iteration_named():
    with pytest.raises(FloatingPointError, match='iteration 17.*weights/run'):
        train_fns.check_finite({'G_loss': float('nan'), 'D_loss_real': 0.1}, 17, 'weights/run')
    train_fns.check_finite({'G_loss': 1.0}, 17, 'weights/run')


def test_fp16_precision_uses_grad_scalers_and_bf16_does_not():
    cpu = torch.device('cpu')
    assert train_fns.Precision.from_config('bf16', cpu).G_scaler is None
    p16 = train_fns.Precision.from_config('fp16', cpu)
    assert p16.G_scaler is not None and p16.D_scaler is not p16.G_scaler
    assert train_fns.Precision.from_config('none', cpu).dtype is None


def test_bf16_step_runs_and_keeps_fp32_weights():
    torch.manual_seed(0)
    config = step_config(ema=False)
    G, D = BigGAN.Generator(**TINY), BigGAN.Discriminator(**TINY)
    opt = [torch.optim.Adam(net.parameters(), lr=1e-4) for net in (G, D)]
    train = train_fns.GAN_training_function(
        train_fns.Nets(G, D, None, *opt), BigGAN.G_D(G, D), {'itr': 1}, config,
        latents=utils.Latents(4, G.dim_z, 3),
        precision=train_fns.Precision.from_config('bf16', torch.device('cpu')))
    losses = train(torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4,)))
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.dtype == torch.float32 for p in G.parameters())


class _HostSyncs(TorchDispatchMode):
    """Records every op that copies a tensor's value to the host (.item(), bool(), float())."""

    SYNCS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)

    def __init__(self, exempt: set):
        super().__init__()
        self.exempt, self.calls = exempt, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCS and args[0].data_ptr() not in self.exempt:
            self.calls.append(''.join(traceback.format_stack(limit=6)[:-1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('amp', ['none', 'bf16'])
def test_the_whole_iteration_makes_no_host_syncs(amp):
    """D steps, accumulation, ortho reg, G step, EMA: nothing waits for the device.

    Exempt: Adam's `step` counters, which live on the host in non-fused Adam (fused Adam on
    CUDA keeps them on the device). fp16 is not checked: GradScaler reads found_inf on the host
    unless the optimizer is fused (CUDA), where the check runs in the kernel.
    """
    torch.manual_seed(0)
    config = step_config(num_D_steps=2, num_D_accumulations=2, num_G_accumulations=2,
                         G_ortho=1e-4, D_ortho=1e-4)
    G, D, G_ema = (BigGAN.Generator(**TINY), BigGAN.Discriminator(**TINY),
                   BigGAN.Generator(**TINY))
    optims = [torch.optim.Adam(net.parameters(), lr=1e-4) for net in (G, D)]
    state = {'itr': 1}
    train = train_fns.GAN_training_function(
        train_fns.Nets(G, D, G_ema, *optims), BigGAN.G_D(G, D), state, config,
        latents=utils.Latents(4, G.dim_z, 3), ema=utils.ema(G, G_ema, 0.9, 0),
        precision=train_fns.Precision.from_config(amp, torch.device('cpu')))
    x, y = torch.rand(16, 3, 32, 32) * 2 - 1, torch.randint(0, 3, (16,))
    train(x, y)  # creates Adam's state
    adam_steps = {o.state[p]['step'].data_ptr() for o in optims for p in o.state}
    state['itr'] += 1
    with _HostSyncs(adam_steps) as syncs:
        train(x, y)
    assert not syncs.calls, syncs.calls[0]
