"""Tests of bench.py: its rows, its FLOP count against an independent count, a real step."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
import BigGAN

# Attention at 16 puts bmm in the count; two D steps check that every D step is counted.
TINY_FLAGS = ['--resolution', '32', '--G_ch', '4', '--D_ch', '4', '--dim_z', '16',
              '--shared_dim', '8', '--G_shared', '--hier', '--G_attn', '16', '--D_attn', '16',
              '--n_classes', '3', '--batch_size', '4', '--num_D_steps', '2', '--ema']


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy CPU, OpenMP barriers stall for seconds a step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config() -> dict:
    """The resolved config bench.run sees for TINY_FLAGS."""
    config = vars(bench.prepare_parser().parse_args(TINY_FLAGS))
    config = {k: v for k, v in config.items() if not k.startswith('bench_')}
    return {**config, 'G_batch_size': config['batch_size'], 'amp': 'none'}


def reference_flops(config: dict) -> int:
    """One iteration written out by hand: D steps on cat(fakes, reals), then the G step."""
    model_config = {k: v for k, v in config.items()
                    if k not in ('amp', 'channels_last', 'compile')}
    G, D = BigGAN.Generator(**model_config), BigGAN.Discriminator(**model_config)
    bs, res = config['batch_size'], config['resolution']
    z, y = torch.randn(bs, G.dim_z), torch.randint(config['n_classes'], (bs,))
    x = torch.rand(bs, 3, res, res) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        G.requires_grad_(False)
        for _ in range(config['num_D_steps']):
            with torch.no_grad():
                fake = G(z, G.shared(y))
            D(torch.cat([fake, x]), torch.cat([y, y])).mean().backward()
        G.requires_grad_(True)
        D.requires_grad_(False)
        D(G(z, G.shared(y)), y).mean().backward()
    return counter.get_total_flops()


def test_bench_rows_and_flop_count(tmp_path, capsys):
    path = tmp_path / 'bench.json'
    bench.main(TINY_FLAGS + ['--bench_modes', 'fp32,bf16', '--bench_warmup', '1',
                             '--bench_iters', '2', '--bench_device', 'cpu',
                             '--bench_json', str(path)])
    result = json.loads(path.read_text())
    assert [r['mode'] for r in result['rows']] == ['fp32', 'bf16']
    assert result['real_images_per_iter'] == 4 * 2
    assert result['G_images_per_iter'] == 4 * 2 + 4
    for row in result['rows']:
        assert 'error' not in row, row
        assert row['images_per_s'] > 0 and row['ms_per_iter'] > 0
        # img/s and ms/iter describe the same timing
        assert row['images_per_s'] * row['ms_per_iter'] / 1e3 == pytest.approx(8)
        assert row['TFLOP_per_s'] == pytest.approx(
            result['flops_per_iter'] / row['ms_per_iter'] / 1e9)
    flops = result['flops_per_iter']
    assert flops > 0
    assert flops == pytest.approx(reference_flops(tiny_config()), rel=0.01)
    assert result['gflop_per_image'] == pytest.approx(flops / 8 / 1e9)
    out = capsys.readouterr().out
    assert 'GFLOP per real image' in out and 'fp32' in out and 'bf16' in out


def test_bench_step_trains_G_and_D():
    step = bench.build_step(tiny_config(), torch.device('cpu'))
    G_before = {k: v.clone() for k, v in step.G.named_parameters()}
    D_before = {k: v.clone() for k, v in step.D.named_parameters()}
    losses = step()
    step()
    assert all(torch.isfinite(v) for v in losses.values())
    assert step.state_dict['itr'] == 2
    changed = [k for k, v in step.G.named_parameters() if not torch.equal(v, G_before[k])]
    assert 'linear.weight' in changed and len(changed) > len(G_before) // 2
    assert any(not torch.equal(v, D_before[k]) for k, v in step.D.named_parameters())


def test_unknown_mode_is_an_error():
    with pytest.raises(SystemExit):
        bench.main(TINY_FLAGS + ['--bench_modes', 'fp32,fp8'])
