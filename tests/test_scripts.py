"""Tests for scripts/: the 2019 launchers parse with our flags and keep their values."""
import os
import re
import shlex
from pathlib import Path

import pytest

import utils
from helpers import ROOT

SCRIPTS = ROOT / 'scripts'
# The 2019 launchers (the demo launcher runs several commands; tested on its own below).
LAUNCHERS = sorted(p for p in SCRIPTS.glob('launch_*.sh') if p.name != 'launch_demo.sh')
# The small-data forks' CIFAR launchers and the BigGAN-deep fine-tuning launcher.
FORK_SCRIPTS = sorted(SCRIPTS.glob('*cifar10-0.1.sh'))
RUN_SCRIPTS = (LAUNCHERS + sorted(SCRIPTS.glob('sample_*.sh')) + FORK_SCRIPTS
               + [SCRIPTS / 'finetune_BigGAN_deep.sh'])


def script_commands(path: Path) -> list[list[str]]:
    """The python commands of a bash script as token lists, continuations joined, "$@" dropped."""
    text = re.sub(r'\\\n', ' ', path.read_text())
    commands = []
    for line in text.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens and tokens[0] in ('python', 'python3'):
            commands.append([t for t in tokens[1:] if t != '$@'])
    return commands


def script_args(path: Path) -> tuple[str, list[str]]:
    """The Python script a launcher runs (train.py / sample.py) and the flags it passes."""
    commands = script_commands(path)
    assert len(commands) == 1, f'{path.name}: expected one python command, got {commands}'
    return commands[0][0], commands[0][1:]


def parse_script(path: Path) -> dict:
    """The config a launcher's flags resolve to with our parsers (fails on unknown flags)."""
    entry, argv = script_args(path)
    assert entry in ('train.py', 'sample.py'), f'{path.name} runs {entry}'
    parser = utils.prepare_parser()
    if entry == 'sample.py':
        parser = utils.add_sample_parser(parser)
    try:
        return vars(parser.parse_args(argv))
    except SystemExit:
        pytest.fail(f'{path.name}: its flags do not parse: {" ".join(argv)}')


def diff(a: dict, b: dict) -> set[str]:
    """Config keys whose values differ."""
    return {k for k in a if a[k] != b[k]}


def test_launchers_present():
    """Every launcher of the 2019 release is in scripts/."""
    names = {p.name for p in LAUNCHERS}
    assert names >= {'launch_BigGAN_bs256x8.sh', 'launch_BigGAN_bs512x4.sh',
                     'launch_BigGAN_ch64_bs256x8.sh', 'launch_BigGAN_deep.sh',
                     'launch_SAGAN_bs128x2_ema.sh', 'launch_SNGAN.sh', 'launch_cifar_ema.sh'}


@pytest.mark.parametrize('path', RUN_SCRIPTS + [SCRIPTS / 'utils' / 'prepare_data.sh'],
                         ids=lambda p: p.name)
def test_script_shape(path):
    """Bash, set -e, runs from the repo root, forwards "$@", executable, says how to use DDP."""
    text = path.read_text()
    assert text.startswith('#!/bin/bash\n')
    assert '\nset -e\n' in text
    up = '/../..' if path.parent.name == 'utils' else '/..'
    assert f'cd "$(dirname "$0"){up}"' in text
    assert text.rstrip().endswith('"$@"')
    assert os.access(path, os.X_OK), f'{path.name} is not executable'
    if path.name.startswith('launch_'):  # training launchers say how to use DDP
        assert 'torchrun --nproc_per_node=N' in text


@pytest.mark.parametrize('path', RUN_SCRIPTS, ids=lambda p: p.name)
def test_script_flags_parse(path):
    """Each launcher's flags parse (+ add_sample_parser for sample.py) and every one took effect."""
    config = parse_script(path)
    flags = {f.name: f for f in utils.all_flags() + utils.SAMPLE_FLAGS}
    argv = script_args(path)[1]
    for i, token in enumerate(argv):
        if not token.startswith('--'):
            continue
        flag = flags[token[2:]]
        if flag.type == utils.SWITCH:
            expected = True
        elif flag.type == 'off':
            expected = False
        else:
            expected = flag.type(argv[i + 1])
        assert config[flag.key] == expected, f'{path.name}: {token}'


def test_bs256x8_values():
    """The main 2019 run keeps its hyperparameters."""
    c = parse_script(SCRIPTS / 'launch_BigGAN_bs256x8.sh')
    expected = dict(dataset='I128_hdf5', batch_size=256, num_G_accumulations=8,
                    num_D_accumulations=8, num_D_steps=1, G_lr=1e-4, D_lr=4e-4, G_B2=0.999,
                    D_B2=0.999, adam_eps=1e-6, SN_eps=1e-6, BN_eps=1e-5, dim_z=120,
                    shared_dim=128, G_ch=96, D_ch=96, G_attn='64', D_attn='64', ema=True,
                    use_ema=True, ema_start=20000, G_nl='inplace_relu', D_nl='inplace_relu',
                    G_init='ortho', D_init='ortho', G_shared=True, hier=True, load_in_mem=True,
                    G_eval_mode=True, parallel=True, use_multiepoch_sampler=True,
                    test_every=2000, save_every=1000, num_best_copies=5, num_save_copies=2)
    assert {k: c[k] for k in expected} == expected


def test_variants_differ_only_where_spec_says():
    """bs512x4, ch64 and deep are the bs256x8 set with exactly the 2019 launchers' changes."""
    base = parse_script(SCRIPTS / 'launch_BigGAN_bs256x8.sh')
    bs512 = parse_script(SCRIPTS / 'launch_BigGAN_bs512x4.sh')
    assert diff(base, bs512) == {'batch_size', 'num_G_accumulations', 'num_D_accumulations'}
    assert (bs512['batch_size'], bs512['num_G_accumulations'],
            bs512['num_D_accumulations']) == (512, 4, 4)
    ch64 = parse_script(SCRIPTS / 'launch_BigGAN_ch64_bs256x8.sh')
    assert diff(base, ch64) == {'G_ch', 'D_ch'}
    assert (ch64['G_ch'], ch64['D_ch']) == (64, 64)  # the 2019 typo (no --D_ch) is fixed
    deep = parse_script(SCRIPTS / 'launch_BigGAN_deep.sh')
    assert diff(base, deep) == {'model', 'load_in_mem', 'G_ch', 'D_ch', 'G_depth', 'D_depth',
                                'dim_z', 'save_every'}
    assert (deep['model'], deep['load_in_mem'], deep['G_ch'], deep['G_depth'], deep['D_depth'],
            deep['dim_z'], deep['save_every']) == ('BigGANdeep', False, 128, 2, 2, 128, 500)


def test_baseline_values():
    """SA-GAN, SN-GAN and CIFAR launchers keep their 2019 hyperparameters."""
    sagan = parse_script(SCRIPTS / 'launch_SAGAN_bs128x2_ema.sh')
    assert (sagan['batch_size'], sagan['num_G_accumulations'], sagan['G_init'], sagan['G_nl'],
            sagan['ema_start'], sagan['SN_eps'], sagan['name_suffix'], sagan['G_shared']) == \
        (128, 2, 'xavier', 'relu', 2000, 1e-8, 'SAGAN_ema', False)
    sngan = parse_script(SCRIPTS / 'launch_SNGAN.sh')
    assert sngan['D_wide'] is False  # --D_thin
    assert (sngan['num_D_steps'], sngan['G_B2'], sngan['D_B2'], sngan['G_lr'], sngan['G_attn'],
            sngan['ema'], sngan['name_suffix']) == (5, 0.9, 0.9, 2e-4, '0', False, 'SNGAN')
    cifar = parse_script(SCRIPTS / 'launch_cifar_ema.sh')
    assert (cifar['dataset'], cifar['num_epochs'], cifar['batch_size'], cifar['num_D_steps'],
            cifar['G_init'], cifar['D_init'], cifar['ema_start'], cifar['test_every']) == \
        ('C10', 500, 50, 4, 'N02', 'N02', 1000, 5000)


IMAGENET_TRAIN_IMAGES = 1_281_167


@pytest.mark.parametrize('path', [p for p in LAUNCHERS if 'I128' in p.read_text()],
                         ids=lambda p: p.name)
def test_imagenet_launchers_train_at_least_the_2019_length(path):
    """The 2019 README trains BigGAN to 150k iterations (its loop never stopped on its own):
    each ImageNet launcher's epochs reach that on ImageNet's train set at its batch size."""
    import train
    c = parse_script(path)
    per_itr = c['batch_size'] * c['num_D_steps'] * c['num_D_accumulations']
    total = train.total_iterations(IMAGENET_TRAIN_IMAGES, c['num_epochs'], per_itr,
                                   c['use_multiepoch_sampler'])
    assert total >= 150_000, f'{path.name}: {total} iterations'
    assert f'{total:,} iterations' in path.read_text()  # the header comment says so


def test_prepare_data_flags():
    """prepare_data.sh packs I128 then computes its moments, with the 2019 script's flags."""
    commands = script_commands(SCRIPTS / 'utils' / 'prepare_data.sh')
    assert commands == [
        ['make_hdf5.py', '--dataset', 'I128', '--batch_size', '256', '--data_root', 'data'],
        ['calculate_inception_moments.py', '--dataset', 'I128_hdf5', '--data_root', 'data']]


def test_demo_launcher_commands_parse():
    """The demo packs with make_hdf5.py, trains with train.py, samples and plots."""
    import make_hdf5
    commands = {c[0]: c[1:] for c in script_commands(SCRIPTS / 'launch_demo.sh')}
    assert list(commands) == ['run_lock.py', 'make_hdf5.py', 'train.py', 'sample.py',
                              'logs/plot_logs.py']
    assert make_hdf5.parse_args(commands['make_hdf5.py']).make_demo == 'data/demo'
    assert commands['run_lock.py'] == ['weights/demo']  # no demo is training: then rm -rf
    config = vars(utils.prepare_parser().parse_args(commands['train.py']))
    assert config['dataset'] == 'data/demo_32.hdf5' and config['experiment_name'] == 'demo'
    assert config['ema'] and config['use_ema'] and config['test_every'] == 0
    assert commands['sample.py'][:2] == ['--experiment_name', 'demo']


def test_gpu_checks_smoke_run_writes_every_figure(tmp_path):
    """scripts/gpu_checks.sh on a tiny model (GPU_CHECKS_SMOKE=1): every step runs and the
    report holds each figure, so a GPU lease is never spent on a broken script."""
    import subprocess
    out = tmp_path / 'out'
    env = {**os.environ, 'GPU_CHECKS_SMOKE': '1', 'OUT': str(out), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(['bash', str(SCRIPTS / 'gpu_checks.sh')], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / 'summary.txt').read_text()
    for figure in ('training step: BigGAN-32', 'fp32', 'bf16_cl', 'fastest:', 'HDF5 loader',
                   'sampling (G in eval', 'IS/FID test of 20 samples', 'profile (bf16_cl)'):
        assert figure in summary, (figure, summary)
    assert not re.search(r'^== .*: (exit \d+|skipped, )', (out / 'log.txt').read_text(), re.M)
    files = sorted(p.name for p in out.iterdir())
    assert files == ['bench.json', 'log.txt', 'profile.json', 'sample.json', 'summary.json',
                     'summary.txt']  # at most 8 files come back from a device run
