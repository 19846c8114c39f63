"""The command line of every script: no flag abbreviations, and user errors as one clean
`error:` line (tracebacks with BIGGAN_DEBUG=1)."""
import importlib.util
import os
import subprocess
import sys

import pytest

import bench
import calculate_inception_moments
import make_hdf5
import sample
import utils
from helpers import ROOT

_spec = importlib.util.spec_from_file_location('tfhub_converter', ROOT / 'TFHub' / 'converter.py')
converter = importlib.util.module_from_spec(_spec)  # TFHub/ is a folder, not a package
sys.modules['tfhub_converter'] = converter  # dataclasses look their module up there
_spec.loader.exec_module(converter)


def parse_train(argv):
    return utils.prepare_parser().parse_args(argv)


def parse_plot_logs(argv, monkeypatch):
    _spec = importlib.util.spec_from_file_location('plot_logs', ROOT / 'logs' / 'plot_logs.py')
    plot_logs = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(plot_logs)
    monkeypatch.setattr(sys, 'argv', ['plot_logs.py', *argv])
    plot_logs.main()


@pytest.mark.parametrize('script, parse, argv, prefix', [
    ('train.py', parse_train, ['--num_epoch', '1'], '--num_epoch'),
    ('sample.py', lambda argv: sample.build_parser().parse_args(argv), ['--sample_rand'],
     '--sample_rand'),
    ('make_hdf5.py', make_hdf5.parse_args, ['--resol', '32'], '--resol'),
    ('calculate_inception_moments.py',
     lambda argv: calculate_inception_moments.prepare_parser().parse_args(argv),
     ['--batch', '8'], '--batch'),
    ('TFHub/converter.py', converter.parse_args, ['--dump', 'x.npz', '--resol', '128'],
     '--resol'),
    ('bench.py', lambda argv: bench.prepare_parser().parse_args(argv), ['--bench_iter', '3'],
     '--bench_iter'),
])
def test_every_script_refuses_abbreviated_flags(script, parse, argv, prefix, capsys):
    """argparse took `--num_epoch 1` as --num_epochs although unknown flags are errors: a
    typo could silently set another flag."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    assert f'unrecognized arguments: {prefix}' in capsys.readouterr().err, script


def test_plot_logs_refuses_abbreviated_flags(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        parse_plot_logs(['--logs', 'logs', '--experiment_name', 'x'], monkeypatch)
    assert 'unrecognized arguments: --logs' in capsys.readouterr().err


def run_script(script: str, *argv: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, utils.DEBUG_ENV: '1' if debug else ''}
    return subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('script, argv, message', [
    ('train.py', ['--dataset', '{tmp}/missing.hdf5'], 'dataset path {tmp}/missing.hdf5 does '
                                                      'not exist'),
    ('make_hdf5.py', ['--dataset', '{tmp}/missing', '--resolution', '32'],
     'dataset path {tmp}/missing does not exist'),
    ('calculate_inception_moments.py', ['--dataset', '{tmp}/missing.hdf5'],
     'dataset path {tmp}/missing.hdf5 does not exist'),
])
def test_user_errors_are_one_clean_line_and_tracebacks_are_opt_in(tmp_path, script, argv,
                                                                   message):
    """train.py and make_hdf5.py printed a traceback before such errors; sample.py did not."""
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = run_script(script, *argv)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f'{script}: error: {message.format(tmp=tmp_path)}',
        f'({utils.DEBUG_ENV}=1 shows where it was raised)']
    debug = run_script(script, *argv, debug=True)
    assert debug.returncode == 1 and 'Traceback (most recent call last)' in debug.stderr
