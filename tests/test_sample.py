"""Tests for sample.py on a tiny 32x32 checkpoint written as train.py writes runs (CPU)."""
import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import sample
import train
import utils
from helpers import shared_file

NAME = 'tiny'
TRAIN_FLAGS = ['--dataset', 'C10', '--G_ch', '4', '--D_ch', '4', '--G_attn', '0', '--D_attn', '0',
               '--G_shared', '--shared_dim', '8', '--hier', '--dim_z', '16', '--ema', '--use_ema',
               '--batch_size', '8', '--G_init', 'N02', '--D_init', 'N02',
               '--experiment_name', NAME]


def make_run(base_root) -> dict:
    """A run folder as train.py leaves it (G, D, G_ema, state_dict with config, config.json)."""
    config = vars(utils.prepare_parser().parse_args(TRAIN_FLAGS + ['--base_root', str(base_root)]))
    config = train.prepare_config(config)
    torch.manual_seed(0)
    G, D, G_ema = train.build_models(config, torch.device('cpu'))
    with torch.no_grad():  # make G_ema differ from G, so the tests can tell which was loaded
        for p in G_ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {'itr': 7, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
             'best_FID': 999999, 'config': config}
    root = utils.save_weights(G, D, state, config['weights_root'], NAME, G_ema=G_ema,
                              also_as=('copy0',))
    utils.save_config(config, f'{root}/config.json')
    return config


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """Base root holding the tiny run (read-only use: tests that damage it copy it first)."""
    root = tmp_path_factory.mktemp('base')
    make_run(root)
    return root


def sample_args(base_root, *flags) -> list[str]:
    """Flags that find the tiny run by name only: no model flags."""
    return ['--base_root', str(base_root), '--experiment_name', NAME, *flags]


def test_npz_reads_the_config_from_the_run(base):
    done = sample.run(sample_args(base, '--sample_npz', '--sample_num_npz', '37',
                                  '--G_batch_size', '16'))
    assert done['config']['G_ch'] == 4 and done['config']['dim_z'] == 16  # not the defaults
    assert done['weights'].endswith('G_ema.pth')
    assert done['npz'] == str(base / 'samples' / NAME / 'samples.npz')
    with np.load(done['npz']) as f:
        x, y = f['x'], f['y']
    assert x.dtype == np.uint8 and x.shape == (37, 32, 32, 3)  # 37: a partial last batch
    assert y.dtype == np.int64 and y.shape == (37,) and 0 <= y.min() and y.max() < 10
    assert len(np.unique(y)) > 3 and x.std() > 5  # real, varied samples
    assert done['images_per_s'] > 0


def test_npz_matches_G_ema_outputs(base, monkeypatch):
    """Each stored label is the one its image was generated from, over several batches on
    the CPU (where .cpu() of the reused label buffer is the buffer itself, not a copy)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # CPU draws to replay
    done = sample.run(sample_args(base, '--sample_npz', '--sample_num_npz', '20',
                                  '--G_batch_size', '8', '--G_eval_mode'))
    G = sample.load_generator(done['config'], base / 'weights' / NAME / 'G_ema.pth',
                              torch.device('cpu'))
    utils.seed_rng(done['config']['seed'])  # replay the draws of the run above, batch by batch
    latents, images, labels = utils.Latents(8, G.dim_z, 10), [], []
    with torch.no_grad():
        for _ in range(3):  # 8 + 8 + 4 of a third batch
            z, y = latents.sample_()
            images.append(utils.to_uint8(G(z, G.shared(y))).numpy())
            labels.append(y.numpy().copy())
    expected_x, expected_y = np.concatenate(images)[:20], np.concatenate(labels)[:20]
    assert len(set(map(tuple, np.split(expected_y[:16], 2)))) == 2  # batches differ
    with np.load(done['npz']) as f:
        np.testing.assert_array_equal(f['y'], expected_y)
        assert np.abs(f['x'].astype(int) - expected_x).max() <= 1


def test_flags_override_the_run_config(base):
    config, weights, itr = sample.resolve_config(sample_args(
        base, '--sample_random', '--z_var', '0.5', '--G_batch_size', '5', '--no_use_ema'))
    assert (config['z_var'], config['G_batch_size'], config['use_ema']) == (0.5, 5, False)
    assert config['G_ch'] == 4 and config['n_classes'] == 10 and itr == 7
    assert weights.name == 'G.pth'
    config, weights, _ = sample.resolve_config(
        ['--weights', str(base / 'weights' / NAME / 'G.pth'), '--base_root', str(base)])
    assert weights.name == 'G.pth' and config['experiment_name'] == NAME


def test_sheets_interps_random(base):
    done = sample.run(sample_args(base, '--sample_sheets', '--sample_interps', '--sample_random',
                                  '--G_batch_size', '16', '--G_eval_mode'))
    folder = base / 'samples' / NAME / '7'  # the run's iteration
    assert done['sheets'] == [str(folder / 'samples0.jpg')]  # C10: one sheet of 10 classes
    width, height = Image.open(done['sheets'][0]).size  # a 10x10 grid, rows labelled
    assert height == 10 * 34 + 2 and width > 10 * 34 + 2  # with CIFAR-10's class names
    assert sorted(done['interps']) == [str(folder / f'interp{s}0.jpg') for s in ('Y', 'Z', 'ZY')]
    assert Image.open(done['interps'][0]).size == (10 * 34 + 2, 16 * 34 + 2)  # 16 rows of 10
    assert Image.open(done['random']).size == (4 * 34 + 2, 4 * 34 + 2)
    done = sample.run(sample_args(base, '--sample_sheets', '--sample_sheet_folder_num', '3'))
    assert done['sheets'] == [str(base / 'samples' / NAME / '3' / 'samples0.jpg')]


@pytest.mark.parametrize('t', [0.5, 2.0])
def test_truncated_latents_follow_the_truncated_normal(t):
    torch.manual_seed(0)
    latents = sample.TruncatedLatents(400, 50, 10, torch.device('cpu'), truncation=t)
    z = latents.sample_()[0].flatten()
    assert z.abs().max() <= t
    ks = stats.kstest(z.numpy(), stats.truncnorm(-t, t).cdf)
    assert ks.statistic < 0.015  # 20,000 draws: a wrong law (e.g. clamped, scaled) is far off
    assert abs(z.std().item() - stats.truncnorm(-t, t).std()) < 0.01


def fake_inception(monkeypatch, seen: list):
    """No Inception weights exist here: a stand-in inception_utils, its metrics made up."""
    def get_inception_metrics(sample_fn, num, num_splits=10, prints=True, use_torch=True):
        images, y = sample_fn()
        assert images.shape[1:] == (3, 32, 32) and images.abs().max() <= 1
        seen.append(len(y))
        return float(images.mean()) + 5, 0.1, 42.0
    fake = types.SimpleNamespace(check_inception_ready=lambda *a, **k: None,
                                 prepare_inception_metrics=lambda *a, **k: get_inception_metrics)
    monkeypatch.setitem(sys.modules, 'inception_utils', fake)


def test_trunc_curves_and_metrics(base, monkeypatch):
    seen, zs = [], []
    fake_inception(monkeypatch, seen)
    real_sample = sample.TruncatedLatents.sample_

    def spy(self):
        z, y = real_sample(self)
        zs.append((self.truncation, z.abs().max().item()))
        return z, y
    monkeypatch.setattr(sample.TruncatedLatents, 'sample_', spy)
    done = sample.run(sample_args(base, '--sample_trunc_curves', '0.5_0.5_1.5',
                                  '--sample_inception_metrics', '--G_batch_size', '6',
                                  '--G_eval_mode', '--num_inception_images', '20'))
    log = base / 'logs' / f'{NAME}_trunc_curves.jsonl'
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r['truncation'] for r in records] == [0.5, 1.0, 1.5]
    assert all(r['FID'] == 42.0 and r['num_inception_images'] == 20 for r in records)
    assert (base / 'logs' / f'{NAME}_trunc_curves.png').stat().st_size > 1000
    assert [t for t, _ in zs] == [0.5, 1.0, 1.5] and all(m <= t for t, m in zs)
    metrics = (base / 'logs' / f'{NAME}_sample_metrics.jsonl').read_text().splitlines()
    assert json.loads(metrics[-1])['z_var'] == 1.0 and seen == [6] * 4
    assert done['metrics']['IS_std'] == 0.1


def test_metrics_record_and_print_KID_and_precision_recall_when_computed(base, tmp_path,
                                                                        monkeypatch, capsys):
    """With the data's real-features file, inception_utils adds KID, P/R and density/coverage:
    sample.py logs and prints them; a plain (IS, IS std, FID) tuple, as before, gives no such
    keys."""
    import metrics
    result = metrics.InceptionMetrics(5.0, 0.1, 42.0, KID_mean=0.0123, KID_std=0.0004,
                                      precision=0.625, recall=0.375, density=0.875,
                                      coverage=0.5)
    fake = types.SimpleNamespace(
        check_inception_ready=lambda *a, **k: None,
        prepare_inception_metrics=lambda *a, **k: lambda sample_fn, num, num_splits: result)
    monkeypatch.setitem(sys.modules, 'inception_utils', fake)
    shutil.copytree(base / 'weights', tmp_path / 'weights')
    flags = sample_args(tmp_path, '--sample_inception_metrics', '--num_inception_images', '10')
    done = sample.run(flags)
    assert {k: done['metrics'][k] for k in metrics.InceptionMetrics.KEYS} == result.record()
    out = capsys.readouterr().out
    assert ('FID 42.0, KID 0.01230 +/- 0.00040, precision 0.625, recall 0.375, density 0.875, '
            'coverage 0.500') in out
    log = tmp_path / 'logs' / f'{NAME}_sample_metrics.jsonl'
    assert json.loads(log.read_text().splitlines()[-1])['recall'] == 0.375
    result = (5.0, 0.1, 42.0)
    assert 'KID_mean' not in sample.run(flags)['metrics'] and 'KID' not in capsys.readouterr().out


def test_truncation_applies_to_npz_sheets_interps_and_metrics(base, tmp_path, monkeypatch):
    """--truncation t: the npz holds G(z) for truncated z; sheets and interps draw truncated
    z; the metrics record names t."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # CPU draws to replay
    fake_inception(monkeypatch, [])
    calls = []
    real = utils.truncated_normal

    def spy(shape, truncation, *args, **kwargs):
        calls.append(truncation)
        return real(shape, truncation, *args, **kwargs)
    monkeypatch.setattr(utils, 'truncated_normal', spy)
    shutil.copytree(base / 'weights', tmp_path / 'weights')
    done = sample.run(sample_args(tmp_path, '--truncation', '0.5', '--sample_npz',
                                  '--sample_num_npz', '8', '--G_batch_size', '8',
                                  '--G_eval_mode'))
    G = sample.load_generator(done['config'], tmp_path / 'weights' / NAME / 'G_ema.pth',
                              torch.device('cpu'))
    utils.seed_rng(done['config']['seed'])  # replay: z truncated at 0.5
    z, y = sample.TruncatedLatents(8, G.dim_z, 10, torch.device('cpu'), truncation=0.5).sample_()
    assert z.abs().max() <= 0.5
    with torch.no_grad():
        expected = utils.to_uint8(G(z, G.shared(y))).numpy()
    with np.load(done['npz']) as f:
        np.testing.assert_array_equal(f['y'], y.numpy())
        assert np.abs(f['x'].astype(int) - expected).max() <= 1
    calls.clear()
    done = sample.run(sample_args(tmp_path, '--truncation', '0.5', '--sample_sheets',
                                  '--sample_interps', '--sample_inception_metrics',
                                  '--num_inception_images', '10', '--G_batch_size', '8'))
    # One draw per sheet column (10), 2+2+1 for the interps, then the metrics batch.
    assert len(calls) == 10 + 5 + 1 and set(calls) == {0.5}
    assert done['metrics']['truncation'] == 0.5 and 'z_var' not in done['metrics']


def test_truncation_errors(base, capsys):
    assert 'positive' in error_of(sample_args(base, '--sample_random', '--truncation', '-1'),
                                  capsys)
    err = error_of(sample_args(base, '--sample_random', '--truncation', '0.5', '--z_var', '2'),
                   capsys)
    assert '--z_var' in err
    # Beyond 4 the paper's trick redraws almost nothing; t > 1 widens a scaled z: refused.
    err = error_of(sample_args(base, '--sample_random', '--truncation', '5'), capsys)
    assert ('--truncation 5: with --truncation_style resample t must lie in (0, 4]' in err
            and 'no truncation' in err)
    err = error_of(sample_args(base, '--sample_trunc_curves', '0.5_0.5_4.5'), capsys)
    assert '--sample_trunc_curves 4.5: with --truncation_style resample' in err
    err = error_of(sample_args(base, '--sample_random', '--truncation', '1.5',
                               '--truncation_style', 'scaled'), capsys)
    assert 'with --truncation_style scaled t must lie in (0, 1]' in err
    assert sample.run(sample_args(base, '--sample_random', '--truncation', '4'))['random']


def test_which_best_is_refused_unless_it_is_the_runs_own(base, capsys):
    """sample.py does not pick a checkpoint by a metric: --which_best KID was accepted and
    did nothing; the run's own value (2019 scripts repeat the training flags) passes."""
    err = error_of(sample_args(base, '--sample_random', '--which_best', 'KID'), capsys)
    assert ("--which_best KID: sample.py does not pick checkpoints by a metric. Training kept"
            in err and 'best copies by IS' in err and '--load_weights best0' in err)
    assert sample.run(sample_args(base, '--sample_random', '--which_best', 'IS'))['random']


def test_2019_run_folder_samples_from_G_ema(tmp_path):
    fixture = shared_file('fixtures/run2019/weights/run2019/G_ema.pth').parents[2]
    shutil.copytree(fixture, tmp_path / 'run2019')
    flags = ['--base_root', str(tmp_path / 'run2019'), '--experiment_name', 'run2019',
             '--dataset', 'C10', '--G_ch', '8', '--D_ch', '8', '--G_attn', '0', '--D_attn', '0',
             '--G_shared', '--shared_dim', '16', '--hier', '--dim_z', '20', '--ema', '--use_ema',
             '--ema_start', '1', '--batch_size', '4', '--num_D_steps', '1', '--seed', '0',
             '--G_init', 'N02', '--D_init', 'N02']
    done = sample.run(flags + ['--sample_npz', '--sample_num_npz', '6', '--sample_random'])
    assert done['weights'].endswith('run2019/G_ema.pth')
    with np.load(done['npz']) as f:
        assert f['x'].shape == (6, 32, 32, 3) and f['x'].dtype == np.uint8
    # The flags are optional: the config pickled in the 2019 state_dict.pth has them.
    done = sample.run(flags[:4] + ['--sample_random'])
    assert done['config']['shared_dim'] == 16 and done['weights'].endswith('G_ema.pth')


def test_converted_tfhub_layout(tmp_path):
    """A TFHub/converter.py folder: G.pth and config.json of Generator kwargs, nothing else."""
    config = dict(model='BigGAN', resolution=32, n_classes=10, G_ch=4, dim_z=16, shared_dim=8,
                  hier=True, G_shared=True, G_attn='0', skip_init=True, experiment_name='hub')
    import BigGAN
    (tmp_path / 'hub').mkdir()
    torch.save(BigGAN.Generator(**config).state_dict(), tmp_path / 'hub' / 'G.pth')
    (tmp_path / 'hub' / 'config.json').write_text(json.dumps(config))
    done = sample.run(['--weights', str(tmp_path / 'hub'), '--base_root', str(tmp_path),
                       '--sample_random', '--G_batch_size', '4', '--G_eval_mode'])
    assert done['weights'].endswith('hub/G.pth')
    assert Image.open(tmp_path / 'samples' / 'hub' / 'random_samples.jpg').size == (70, 70)


def error_of(argv, capsys) -> str:
    """The message main() prints for bad flags (it returns 1, without a traceback)."""
    assert sample.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('sample.py: error:') and 'Traceback' not in err
    return err


def test_errors(base, tmp_path, capsys):
    err = error_of(['--base_root', str(base), '--experiment_name', 'nope', '--sample_random'],
                   capsys)
    assert 'no run folder' in err and 'nope' in err and NAME in err  # lists the runs there
    err = error_of(['--base_root', str(base), '--sample_random'], capsys)
    assert 'derived from the training flags' in err
    err = error_of(sample_args(base, '--sample_random', '--G_ch', '8'), capsys)
    assert 'shape mismatch linear.weight' in err and 'file (256, 4) vs model (512, 4)' in err
    assert 'nothing to do' in error_of(sample_args(base), capsys)
    assert 'start_step_end' in error_of(sample_args(base, '--sample_trunc_curves', '1_2'), capsys)

    shutil.copytree(base / 'weights', tmp_path / 'weights')
    (tmp_path / 'weights' / NAME / 'G_ema.pth').unlink()
    err = error_of(sample_args(tmp_path, '--sample_random'), capsys)
    assert 'G_ema.pth are missing' in err and '--no_use_ema' in err
    assert sample.run(sample_args(tmp_path, '--sample_random', '--no_use_ema'))['random']
    # A truncated G.pth names the file and the rotating copies; a half-committed save waits.
    G_file = tmp_path / 'weights' / NAME / 'G.pth'
    G_file.write_bytes(G_file.read_bytes()[:100])
    err = error_of(sample_args(tmp_path, '--sample_random', '--no_use_ema'), capsys)
    assert 'G.pth is damaged: it has 100 bytes' in err
    assert 'copy0 (iteration 7)' in err and 'sample.py --load_weights copy0' in err
    assert sample.run(sample_args(tmp_path, '--sample_random', '--no_use_ema', '--load_weights',
                                  'copy0'))['weights'].endswith('G_copy0.pth')
    (tmp_path / 'weights' / NAME / utils.COMMIT_JOURNAL).write_text('{"files": []}')
    assert 'in the middle of a save' in error_of(sample_args(tmp_path, '--sample_random'), capsys)


def test_metrics_without_moments_fail_before_sampling(base, tmp_path, capsys):
    pytest.importorskip('inception_utils')  # the real startup check
    shutil.copytree(base / 'weights', tmp_path / 'weights')
    weights = tmp_path / 'inception.pth'
    weights.write_bytes(b'weights exist; the moments file does not')
    err = error_of(sample_args(tmp_path, '--sample_npz', '--sample_num_npz', '4',
                               '--sample_inception_metrics', '--inception_weights',
                               str(weights)), capsys)
    assert 'C10_inception_moments.npz' in err and 'calculate_inception_moments' in err
    assert not (tmp_path / 'samples').exists()  # nothing was sampled
    err = error_of(sample_args(base, '--sample_inception_metrics', '--inception_weights',
                               str(tmp_path / 'absent.pth')), capsys)
    assert 'absent.pth does not exist' in err


@pytest.mark.parametrize('flags, named', [
    (['--sample_npz', '--sample_num_npz', '0'], '--sample_num_npz 0'),
    (['--sample_inception_metrics', '--num_inception_images', '9'], '--num_inception_images 9'),
    (['--sample_trunc_curves', '0.5_0.5_1.0', '--num_inception_images', '5'],
     '--num_inception_images 5'),
])
def test_counts_are_checked_before_anything_is_sampled(base, tmp_path, capsys, flags, named):
    # The Inception counts are checked before the weights are: none exist here.
    shutil.copytree(base / 'weights', tmp_path / 'weights')
    assert named in error_of(sample_args(tmp_path, *flags), capsys)
    assert not (tmp_path / 'samples').exists()
    assert not list(tmp_path.rglob('*.tmp'))


@pytest.mark.parametrize('saved', [{'G_batch_size': -1}, {'G_batch_size': 0, 'batch_size': 0}])
def test_G_batch_size_from_the_run_config_is_checked(base, tmp_path, capsys, saved):
    """The command line bounds the flag; a saved config (edited, or old) is read as is: here
    the config.json of a folder without state_dict.pth (as a converted generator's)."""
    shutil.copytree(base / 'weights', tmp_path / 'weights')
    (tmp_path / 'weights' / NAME / 'state_dict.pth').unlink()
    path = tmp_path / 'weights' / NAME / 'config.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), **saved}))
    err = error_of(sample_args(tmp_path, '--sample_random'), capsys)
    assert f"--G_batch_size {saved['G_batch_size']}: give at least 1" in err
    assert not (tmp_path / 'samples').exists()


@pytest.mark.parametrize('failure', [RuntimeError('CUDA out of memory'), KeyboardInterrupt()])
def test_write_npz_removes_its_tmp_file_when_it_fails(tmp_path, failure):
    path = tmp_path / 'samples.npz'
    np.savez(path, x=np.zeros(1), y=np.zeros(1))  # an earlier run's file
    before, calls = path.read_bytes(), []

    def draw():
        """Two batches of 4, then the failure."""
        calls.append(len(calls))
        if len(calls) == 3:
            raise failure
        return torch.zeros(4, 3, 8, 8), torch.arange(4)
    with pytest.raises(type(failure)):
        utils.write_npz(str(path), draw, 10)
    assert len(calls) == 3 and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['samples.npz']
    with pytest.raises(ValueError, match='at least 1'):
        utils.write_npz(str(tmp_path / 'empty.npz'), draw, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['samples.npz']
