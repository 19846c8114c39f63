"""Tests of benchmarks/bench_sample.py: its rows and counts, the IS/FID test timed through the
real inception_utils path (random Inception weights), the npz conversion, flags, a loaded run."""
import json
import math

import numpy as np
import pytest
import torch
from test_sample import NAME, make_run

import utils
from benchmarks import bench_sample

TINY_FLAGS = ['--resolution', '32', '--G_ch', '4', '--dim_z', '16', '--shared_dim', '8',
              '--hier', '--G_shared', '--G_attn', '0', '--n_classes', '3', '--G_batch_size', '5',
              '--bench_device', 'cpu', '--bench_warmup', '1', '--bench_batches', '2']


pytestmark = pytest.mark.usefixtures('one_thread')  # conftest.py


def test_rows_and_metrics_timing(tmp_path, capsys):
    path = tmp_path / 'bench.json'
    # 12 samples in batches of 5: G draws 3 batches, the last one cut to 2 by the metrics.
    bench_sample.main(TINY_FLAGS + ['--bench_modes', 'fp32,bf16,bf16_cl',
                                    '--num_inception_images', '12', '--bench_json', str(path)])
    result = json.loads(path.read_text())
    assert [r['mode'] for r in result['rows']] == ['fp32', 'bf16', 'bf16_cl']
    for r in result['rows']:
        assert r['images'] == 5 * 2
        assert r['images_per_s'] * r['ms_per_batch'] / 1e3 == pytest.approx(5)
        assert r['peak_mem_GiB'] > 0
    m = result['metrics']
    assert m['mode'] == 'bf16' and m['num_inception_images'] == 12
    assert m['G_batches'] == 3 and m['G_images'] == 15
    assert 0 < m['G_seconds'] < m['seconds']
    assert m['inception_seconds'] == pytest.approx(m['seconds'] - m['G_seconds'])
    assert m['images_per_s'] == pytest.approx(12 / m['seconds'])
    # The real IS/FID were computed, of random-weight Inception features: IS near 1.
    assert m['inception_weights'] == m['moments'] == 'random' and not m['values_meaningful']
    assert 1 <= m['IS_mean'] < 1.5 and math.isfinite(m['FID']) and m['FID'] > 0
    assert result['config']['G_eval_mode'] and result['config']['n_classes'] == 3
    out = capsys.readouterr().out
    assert 'IS/FID values below are meaningless' in out and 'IS/FID test, 12 samples' in out


def test_npz_batch_matches_the_npz_writer(tmp_path):
    # Values at the rounding edges and outside [-1, 1], as G's tanh output never is but bf16
    # rounding can nearly be.
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(4, 3, 8, 8, generator=g) * 2.2 - 1.1, torch.arange(4) + 10 * i)
               for i in range(2)]
    batches[0][0][0, 0, 0, :4] = torch.tensor([-1.0, 1.0, 127.5 / 127.5 - 1, 0.5 / 127.5 - 1])
    it = iter(batches)
    utils.write_npz(str(tmp_path / 'ref.npz'), lambda: next(it), 8)
    ours = [utils.npz_batch(*b) for b in batches]
    with np.load(tmp_path / 'ref.npz') as f:
        assert np.array_equal(f['x'], np.concatenate([x for x, _ in ours]))
        assert np.array_equal(f['y'], torch.cat([y for _, y in ours]).numpy())
    x, y = ours[0]
    assert x.dtype == np.uint8 and x.shape == (4, 8, 8, 3) and x.flags.c_contiguous
    assert y.data_ptr() != batches[0][1].data_ptr()  # a copy: the latents reuse their buffer


@pytest.mark.parametrize('flags, message', [
    (['--bench_modes', 'fp32,fp8'], "unknown ['fp8']"),
    (['--bench_modes', ','], '--bench_modes'),
    (['--bench_batches', '0'], '--bench_batches 0'),
    (['--bench_warmup', '-1'], '--bench_warmup -1'),
    (['--bench_metrics_mode', 'fp16'], "--bench_metrics_mode 'fp16'"),
    (['--num_inception_images', '9'], '--num_inception_images 9'),
    (['--moments', '/absent/moments.npz'], '/absent/moments.npz does not exist'),
])
def test_bad_flags_are_parser_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_sample.main(TINY_FLAGS + ['--bench_modes', 'fp32'] + flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_loaded_run_takes_its_config(tmp_path):
    config = make_run(tmp_path)
    result = bench_sample.main(['--base_root', str(tmp_path), '--experiment_name', NAME,
                                '--bench_modes', 'bf16', '--bench_batches', '1',
                                '--bench_warmup', '0', '--G_batch_size', '3', '--skip_metrics',
                                '--bench_device', 'cpu'])
    assert result['weights'].endswith(f'{NAME}/G_ema.pth') and result['metrics'] is None
    # The model flags came from the run (G_ch 4, not the default 64), the batch from here.
    assert result['config']['G_ch'] == config['G_ch'] == 4
    assert result['config']['n_classes'] == config['n_classes']
    assert result['rows'][0]['images'] == 3 and result['config']['G_eval_mode']
