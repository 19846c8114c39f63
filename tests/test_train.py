"""End-to-end tests of train.py: config, saving, exact resume, 2019 run folders, failures."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import resume
import train
import train_fns
import utils
from helpers import ROOT, shared_file, stand_in_inception, write_hdf5

TINY_FLAGS = ['--G_ch', '4', '--D_ch', '4', '--dim_z', '16', '--shared_dim', '8', '--G_shared',
              '--hier', '--G_attn', '0', '--D_attn', '0', '--batch_size', '4',
              '--num_D_steps', '1', '--num_workers', '0', '--test_every', '0', '--ema',
              '--use_ema', '--shuffle', '--log_every', '1', '--logstyle', '%.10e',
              '--G_lr', '2e-4', '--D_lr', '2e-4']


@pytest.fixture
def data_file(tmp_path):
    return write_hdf5(tmp_path / 'tiny.hdf5')


def run_flags(tmp_path, data_file, *extra):
    return ['--dataset', str(data_file), '--base_root', str(tmp_path / 'run'),
            '--experiment_name', 'tiny', *TINY_FLAGS, *extra]


def test_base_root_layout_config_json_and_final_save(tmp_path, data_file):
    state = train.main(run_flags(tmp_path, data_file, '--num_epochs', '2', '--save_every', '3'))
    assert state['itr'] == 8 and state['epoch'] == 2  # 16 images / batch 4, two epochs
    run = tmp_path / 'run'
    weights = run / 'weights' / 'tiny'
    for name in ('G', 'D', 'G_ema', 'G_optim', 'D_optim', 'state_dict', 'G_copy0', 'G_copy1'):
        assert (weights / f'{name}.pth').is_file(), name
    saved = utils.load_file(str(weights / 'state_dict.pth'))
    assert saved['itr'] == 8  # the end of training saves too
    config = json.loads((weights / 'config.json').read_text())
    assert config['n_classes'] == 3 and config['resolution'] == 32
    assert (run / 'samples' / 'tiny' / 'fixed_samples6.jpg').is_file()
    assert (run / 'samples' / 'tiny' / '6' / 'samples0.jpg').is_file()
    assert (run / 'samples' / 'tiny' / '6' / 'interpZY0.jpg').is_file()
    losses = (run / 'logs' / 'tiny' / 'G_loss.log').read_text().splitlines()
    assert [int(line.split(':')[0]) for line in losses] == list(range(1, 9))
    assert not list(weights.glob('*.tmp*'))


def test_save_every_zero_saves_nothing(tmp_path, data_file):
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '0'))
    assert not (tmp_path / 'run' / 'weights' / 'tiny' / 'G.pth').exists()


def test_testing_without_moments_fails_at_startup(tmp_path, data_file):
    flags = run_flags(tmp_path, data_file, '--num_epochs', '1')
    flags[flags.index('--test_every') + 1] = '10'
    with pytest.raises((FileNotFoundError, RuntimeError), match='(moments|weights)'):
        train.main(flags)
    assert not (tmp_path / 'run' / 'weights' / 'tiny' / 'G.pth').exists()


def test_unknown_flags_are_errors():
    with pytest.raises(SystemExit):
        utils.prepare_parser().parse_args(['--G_chh', '4'])


def test_experiment_name_matches_2019():
    config = vars(utils.prepare_parser().parse_args(
        '--dataset I128_hdf5 --batch_size 256 --num_G_accumulations 8 --num_D_accumulations 8 '
        '--num_D_steps 1 --G_lr 1e-4 --D_lr 4e-4 --G_nl inplace_relu --D_nl inplace_relu '
        '--G_shared --hier --ema --G_ch 96 --D_ch 96'.split()))
    assert utils.name_from_config(config) == (
        'BigGAN_I128_hdf5_seed0_Gch96_Dch96_bs256_nDa8_nGa8_Glr1.0e-04_Dlr4.0e-04_'
        'Gnlinplace_relu_Dnlinplace_relu_Ginitortho_Dinitortho_Gattn64_Dattn64_Gshared_hier_ema')
    assert utils.hashname('x') == utils.hashname('x') and utils.hashname('x').count('_') == 2


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = str(tmp_path / 'G.pth')
    utils.atomic_save({'w': torch.ones(3)}, path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt('killed mid-save')
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        utils.atomic_save({'w': torch.zeros(3)}, path)
    monkeypatch.setattr(torch, 'save', real_save)
    assert torch.equal(utils.load_file(path)['w'], torch.ones(3))


def _loss_lines(run_dir: Path) -> list[str]:
    return (run_dir / 'logs' / 'tiny' / 'G_loss.log').read_text().splitlines()


def assert_same_run(resumed: Path, straight: Path) -> None:
    """The resumed run logged the same losses and ended with the same G, D and G_ema."""
    assert _loss_lines(resumed / 'run') == _loss_lines(straight / 'run')
    for name in ('G', 'D', 'G_ema'):
        a = utils.load_file(str(straight / 'run' / 'weights' / 'tiny' / f'{name}.pth'))
        b = utils.load_file(str(resumed / 'run' / 'weights' / 'tiny' / f'{name}.pth'))
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path, data_file):
    """Killed with SIGKILL mid-training, --resume continues to the same losses and weights."""
    flags = ['--num_epochs', '6', '--save_every', '3', '--use_multiepoch_sampler']
    straight = tmp_path / 'straight'
    train.main(run_flags(straight, data_file, *flags))

    killed = tmp_path / 'killed'
    cmd = [sys.executable, str(ROOT / 'train.py'), *run_flags(killed, data_file, *flags)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state_file = killed / 'run' / 'weights' / 'tiny' / 'state_dict.pth'
    deadline = time.time() + 120
    while not state_file.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    resumed_from = utils.load_file(str(state_file))['itr']
    assert 0 < resumed_from < 24

    train.main(run_flags(killed, data_file, *flags, '--resume'))
    assert_same_run(killed, straight)


@pytest.mark.parametrize('stop_epochs, extra', [
    ('1', []), ('2', []), ('1', ['--augment', '--num_workers', '2'])])
def test_epoch_sampler_resume_at_an_epoch_end_continues_with_the_next_epoch(
        tmp_path, data_file, stop_epochs, extra):
    """A run saved at an epoch's last iteration resumes at the next epoch (not a replay).

    The default sampler reshuffles per epoch; the resumed run's losses and weights must be
    the uninterrupted run's, with --augment and loader workers too."""
    straight = tmp_path / 'straight'
    train.main(run_flags(straight, data_file, '--num_epochs', '3', '--save_every', '4', *extra))
    split = tmp_path / 'split'
    train.main(run_flags(split, data_file, '--num_epochs', stop_epochs, '--save_every', '4',
                         *extra))
    state = train.main(run_flags(split, data_file, '--num_epochs', '3', '--save_every', '4',
                                 '--resume', *extra))
    assert (state['itr'], state['epoch']) == (12, 3)
    assert_same_run(split, straight)


def test_sigterm_saves_before_exit(tmp_path, data_file):
    cmd = [sys.executable, str(ROOT / 'train.py'),
           *run_flags(tmp_path, data_file, '--num_epochs', '1000', '--save_every', '100000')]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / 'run' / 'logs' / 'tiny' / 'G_loss.log'
    deadline = time.time() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    saved = utils.load_file(str(tmp_path / 'run' / 'weights' / 'tiny' / 'state_dict.pth'))
    assert saved['itr'] >= 2


def test_finetune_with_a_different_class_count(tmp_path, data_file):
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '4'))
    source = tmp_path / 'run' / 'weights' / 'tiny'
    five = write_hdf5(tmp_path / 'five.hdf5', n_classes=5)
    flags = run_flags(tmp_path / 'ft', five, '--num_epochs', '1', '--save_every', '0',
                      '--load_weights', str(source))
    flags += ['--G_lr', '0', '--D_lr', '0']
    state = train.main(flags)
    assert state['itr'] == 4
    # With lr 0 nothing moves: every tensor but the class embeddings equals the source's.
    # (Checked through a save of the fine-tuned run.)
    train.main(flags[:-4] + ['--save_every', '4', '--G_lr', '0', '--D_lr', '0',
                             '--experiment_name', 'ft2'])
    ft = utils.load_file(str(tmp_path / 'ft' / 'run' / 'weights' / 'ft2' / 'D.pth'))
    src = utils.load_file(str(source / 'D.pth'))
    assert ft['embed.weight'].shape == (5, 16) and src['embed.weight'].shape == (3, 16)
    torch.testing.assert_close(ft['blocks.0.0.conv1.weight'], src['blocks.0.0.conv1.weight'])


def test_2019_run_folder_resumes_with_its_optimizer_state(tmp_path):
    """The real 2019 run folder (itr 3) continues at iteration 4 with its Adam moments."""
    folder = shared_file('fixtures/run2019/weights/run2019')
    base = tmp_path / 'run2019'
    shutil.copytree(folder, base / 'weights' / 'run2019')
    data = write_hdf5(tmp_path / 'c10like.hdf5', n=10, n_classes=10)
    old_optim = utils.load_file(str(folder / 'G_optim.pth'))
    flags = ['--dataset', str(data), '--base_root', str(base)] + (
        '--G_ch 8 --D_ch 8 --G_attn 0 --D_attn 0 --G_shared --shared_dim 16 --hier --dim_z 20 '
        '--ema --use_ema --ema_start 1 --batch_size 4 --num_D_steps 1 --seed 0 --G_init N02 '
        '--D_init N02 --experiment_name run2019 --resume --num_epochs 1 --num_workers 0 '
        '--test_every 0 --save_every 1').split()
    state = train.main(flags)
    assert state['itr'] == 5  # 3 from 2019, then one epoch of 2 iterations
    new_optim = utils.load_file(str(base / 'weights' / 'run2019' / 'G_optim.pth'))
    assert new_optim['state'][0]['step'] == old_optim['state'][0]['step'] + 2
    assert len(new_optim['state']) == len(old_optim['state'])


def test_help_lists_every_flag():
    text = utils.prepare_parser().format_help()
    assert '--logstyle' in text and '%3.3e' in text and '--num_standing_accumulations' in text


def test_load_weights_names_a_folder_or_a_file(tmp_path):
    for name in ('G_ema_best0.pth', 'G_best0.pth', 'D_copy1.pth', 'G.pth'):
        (tmp_path / name).write_bytes(b'')
    assert resume.weights_source(str(tmp_path / 'G_ema_best0.pth')) == (str(tmp_path), 'best0')
    assert resume.weights_source(str(tmp_path / 'G_best0.pth')) == (str(tmp_path), 'best0')
    assert resume.weights_source(str(tmp_path / 'D_copy1.pth')) == (str(tmp_path), 'copy1')
    assert resume.weights_source(str(tmp_path / 'G.pth')) == (str(tmp_path), None)
    assert resume.weights_source(str(tmp_path)) == (str(tmp_path), None)


def test_unconditional_training_on_a_one_class_folder(tmp_path):
    """A folder of one class trains with --unconditional (no projection in D), else errors."""
    from PIL import Image
    folder = tmp_path / 'faces' / 'all'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    flags = ['--dataset', str(tmp_path / 'faces'), '--resolution', '32', '--base_root',
             str(tmp_path / 'run'), '--experiment_name', 'uncond', *TINY_FLAGS,
             '--num_epochs', '1', '--save_every', '2']
    with pytest.raises(ValueError, match='--unconditional'):
        train.main(flags)
    state = train.main(flags + ['--unconditional'])
    assert state['itr'] == 2
    saved = utils.load_file(str(tmp_path / 'run' / 'weights' / 'uncond' / 'D.pth'))
    assert 'embed.weight' not in saved and 'linear.weight' in saved
    config = json.loads((tmp_path / 'run' / 'weights' / 'uncond' / 'config.json').read_text())
    assert config['n_classes'] == 1


def test_2019_fp16_flags_train_with_grad_scalers_that_resume(tmp_path, data_file, capsys):
    """--G_fp16/--D_fp16 map onto --amp fp16; the scalers' state is saved and restored."""
    flags = run_flags(tmp_path, data_file, '--G_fp16', '--D_fp16', '--save_every', '4')
    train.main(flags + ['--num_epochs', '1'])
    assert '--amp fp16' in capsys.readouterr().out  # the note says what replaced the flags
    weights = tmp_path / 'run' / 'weights' / 'tiny'
    saved = utils.load_file(str(weights / 'state_dict.pth'))
    assert saved['config']['amp'] == 'fp16'
    assert {'G_scaler', 'D_scaler'} <= set(saved) and saved['G_scaler']['scale'] > 0
    restored = {}
    original = torch.amp.GradScaler.load_state_dict

    def spy(scaler, state):
        restored.setdefault('states', []).append(state)
        return original(scaler, state)
    torch.amp.GradScaler.load_state_dict = spy
    try:
        state = train.main(flags + ['--num_epochs', '2', '--resume'])
    finally:
        torch.amp.GradScaler.load_state_dict = original
    assert state['itr'] == 8
    assert restored['states'] == [saved['G_scaler'], saved['D_scaler']]
    G_loss = (tmp_path / 'run' / 'logs' / 'tiny' / 'G_loss.log').read_text().splitlines()
    assert all(np.isfinite(float(line.split(':')[1])) for line in G_loss)


def test_bf16_channels_last_run_saves_a_plain_checkpoint(tmp_path, data_file):
    """--amp bf16 --channels_last trains on the CPU too; its checkpoint is fp32 state a
    default (contiguous, fp32) run resumes from."""
    fast = ['--amp', 'bf16', '--channels_last', '--save_every', '4']
    state = train.main(run_flags(tmp_path, data_file, *fast, '--num_epochs', '1'))
    assert state['itr'] == 4
    G_state = utils.load_file(str(tmp_path / 'run' / 'weights' / 'tiny' / 'G.pth'))
    assert all(v.dtype in (torch.float32, torch.int64) for v in G_state.values())
    losses = (tmp_path / 'run' / 'logs' / 'tiny' / 'D_loss_real.log').read_text().splitlines()
    assert len(losses) == 4 and all(np.isfinite(float(x.split(':')[1])) for x in losses)
    state = train.main(run_flags(tmp_path, data_file, '--num_epochs', '2', '--save_every', '4',
                                 '--resume'))
    assert state['itr'] == 8


# ----------------------------------------------------------------------------------------
# 2019 fidelity: training length, batch sizes, flag combinations
# ----------------------------------------------------------------------------------------


def test_startup_prints_the_total_iterations(tmp_path, data_file, capsys):
    """16 images, batch 4 x 2 D steps: 2 iterations an epoch, 3 epochs; the multi-epoch
    stream of 48 images holds 6 batches of 8 as well."""
    for extra in ([], ['--use_multiepoch_sampler']):
        state = train.main(run_flags(tmp_path, data_file, '--num_epochs', '3', '--save_every',
                                     '0', '--num_D_steps', '2', *extra))
        assert state['itr'] == 6
        assert ('Training 6 iterations: 3 epochs of 16 images at 8 real images per iteration '
                '(batch 4 x 2 D steps x 1 accumulations)') in capsys.readouterr().out


@pytest.mark.parametrize('n,epochs,per_itr', [(16, 3, 8), (17, 3, 8), (1_281_167, 240, 2048)])
def test_total_iterations_is_what_the_samplers_yield(n, epochs, per_itr):
    import datasets
    multi = datasets.MultiEpochSampler(n, epochs, per_itr)
    assert train.total_iterations(n, epochs, per_itr, True) == multi.num_itrs
    single = datasets.EpochSampler(n, per_itr)
    assert train.total_iterations(n, epochs, per_itr, False) == epochs * (len(single) // per_itr)


def test_D_sees_batch_size_fakes_when_G_batch_size_is_smaller(tmp_path, data_file, monkeypatch,
                                                              capsys):
    """As in 2019, D pits batch_size fakes against batch_size reals; G steps on G_batch_size."""
    import BigGAN
    seen, forward = [], BigGAN.Discriminator.forward

    def spy(D, x, y=None):
        seen.append(len(x))
        return forward(D, x, y)
    monkeypatch.setattr(BigGAN.Discriminator, 'forward', spy)
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '0',
                         '--G_batch_size', '2', '--split_D'))
    assert seen == [4, 4, 2] * 4  # per iteration: fakes, reals (split_D), G's fakes
    assert 'D sees 4 fakes per minibatch and G steps on 2' in capsys.readouterr().out


def test_load_weights_suffix_without_resume_says_what_it_expects(tmp_path, data_file):
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '4'))
    weights = tmp_path / 'run' / 'weights' / 'tiny'
    before = {p.name: p.read_bytes() for p in weights.iterdir()}
    with pytest.raises(ValueError, match='--resume.*G_copy0.pth with a new --experiment_name'):
        train.main(run_flags(tmp_path, data_file, '--num_epochs', '2', '--load_weights', 'copy0'))
    assert {p.name: p.read_bytes() for p in weights.iterdir()} == before  # nothing touched
    with pytest.raises(FileNotFoundError, match='does not exist'):
        train.main(run_flags(tmp_path, data_file, '--load_weights', str(weights / 'G_x.pth')))
    # With --resume the suffix loads that copy.
    state = train.main(run_flags(tmp_path, data_file, '--num_epochs', '2', '--load_weights',
                                 'copy0', '--resume', '--save_every', '0'))
    assert state['itr'] == 8


def test_cross_replica_under_dataparallel_is_an_error_naming_torchrun():
    config = vars(utils.prepare_parser().parse_args(['--cross_replica', '--parallel']))
    with pytest.raises(ValueError, match='torchrun --nproc_per_node'):
        train.check_config(config, world_size=1, num_gpus=2)
    train.check_config(config, world_size=1, num_gpus=1)  # one GPU: DataParallel is not used
    train.check_config(config, world_size=2, num_gpus=2)  # torchrun: DDP + SyncBatchNorm


def test_toggle_grads_flag_keeps_toggling_on():
    """2019's --toggle_grads was store_true with default True: passing it changes nothing."""
    parse = utils.prepare_parser().parse_args
    assert vars(parse([]))['toggle_grads'] is True
    assert vars(parse(['--toggle_grads']))['toggle_grads'] is True
    assert vars(parse(['--no_toggle_grads']))['toggle_grads'] is False



def test_cpu_adam_is_the_multi_tensor_form_with_the_per_parameter_results():
    """foreach Adam on the CPU (one op per step for all tensors) changes no number."""
    config = vars(utils.prepare_parser().parse_args(['--G_B1', '0.5', '--adam_eps', '1e-6']))
    torch.manual_seed(0)
    G, D = torch.nn.Linear(5, 7), torch.nn.Conv2d(3, 4, 3)
    G_optim, D_optim = train.build_optimizers(G, D, config, torch.device('cpu'))
    assert G_optim.defaults['foreach'] and D_optim.defaults['foreach']
    G_ref = torch.nn.Linear(5, 7)
    G_ref.load_state_dict(G.state_dict())
    ref = torch.optim.Adam(G_ref.parameters(), lr=config['G_lr'], betas=(0.5, config['G_B2']),
                           eps=1e-6, foreach=False)
    for _ in range(5):
        x = torch.randn(3, 5)
        for net, optim in ((G, G_optim), (G_ref, ref)):
            optim.zero_grad()
            net(x).square().sum().backward()
            optim.step()
    for a, b in zip(G.parameters(), G_ref.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize('norm_style', ['in', 'gn', 'nonorm'])
def test_norm_styles_train_and_sample_with_standing_stats(tmp_path, data_file, norm_style):
    """--norm_style in/gn/nonorm with --accumulate_stats used to crash at the first save."""
    state = train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '4',
                                 '--norm_style', norm_style, '--accumulate_stats',
                                 '--num_standing_accumulations', '2', '--G_eval_mode'))
    assert state['itr'] == 4
    assert (tmp_path / 'run' / 'samples' / 'tiny' / '4' / 'samples0.jpg').is_file()
    G = utils.load_file(str(tmp_path / 'run' / 'weights' / 'tiny' / 'G.pth'))
    assert ('blocks.0.0.bn1.stored_mean' in G) == (norm_style == 'in')
    assert 'output_layer.0.stored_mean' in G


# ----------------------------------------------------------------------------------------
# Reliability: kills, NaNs, bad starts, resumed flags
# ----------------------------------------------------------------------------------------

# Runs train.py with each file-system step of a save (fsync, rename) slowed down and
# counted; KILL_AT_CALL=k sends the process SIGKILL at the k-th, before it runs. A save of
# G, D, G_ema, both optimizers and state_dict with one rotating copy makes 32 such steps:
# 1-13 stage its files (each part, then its copy, then config.json), 14-15 record the
# journal, 16-28 rename the 13 files, 29 syncs the folder, 30-31 record the checksums, and
# 32 syncs the folder after removing the journal.
KILLABLE_TRAIN = '''
import os, signal, sys, time, runpy
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
import utils
calls, kill_at, saving = 0, int(os.environ.get('KILL_AT_CALL', '0')), False
real_replace, real_fsync, real_save_weights = os.replace, os.fsync, utils.save_weights
def tick():
    global calls
    if saving:
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.005)
def replace(*args, **kwargs):
    tick()
    return real_replace(*args, **kwargs)
def fsync(fd):
    tick()
    return real_fsync(fd)
def save_weights(*args, **kwargs):
    global saving
    saving = True
    try:
        return real_save_weights(*args, **kwargs)
    finally:
        saving = False
os.replace, os.fsync, utils.save_weights = replace, fsync, save_weights
runpy.run_path(sys.argv[0], run_name='__main__')
'''
SAVE_STEPS = 32


def run_killable(tmp_path: Path, flags: list[str], kill_at: int = 0,
                 kill_after: float = 0.0) -> int:
    """Run train.py in a subprocess, killed at the kill_at-th step of its saves or kill_after
    seconds after its run folder appears; returns the exit code (-9: killed)."""
    script = tmp_path / 'killable_train.py'
    script.write_text(KILLABLE_TRAIN)
    env = {**os.environ, 'KILL_AT_CALL': str(kill_at)}
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT / 'train.py'), *flags],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    if kill_after:
        config = Path(flags[flags.index('--base_root') + 1]) / 'weights' / 'tiny' / 'config.json'
        deadline = time.time() + 120
        while not config.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(kill_after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-3000:]
    return proc.returncode


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_sigkill_anywhere_then_resume_until_done_equals_the_uninterrupted_run(
        tmp_path, data_file, seed):
    """SIGKILL inside a save after its journal (the next start completes it), inside a save
    before it (the previous set stands), and at a random time, resuming after each: the run
    ends with exactly the uninterrupted run's losses and weights, and no stale files."""
    flags = ['--num_epochs', '5', '--save_every', '2', '--use_multiepoch_sampler']
    straight = tmp_path / 'straight'
    train.main(run_flags(straight, data_file, *flags))  # 20 iterations, 10 saves
    rng = np.random.default_rng(seed)
    killed = run_flags(tmp_path / 'killed', data_file, *flags)
    weights = tmp_path / 'killed' / 'run' / 'weights' / 'tiny'

    save = int(rng.integers(1, 9))  # 0-based: the save at iteration 2 * (save + 1)
    kill_at = save * SAVE_STEPS + int(rng.integers(16, 32))  # among the renames
    assert run_killable(tmp_path, killed, kill_at=kill_at) == -signal.SIGKILL
    assert (weights / utils.COMMIT_JOURNAL).exists()  # a half-renamed, recorded set
    remaining = 10 - (save + 1)  # the resumed run completes that save and starts after it
    kill_at = int(rng.integers(0, remaining)) * SAVE_STEPS + int(rng.integers(1, 16))
    assert run_killable(tmp_path, killed + ['--resume'], kill_at=kill_at) == -signal.SIGKILL
    assert not (weights / utils.COMMIT_JOURNAL).exists()
    assert [f for f in os.listdir(weights) if f.endswith(utils.STAGED)]  # an unrecorded set
    code = run_killable(tmp_path, killed + ['--resume'],
                        kill_after=float(rng.uniform(0.1, 1.5)))
    while code != 0:
        code = run_killable(tmp_path, killed + ['--resume'])
    assert_same_run(tmp_path / 'killed', straight)
    assert utils.load_file(str(weights / 'state_dict.pth'))['itr'] == 20
    assert not [f for f in os.listdir(weights) if f.endswith(utils.STAGED) or '.tmp' in f
                or f == utils.COMMIT_JOURNAL]


def test_a_run_gone_non_finite_between_loss_checks_keeps_only_finite_checkpoints(
        tmp_path, data_file, monkeypatch):
    """NaN weights from iteration 7; losses are read every 50: the save at 10 is refused,
    the checkpoints stay those of iteration 5, and the error names that one."""
    make_train = train_fns.GAN_training_function

    def poisoned(nets, GD, state_dict, *args, **kwargs):
        step = make_train(nets, GD, state_dict, *args, **kwargs)

        def train_step(x, y):
            losses = step(x, y)
            if state_dict['itr'] == 7:
                with torch.no_grad():
                    nets.G.linear.weight[0, 0] = float('nan')
            return losses
        return train_step
    monkeypatch.setattr(train_fns, 'GAN_training_function', poisoned)
    flags = run_flags(tmp_path, data_file, '--num_epochs', '4', '--save_every', '5')
    flags[flags.index('--log_every') + 1] = '50'
    weights = tmp_path / 'run' / 'weights' / 'tiny'
    with pytest.raises(FloatingPointError, match=(
            r'G, G_ema, G_optim hold non-finite values: not saved .* at iteration 10\. '
            r'The last good checkpoint is \S+/tiny \(iteration 5\)')):
        train.main(flags)
    for path in weights.glob('*.pth'):
        state = utils.load_file(str(path))
        assert not utils.nonfinite_parts({path.name: state}), path.name
        if path.name.startswith('state_dict'):
            assert state['itr'] == 5


def snapshot(root: Path) -> dict:
    """Every file under root with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def test_a_failed_start_leaves_an_existing_run_byte_identical(tmp_path, data_file, capsys):
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '2'))
    before = snapshot(tmp_path / 'run')
    with pytest.raises(SystemExit):  # a bad value: the parser stops, naming the flag
        train.main(run_flags(tmp_path, data_file, '--num_D_steps', '0'))
    assert 'argument --num_D_steps: must lie in [1, inf), got 0' in capsys.readouterr().err
    with pytest.raises(FileExistsError, match=r'already holds a run \(saved at iteration 4\)'
                                              r'.*--resume.*new --experiment_name'):
        train.main(run_flags(tmp_path, data_file, '--num_epochs', '2'))
    with pytest.raises(FileNotFoundError):  # bad data, resuming
        train.main(run_flags(tmp_path, tmp_path / 'missing.hdf5', '--resume'))
    with pytest.raises(ValueError, match='does not fit'):  # a model the run does not hold
        train.main(run_flags(tmp_path, data_file, '--resume', '--G_ch', '8'))
    assert snapshot(tmp_path / 'run') == before


def test_flags_given_on_resume_win_and_the_saved_ones_fill_the_rest(tmp_path, data_file,
                                                                    capsys):
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '4',
                         '--G_lr', '3e-4', '--num_workers', '0'))
    # Only where the run is and what to change: the saved flags supply the model and data.
    state = train.main(['--base_root', str(tmp_path / 'run'), '--experiment_name', 'tiny',
                        '--resume', '--num_epochs', '2', '--D_lr', '1e-5'])
    assert state['itr'] == 8
    out = capsys.readouterr().out
    assert "--resume: D_lr = 1e-05 as given (the run was saved with 0.0002)" in out
    assert 'G_lr' not in out.split('--resume:')[-1].split('\n')[0]
    weights = tmp_path / 'run' / 'weights' / 'tiny'
    config = json.loads((weights / 'config.json').read_text())
    assert (config['D_lr'], config['G_lr'], config['G_ch'], config['num_epochs']) == (
        1e-5, 3e-4, 4, 2)
    optim = utils.load_file(str(weights / 'D_optim.pth'))
    assert {g['lr'] for g in optim['param_groups']} == {1e-5}
    assert {g['lr'] for g in utils.load_file(str(weights / 'G_optim.pth'))['param_groups']} \
        == {3e-4}


def test_resume_of_a_run_killed_before_its_first_save_starts_at_zero(tmp_path, data_file,
                                                                     capsys):
    flags = run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '0')
    train.main(flags)  # logs and config.json, no checkpoint
    state = train.main(flags + ['--resume', '--save_every', '4'])
    assert state['itr'] == 4 and 'holds no checkpoint yet' in capsys.readouterr().out
    assert [int(x.split(':')[0]) for x in _loss_lines(tmp_path / 'run')] == [1, 2, 3, 4]
    with pytest.raises(FileNotFoundError, match='no run folder'):
        train.main(run_flags(tmp_path, data_file, '--resume', '--experiment_name', 'typo'))


@pytest.mark.parametrize('itr, epoch, multiepoch, expected', [
    (0, 0, False, (0, 0)),      # a new run
    (7, 1, False, (1, 2)),      # saved mid-epoch 1, after its second batch
    (10, 1, False, (2, 0)),     # saved at epoch 1's last batch: the next epoch from its start
    (30, 1, False, (1, 0)),     # counters from other data (more batches than fit): epoch anew
    (7, 1, True, (1, 0)),       # the multi-epoch sampler skips ahead by itself
])
def test_resume_position(itr, epoch, multiepoch, expected):
    assert train.resume_position(itr, epoch, itrs_per_epoch=5, multiepoch=multiepoch) == expected


def test_which_best_KID_keeps_the_lowest_KID_and_needs_the_features_file(tmp_path, data_file,
                                                                         monkeypatch):
    """--which_best KID end to end, the real data's moments and features written by
    calculate_inception_moments.py; no features file: a startup error naming it."""
    import calculate_inception_moments
    import inception_utils
    weights = stand_in_inception(monkeypatch, tmp_path)
    calculate_inception_moments.main(['--dataset', str(data_file), '--num_workers', '0',
                                      '--inception_weights', str(weights)])
    features = tmp_path / 'tiny_inception_moments_features.npz'
    assert len(inception_utils.load_features(features)) == 16

    def kid_flags(root):
        flags = run_flags(root, data_file, '--num_epochs', '1', '--save_every', '0',
                          '--which_best', 'KID', '--num_inception_images', '20',
                          '--inception_weights', str(weights), '--num_best_copies', '1')
        flags[flags.index('--test_every') + 1] = '2'
        return flags

    state = train.main(kid_flags(tmp_path))  # tests at iterations 2 and 4
    records = [json.loads(line) for line in
               (tmp_path / 'run' / 'logs' / 'tiny_log.jsonl').read_text().splitlines()]
    assert [r['itr'] for r in records] == [2, 4]
    for r in records:
        assert r['KID_std'] >= 0 and 0 <= r['precision'] <= 1 and 0 <= r['recall'] <= 1
    best = min(records, key=lambda r: r['KID_mean'])
    assert state['best_KID'] == best['KID_mean']
    # The one best copy is the checkpoint of the lowest KID (saved with that KID as best).
    saved = utils.load_file(str(tmp_path / 'run' / 'weights' / 'tiny' / 'state_dict_best0.pth'))
    assert (saved['itr'], saved['best_KID']) == (best['itr'], best['KID_mean'])
    assert (tmp_path / 'run' / 'weights' / 'tiny' / 'G_best0.pth').is_file()

    features.unlink()
    with pytest.raises(FileNotFoundError, match=f'{features} not found; make it .*'
                       'python calculate_inception_moments.py --dataset '):
        train.main(kid_flags(tmp_path / 'second'))
    assert not (tmp_path / 'second').exists()


# Reliability: a failed resume changes nothing, copies are copies, torn logs (issue 24)
# ----------------------------------------------------------------------------------------


def test_a_resume_gone_non_finite_keeps_the_run_config_and_the_advised_resume_works(
        tmp_path, data_file):
    """The advice of a NaN stop (--resume) used to fail again: the resume that went NaN had
    already rewritten config.json with its flags. Flags typed with --resume now reach the
    folder only with the next checkpoint they produce."""
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '2'))
    weights = tmp_path / 'run' / 'weights' / 'tiny'
    before = snapshot(weights)
    run = ['--base_root', str(tmp_path / 'run'), '--experiment_name', 'tiny']
    with pytest.raises(FloatingPointError, match=r'non-finite losses .* at iteration 5\. The '
                       r'last good checkpoint is \S+/tiny \(iteration 4\); resume from it '
                       r'\(--resume'):
        train.main(run + ['--resume', '--num_epochs', '2', '--z_var', '1e80'])
    assert snapshot(weights) == before  # the config, the checkpoint: nothing changed
    state = train.main(run + ['--resume', '--num_epochs', '2'])  # the advice, as given
    assert state['itr'] == 8
    config = json.loads((weights / 'config.json').read_text())
    saved = utils.load_file(str(weights / 'state_dict.pth'))
    assert config['z_var'] == saved['config']['z_var'] == 1.0
    assert config['num_epochs'] == saved['config']['num_epochs'] == 2


def test_a_resume_from_a_copy_takes_that_copys_config(tmp_path, data_file, capsys):
    """config.json follows the main set; a copy's flags are those saved in it."""
    flags = run_flags(tmp_path, data_file, '--num_epochs', '2', '--save_every', '3')
    train.main(flags)  # saves at 3 (copy0), 6 (copy1), 8 (the end, copy0)
    run = ['--base_root', str(tmp_path / 'run'), '--experiment_name', 'tiny']
    train.main(run + ['--resume', '--num_epochs', '3', '--D_lr', '1e-4', '--save_every',
                      '100'])  # one save, at the end (12): main and copy1
    weights = tmp_path / 'run' / 'weights' / 'tiny'
    assert json.loads((weights / 'config.json').read_text())['D_lr'] == 1e-4
    capsys.readouterr()
    state = train.main(run + ['--resume', '--load_weights', 'copy0', '--num_epochs', '4'])
    assert state['itr'] == 16  # from copy0 at iteration 8: its D_lr, not the main set's
    assert 'resuming at iteration 8' in capsys.readouterr().out
    saved = utils.load_file(str(tmp_path / 'run' / 'weights' / 'tiny' / 'state_dict.pth'))
    assert saved['config']['D_lr'] == 2e-4


@pytest.mark.parametrize('damage', ['truncate', 'overwrite'])
def test_a_damaged_main_file_is_named_and_the_run_resumes_from_a_copy(tmp_path, data_file,
                                                                      damage):
    """Copies were hard links of the main files, so damage to G.pth was damage to G_copy0.pth
    and the advised --load_weights copy0 failed the same way (or loaded garbage)."""
    flags = run_flags(tmp_path, data_file, '--num_epochs', '2', '--save_every', '3')
    train.main(flags)  # saves at 3 (copy0), 6 (copy1), 8 (the end, copy0)
    weights = tmp_path / 'run' / 'weights' / 'tiny'
    good = (weights / 'G.pth').read_bytes()
    if damage == 'truncate':
        os.truncate(weights / 'G.pth', len(good) // 2)
    else:
        with open(weights / 'G.pth', 'r+b') as f:
            f.seek(len(good) // 2)
            f.write(b'\xff' * 200)
    assert (weights / 'G_copy0.pth').read_bytes() == good  # the copy is a file of its own
    run = ['--base_root', str(tmp_path / 'run'), '--experiment_name', 'tiny', '--resume',
           '--num_epochs', '3']
    with pytest.raises(utils.CorruptCheckpointError, match=(
            r'G.pth is damaged: .*copy0 \(iteration 8\), copy1 \(iteration 6\).*'
            r'--resume --load_weights copy0')):
        train.main(run)
    state = train.main(run + ['--load_weights', 'copy0'])
    assert state['itr'] == 12
    utils.load_file(str(weights / 'G.pth'))  # rewritten by the resumed run's saves


def test_a_resume_repairs_torn_log_lines(tmp_path, data_file):
    """A kill can leave a torn last line; it stopped --resume (JSONDecodeError, ValueError)."""
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '4'))
    logs = tmp_path / 'run' / 'logs'
    jsonl = logs / 'tiny_log.jsonl'
    jsonl.write_text('{"itr": 2, "IS_mean": 1.0, "IS_std": 0.1, "FID": 300.0}\n{"itr": 4, "IS_m')
    with open(logs / 'tiny' / 'G_loss.log', 'a') as f:
        f.write('\n')
    with open(logs / 'tiny' / 'D_loss_real.log', 'a') as f:
        f.write('3: 2.5e+')  # torn before its iteration was even past the checkpoint
    with pytest.warns(UserWarning) as warned:
        state = train.main(run_flags(tmp_path, data_file, '--num_epochs', '2', '--resume'))
    assert state['itr'] == 8
    messages = sorted(str(w.message) for w in warned)
    assert len(messages) == 2  # the blank line goes without a word
    assert messages[0].endswith('D_loss_real.log: dropped 1 unreadable line(s) (line 5), e.g. '
                                'the last line of a run that was killed while writing it')
    assert 'tiny_log.jsonl: dropped 1 unreadable line(s) (line 2)' in messages[1]
    assert [json.loads(line)['itr'] for line in jsonl.read_text().splitlines()] == [2]
    for name in ('G_loss', 'D_loss_real'):
        lines = (logs / 'tiny' / f'{name}.log').read_text().splitlines()
        assert [int(line.split(':')[0]) for line in lines] == list(range(1, 9)), name
        assert all(float(line.split(':')[1]) == float(line.split(':')[1]) for line in lines)


def test_resume_of_a_missing_run_says_so_before_checking_inception(tmp_path, data_file):
    """It used to report missing Inception weights first, sending the user the wrong way."""
    flags = run_flags(tmp_path, data_file, '--resume', '--inception_weights',
                      str(tmp_path / 'absent.pth'))
    flags[flags.index('--test_every') + 1] = '100'
    with pytest.raises(FileNotFoundError, match=r'--resume: no run folder \S+/weights/tiny '
                                                r'\(\S+/weights does not exist\)'):
        train.main(flags)
