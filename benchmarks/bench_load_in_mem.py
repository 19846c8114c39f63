"""Benchmark --load_in_mem under torchrun: the memory of 1, 2 and 4 gloo ranks (CPU) and their
loader workers holding one HDF5 file, and how long loading takes.

    python benchmarks/bench_load_in_mem.py --gb 2.8 --procs 1 2 4 --json load_in_mem.json
    # the code of another revision (a `git worktree add /tmp/before HEAD~1` checkout):
    python benchmarks/bench_load_in_mem.py --path /tmp/x.hdf5 --repo /tmp/before
    # loader workers started as Python 3.14 starts them on Linux (they unpickle the dataset):
    python benchmarks/bench_load_in_mem.py --path /tmp/x.hdf5 --start_method forkserver

Writes (or takes with --path) a file in make_hdf5.py's layout: `imgs` uint8 [N, 3, R, R] in
chunks of 500 images, `labels` int64 [N], attributes n_classes and resolution; the images are
a cheap pattern. For each process count it runs `python -m torch.distributed.run
--nproc_per_node=N` on this script's worker mode: every rank builds
`datasets.get_data_loaders(path, load_in_mem=True, num_workers=2, shuffle=True)` from --repo
(default: this checkout) and reads --batches batches, its workers started by --start_method.
Meanwhile this process samples every 0.1 s each process under the torchrun agent (the ranks
and their loader workers; not the agent itself) and keeps the peak of each sum over them:

    RSS        resident pages mapped by each process (VmRSS)
    PSS        each resident page divided by the number of processes mapping it (smaps_rollup)
    RssAnon    private (anonymous) resident pages; a fork's untouched copy-on-write pages count
               in parent and child alike
    RssShmem   resident shared-memory pages (tmpfs, memfd) a process maps
    node used  MemTotal - MemAvailable of the machine, less its value before the launch

Summed RSS and RssShmem count a shared page once for every process that has it mapped: 4
ranks that each read all of one 3 GB memfd show 12 GB of RSS while the machine holds 3 GB
(here each rank reads a few batches, so the other ranks' share shows only in part), and a
forked loader worker inherits its rank's private pages, so a 3 GB array counts again in the
RSS and RssAnon of each worker although nothing was copied. PSS splits each page among the
processes mapping it, so its sum is the memory really held; node used is the machine's own
count (it also sees any other process on the machine).
`load s` is the slowest rank's time to build its loader (loading the images included).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# benchmarks/ is a folder of scripts: the repository's modules import from its root.
ROOT = Path(__file__).resolve().parents[1]

FIELDS = ('rss', 'pss', 'rss_anon', 'rss_shmem', 'node_used')


def write_file(path: Path, n: int, resolution: int, chunk: int = 500) -> None:
    """A make_hdf5.py-layout file of n patterned images (each chunk shifted: cheap to make)."""
    import h5py
    base = np.random.default_rng(0).integers(0, 256, (chunk, 3, resolution, resolution),
                                             dtype=np.uint8)
    with h5py.File(path, 'w') as f:
        imgs = f.create_dataset('imgs', (n, 3, resolution, resolution), np.uint8,
                                maxshape=(None, 3, resolution, resolution),
                                chunks=(min(chunk, n), 3, resolution, resolution))
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            imgs[start:stop] = base[:stop - start] + np.uint8(start // chunk % 256)
        f.create_dataset('labels', data=np.arange(n, dtype=np.int64) % 1000,
                         chunks=(min(chunk, n),))
        f.attrs['n_classes'], f.attrs['resolution'] = 1000, resolution


def worker(args: argparse.Namespace) -> None:
    """One torchrun rank: build the load_in_mem loader, read batches, report the load time."""
    sys.path.insert(0, str(Path(args.repo).resolve()))
    import multiprocessing

    import torch.distributed as dist

    import datasets
    if args.start_method:
        multiprocessing.set_start_method(args.start_method)  # the DataLoader's default
    dist.init_process_group('gloo')
    rank, world_size = dist.get_rank(), dist.get_world_size()
    start = time.perf_counter()
    loader = datasets.get_data_loaders(str(args.path), load_in_mem=True, num_workers=2,
                                       shuffle=True, batch_size=args.batch_size, rank=rank,
                                       world_size=world_size)[0]
    load_s = time.perf_counter() - start
    batches = iter(loader)
    for _ in range(args.batches):
        next(batches)
    times = [None] * world_size
    dist.all_gather_object(times, load_s)  # also keeps every rank alive until all have read
    if rank == 0:
        print('BENCH ' + json.dumps(dict(load_s=max(times))), flush=True)
    dist.destroy_process_group()


def status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssShmem (bytes) of a process from /proc/<pid>/status, and its PSS."""
    out = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'RssAnon', 'RssShmem'):
                out[key] = int(value.split()[0]) * 1024
    with open(f'/proc/{pid}/smaps_rollup') as f:
        out['Pss'] = next(int(x.split()[1]) * 1024 for x in f if x.startswith('Pss:'))
    return out


def descendants(root: int) -> list[int]:
    """Every process below `root` (not root itself), from the parent pids in /proc."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    # Field 4 is the parent pid; the name (field 2) may hold spaces: cut after ')'.
                    parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while listing
    found, frontier = [], [root]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def node_used() -> int:
    """MemTotal - MemAvailable in bytes."""
    info = {}
    with open('/proc/meminfo') as f:
        for line in f:
            key, _, value = line.partition(':')
            info[key] = int(value.split()[0]) * 1024
    return info['MemTotal'] - info['MemAvailable']


def run(args: argparse.Namespace, procs: int) -> dict:
    """One torchrun of `procs` ranks, sampled every 0.1 s: peak sums, load and wall time."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
           f'--nproc_per_node={procs}', __file__, '--worker', '--path', str(args.path),
           '--repo', str(args.repo), '--batches', str(args.batches),
           '--batch_size', str(args.batch_size), '--start_method', args.start_method]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    before, peak = node_used(), dict.fromkeys(FIELDS, 0)
    start = time.perf_counter()
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=args.repo, env=env)
    while agent.poll() is None:
        sums = dict.fromkeys(FIELDS, 0)
        for pid in descendants(agent.pid):
            try:
                s = status(pid)
            except (OSError, StopIteration, KeyError):
                continue  # ended, or a kernel thread-like entry without the fields
            sums['rss'] += s.get('VmRSS', 0)
            sums['pss'] += s['Pss']
            sums['rss_anon'] += s.get('RssAnon', 0)
            sums['rss_shmem'] += s.get('RssShmem', 0)
        sums['node_used'] = node_used() - before
        peak = {k: max(peak[k], sums[k]) for k in FIELDS}
        time.sleep(0.1)
    out, err = agent.communicate()
    if agent.returncode:
        raise RuntimeError(f'torchrun with {procs} processes failed:\n{err[-3000:]}')
    line = next(x for x in out.splitlines() if x.startswith('BENCH '))
    return dict(procs=procs, **peak, **json.loads(line[len('BENCH '):]),
                wall_s=time.perf_counter() - start)


def main() -> None:
    """Write or take the file, run each process count, print a table and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--path', type=Path, default=None, help='HDF5 file (default: write one)')
    p.add_argument('--gb', type=float, default=2.8, help='size of the file to write, in GB')
    p.add_argument('--resolution', type=int, default=128, help='of the file to write')
    p.add_argument('--keep', action='store_true', help='keep the written file (its path printed)')
    p.add_argument('--procs', type=int, nargs='+', default=[1, 2, 4], help='ranks per run')
    p.add_argument('--repo', type=Path, default=ROOT, help='checkout whose datasets.py to run')
    p.add_argument('--batches', type=int, default=10, help='batches each rank reads')
    p.add_argument('--batch_size', type=int, default=64, help='per rank')
    p.add_argument('--start_method', default='', choices=['', 'fork', 'spawn', 'forkserver'],
                   help="loader workers' start method (default: Python's)")
    p.add_argument('--json', default='', help='also write the results here')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(ROOT))
    import bench
    tmp = None
    if args.path is None:
        tmp = tempfile.mkdtemp(prefix='bench_load_in_mem_')
        args.path = Path(tmp) / 'bench.hdf5'
        n = int(args.gb * 1e9 / (3 * args.resolution ** 2))
        start = time.perf_counter()
        write_file(args.path, n, args.resolution)
        print(f'Wrote {args.path} ({n:,} images of {args.resolution}x{args.resolution}) in '
              f'{time.perf_counter() - start:.0f} s')
    size = args.path.stat().st_size
    print(f'{args.path}: {size / 1e9:.2f} GB; code from {args.repo}; loader workers started '
          f'by {args.start_method or "default"}')
    gb = 'GB'
    print(f'{"procs":>5} {"RSS " + gb:>8} {"PSS " + gb:>8} {"RssAnon":>8} {"RssShmem":>8} '
          f'{"node used":>9} {"load s":>7} {"wall s":>7}')
    rows = []
    try:
        for procs in args.procs:
            r = run(args, procs)
            rows.append(r)
            print(f'{procs:>5} ' + ' '.join(f'{r[k] / 1e9:>8.2f}' for k in FIELDS[:4])
                  + f' {r["node_used"] / 1e9:>9.2f} {r["load_s"]:>7.1f} {r["wall_s"]:>7.1f}',
                  flush=True)
    finally:
        if tmp and not args.keep:
            args.path.unlink()
            os.rmdir(tmp)
    bench.write_json(args.json, dict(path=str(args.path), file_bytes=size, repo=str(args.repo),
                                     start_method=args.start_method or 'default',
                                     batch_size=args.batch_size, batches=args.batches,
                                     runs=rows))


if __name__ == '__main__':
    main()
