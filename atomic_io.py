"""Durable writes of a run's files: write under a temporary name, fsync, then rename, so a
kill never leaves half a file; a failed write removes its file and says a full disk in words;
copies are independent files (a reflink or a byte copy, never a hard link).

checkpoints.py commits its checkpoint sets with these; flags.py and the logs write through
atomic_write.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Any, Callable

import torch

try:
    import fcntl
except ImportError:  # Windows: copies are plain copies
    fcntl = None


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary name, fsync, then rename: a kill never leaves half a file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str, write: Callable, mode: str = 'wb') -> None:
    """`write(file)` to a temporary name, fsync, then rename onto `path`."""
    tmp = f'{path}.tmp{os.getpid()}'
    write_synced(tmp, write, mode)
    os.replace(tmp, path)


def write_synced(path: str, write: Callable, mode: str = 'wb') -> None:
    """Write a file and fsync it. A failure removes it and names it, and a full disk is said
    in words (torch reports one as an 'enforce fail' RuntimeError)."""
    try:
        with open(path, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            os.remove(path)
        full = (getattr(err, 'errno', None) == errno.ENOSPC
                or shutil.disk_usage(os.path.dirname(path) or '.').free < 64 * 2 ** 20)
        what = 'disk full' if full else f'{type(err).__name__}: {err}'
        target = re.sub(r'(\.new|\.tmp\d*)$', '', path)  # the file this write was for
        raise OSError(errno.ENOSPC if full else getattr(err, 'errno', None),
                      f'{what} while saving {target}; the previous checkpoint is intact (this '
                      f'save was not committed)') from err


FICLONE = 0x40049409  # Linux ioctl: make `target` share `source`'s blocks copy-on-write


def copy_synced(source: str, target: str) -> None:
    """An independent copy of a written file, fsynced: a reflink where the filesystem has them
    (btrfs, XFS: no second write, and a later change to either file never reaches the other),
    else a byte copy. Never a hard link: damage to one name must not be damage to both."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(target)

    def copy(dst) -> None:
        with open(source, 'rb') as src:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            except (AttributeError, OSError):  # no fcntl (Windows), or no reflinks here
                shutil.copyfileobj(src, dst, 1 << 24)
    write_synced(target, copy)
