"""One writer per run folder (run_lock.py): a second train.py on a running run is refused
naming the first, a dead holder's lock is taken over, another host's is not, and under
torchrun every rank stops with rank 0's reason."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import run_lock
import utils
from helpers import ROOT, write_hdf5

FLAGS = ['--G_ch', '4', '--D_ch', '4', '--dim_z', '16', '--shared_dim', '8', '--G_shared',
         '--hier', '--G_attn', '0', '--D_attn', '0', '--batch_size', '4', '--num_D_steps', '1',
         '--num_workers', '0', '--test_every', '0', '--shuffle', '--log_every', '1',
         '--experiment_name', 'tiny']


def start_train(root: Path, *flags: str) -> subprocess.Popen:
    """train.py in a process of its own (stdout discarded, stderr kept)."""
    return subprocess.Popen([sys.executable, str(ROOT / 'train.py'), '--base_root', str(root),
                             *flags], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until `path` exists (failing if the process ends first)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, f'{path} did not appear'
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM (train.py saves and exits 0) and return its stderr."""
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err[-3000:]
    return err


def logged_iterations(root: Path) -> list[int]:
    lines = (root / 'logs' / 'tiny' / 'G_loss.log').read_text().splitlines()
    return [int(line.split(':')[0]) for line in lines]


@pytest.fixture
def processes():
    """The train.py processes a test starts; any still running at its end is killed (they
    train for thousands of epochs unless stopped)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize('order', ['resume_after_first_save', 'same_moment'])
def test_a_second_writer_is_refused_and_the_first_run_stays_whole(tmp_path, order, processes):
    """Before: both processes ran to the end, the copies ended up the second's and the logs
    interleaved (1 2 4 3 4 5 5 ...), or both died on each other's .new files."""
    data = write_hdf5(tmp_path / 'tiny.hdf5')
    root = tmp_path / 'run'
    flags = ['--dataset', str(data), *FLAGS, '--num_epochs', '5000']
    if order == 'resume_after_first_save':
        first = start_train(root, *flags, '--save_every', '3', '--G_lr', '2e-4')
        processes.append(first)
        wait_for(root / 'weights' / 'tiny' / 'state_dict.pth', first)
        second = start_train(root, '--experiment_name', 'tiny', '--resume', '--G_lr', '1e-2')
    else:  # both new runs at once: whichever locks first runs, the other is refused
        first = start_train(root, *flags, '--save_every', '1000', '--G_lr', '2e-4')
        processes.append(first)
        second = start_train(root, *flags, '--save_every', '1000', '--G_lr', '2e-4')
    processes.append(second)
    deadline = time.time() + 300
    while first.poll() is None and second.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    err = loser.communicate(timeout=60)[1]
    assert loser.returncode == 1 and winner.poll() is None, err[-3000:]
    assert order == 'same_moment' or loser is second
    assert (f'is being written by another process: PID {winner.pid} on host '
            f'{socket.gethostname()}') in err
    assert 'Traceback' not in err and 'this one stops here and has changed nothing' in err

    stop(winner)
    weights = root / 'weights' / 'tiny'
    saved = utils.load_file(str(weights / 'state_dict.pth'))
    itrs = logged_iterations(root)
    assert itrs == list(range(1, saved['itr'] + 1))  # one writer's iterations, in order
    assert saved['config']['G_lr'] == 2e-4
    assert json.loads((weights / 'config.json').read_text())['G_lr'] == 2e-4
    assert not [f for f in os.listdir(weights) if f.endswith(utils.STAGED) or '.tmp' in f]
    assert not (weights / run_lock.LOCK_FILE).exists()  # released at the end


KILLED_HOLDER = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, {root!r})
    import run_lock
    lock = run_lock.acquire(sys.argv[1])
    if os.fork() == 0:  # a loader worker, say, that outlives its parent for a while
        time.sleep(30)
        os._exit(0)
    os.kill(os.getpid(), signal.SIGKILL)
''')


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    """kill -9 leaves the lock file behind, but not the lock: the next start takes it over
    at once, even while a forked child of the dead holder still runs."""
    script = tmp_path / 'holder.py'
    script.write_text(KILLED_HOLDER.format(root=str(ROOT)))
    run_dir = tmp_path / 'run'
    proc = subprocess.run([sys.executable, str(script), str(run_dir)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    holder = json.loads((run_dir / run_lock.LOCK_FILE).read_text())
    lock = run_lock.acquire(str(run_dir))
    try:
        assert (f"taking over the lock of PID {holder['pid']} on host {socket.gethostname()}"
                in capsys.readouterr().out)
        assert json.loads((run_dir / run_lock.LOCK_FILE).read_text())['pid'] == os.getpid()
        with pytest.raises(run_lock.RunLockedError, match=f'PID {os.getpid()} on host'):
            run_lock.acquire(str(run_dir))  # held: a second acquire is refused
    finally:
        lock.release()
    assert os.listdir(run_dir) == []


def test_a_lock_of_another_host_is_refused_saying_how_to_clear_it(tmp_path):
    """A process of another node cannot be checked from here (flock may not reach across a
    shared filesystem): refuse, with its age and the file to delete if that node is gone."""
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    lock_file = run_dir / run_lock.LOCK_FILE
    lock_file.write_text(json.dumps({'host': 'gpu-node-7', 'pid': 4242, 'started': 0,
                                     'command': ['train.py', '--resume']}))
    hours_ago = time.time() - 3 * 3600
    os.utime(lock_file, (hours_ago, hours_ago))
    with pytest.raises(run_lock.RunLockedError) as err:
        run_lock.acquire(str(run_dir))
    message = str(err.value)
    assert 'PID 4242 on host gpu-node-7' in message and 'refreshed 3.0 h ago' in message
    assert 'If that process is gone' in message and f'delete {lock_file}' in message
    assert json.loads(lock_file.read_text())['host'] == 'gpu-node-7'  # left as it was
    lock_file.unlink()
    run_lock.acquire(str(run_dir)).release()


def test_a_failed_start_in_a_new_folder_leaves_no_folder(tmp_path):
    run_dir = tmp_path / 'run'
    with run_lock.acquire(str(run_dir)):
        assert (run_dir / run_lock.LOCK_FILE).is_file()
    assert not run_dir.exists()


TORCHRUN_TRAIN = textwrap.dedent('''
    import sys
    sys.path.insert(0, {root!r})
    import flags, train
    sys.exit(flags.run_cli(lambda: train.main(sys.argv[1:]), 'train.py'))
''')


def test_under_torchrun_every_rank_stops_with_rank_0s_reason(tmp_path):
    """Rank 0 alone takes the lock; when it cannot, rank 1 must not wait for it at the next
    collective (for an hour) but stop too, saying why."""
    data = write_hdf5(tmp_path / 'tiny.hdf5')
    script = tmp_path / 'train_cli.py'
    script.write_text(TORCHRUN_TRAIN.format(root=str(ROOT)))
    root = tmp_path / 'run'
    run_dir = root / 'weights' / 'tiny'
    with run_lock.acquire(str(run_dir)):  # this test process is the other writer
        proc = subprocess.run(
            [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
             str(script), '--dataset', str(data), '--base_root', str(root), *FLAGS,
             '--num_epochs', '1'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f'is being written by another process: PID {os.getpid()}' in proc.stderr
    assert f'rank 0 could not lock {run_dir}' in proc.stderr
    assert not run_dir.exists()  # nothing was written
