"""Tests of node_memory.py: --load_in_mem holds the images once per node, shared by its DDP
ranks and their loader workers, and says before loading when they do not fit."""
import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, get_worker_info

import node_memory
from datasets import HDF5Dataset, get_data_loaders
from helpers import ROOT

N, R = 1024, 128  # 50 MB of images: a copy stands out from a process's memory noise
NBYTES = N * 3 * R * R


def chunked_hdf5(path: Path, compression: str | None = None) -> Path:
    """make_hdf5.py's layout, chunks of 100 images, patterned images (each its own)."""
    imgs = (np.arange(N * 3 * R * R, dtype=np.uint64) * 2654435761 >> 13).astype(np.uint8)
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=imgs.reshape(N, 3, R, R), chunks=(100, 3, R, R),
                         compression=compression)
        f.create_dataset('labels', data=np.arange(N, dtype=np.int64) % 7)
        f.attrs['n_classes'], f.attrs['resolution'] = 7, R
    return path


@pytest.fixture(scope='module')
def big(tmp_path_factory) -> Path:
    return chunked_hdf5(tmp_path_factory.mktemp('node_memory') / 'big.hdf5')


def file_images(path: Path) -> np.ndarray:
    with h5py.File(path, 'r') as f:
        return f['imgs'][()]


def shmem_bytes() -> int:
    """The node's shared memory in use (tmpfs, memfd, SysV), from /proc/meminfo."""
    line = next(x for x in Path('/proc/meminfo').read_text().splitlines()
                if x.startswith('Shmem:'))
    return int(line.split()[1]) * 1024


# ----------------------------------------------------------------------------- one process

@pytest.mark.parametrize('compression', [None, 'lzf'])
def test_the_shared_array_is_the_file_read_only_and_pickles_by_reference(tmp_path, compression):
    path = chunked_hdf5(tmp_path / 'x.hdf5', compression)
    imgs = node_memory.load_hdf5(path)
    assert isinstance(imgs, node_memory.NodeArray)
    assert np.array_equal(imgs.array, file_images(path)) and imgs.shape == (N, 3, R, R)
    with pytest.raises(ValueError, match='read-only'):
        imgs.array[0, 0, 0, 0] = 1
    # Sealed: not even the process that filled it can write to the memfd.
    with pytest.raises(PermissionError):
        os.write(imgs.fd, b'x')
    payload = pickle.dumps(imgs)  # what a spawned loader worker receives
    assert len(payload) < 1000 < NBYTES
    again = pickle.loads(payload)
    assert again.inode == imgs.inode and again.fd != imgs.fd
    assert np.array_equal(again.array, imgs.array)
    assert os.readlink(f'/proc/self/fd/{imgs.fd}').startswith('/memfd:x.hdf5:imgs')


def _worker_maps(inode: tuple[int, int], worker_id: int) -> None:
    """worker_init_fn: the worker's images are the parent's memfd, not a copy."""
    imgs = get_worker_info().dataset.imgs
    assert isinstance(imgs, node_memory.NodeArray) and imgs.inode == inode


@pytest.mark.parametrize('context', ['fork', 'spawn'])
def test_loader_workers_map_the_memfd_and_yield_todays_batches(big, context):
    kw = dict(batch_size=64, seed=3, augment=True, shuffle=True)
    reference = [(x, y) for x, y in get_data_loaders(str(big), num_workers=0, **kw)[0]]
    loader = get_data_loaders(str(big), num_workers=0, load_in_mem=True, **kw)[0]
    assert len(pickle.dumps(loader.dataset)) < NBYTES / 100
    workers = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                         num_workers=2, multiprocessing_context=context,
                         worker_init_fn=partial(_worker_maps, loader.dataset.imgs.inode),
                         generator=loader.generator, drop_last=loader.drop_last)
    got = list(workers)
    assert len(got) == len(reference) == N // 64
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(reference, got))


def test_too_big_for_the_node_fails_before_loading_with_the_sizes(big, monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError('loaded before checking the memory')
    monkeypatch.setattr(node_memory, 'fill_memfd', load)
    monkeypatch.setattr(node_memory, 'available_memory', lambda: (40_000_000, 'MemAvailable'))
    want = (r'--load_in_mem: .*big\.hdf5 holds 0\.05 GB of images; its one process would hold '
            r'them, 0\.05 GB in all, but node .+ has 0\.04 GB available \(MemAvailable\), of '
            r'which 10% is kept for training\. Drop --load_in_mem')
    with pytest.raises(ValueError, match=want):
        HDF5Dataset(big, load_in_mem=True)
    # 50 MB with 10% to spare needs 56 MB available: 55 MB is refused, 56 MB loads.
    monkeypatch.setattr(node_memory, 'available_memory', lambda: (55_000_000, 'MemAvailable'))
    with pytest.raises(ValueError, match='0.055 GB available'):
        node_memory.load_hdf5(big)
    monkeypatch.setattr(node_memory, 'available_memory', lambda: (56_000_000, 'MemAvailable'))
    with pytest.raises(OSError, match='AssertionError: loaded before'):
        node_memory.load_hdf5(big)


@pytest.mark.parametrize('version', ['v2', 'v1'])
def test_available_memory_is_capped_by_the_cgroup_limit(tmp_path, monkeypatch, version):
    proc, cgroup = tmp_path / 'proc', tmp_path / 'cgroup'
    (proc / 'self').mkdir(parents=True)
    (proc / 'meminfo').write_text('MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n')
    monkeypatch.setattr(node_memory, 'PROC', proc)
    monkeypatch.setattr(node_memory, 'CGROUP', cgroup)
    if version == 'v2':
        (proc / 'self/cgroup').write_text('0::/job/step\n')
        files, inactive, top = ('memory.max', 'memory.current'), 'inactive_file', cgroup
    else:
        (proc / 'self/cgroup').write_text('5:cpu:/\n4:memory:/job/step\n')
        files = ('memory.limit_in_bytes', 'memory.usage_in_bytes')
        inactive, top = 'total_inactive_file', cgroup / 'memory'
    for folder, limit, usage in [(top / 'job/step', 2_000_000_000, 1_500_000_000),
                                 (top / 'job', 3_000_000_000, 2_900_000_000), (top, None, 0)]:
        folder.mkdir(parents=True, exist_ok=True)
        no_limit = 'max' if version == 'v2' else str(2**63 - 4096)
        (folder / files[0]).write_text(f'{limit or no_limit}\n')
        (folder / files[1]).write_text(f'{usage}\n')
        (folder / 'memory.stat').write_text(f'anon 5\n{inactive} 100000000\n')
    # The parent's 100 MB of room (plus 100 MB of dropable cache) binds, not the child's 600 MB.
    assert node_memory.available_memory() == (200_000_000, 'its cgroup memory limit less usage')
    (top / 'job' / files[0]).write_text(no_limit)
    assert node_memory.available_memory()[0] == 600_000_000
    (top / 'job/step' / files[0]).write_text(no_limit)
    assert node_memory.available_memory() == (8_192_000_000, 'MemAvailable')


def test_without_memfd_each_process_holds_its_own_copy_with_a_warning(big, monkeypatch):
    monkeypatch.delattr(os, 'memfd_create')
    with pytest.warns(UserWarning, match=r'no memfd_create or /proc, so each of the 1 '
                                         r'processes holds its own copy .* \(0\.05 GB each\)'):
        imgs = node_memory.load_hdf5(big)
    assert isinstance(imgs, np.ndarray) and np.array_equal(imgs, file_images(big))


def test_the_memory_is_freed_when_its_last_process_is_killed(big):
    """No name to clean up: kill -9 of the only holder gives the pages back."""
    script = (f'import os, sys, time; sys.path.insert(0, {str(ROOT)!r}); import node_memory; '
              f'a = node_memory.load_hdf5({str(big)!r}); print(os.getpid(), a.fd, flush=True); '
              f'time.sleep(60)')
    before = shmem_bytes()
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    try:
        pid, fd = proc.stdout.readline().split()
        held = shmem_bytes() - before
        link = os.readlink(f'/proc/{pid}/fd/{fd}')
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while shmem_bytes() - before > NBYTES / 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert link == '/memfd:big.hdf5:imgs (deleted)'  # not a file under /dev/shm
    assert held > 0.9 * NBYTES and shmem_bytes() - before < NBYTES / 2


# ----------------------------------------------------------------------------- DDP ranks

RANK = textwrap.dedent('''
    """One rank of a 2-process gloo group (started with torchrun's env): each scenario's
    outcome as JSON."""
    import hashlib, json, os, sys, warnings
    sys.path.insert(0, {root!r})
    import numpy as np
    import torch.distributed as dist
    dist.init_process_group('gloo')
    rank, (path, out) = dist.get_rank(), sys.argv[1:3]

    def rss_anon():
        status = open('/proc/self/status').read().split('RssAnon:')[1]
        return int(status.split()[0]) * 1024

    def mapping(array):
        """(device, inode, name) of the mapping that holds the array's first byte."""
        address = array.__array_interface__['data'][0]
        for line in open('/proc/self/maps'):
            span, _, _, dev, inode, *name = line.split()
            lo, hi = (int(a, 16) for a in span.split('-'))
            if lo <= address < hi:
                return [dev, int(inode), ' '.join(name)]

    def digest(array):
        return hashlib.sha1(np.ascontiguousarray(array)).hexdigest()

    result = {{}}
    try:  # Only datasets' public API: the same scenario runs on the code before node_memory.
        import datasets
        before = rss_anon()
        loader = datasets.get_data_loaders(path, load_in_mem=True, num_workers=0, batch_size=4,
                                           shuffle=True, seed=5, rank=rank, world_size=2)[0]
        imgs = np.asarray(loader.dataset.imgs)
        result['share'] = dict(anon_growth=rss_anon() - before, mapping=mapping(imgs),
                               digest=digest(imgs), labels=next(iter(loader))[1].tolist())
    except Exception as e:
        result['share'] = repr(e)

    import node_memory
    real = {{name: getattr(node_memory, name) for name in
            ('node_id', 'available_memory', 'fill_memfd', 'attach')}}

    def fail(error, *args, **kwargs):
        raise error

    for scenario in ('attach_fails', 'node_too_small', 'too_big', 'load_fails'):
        vars(node_memory).update(real)
        filled = []
        if scenario == 'node_too_small':  # the loader's figure speaks for the node
            node_memory.available_memory = lambda: (10**6 * (1 + 99 * rank), 'MemAvailable')
        elif scenario != 'attach_fails':  # two nodes of one rank each
            node_memory.node_id = lambda: f'node{{rank}}'
            node_memory.fill_memfd = lambda *a, **k: filled.append(rank) or real['fill_memfd'](
                *a, **k)
        if rank == 1:
            if scenario == 'attach_fails':
                node_memory.attach = lambda *a: fail(PermissionError(13, 'Permission denied'))
            elif scenario == 'too_big':
                node_memory.available_memory = lambda: (10**6, 'MemAvailable')
            else:
                node_memory.fill_memfd = lambda *a, **k: fail(OSError(28, 'No space left'))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                imgs = node_memory.load_hdf5(path)
                outcome = dict(inode=imgs.inode, digest=digest(imgs.array))
            except Exception as e:
                outcome = dict(error=[type(e).__name__, str(e)])
        outcome.update(warnings=[str(w.message) for w in caught], filled=filled)
        result[scenario] = outcome
    with open(os.path.join(out, f'rank{{rank}}.json'), 'w') as f:
        json.dump(result, f)
''')


def run_ranks(tmp_path: Path, data: Path, root: Path = ROOT) -> list[dict]:
    """The RANK script in 2 processes with the env torchrun gives them; each rank's JSON."""
    script = tmp_path / 'rank.py'
    script.write_text(RANK.format(root=str(root)))
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, str(script), str(data), str(tmp_path)], cwd=root,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port),
             'RANK': str(r), 'LOCAL_RANK': str(r), 'WORLD_SIZE': '2', 'LOCAL_WORLD_SIZE': '2',
             'OMP_NUM_THREADS': '1'}) for r in range(2)]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-3000:]
    return [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]


@pytest.fixture(scope='module')
def ranks(big, tmp_path_factory) -> list[dict]:
    return run_ranks(tmp_path_factory.mktemp('ranks'), big)


def test_two_ranks_share_one_copy_of_the_images(big, ranks):
    """Issue 24 item 8: before, each rank read the file into an array of its own."""
    r0, r1 = (r['share'] for r in ranks)
    assert isinstance(r0, dict) and isinstance(r1, dict), (r0, r1)
    want = hashlib.sha1(file_images(big)).hexdigest()
    assert r0['digest'] == r1['digest'] == want
    # One memfd mapped by both: same device and inode, and no private copy in either rank.
    assert r0['mapping'] == r1['mapping'] and r0['mapping'][1] != 0, (r0, r1)
    assert r0['mapping'][2] == '/memfd:big.hdf5:imgs (deleted)'
    assert r0['anon_growth'] < NBYTES / 4 and r1['anon_growth'] < NBYTES / 4, (r0, r1)
    # Today's data order: each rank's first batch is the one it reads without load_in_mem.
    for rank, r in enumerate((r0, r1)):
        loader = get_data_loaders(str(big), num_workers=0, batch_size=4, shuffle=True, seed=5,
                                  rank=rank, world_size=2)[0]
        assert r['labels'] == next(iter(loader))[1].tolist()


def test_a_rank_that_cannot_open_the_shared_copy_reads_its_own(big, ranks):
    r0, r1 = (r['attach_fails'] for r in ranks)
    want = hashlib.sha1(file_images(big)).hexdigest()
    assert r0['digest'] == r1['digest'] == want and r0['inode'] != r1['inode']
    assert r0['warnings'] == [
        f'--load_in_mem: 1 rank cannot open the shared copy of {big} on their node (rank 1: '
        f'PermissionError: [Errno 13] Permission denied); each holds its own copy instead, '
        f'0.05 GB more per rank']
    assert r1['warnings'] == []  # rank 0 speaks for all


def test_both_ranks_say_what_the_shared_copy_needs_and_what_it_cost_before(ranks):
    r0, r1 = (r['node_too_small'] for r in ranks)
    assert r0['error'] == r1['error'] and r0['error'][0] == 'ValueError'
    assert ('holds 0.05 GB of images; its 2 ranks would share one copy (before, each rank held '
            'its own: 2 x 0.05 GB), 0.05 GB in all, but node ') in r0['error'][1]
    assert ' has 0.001 GB available (MemAvailable)' in r0['error'][1]


def test_every_rank_raises_when_one_node_lacks_the_memory_and_none_loads(ranks):
    r0, r1 = (r['too_big'] for r in ranks)
    assert r0['error'] == r1['error'] and r0['error'][0] == 'ValueError'
    assert 'node node1 has 0.001 GB available (MemAvailable)' in r0['error'][1]
    assert r0['filled'] == r1['filled'] == []


def test_every_rank_raises_when_one_nodes_loader_fails(big, ranks):
    r0, r1 = (r['load_fails'] for r in ranks)
    assert r0['error'] == r1['error'] == [
        'OSError', f'--load_in_mem: rank 1 could not load 0.05 GB into shared memory '
                        f'{big}: OSError: [Errno 28] No space left']
