"""Tests of layers.py: spectral norm, attention, batch norms, numerics under autocast."""
import pytest
import torch
import torch.nn.functional as F

import layers


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
        out = layers.ccbn(32, 5, torch.nn.Linear, norm_style=style)(x, y)
        assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match='norm_style'):
        layers.ccbn(32, 5, torch.nn.Linear, norm_style='ln')
