"""Tests of bench.py: its rows, its FLOP count against an independent count, a real step."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
import BigGAN
from helpers import write_hdf5

# Attention at 16 puts bmm in the count; two D steps check that every D step is counted.
TINY_FLAGS = ['--resolution', '32', '--G_ch', '4', '--D_ch', '4', '--dim_z', '16',
              '--shared_dim', '8', '--G_shared', '--hier', '--G_attn', '16', '--D_attn', '16',
              '--n_classes', '3', '--batch_size', '4', '--num_D_steps', '2', '--ema']


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py


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


# The loader figure: a step without attention, one D step, so the bench itself is quick.
LOADER_FLAGS = ['--resolution', '32', '--G_ch', '4', '--D_ch', '4', '--dim_z', '16',
                '--G_attn', '0', '--D_attn', '0', '--n_classes', '3', '--batch_size', '4',
                '--num_D_steps', '2', '--bench_modes', 'fp32', '--bench_warmup', '0',
                '--bench_iters', '1', '--bench_device', 'cpu']


def loader_config(dataset: str, num_workers: int) -> dict:
    """The config bench.main hands on for LOADER_FLAGS on `dataset`."""
    config = vars(bench.prepare_parser().parse_args(
        LOADER_FLAGS + ['--dataset', dataset, '--num_workers', str(num_workers), '--shuffle',
                        '--augment']))
    return {k: v for k, v in config.items() if not k.startswith('bench_')}


def test_loader_figure_on_a_synthetic_file(tmp_path, capsys):
    path = tmp_path / 'bench.json'
    result = bench.main(LOADER_FLAGS + ['--bench_loader', 'synthetic', '--num_workers', '1',
                                        '--bench_loader_batches', '3', '--bench_json',
                                        str(path)])
    loader = json.loads(path.read_text())['loader']
    assert loader == result['loader']
    assert loader['source'] == 'synthetic' and loader['num_workers'] == 1
    # one batch is one iteration's real images: batch_size * num_D_steps
    assert loader['batch_size'] == result['real_images_per_iter'] == 8
    assert (loader['batches'], loader['warmup_batches']) == (3, 1)
    assert loader['images'] == 3 * 8
    assert loader['images_per_s'] > 0 and loader['first_batch_s'] > 0
    step = result['rows'][0]['images_per_s']
    assert loader['step_mode'] == 'fp32' and loader['step_images_per_s'] == step
    assert loader['loader_over_step'] == pytest.approx(loader['images_per_s'] / step)
    out = capsys.readouterr().out
    assert 'loader (synthetic hdf5, 1 worker, batches of 8)' in out
    assert f"{loader['loader_over_step']:.2f}x" in out and 'keep' in out


@pytest.mark.parametrize('num_workers, warmup, timed', [(0, 1, 3), (2, 2, 4)])
def test_time_loader_counts_whole_rounds_of_real_batches(tmp_path, num_workers, warmup, timed):
    # 3 batches asked for: 2 workers time 2 whole rounds of 2 after a round of warm-up
    data = write_hdf5(tmp_path / 'd.hdf5', n=8 * (warmup + timed), n_classes=3, resolution=32)
    config = loader_config(str(data), num_workers)
    loader = bench.build_loader_bench(config, 'dataset', 3, tmp_path)
    assert (loader.path, loader.warmup, loader.batches) == (str(data), warmup, timed)
    result = bench.time_loader(loader, config, torch.device('cpu'))
    assert result['images'] == timed * 8 and result['batch_size'] == 8
    assert result['num_workers'] == num_workers and result['images_per_s'] > 0
    x, y = next(iter(loader.loader))  # what train.py's loop gets: float images in [-1, 1]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (8,)
    assert -1 <= x.min() and x.max() <= 1


def test_loader_on_no_hdf5_file_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / 'folder'
    for name in ('a', 'b'):
        (folder / name).mkdir(parents=True)
    cases = [
        (['--dataset', str(tmp_path / 'missing.hdf5')], 'does not exist'),
        (['--dataset', 'I32_hdf5', '--data_root', str(tmp_path)], 'ILSVRC32.hdf5 does not exist'),
        (['--dataset', str(folder)], 'is an image folder, not an HDF5 file'),
        (['--dataset', 'I64_hdf5'], 'drop --resolution'),  # 64x64 data, a 32x32 bench
        (['--dataset', str(write_hdf5(tmp_path / 'small.hdf5', n=16)), '--num_workers', '0'],
         'gives 2 batches of 8 images'),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit):
            bench.main(LOADER_FLAGS + flags + ['--bench_loader', 'dataset'])
        err = capsys.readouterr().err
        assert '--bench_loader dataset:' in err and message in err, err
    with pytest.raises(SystemExit):
        bench.main(LOADER_FLAGS + ['--bench_loader', 'synthetic', '--bench_loader_batches', '0'])
    assert '--bench_loader_batches must be at least 1' in capsys.readouterr().err


def test_loader_auto_notes_why_it_is_not_timed(tmp_path, capsys):
    result = bench.main(LOADER_FLAGS + ['--dataset', str(tmp_path / 'none.hdf5')])
    assert 'does not exist' in result['loader']['skipped']
    assert 'loader: not timed' in capsys.readouterr().out
    assert bench.main(LOADER_FLAGS + ['--bench_loader', 'off'])['loader'] is None


def test_modes_map_to_the_training_flags_and_mfu_uses_the_chips_peak(monkeypatch):
    config = tiny_config()
    assert {k: bench.mode_config(config, 'bf16_cl_compile_ro')[k]
            for k in ('amp', 'channels_last', 'compile', 'compile_mode')} == {
        'amp': 'bf16', 'channels_last': True, 'compile': True, 'compile_mode': 'reduce-overhead'}
    assert not bench.mode_config(config, 'fp32')['compile']
    # TF32 peak for fp32 (its convolutions run in TF32), BF16 for the rest; unknown chip: none
    assert bench.peak_tflops('NVIDIA H200', 'fp32') == 494.7
    assert bench.peak_tflops('NVIDIA H100 80GB HBM3', 'bf16_cl') == 989.4
    assert bench.peak_tflops('cpu', 'bf16') is None
    assert bench.peak_tflops('cpu', 'fp32', given=2.0) == 2.0
    rows = [{'mode': 'bf16', 'TFLOP_per_s': 400.0, 'images_per_s': 1.0},
            {'mode': 'fp32', 'error': 'OutOfMemoryError'}]
    bench.add_mfu(rows, 'NVIDIA H200')
    assert rows[0]['MFU'] == pytest.approx(400 / 989.4) and 'MFU' not in rows[1]
    assert bench.fastest_row(rows) is rows[0]
    # train.py hands --compile_mode to torch.compile
    import train
    seen = {}
    monkeypatch.setattr(torch, 'compile', lambda net, mode: seen.setdefault('mode', mode) and net)
    step = bench.build_step(bench.mode_config(config, 'bf16_cl_compile_ro'), torch.device('cpu'))
    assert seen['mode'] == 'reduce-overhead' and step.G is not None
    parse = train.utils.prepare_parser().parse_args
    assert vars(parse([]))['compile_mode'] == 'default'
    with pytest.raises(SystemExit):
        parse(['--compile_mode', 'fastest'])
