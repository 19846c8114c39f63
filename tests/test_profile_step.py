"""Tests of benchmarks/profile_step.py: every category is found, the shares add up to the
wall time, backward time goes to the forward op's category, and nothing stays patched."""
import pytest
import torch
from torch.profiler import profile

import layers
import utils
from benchmarks import profile_step

TINY_FLAGS = ['--resolution', '32', '--G_ch', '4', '--D_ch', '4', '--dim_z', '16',
              '--shared_dim', '8', '--G_shared', '--hier', '--G_attn', '16', '--D_attn', '16',
              '--n_classes', '3', '--batch_size', '4', '--num_D_steps', '2', '--ema',
              '--G_ortho', '1e-4', '--bench_device', 'cpu', '--profile_iters', '2',
              '--profile_warmup', '1']


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py


def test_every_category_is_found_and_the_shares_add_up_to_the_wall_time(tmp_path, capsys):
    result = profile_step.main(TINY_FLAGS + ['--profile_json', str(tmp_path / 'p.json')])
    ms = result['categories_ms']
    assert set(ms) == set(profile_step.CATEGORIES)
    for category in ('conv', 'spectral', 'batchnorm', 'attention', 'optimizer', 'ema', 'ortho',
                     'other ops', 'python'):
        assert ms[category] > 0, category
    assert sum(ms.values()) == pytest.approx(result['ms_per_iter'], rel=1e-6)
    assert result['gpu'] is None  # no GPU figures on the CPU
    out = capsys.readouterr().out
    assert 'spectral' in out and 'top ops by self time' in out
    assert (tmp_path / 'p.json').exists()


def test_backward_time_goes_to_the_category_of_the_forward_op():
    """An SN layer's division (W / sigma) differentiates as spectral work; the conv's
    backward as conv, though they run in the autograd engine, outside any labelled range."""
    torch.manual_seed(0)
    conv = layers.SNConv2d(3, 4, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():  # a no-grad forward first: its ops share the next node's number
        conv(x)
    with profile_step.instrumented(), profile() as prof:
        conv(x).sum().backward()
    events = prof.events()
    node = profile_step._backward_node
    conv_backward = [e for e in events if e.name == 'aten::convolution_backward']
    div_backward = [e for e in events if e.name.startswith('aten::') and node(e) is not None
                    and 'DivBackward' in node(e).name]
    assert conv_backward and div_backward
    for chosen, category in ((conv_backward, 'conv'), (div_backward, 'spectral')):
        # only the chosen events' time counts: all of it lands in the one category
        totals = profile_step.categorize(
            events, lambda e, chosen=chosen: e.self_cpu_time_total * (e in chosen))
        assert totals[category] > 0 and sum(totals.values()) == totals[category], totals


def test_instrumented_restores_what_it_patched():
    before = (layers.SN.W_, layers.ccbn.forward, layers.Attention.forward, utils.ema.update,
              utils.ortho)
    with profile_step.instrumented():
        assert layers.SN.W_ is not before[0]
    assert (layers.SN.W_, layers.ccbn.forward, layers.Attention.forward, utils.ema.update,
            utils.ortho) == before
