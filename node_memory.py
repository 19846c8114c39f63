"""Arrays held once per node and shared by its processes: `--load_in_mem` under torchrun.

torchrun starts one process per GPU. Were each to read a 64 GB ILSVRC128.hdf5 into an array
of its own, an 8-GPU node would hold 8 copies. `load_hdf5` has one process per node (its
lowest rank) read the dataset into an anonymous shared-memory file (memfd_create), which the
node's other ranks open through /proc/<pid>/fd/<fd> and map read-only. A memfd
- has no name, so nothing is left to clean up: the kernel frees it when the last process
  closes and unmaps it, after kill -9 too;
- is not limited by the size of /dev/shm (64 MB by default in Docker);
- is sealed once filled: no process can write, grow or shrink it.
DataLoader workers inherit the mapping under fork; under spawn or forkserver (Python 3.14's
default on Linux) a `NodeArray` pickles as a reference to its memfd and maps it again.

Before anything is loaded, each node's free memory (MemAvailable, or its cgroup's limit where
smaller) is compared with the array's size; if it does not fit, every rank raises the same
ValueError. Without memfd_create or /proc (not Linux), or where a rank cannot open its
loader's /proc/<pid>/fd (e.g. ranks in separate containers), processes hold their own copies,
with a warning saying what that costs.

Example (on every rank: `load_hdf5` is a collective of the process group):
    imgs = load_hdf5('data/ILSVRC128.hdf5')  # NodeArray; imgs[i]: uint8 [3, 128, 128]
"""
import math
import mmap
import os
import re
import socket
import warnings
import weakref
from pathlib import Path

import h5py
import numpy as np
import torch.distributed as dist
from tqdm import tqdm

PROC, CGROUP = Path('/proc'), Path('/sys/fs/cgroup')
SPARE = 0.1  # of a node's available memory, kept for the ranks' models, workers and batches
READ_BYTES = 64 * 2**20  # per h5py read while filling: large reads, in whole HDF5 chunks


class NodeArray:
    """A read-only numpy array in a memfd; it pickles as a reference to the memfd, not bytes."""

    def __init__(self, fd: int, shape: tuple[int, ...], dtype: np.dtype | str):
        """Map `fd` read-only; the fd stays open while this object lives, for pickling."""
        self.fd, self.shape, self.dtype = fd, tuple(shape), np.dtype(dtype)
        st = os.fstat(fd)
        self.inode = (st.st_dev, st.st_ino)
        self._map = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
        self.array = np.frombuffer(self._map, self.dtype, math.prod(self.shape)).reshape(shape)
        weakref.finalize(self, os.close, fd)  # the mapping outlives it while arrays view it

    @property
    def nbytes(self) -> int:
        """Size of the array in bytes."""
        return self.array.nbytes

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index) -> np.ndarray:
        return self.array[index]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype)

    def __reduce__(self):
        # A spawned loader worker opens the memfd through this process, which keeps it open
        # for as long as the dataset lives: it maps the same pages, copying nothing.
        return attach, (f'/proc/{os.getpid()}/fd/{self.fd}', self.shape, self.dtype.str,
                        self.inode)


def attach(path: str, shape: tuple[int, ...], dtype: str,
           inode: tuple[int, int]) -> NodeArray:
    """The NodeArray of another process's memfd, opened at `path` (/proc/<pid>/fd/<fd>)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != tuple(inode):  # in another PID namespace, another process
            raise FileNotFoundError(f'{path} is not the shared array (another PID namespace?)')
        return NodeArray(fd, shape, dtype)
    except BaseException:
        os.close(fd)
        raise


def fill_memfd(path: str | os.PathLike, name: str = 'imgs', progress: bool = False
               ) -> NodeArray:
    """Dataset `name` of an HDF5 file in a new sealed memfd, read without a second copy."""
    import fcntl  # Linux only, as memfd_create is: here, so that Windows can import the module
    with h5py.File(path, 'r') as f:
        data = f[name]
        shape, dtype = data.shape, data.dtype
        nbytes = math.prod(shape) * dtype.itemsize
        fd = os.memfd_create(f'{Path(path).name}:{name}'[:200],
                             os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            # Allocate every page now: a node short of memory fails here with ENOSPC/ENOMEM,
            # not with SIGBUS or the OOM killer halfway through. (1 byte: mmap refuses 0.)
            os.posix_fallocate(fd, 0, max(nbytes, 1))
            with mmap.mmap(fd, max(nbytes, 1)) as writable:
                dest = np.frombuffer(writable, dtype, math.prod(shape)).reshape(shape)
                row = nbytes // max(len(data), 1)
                chunk = data.chunks[0] if data.chunks else 1
                step = max(chunk, READ_BYTES // max(row, 1) // chunk * chunk)
                with tqdm(total=nbytes, unit='B', unit_scale=True, disable=not progress,
                          desc=f'Loading {Path(path).name} into shared memory') as bar:
                    for start in range(0, len(data), step):
                        rows = np.s_[start:start + step]
                        data.read_direct(dest, rows, rows)
                        bar.update(min(step, len(data) - start) * row)
                del dest  # the mapping cannot close while an array views it
            # A writable mapping would block F_SEAL_WRITE: sealed only after it is closed.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            return NodeArray(fd, shape, dtype)
        except BaseException:
            os.close(fd)
            raise


# ----------------------------------------------------------------------------- the node

def node_id() -> str:
    """'host/boot_id/pid namespace': processes that can open each other's /proc/<pid>/fd."""
    parts = [socket.gethostname()]
    try:
        parts.append((PROC / 'sys/kernel/random/boot_id').read_text().strip())
        parts.append(os.readlink(PROC / 'self/ns/pid'))
    except OSError:
        pass  # no /proc: the host name alone
    return '/'.join(parts)


def available_memory() -> tuple[int | None, str]:
    """Bytes the node can still hold for this process, and where that figure comes from."""
    try:
        meminfo = (PROC / 'meminfo').read_text()
    except OSError:
        return None, 'unknown'
    found = re.search(r'^MemAvailable:\s+(\d+) kB', meminfo, re.M)
    if not found:  # kernels before 3.14
        return None, 'unknown'
    available = int(found[1]) * 1024
    room = cgroup_room()
    if room is not None and room < available:
        return room, 'its cgroup memory limit less usage'
    return available, 'MemAvailable'


def cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup and its parents (v2 or v1), if any."""
    try:
        lines = (PROC / 'self/cgroup').read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, rel = line.split(':', 2)
        if controllers == '':
            root, files = CGROUP, ('memory.max', 'memory.current', 'inactive_file')
        elif 'memory' in controllers.split(','):
            root = CGROUP / 'memory'
            files = ('memory.limit_in_bytes', 'memory.usage_in_bytes', 'total_inactive_file')
        else:
            continue
        folder = root / rel.lstrip('/')
        if not folder.is_dir():
            folder = root  # a container with its own cgroup namespace sees it at the root
        while True:
            rooms.append(_room(folder, *files))
            if folder == root:
                break
            folder = folder.parent
    rooms = [r for r in rooms if r is not None]
    return min(rooms) if rooms else None


def _room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """One cgroup's limit minus its usage, or None where it has no limit."""
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == 'max' or int(limit) >= 2**60:  # v1 writes "no limit" as ~2**63
            return None
        usage = int((folder / usage_file).read_text())
        stat = dict(line.split()[:2] for line in (folder / 'memory.stat').read_text().splitlines())
    except (OSError, ValueError):
        return None
    # Usage counts the page cache, which the kernel drops before it fails an allocation;
    # its inactive part is as good as free (Docker's `docker stats` subtracts it too).
    return int(limit) - usage + int(stat.get(inactive_key, 0))


# ----------------------------------------------------------------------------- loading

def load_hdf5(path: str | os.PathLike, name: str = 'imgs') -> NodeArray | np.ndarray:
    """Dataset `name` of an HDF5 file, held once per node and shared by its ranks.

    A collective: with a process group, every rank calls it, and an error on any rank is
    raised on all. Each node's lowest rank fills a memfd, the others map it (NodeArray).
    Where that cannot be done, processes read their own copies (a numpy array without
    memfd_create or /proc; a NodeArray of their own where /proc/<pid>/fd of the node's
    loader cannot be opened), with a warning on rank 0.
    """
    path, error = Path(path), None
    try:
        with h5py.File(path, 'r') as f:
            meta = (f[name].shape, f[name].dtype.str)
    except Exception as e:  # a node without the file must not leave the others waiting
        error, meta = e, f'{type(e).__name__}: {e}'
    me = node_id()
    peers = _all_gather((me, *available_memory(), meta))
    _raise_first(path, [p[3] for p in peers], 'could not read', error)
    shape, dtype = meta
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    rank = dist.get_rank() if _grouped() else 0
    shared = hasattr(os, 'memfd_create') and (PROC / 'self/fd').is_dir()
    nodes = _by_node([p[0] for p in peers])
    # Before any rank loads: every rank checks every node, so that all raise together.
    _check_fits(path, nbytes, peers, {n: 1 if shared else len(rs) for n, rs in nodes.items()})
    if not shared:
        if rank == 0:
            warnings.warn(f'--load_in_mem: this system has no memfd_create or /proc, so each of '
                          f'the {len(peers)} processes holds its own copy of {path} '
                          f'({_gb(nbytes)} GB each)', stacklevel=3)
        with h5py.File(path, 'r') as f:
            return f[name][()]
    return _share(path, name, shape, dtype, rank, loader=nodes[me][0])


def _share(path: Path, name: str, shape: tuple[int, ...], dtype: str, rank: int,
           loader: int) -> NodeArray:
    """The node's memfd: filled by its `loader` rank, mapped by the others (load_hdf5)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    offer, error = None, None
    if rank == loader:
        try:
            array = fill_memfd(path, name, progress=rank == 0 and nbytes >= 2**30)
            offer = (os.getpid(), array.fd, array.inode)
        except Exception as e:  # reported to every rank: none may wait for this one
            error, offer = e, f'{type(e).__name__}: {e}'
    offers = _all_gather(offer)
    _raise_first(path, offers, f'could not load {_gb(nbytes)} GB into shared memory', error)

    reason = None
    if rank != loader:
        pid, fd, inode = offers[loader]
        try:
            array = attach(f'/proc/{pid}/fd/{fd}', shape, dtype, inode)
        except OSError as e:
            reason = (node_id(), *available_memory(), f'{type(e).__name__}: {e}')
    alone = [(r, why) for r, why in enumerate(_all_gather(reason)) if why is not None]
    if alone:
        own = _by_node([why[0] for _, why in alone])
        _check_fits(path, nbytes, [why for _, why in alone],
                    {n: len(rs) for n, rs in own.items()}, unshared=True)
        if rank == 0:
            r, why = alone[0]
            warnings.warn(f'--load_in_mem: {_ranks(len(alone))} cannot open the shared copy of '
                          f'{path} on their node (rank {r}: {why[3]}); each holds its own copy '
                          f'instead, {_gb(nbytes)} GB more per rank', stacklevel=4)
        if reason is not None:
            array = fill_memfd(path, name)
    return array


def _raise_first(path: Path, reports: list, what: str, error: Exception | None) -> None:
    """On every rank, raise the first failure (a str) among the ranks' `reports` (an OSError:
    a missing file, or memory the node could not give)."""
    failed = [(r, why) for r, why in enumerate(reports) if isinstance(why, str)]
    if failed:
        r, why = failed[0]
        raise OSError(f'--load_in_mem: rank {r} {what} {path}: {why}') from error


def _grouped() -> bool:
    """Whether a torch.distributed process group is running."""
    return dist.is_available() and dist.is_initialized()


def _all_gather(obj: object) -> list:
    """`obj` of every rank, in rank order ([obj] without a process group)."""
    if not _grouped():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _by_node(node_ids: list[str]) -> dict[str, list[int]]:
    """Positions (ranks) per node, in order of each node's first position."""
    nodes: dict[str, list[int]] = {}
    for i, node in enumerate(node_ids):
        nodes.setdefault(node, []).append(i)
    return nodes


def _check_fits(path: Path, nbytes: int, peers: list[tuple], copies: dict[str, int],
                unshared: bool = False) -> None:
    """Raise the ValueError of the first node where `copies` of the array do not fit.

    `peers`: (node, available bytes, where that figure comes from, ...) per rank; each node's
    first rank speaks for it. `unshared`: the copies are of ranks that failed to attach.
    """
    for node, ranks in _by_node([p[0] for p in peers]).items():
        available, source = peers[ranks[0]][1:3]
        need = copies[node] * nbytes
        if available is None or need <= (1 - SPARE) * available:
            continue
        host, k = node.split('/')[0], len(ranks)
        if unshared:
            held = (f'{_ranks(copies[node])} there cannot open the node\'s shared copy and '
                    f'would each hold their own')
        elif copies[node] > 1:
            held = f'its {_ranks(k)} would each hold a copy (no memfd_create or /proc)'
        elif k > 1:
            held = (f'its {k} ranks would share one copy (before, each rank held its own: '
                    f'{k} x {_gb(nbytes)} GB)')
        else:
            held = 'its one process would hold them'
        raise ValueError(f'--load_in_mem: {path} holds {_gb(nbytes)} GB of images; {held}, '
                         f'{_gb(need)} GB in all, but node {host} has {_gb(available)} GB '
                         f'available ({source}), of which {SPARE:.0%} is kept for training. '
                         f'Drop --load_in_mem (an uncompressed HDF5 file reads fast enough '
                         f'from disk: repack a compressed one without --compression), or train '
                         f'on a node with more memory')


def _ranks(k: int) -> str:
    """'1 rank', '8 ranks'."""
    return f'{k} rank' + 's' * (k != 1)


def _gb(nbytes: float) -> str:
    """Bytes as GB: one decimal, or two significant digits below 1 GB."""
    gb = nbytes / 1e9
    return f'{gb:.1f}' if gb >= 1 else f'{gb:.2g}'
