"""FreezeD (--freeze_D N, freeze.py): a fine-tune from a trained run keeps D's first N blocks
bit-identical to the loaded ones (weights, SN buffers, no optimizer state) while the rest
moves; it resumes exactly; it runs under DDP; bad requests fail before anything is written."""
import pytest
import torch
from test_ddp import FLAGS as DDP_FLAGS
from test_ddp import max_diff, run_single, run_torchrun

import BigGAN
import BigGANdeep
import freeze
import train
import utils
from helpers import write_hdf5
from test_train import run_flags


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A trained run to fine-tune from (3 epochs of the tiny data), and the data file."""
    tmp = tmp_path_factory.mktemp('source')
    data = write_hdf5(tmp / 'tiny.hdf5')
    train.main(run_flags(tmp, data, '--num_epochs', '3', '--save_every', '100'))
    return tmp / 'run' / 'weights' / 'tiny', data


def finetune_flags(tmp_path, source, *extra):
    weights, data = source
    flags = run_flags(tmp_path, data, '--load_weights', str(weights), '--save_every', '2',
                      *extra)
    flags[flags.index('--experiment_name') + 1] = 'ft'
    return flags


def saved(tmp_path, name):
    return utils.load_file(str(tmp_path / 'run' / 'weights' / 'ft' / f'{name}.pth'))


def is_frozen(key: str, n: int) -> bool:
    return any(key.startswith(f'blocks.{i}.') for i in range(n))


def test_frozen_blocks_stay_as_loaded_and_the_rest_moves(tmp_path, source):
    train.main(finetune_flags(tmp_path, source, '--num_epochs', '2', '--freeze_D', '2'))
    loaded = utils.load_file(str(source[0] / 'D.pth'))
    tuned = saved(tmp_path, 'D')
    frozen = [k for k in loaded if is_frozen(k, 2)]
    assert any(k.endswith('.u0') for k in frozen) and any(k.endswith('weight') for k in frozen)
    for key in frozen:  # weights and SN's u / sv buffers, bit for bit
        assert torch.equal(tuned[key], loaded[key]), key
    moved = [k for k in loaded if not is_frozen(k, 2) and not torch.equal(tuned[k], loaded[k])]
    assert any(k.startswith('blocks.2.') for k in moved) and 'linear.weight' in moved
    # Adam never stepped the frozen parameters: no state for them
    D = BigGAN.Discriminator(**utils.load_file(str(source[0] / 'state_dict.pth'))['config'])
    names = [n for n, _ in D.named_parameters()]
    state = saved(tmp_path, 'D_optim')['state']
    assert {names[i] for i in state} == {n for n in names if not is_frozen(n, 2)}


def test_resume_of_a_frozen_finetune_is_exact(tmp_path, source):
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    train.main(finetune_flags(straight, source, '--num_epochs', '4', '--freeze_D', '1'))
    train.main(finetune_flags(stopped, source, '--num_epochs', '2', '--freeze_D', '1'))
    resumed = finetune_flags(stopped, source, '--num_epochs', '4', '--resume')
    at = resumed.index('--load_weights')
    del resumed[at:at + 2]  # a resume takes its weights and --freeze_D 1 from the run
    train.main(resumed)
    for name in ('G', 'D', 'G_ema', 'D_optim'):
        a, b = saved(straight, name), saved(stopped, name)
        if name == 'D_optim':
            a, b = ({i: s['exp_avg'] for i, s in x['state'].items()} for x in (a, b))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    loaded = utils.load_file(str(source[0] / 'D.pth'))
    assert all(torch.equal(saved(stopped, 'D')[k], v) for k, v in loaded.items()
               if is_frozen(k, 1))


def test_deep_D_freezes_its_input_conv_with_the_first_stage():
    D = BigGANdeep.Discriminator(D_ch=4, D_depth=1, D_attn='0', resolution=32, n_classes=3)
    modules = freeze.frozen_D_modules(D, 1)
    assert modules[0] is D.input_conv and modules[1] is D.blocks[0] and len(modules) == 2
    freeze.hold(modules)
    assert not D.input_conv.training and D.blocks[1].training
    assert not any(p.requires_grad for m in modules for p in m.parameters())
    assert freeze.frozen_D_modules(D, 0) == ()


def test_bad_requests_fail_before_anything_is_written(tmp_path, source):
    weights, data = source
    with pytest.raises(ValueError, match='give the run to fine-tune from with --load_weights'):
        train.main(run_flags(tmp_path, data, '--freeze_D', '1'))
    with pytest.raises(ValueError, match=r'has 4 blocks; freeze at most 4'):
        train.main(finetune_flags(tmp_path, source, '--freeze_D', '5'))
    no_D = tmp_path / 'converted'  # a converted generator: G and its config, no D
    no_D.mkdir()
    for name in ('G.pth', 'state_dict.pth'):
        (no_D / name).write_bytes((weights / name).read_bytes())
    flags = finetune_flags(tmp_path, source, '--freeze_D', '1')
    flags[flags.index('--load_weights') + 1] = str(no_D)
    with pytest.raises(ValueError, match='holds no D.pth.*Fine-tune without --freeze_D'):
        train.main(flags)
    assert not (tmp_path / 'run').exists()


def test_freeze_D_under_ddp_equals_one_process(tmp_path):
    """2 ranks (gloo) fine-tune like one process with the full batch; DDP reduces only the
    trained parameters, and the frozen ones stay as loaded on both ranks."""
    data = write_hdf5(tmp_path / 'tiny.hdf5', n=16)
    common = ['--dataset', str(data), '--base_root', str(tmp_path / 'base'), *DDP_FLAGS]
    run_single(common + ['--batch_size', '4', '--save_every', '100'])  # the source run
    source = tmp_path / 'base' / 'weights' / 'ddp'
    tune = [*common, '--load_weights', str(source), '--freeze_D', '1', '--num_epochs', '2']
    tune[tune.index('--experiment_name') + 1] = 'tuned'
    r0, r1 = run_torchrun(tmp_path / 'ddp', tune + ['--batch_size', '2', '--cross_replica'])
    single = run_single([*tune, '--batch_size', '4', '--base_root', str(tmp_path / 'one')])
    loaded = utils.load_file(str(source / 'D.pth'))
    for net in ('G', 'D'):
        assert max_diff(r0[net], r1[net]) == 0, net
        assert max_diff(r0[net], single[net]) < 2e-5, net
    assert all(torch.equal(r0['D'][k], v) for k, v in loaded.items() if is_frozen(k, 1))
    assert max_diff(r0['D'], loaded) > 1e-3  # the rest trained
