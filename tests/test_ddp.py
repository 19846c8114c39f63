"""DDP on the CPU (gloo): 2 ranks train exactly like 1 process with the doubled batch."""
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import train
from helpers import ROOT, TinyInception, write_hdf5

HARNESS = textwrap.dedent('''
    """Run train.main under torchrun and save this rank's final G and D."""
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    import train
    nets = {{}}
    build = train.build_models
    def capture(config, device):
        nets['G'], nets['D'], nets['G_ema'] = build(config, device)
        return nets['G'], nets['D'], nets['G_ema']
    train.build_models = capture
    train.main(sys.argv[1:])
    torch.save({{k: v.state_dict() for k, v in nets.items()}},
               os.path.join({out!r}, 'rank%s.pt' % os.environ['RANK']))
''')

FLAGS = ['--G_ch', '4', '--D_ch', '4', '--dim_z', '16', '--shared_dim', '8', '--G_shared',
         '--hier', '--G_attn', '0', '--D_attn', '0', '--num_D_steps', '1', '--num_workers', '0',
         '--test_every', '0', '--save_every', '0', '--ema', '--shuffle', '--num_epochs', '1',
         '--use_multiepoch_sampler', '--experiment_name', 'ddp',
         # A large Adam eps makes the step ~linear in the gradient, so float noise stays small
         # while a wrong gradient (e.g. per-rank BN statistics) moves weights visibly.
         '--adam_eps', '1.0', '--G_lr', '1e-2', '--D_lr', '1e-2']


def run_single(flags):
    nets = {}
    build = train.build_models

    def capture(config, device):
        nets['G'], nets['D'], nets['G_ema'] = build(config, device)
        return nets['G'], nets['D'], nets['G_ema']
    train.build_models = capture
    try:
        train.main(flags)
    finally:
        train.build_models = build
    return {k: v.state_dict() for k, v in nets.items()}


def run_torchrun(tmp_path, flags):
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / 'harness.py'
    script.write_text(HARNESS.format(root=str(ROOT), out=str(tmp_path)))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(script), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]


def run_two_nodes(tmp_path, flags):
    """`torchrun --nnodes 2 --nproc_per_node 1` twice on this host: two nodes, one rank each."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / 'harness.py'
    script.write_text(HARNESS.format(root=str(ROOT), out=str(tmp_path)))
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', f'--node_rank={node}',
         '--nproc_per_node=1', '--master_addr=127.0.0.1', f'--master_port={port}', str(script),
         *flags], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for node in range(2)]
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-3000:]
    return [torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2)]


R3GAN = ['--loss', 'rpgan', '--R1', '1', '--R2', '1']  # RpGAN pairs fakes with reals


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope='module')
def ddp_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ddp')
    data = write_hdf5(tmp / 'tiny.hdf5', n=16)
    common = ['--dataset', str(data), '--base_root', str(tmp / 'base'), *FLAGS]
    accumulate = ['--num_D_accumulations', '2', '--num_G_accumulations', '2']
    runs = {'synced': run_torchrun(tmp / 'synced', common + ['--batch_size', '2',
                                                             '--cross_replica']),
            'two_nodes': run_two_nodes(tmp / 'nodes', common + ['--batch_size', '2',
                                                                '--cross_replica']),
            'accumulated': run_torchrun(tmp / 'accumulated',
                                        common + accumulate + ['--batch_size', '2',
                                                               '--cross_replica']),
            'single_accumulated': run_single(common + accumulate + ['--batch_size', '4']),
            'local_bn': run_torchrun(tmp / 'local', common + ['--batch_size', '2']),
            'single': run_single(common + ['--batch_size', '4']),
            'r3gan': run_torchrun(tmp / 'r3gan', common + R3GAN + ['--batch_size', '2',
                                                                 '--cross_replica']),
            'single_r3gan': run_single(common + R3GAN + ['--batch_size', '4']),
            'initial': run_single(common + ['--batch_size', '4', '--num_epochs', '0'])}
    return runs


def test_both_ranks_hold_the_same_weights(ddp_runs):
    r0, r1 = ddp_runs['synced']
    for net in ('G', 'D', 'G_ema'):
        assert max_diff(r0[net], r1[net]) == 0, net


def test_two_ranks_equal_one_process_with_the_full_batch(ddp_runs):
    """With --cross_replica (SyncBN semantics) 2 x batch 2 == 1 x batch 4, to float noise."""
    r0, _ = ddp_runs['synced']
    single, initial = ddp_runs['single'], ddp_runs['initial']
    for net in ('G', 'D', 'G_ema'):
        assert max_diff(r0[net], single[net]) < 2e-5, net
        assert max_diff(single[net], initial[net]) > 1e-3, net  # training really moved it


def test_two_nodes_train_like_two_local_ranks(ddp_runs):
    """--nnodes 2 (one rank per node, rendezvous over TCP) gives the one-node result."""
    nodes, local = ddp_runs['two_nodes'], ddp_runs['synced']
    for net in ('G', 'D', 'G_ema'):
        assert max_diff(nodes[0][net], nodes[1][net]) == 0, net
        assert max_diff(nodes[0][net], local[0][net]) < 1e-6, net


def test_accumulation_under_ddp_equals_one_process(ddp_runs):
    """no_sync on all but the last minibatch: the all-reduced sum is still the full gradient."""
    r0, r1 = ddp_runs['accumulated']
    single = ddp_runs['single_accumulated']
    for net in ('G', 'D', 'G_ema'):
        assert max_diff(r0[net], r1[net]) == 0, net
        assert max_diff(r0[net], single[net]) < 2e-5, net
    for net in ('G', 'D'):  # 2 iterations: G_ema (decay 0.9999) has barely moved
        assert max_diff(single[net], ddp_runs['initial'][net]) > 1e-3, net


def test_rpgan_with_gradient_penalties_under_ddp_equals_one_process(ddp_runs):
    """R3GAN's objective: D's double backward (R1, R2) under DDP, fakes paired with the same
    reals in the G step as in one process."""
    r0, r1 = ddp_runs['r3gan']
    single = ddp_runs['single_r3gan']
    for net in ('G', 'D', 'G_ema'):
        assert max_diff(r0[net], r1[net]) == 0, net
        assert max_diff(r0[net], single[net]) < 2e-5, net
    for net in ('G', 'D'):  # G_ema (decay 0.9999) has barely moved in 4 iterations
        assert max_diff(single[net], ddp_runs['single'][net]) > 1e-4, net  # not hinge's run


def test_per_rank_batch_norm_differs_from_the_full_batch(ddp_runs):
    """The control: without --cross_replica G's BN sees half batches, and G comes out different."""
    r0, _ = ddp_runs['local_bn']
    assert max_diff(r0['G'], ddp_runs['single']['G']) > 1e-4


def _metrics_worker(rank, world, init_file, images, out):
    import torch.distributed as dist

    import inception_utils
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                            world_size=world)
    n = len(images)
    mine = images[rank * n // world:(rank + 1) * n // world]
    is_acc, mom_acc, feats = inception_utils.accumulate_inception_stats(
        TinyInception(), mine.split(4), n, num_splits=5, features=True)
    *_, some = inception_utils.accumulate_inception_stats(  # uneven counts of kept rows
        TinyInception(), mine.split(4), n, moments=False, features=True,
        feature_rows=FEATURE_ROWS)
    torch.save({'IS': is_acc.compute(), 'moments': mom_acc.compute(), 'features': feats,
                'some': some}, f'{out}{rank}.pt')
    dist.destroy_process_group()


FEATURE_ROWS = [0, 13, 14, 30]  # of 31 images: 3 on rank 0 ([0, 15)), 1 on rank 1 ([15, 31))


def test_inception_metrics_across_ranks_equal_one_process(tmp_path):
    """Each rank scores its share of the samples; the all-reduced IS and moments are exact,
    and every rank gets all ranks' features in sample order (31 images: uneven shares)."""
    import torch.multiprocessing as mp

    import inception_utils
    images = torch.rand(31, 3, 8, 8) * 2 - 1
    mp.spawn(_metrics_worker, args=(2, str(tmp_path / 'init'), images, str(tmp_path / 'r')),
             nprocs=2)
    is_acc, mom_acc, feats = inception_utils.accumulate_inception_stats(
        TinyInception(), images.split(4), 31, num_splits=5, features=True)
    mu, sigma = mom_acc.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f'r{rank}.pt', weights_only=False)
        # Equal up to the fp32 noise of the fake net run on other batch groupings.
        assert got['IS'] == pytest.approx(is_acc.compute(), rel=1e-5)
        torch.testing.assert_close(got['moments'][0], mu, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got['moments'][1], sigma, rtol=1e-5, atol=1e-7)
        assert got['features'].shape == (31, 2048)
        torch.testing.assert_close(got['features'], feats, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got['some'], feats[FEATURE_ROWS], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not os.environ.get('BIGGAN_SLOW_TESTS'),
                    reason='torch.compile under DDP compiles for ~2 min on 2 CPU cores; '
                           'set BIGGAN_SLOW_TESTS=1 to run it')
def test_compiled_ddp_equals_one_eager_process(ddp_runs, tmp_path):
    """--compile with DDP and --cross_replica: the same weights as the eager single process."""
    data = tmp_path / 'tiny.hdf5'
    write_hdf5(data, n=16)
    flags = ['--dataset', str(data), '--base_root', str(tmp_path / 'base'), *FLAGS]
    r0, r1 = run_torchrun(tmp_path / 'compiled',
                          flags + ['--batch_size', '2', '--cross_replica', '--compile'])
    for net in ('G', 'D', 'G_ema'):
        assert max_diff(r0[net], r1[net]) == 0, net
        assert max_diff(r0[net], ddp_runs['single'][net]) < 2e-5, net
