"""Tests of layers.py: spectral norm, attention, batch norms, numerics under autocast."""
import copy

import pytest
import torch
import torch.nn.functional as F

import BigGAN
import BigGANdeep
import layers
import utils

NORM_STYLES = ('bn', 'in', 'gn', 'nonorm')


def _matrix_with_svs(svs, out=12, inp=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out, out, generator=g))
    V, _ = torch.linalg.qr(torch.randn(inp, inp, generator=g))
    S = torch.zeros(out, inp)
    S[range(len(svs)), range(len(svs))] = torch.tensor(svs)
    return U @ S @ V.t()


def test_sn_top_singular_value_converges_to_matrix_norm():
    torch.manual_seed(0)
    layer = layers.SNLinear(20, 12, num_itrs=1)
    for _ in range(200):
        layer(torch.randn(2, 20))
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), 2)
    torch.testing.assert_close(layer.sv0[0], sigma, rtol=1e-5, atol=0)
    # The normalised weight has spectral norm 1.
    layer.eval()
    torch.testing.assert_close(torch.linalg.matrix_norm(layer.W_().detach(), 2),
                               torch.tensor(1.0), rtol=1e-5, atol=0)


def test_sn_conv_views_weight_as_out_by_rest():
    torch.manual_seed(0)
    conv = layers.SNConv2d(3, 5, kernel_size=3, padding=1, num_itrs=50)
    conv(torch.randn(1, 3, 4, 4))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().view(5, -1), 2)
    torch.testing.assert_close(conv.sv0[0], sigma, rtol=1e-5, atol=0)
    assert conv.u0.shape == (1, 5)


def test_gram_schmidt_svs_match_the_true_ones():
    torch.manual_seed(0)
    layer = layers.SNLinear(20, 12, num_svs=3, num_itrs=1)
    with torch.no_grad():
        layer.weight.copy_(_matrix_with_svs([5.0, 3.0, 2.0, 1.0, 0.5]))
    for _ in range(300):
        layer(torch.randn(1, 20))
    true = torch.linalg.svdvals(layer.weight.detach())[:3]
    got = torch.cat(layer.sv)
    torch.testing.assert_close(got, true, rtol=1e-4, atol=0)


def test_more_power_iterations_per_forward_converge_faster():
    torch.manual_seed(0)
    W = _matrix_with_svs([5.0, 2.5, 1.0])
    errs = []
    for itrs in (1, 8):
        torch.manual_seed(1)
        layer = layers.SNLinear(20, 12, num_itrs=itrs)
        with torch.no_grad():
            layer.weight.copy_(W)
        layer(torch.randn(1, 20))
        errs.append(abs(layer.sv0.item() - 5.0))
    assert errs[1] < errs[0] / 10


def test_sn_eval_mode_writes_nothing_and_gradient_flows_through_sigma():
    torch.manual_seed(0)
    layer = layers.SNEmbedding(7, 4)
    layer.eval()
    u, sv = layer.u0.clone(), layer.sv0.clone()
    out = layer(torch.tensor([0, 3, 6]))
    assert torch.equal(layer.u0, u) and torch.equal(layer.sv0, sv)
    out.sum().backward()
    # d/dW of sum(W/sigma(W)) differs from 1/sigma where sigma carries gradient.
    assert layer.weight.grad is not None
    assert layer.u0.shape == (1, 7)  # embeddings count as the outputs


def test_attention_equals_dense_computation():
    torch.manual_seed(0)
    att = layers.Attention(16, which_conv=layers.layer_makers('SN', 1, 1, 1e-8)[0])
    with torch.no_grad():
        att.gamma.fill_(0.7)
    att.eval()
    x = torch.randn(2, 16, 8, 6)
    B, C, H, W = x.shape
    with torch.no_grad():
        theta = att.theta(x).view(B, C // 8, H * W)
        phi = F.max_pool2d(att.phi(x), 2).view(B, C // 8, H * W // 4)
        g = F.max_pool2d(att.g(x), 2).view(B, C // 2, H * W // 4)
        beta = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = att.o(torch.bmm(g, beta.transpose(1, 2)).view(B, C // 2, H, W))
        expected = x + 0.7 * o
        torch.testing.assert_close(att(x), expected, atol=1e-5, rtol=1e-5)



def _kernel_names(fn) -> set[str]:
    """The aten ops one call of fn runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize('d, dv', [(2, 8), (4, 16), (8, 8), (6, 3)])
def test_softmax_attention_matches_2019_bmm_softmax_bmm_with_gradients(d, dv):
    torch.manual_seed(0)
    theta, phi, g = (torch.randn(2, c, n, requires_grad=True)
                     for c, n in ((d, 64), (d, 16), (dv, 16)))
    out = layers.softmax_attention(theta, phi, g)
    # 2019: o = g · softmax(thetaᵀ phi)ᵀ, no scaling
    ref = torch.bmm(g, torch.softmax(torch.bmm(theta.transpose(1, 2), phi), -1).transpose(1, 2))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, (theta, phi, g), grad)
    want = torch.autograd.grad(ref, (theta, phi, g), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_softmax_attention_runs_a_fused_kernel_on_the_cpu():
    """Attention's widths (ch/8 for theta and phi, ch/2 for g) made PyTorch fall back to its
    unfused math kernel: the [B, N, N/4] matrix in memory, 30% of a res-64 CPU step."""
    theta, phi, g = torch.randn(2, 4, 256), torch.randn(2, 4, 64), torch.randn(2, 16, 64)
    ops = _kernel_names(lambda: layers.softmax_attention(theta, phi, g))
    assert any('flash' in op for op in ops), sorted(ops)
    assert not any('attention_math' in op for op in ops)


@pytest.mark.parametrize('make', [
    lambda: torch.randn(3, 5, 4, 6),
    lambda: torch.randn(3, 10, 4, 6)[:, :5],                       # BigGAN-deep's kept channels
    lambda: torch.randn(3, 5, 4, 6).contiguous(memory_format=torch.channels_last),
], ids=['nchw', 'channel_slice', 'channels_last'])
def test_upsample2x_is_F_interpolate_bit_for_bit_with_its_gradient(make):
    torch.manual_seed(0)
    x = make().requires_grad_()
    want = F.interpolate(x, scale_factor=2, mode='nearest')
    got = layers.upsample2x(x)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last) == \
        want.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(want)
    assert torch.equal(torch.autograd.grad(got, x, grad)[0], torch.autograd.grad(want, x, grad)[0])


def _count_power_iterations(monkeypatch) -> list:
    calls = []
    original = layers.power_iteration
    monkeypatch.setattr(layers, 'power_iteration',
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_sn_eval_weight_is_computed_once_until_the_weight_or_u_changes(monkeypatch):
    torch.manual_seed(0)
    conv = layers.SNConv2d(3, 5, kernel_size=3, padding=1)
    conv(torch.randn(1, 3, 4, 4))  # a training forward sets u
    conv.eval()
    calls = _count_power_iterations(monkeypatch)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        first = conv(x)
        assert torch.equal(conv(x), first) and len(calls) == 1  # the second forward reused it
        conv.weight.mul_(2)                                       # an optimizer or EMA step
        doubled = conv(x)
        assert len(calls) == 2
        conv.load_state_dict(copy.deepcopy(conv.state_dict()))    # a checkpoint load (copy_)
        conv(x)
        assert len(calls) == 3
        conv.u0.copy_(torch.randn(1, 5))
        conv(x)
        assert len(calls) == 4
    # The reused weight is what a fresh computation gives: SN is scale-invariant.
    fresh = copy.deepcopy(conv)
    fresh._sn_cache = None
    with torch.no_grad():
        torch.testing.assert_close(doubled, first, rtol=1e-5, atol=1e-6)
        assert torch.equal(conv(x), fresh(x))


def test_sn_recomputes_in_training_mode_and_with_autograd(monkeypatch):
    torch.manual_seed(0)
    layer = layers.SNLinear(6, 4)
    calls = _count_power_iterations(monkeypatch)
    x = torch.randn(2, 6)
    u = layer.u0.clone()
    with torch.no_grad():
        layer(x), layer(x)              # training mode: each forward advances u, as in 2019
    assert len(calls) == 2 and not torch.equal(layer.u0, u)
    layer.eval()
    layer(x).sum().backward()           # with autograd: a fresh graph through sigma each time
    layer(x).sum().backward()
    assert len(calls) == 4 and layer.weight.grad is not None
    with torch.inference_mode():        # sampling under inference mode reuses it too
        layer(x), layer(x)
    assert len(calls) == 5
    with torch.inference_mode():        # a layer built in inference mode has no version
        built_there = layers.SNLinear(6, 4).eval()  # counters to read: no reuse, no error
        built_there(x), built_there(x)
    assert len(calls) == 7


@pytest.mark.parametrize('mybn', [False, True])
def test_ccbn_matches_batch_norm_and_updates_stats(mybn):
    torch.manual_seed(0)
    norm = layers.ccbn(6, 5, which_linear=torch.nn.Linear, mybn=mybn, eps=1e-4)
    x, y = torch.randn(8, 6, 4, 4) * 3 + 1, torch.randn(8, 5)
    out = norm(x, y)
    gain = 1 + norm.gain(y).view(8, 6, 1, 1)
    bias = norm.bias(y).view(8, 6, 1, 1)
    ref_mean, ref_var = torch.zeros(6), torch.ones(6)
    ref = F.batch_norm(x, ref_mean, ref_var, None, None, True, 0.1, 1e-4) * gain + bias
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.stored_mean, ref_mean, atol=1e-6, rtol=1e-6)
    if mybn:  # biased batch variance, as 2019's myBN
        n = 8 * 16
        ref_var = 0.9 + 0.1 * (ref_var - 0.9) / 0.1 * (n - 1) / n
    torch.testing.assert_close(norm.stored_var, ref_var, atol=1e-5, rtol=1e-5)
    norm.eval()
    ref_eval = (x - norm.stored_mean.view(1, -1, 1, 1)) / torch.sqrt(
        norm.stored_var.view(1, -1, 1, 1) + 1e-4) * gain + bias
    torch.testing.assert_close(norm(x, y), ref_eval, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('mybn', [False, True])
def test_standing_stats_average_the_batch_stats(mybn):
    torch.manual_seed(0)
    norm = layers.bn(3, mybn=mybn)
    batches = [torch.randn(4, 3, 2, 2) * (i + 1) + i for i in range(3)]
    norm.start_standing_stats()
    for x in batches:
        norm(x)
    norm.finish_standing_stats()
    means = torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0)
    vars_ = torch.stack([x.var((0, 2, 3), correction=0 if mybn else 1) for x in batches]).mean(0)
    torch.testing.assert_close(norm.stored_mean, means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.stored_var, vars_, atol=1e-5, rtol=1e-5)
    assert not norm.accumulate_standing


def test_2019_mybn_checkpoint_keys_load():
    norm = layers.ccbn(4, 3, which_linear=torch.nn.Linear, mybn=True)
    state = {k: v for k, v in norm.state_dict().items() if 'stored' not in k}
    state.update({'bn.stored_mean': torch.arange(4.), 'bn.stored_var': torch.full((4,), 2.),
                  'bn.accumulation_counter': torch.zeros(1)})
    norm.load_state_dict(state, strict=True)
    assert torch.equal(norm.stored_mean, torch.arange(4.))


def test_norm_styles_run_and_bad_style_is_an_error():
    x, y = torch.randn(4, 32, 4, 4), torch.randn(4, 5)
    for style in ('in', 'gn', 'gn_ch_8', 'gn_grp_4', 'nonorm'):
        norm = layers.ccbn(32, 5, torch.nn.Linear, norm_style=style)
        assert type(norm) is layers.ccbn_class(style) and isinstance(norm, layers.ccbn)
        out = norm(x, y)
        assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match='norm_style'):
        layers.ccbn(32, 5, torch.nn.Linear, norm_style='ln')
    # Groups that do not divide a layer's channels: said at construction, not mid-forward.
    for style in ('gn', 'gn_grp_3'):
        with pytest.raises(ValueError, match='groups do not divide a G layer of 8 channels'):
            layers.ccbn(8, 5, torch.nn.Linear, norm_style=style)


def _tiny_G(norm_style, seed=0):
    torch.manual_seed(seed)
    return BigGAN.Generator(resolution=32, G_ch=4, dim_z=8, G_shared=True, shared_dim=8,
                            n_classes=3, G_attn='0', norm_style=norm_style)


def _stats_norms(G):
    """G's norms that keep stored stats, by module name."""
    return {name: m for name, m in G.named_modules()
            if isinstance(m, layers.StoredStatsNorm)}


def _batch_stats(norm, x):
    """(mean, unbiased var) that one standing batch x should add to `norm`'s stats."""
    x = x.double()
    if isinstance(norm, layers.ccbn) and norm.norm_style == 'in':  # per instance, then averaged
        return x.mean((2, 3)).mean(0), x.var((2, 3)).mean(0)
    return x.mean((0, 2, 3)), x.var((0, 2, 3))


@pytest.mark.parametrize('norm_style', NORM_STYLES)
def test_G_standing_stats_average_the_batch_stats_of_every_norm(norm_style):
    """gn/nonorm ccbns are skipped; the output bn (and bn/in ccbns) average over the batches."""
    G = _tiny_G(norm_style)
    keys = set(G.state_dict())
    norms = _stats_norms(G)
    assert ('output_layer.0' in norms
            and (len(norms) == 1) == (norm_style in ('gn', 'nonorm')))
    seen = {m: [] for m in norms.values()}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[m].append(_batch_stats(m, args[0])))
             for m in norms.values()]
    utils.accumulate_standing_stats(G, utils.Latents(4, 8, 3), num_accumulations=3)
    for h in hooks:
        h.remove()
    assert not G.training and set(G.state_dict()) == keys
    for name, m in norms.items():
        assert len(seen[m]) == 3, name
        mean, var = (torch.stack(s).mean(0).float() for s in zip(*seen[m]))
        torch.testing.assert_close(m.stored_mean, mean, atol=1e-5, rtol=1e-4, msg=name)
        torch.testing.assert_close(m.stored_var, var, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize('norm_style', NORM_STYLES)
def test_use_sync_batchnorm_marks_only_the_bn_style_norms(norm_style):
    G = _tiny_G(norm_style)
    keys = set(G.state_dict())
    layers.use_sync_batchnorm(G)
    synced = {m for m in G.modules() if isinstance(m, layers.BatchStatsNorm) and m.sync_enabled}
    bn_style = {m for m in G.modules() if isinstance(m, layers.bn)
                or isinstance(m, layers.ccbn) and m.norm_style == 'bn'}
    assert synced == bn_style and G.output_layer[0] in synced
    # Checkpoint keys as in 2019: no SyncBatchNorm state; stored_* only where stats are kept.
    assert set(G.state_dict()) == keys and not any('standing_count' in k for k in keys)
    stored = {k.rsplit('.', 1)[0] for k in keys if k.endswith(('stored_mean', 'stored_var'))}
    assert stored == set(_stats_norms(G))
    z, y = torch.randn(2, 8), torch.tensor([0, 2])
    with layers.local_batchnorm(G):  # no process group here: this process's batch only
        assert all(not m.sync_enabled for m in synced)
        assert torch.isfinite(G(z, G.shared(y))).all()
    assert all(m.sync_enabled for m in synced)


@pytest.mark.parametrize('mybn', [False, True])
def test_in_standing_stats_average_what_instance_norm_records(mybn):
    torch.manual_seed(0)
    norm = layers.ccbn(3, 5, torch.nn.Linear, norm_style='in', mybn=mybn)
    batches = [(torch.randn(4, 3, 3, 3) * (i + 1) + i, torch.randn(4, 5)) for i in range(3)]
    recorded = []
    for x, _ in batches:  # momentum 1: the running stats become exactly what one batch records
        mean, var = torch.zeros(3), torch.zeros(3)
        F.instance_norm(x, mean, var, use_input_stats=True, momentum=1.0)
        recorded.append((mean, var))
    trained = copy.deepcopy(norm)
    norm.start_standing_stats()
    outs = [norm(x, y) for x, y in batches]
    norm.finish_standing_stats()
    mean, var = (torch.stack(s).mean(0) for s in zip(*recorded))
    if mybn:  # biased per-instance variances over H*W = 9, as --mybn stores them
        var = var * 8 / 9
    torch.testing.assert_close(norm.stored_mean, mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(norm.stored_var, var, atol=1e-6, rtol=1e-5)
    for out, (x, y) in zip(outs, batches):  # standing forwards normalise as training does
        torch.testing.assert_close(out, trained(x, y), atol=1e-6, rtol=1e-5)


def _sgd_step(G, net, z, y):
    """One SGD step of a toy loss on G's output; `net` is G or its DDP wrapper."""
    optim = torch.optim.SGD(G.parameters(), lr=0.5)
    net(z, G.shared(y)).square().mean().backward()
    optim.step()


def _toy_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 8, generator=g), torch.tensor([0, 1, 2, 1])


def _gn_cross_replica_worker(rank, world, init_file, out):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world)
    G = _tiny_G('gn')
    layers.use_sync_batchnorm(G)  # as train.py does for --cross_replica under DDP
    z, y = _toy_batch()
    rows = slice(rank * 2, rank * 2 + 2)
    _sgd_step(G, torch.nn.parallel.DistributedDataParallel(G), z[rows], y[rows])
    torch.save(G.state_dict(), f'{out}{rank}.pt')
    dist.destroy_process_group()


def test_gn_G_with_cross_replica_trains_like_one_process(tmp_path):
    """2 gloo ranks x batch 2 == 1 process x batch 4: the output bn syncs, gn ccbns don't crash."""
    import torch.multiprocessing as mp
    mp.spawn(_gn_cross_replica_worker, args=(2, str(tmp_path / 'init'), str(tmp_path / 'r')),
             nprocs=2)
    initial = dict(_tiny_G('gn').named_parameters())
    single = _tiny_G('gn')
    _sgd_step(single, single, *_toy_batch())
    for rank in range(2):
        got = torch.load(tmp_path / f'r{rank}.pt', weights_only=True)
        for k, v in single.state_dict().items():
            torch.testing.assert_close(got[k], v, atol=2e-6, rtol=1e-5, msg=k)
    moved = max((p - initial[k]).abs().max().item() for k, p in single.named_parameters())
    assert moved > 1e-2  # the step really trained G


# ----------------------------------------------------------------------------------------
# layers.FAST_PATHS: the CPU fast paths give the plain code's bits, and can be switched off
# ----------------------------------------------------------------------------------------

# Public names of layers.py in 2019 and here (the batch norms now live in norms.py).
PUBLIC_NAMES = ('SN', 'SNConv2d', 'SNLinear', 'SNEmbedding', 'gram_schmidt', 'power_iteration',
                'layer_makers', 'Attention', 'softmax_attention', 'ccbn', 'bn', 'fused_bn',
                'StoredStatsNorm', 'BatchStatsNorm', 'BatchNormCCBN', 'InstanceNormCCBN',
                'GroupNormCCBN', 'NoNormCCBN', 'use_sync_batchnorm', 'local_batchnorm',
                'upsample2x', 'GBlock', 'DBlock', 'FAST_PATHS')


def test_layers_keeps_every_public_name():
    import norms
    assert [n for n in PUBLIC_NAMES if not hasattr(layers, n)] == []
    assert layers.ccbn is norms.ccbn and layers.bn is norms.bn  # one class: isinstance holds


def _G_D_run(module, fast: bool, channels_last: bool, monkeypatch) -> dict:
    """Outputs and gradients of a tiny G and D: a training step, then eval and no-grad passes."""
    monkeypatch.setattr(layers, 'FAST_PATHS', fast)
    torch.manual_seed(0)
    cfg = dict(resolution=32, G_ch=4, D_ch=4, dim_z=16, shared_dim=8, hier=True, G_shared=True,
               n_classes=3, G_attn='16', D_attn='16')
    if module is BigGANdeep:  # at 64 a block drops channels: x[:, :out] is upsampled
        cfg.update(resolution=64, G_depth=1, D_depth=1)
    G, D = module.Generator(**cfg), module.Discriminator(**cfg)
    if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    z, y = torch.randn(2, G.dim_z), torch.tensor([0, 2])
    out = {}
    for mode in ('train', 'eval'):
        G.train(mode == 'train'), D.train(mode == 'train')
        img = G(z, G.shared(y))
        score = D(img, y)
        score.sum().backward()
        out.update({(mode, 'img'): img, (mode, 'D'): score})
        for name, p in [*G.named_parameters(), *D.named_parameters()]:
            out[mode, name] = p.grad
        G.zero_grad(set_to_none=True), D.zero_grad(set_to_none=True)
    with torch.no_grad():  # twice: the second pass is the one that reuses the SN weights
        for i in range(2):
            out['no_grad', i] = D(G(z, G.shared(y)), y)
    return out


@pytest.mark.parametrize('module', [BigGAN, BigGANdeep], ids=['BigGAN', 'BigGANdeep'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
def test_fast_paths_on_and_off_give_the_same_bits(module, channels_last, monkeypatch):
    fast = _G_D_run(module, True, channels_last, monkeypatch)
    plain = _G_D_run(module, False, channels_last, monkeypatch)
    assert fast.keys() == plain.keys()
    assert [k for k in fast if not torch.equal(fast[k], plain[k])] == []


def _count_upsample_functions(monkeypatch) -> list:
    calls = []
    original = layers._CPUUpsample2x.apply
    monkeypatch.setattr(layers._CPUUpsample2x, 'apply',
                        lambda *a: calls.append(1) or original(*a))
    return calls


def test_fast_paths_off_runs_the_plain_code(monkeypatch):
    torch.manual_seed(0)
    conv = layers.SNConv2d(3, 5, kernel_size=3, padding=1).eval()
    x = torch.randn(2, 3, 4, 4)
    iterations, upsamples = _count_power_iterations(monkeypatch), _count_upsample_functions(
        monkeypatch)
    with torch.no_grad():  # on: the SN weight is reused and NCHW upsampling is one copy
        conv(x), conv(x), layers.upsample2x(x)
    assert len(iterations) == 1 and conv._sn_cache is not None and len(upsamples) == 1
    monkeypatch.setattr(layers, 'FAST_PATHS', False)
    with torch.no_grad():  # off: SN recomputes every time, keeps no copy; F.interpolate
        conv(x), conv(x)
        up = layers.upsample2x(x)
    assert len(iterations) == 3 and conv._sn_cache is None and len(upsamples) == 1
    assert torch.equal(up, F.interpolate(x, scale_factor=2, mode='nearest'))


def test_fast_paths_fall_back_where_they_do_not_apply(monkeypatch):
    upsamples = _count_upsample_functions(monkeypatch)
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    assert torch.equal(layers.upsample2x(x), F.interpolate(x, scale_factor=2, mode='nearest'))
    assert upsamples == []  # channels-last: PyTorch's kernel copies nothing
    iterations = _count_power_iterations(monkeypatch)
    layer = layers.SNLinear(6, 4).eval()
    layer(torch.randn(2, 6)), layer(torch.randn(2, 6))  # with autograd: a fresh graph each time
    assert len(iterations) == 2 and layer.__dict__.get('_sn_cache') is None
