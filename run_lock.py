"""One writer per run folder: train.py holds `<weights_root>/<experiment>/train.lock` while it
runs, so that a second process started on the same run (a resume typed in another shell, the
same launcher started twice) is refused before it writes anything, instead of interleaving its
checkpoints and logs with the first one's.

The lock is an exclusive `flock` on that file, which the kernel drops when its process dies,
however it dies (kill -9 included): a lock left by a dead process on this host is taken over
by the next start. The file also names its holder (host, PID, start time, command) for the
error message, and the holder refreshes the file's mtime every HEARTBEAT_S seconds: on a
shared filesystem a process of another host cannot be checked, so a lock naming another
host is refused with how long ago it was last refreshed and how to clear it by hand.
Under torchrun only rank 0 holds it.

    lock = run_lock.acquire('weights/my_run')   # RunLockedError if another process has it
    try:
        ...                                     # train
    finally:
        lock.release()
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from typing import Optional

try:
    import fcntl
except ImportError:  # Windows: no flock; a holder is then checked by its PID alone
    fcntl = None

LOCK_FILE = 'train.lock'
HEARTBEAT_S = 60.0  # how often a holder refreshes the lock file's mtime

# The fds of the locks this process holds. A forked child (a DataLoader worker) shares the
# parent's flock through its copy of the fd and would keep a killed parent's lock alive until
# it noticed and exited: children close their copies at once.
_held_fds: set[int] = set()


def _close_in_child() -> None:
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLockedError(RuntimeError):
    """Another process is writing the run folder."""


def _pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_holder(fd: int) -> dict:
    """The holder record in the lock file ({} if empty or not ours)."""
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        data = b''
        while chunk := os.read(fd, 65536):
            data += chunk
        holder = json.loads(data.decode())
        if isinstance(holder, dict):
            return holder
    return {}


def _same_file(path: str, fd: int) -> bool:
    """Whether `path` still names the open file `fd` (a releasing holder unlinks it)."""
    try:
        st, fst = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _age(path: str) -> str:
    """How long ago the lock file was last refreshed, in words."""
    try:
        seconds = max(time.time() - os.stat(path).st_mtime, 0.0)
    except OSError:
        return 'unknown'
    if seconds < 120:
        return f'{seconds:.0f} s ago'
    if seconds < 7200:
        return f'{seconds / 60:.0f} min ago'
    return f'{seconds / 3600:.1f} h ago'


def _describe(holder: dict) -> str:
    """'PID 123 on host gpu7 (started 2026-12-06 10:00:00: python train.py ...)'."""
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
    command = ' '.join(holder.get('command', []))
    if len(command) > 200:
        command = command[:200] + '...'
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {started}: {command})")


def _busy_message(path: str, holder: dict, this_host: str) -> str:
    """Why the run cannot be started here, and what to do."""
    run_dir = os.path.dirname(path)
    lines = [f'{run_dir} is being written by another process: {_describe(holder)}; its lock '
             f'file {path} was last refreshed {_age(path)} (every {HEARTBEAT_S:.0f} s while '
             f'it runs).',
             'Two processes on one run folder would overwrite each other\'s checkpoints and '
             'interleave their logs, so this one stops here and has changed nothing. Wait for '
             'that run to end (or stop it: SIGTERM makes it save and exit), then --resume; or '
             'start this one under another --experiment_name.']
    if holder.get('host') and holder['host'] != this_host:
        lines.append(f"This host ({this_host}) cannot check a process of {holder['host']}. If "
                     f"that process is gone (its node was lost, or it was killed with its job) "
                     f"and nothing runs on this run any more, delete {path} and start again.")
    return '\n'.join(lines)


class RunLock:
    """The held lock of a run folder: refreshes its file every HEARTBEAT_S until released."""

    def __init__(self, path: str, fd: int, created_dir: bool):
        self.path, self.fd, self.created_dir = path, fd, created_dir
        _held_fds.add(fd)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name='run-lock-heartbeat',
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        """Touch the lock file now and then: its mtime tells other hosts this run is alive."""
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Remove the lock file and drop the lock (and a run folder this start made, if it
        stayed empty: a start that failed leaves no trace)."""
        if self.fd < 0:
            return
        self._stop.set()
        # Unlink before closing: a process that opened the file meanwhile finds, once it gets
        # the flock, that the path no longer names that file, and starts over.
        if _same_file(self.path, self.fd):
            with contextlib.suppress(OSError):
                os.remove(self.path)
        _held_fds.discard(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))  # only if empty

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: str, command: Optional[list[str]] = None) -> RunLock:
    """Hold the run folder's lock (creating the folder if needed), or raise RunLockedError
    naming the process that holds it. Prints a note when it takes over a dead holder's lock."""
    created_dir = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    this_host = socket.gethostname()
    try:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                held = _try_flock(fd)
                holder = _read_holder(fd)
                if held is False and not holder:  # the holder is writing its record now
                    time.sleep(0.2)
                    holder = _read_holder(fd)
                if held is False or _held_elsewhere(holder, this_host, held):
                    raise RunLockedError(_busy_message(path, holder, this_host))
                if held and not _same_file(path, fd):
                    os.close(fd)  # released (unlinked) while we waited: take the new file
                    continue
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            break
        if holder.get('pid') is not None:
            print(f'{run_dir}: taking over the lock of {_describe(holder)}, which no longer '
                  f'runs')
        _write_holder(fd, this_host, command)
    except BaseException:
        if created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)
        raise
    return RunLock(path, fd, created_dir)


def _try_flock(fd: int) -> Optional[bool]:
    """True: we hold the kernel lock; False: another process does; None: this system or
    filesystem has no flock (then the holder record decides)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _held_elsewhere(holder: dict, this_host: str, held: Optional[bool]) -> bool:
    """Whether the record names a holder that may still run, although we got the flock (or
    have none): another host's process (flock may not reach across hosts), or, without
    flock, a live PID of this host other than ours."""
    if not holder.get('pid'):
        return False
    if holder.get('host') != this_host:
        return True
    return held is None and holder['pid'] != os.getpid() and _pid_alive(int(holder['pid']))


def _write_holder(fd: int, host: str, command: Optional[list[str]]) -> None:
    """Record this process as the holder, durably."""
    record = {'host': host, 'pid': os.getpid(), 'started': time.time(),
              'command': list(command if command is not None else sys.argv)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    os.fsync(fd)


def check_unlocked(run_dir: str) -> None:
    """Raise RunLockedError if a live process holds the run folder (for scripts that are
    about to delete or replace it); changes nothing."""
    path = os.path.join(run_dir, LOCK_FILE)
    if not os.path.exists(path):
        return
    lock = acquire(run_dir)
    lock.release()


if __name__ == '__main__':  # `python run_lock.py RUN_DIR`: exit 1 if a process holds it
    try:
        check_unlocked(sys.argv[1])
    except RunLockedError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(1)
