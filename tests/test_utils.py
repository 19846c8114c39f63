"""Tests of utils.py and of what it re-exports from flags.py and checkpoints.py: flags, run
names, latents, and checkpoint sets that survive kills, NaNs and full disks."""
import errno
import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from scipy import stats

import atomic_io
import checkpoints
import utils


def tiny_nets():
    torch.manual_seed(0)
    G, D = nn.Linear(3, 2), nn.Linear(2, 1)
    optim = torch.optim.Adam(G.parameters())
    G(torch.randn(4, 3)).sum().backward()
    optim.step()
    return G, D, optim


def save(root, G, D, optim, itr, **kwargs):
    return utils.save_weights(G, D, {'itr': itr, 'config': {}}, str(root), 'run',
                              G_optim=optim, **kwargs)


def files(run):
    return sorted(os.listdir(run))


# ----------------------------------------------------------------------------------------
# Flags and names
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('flag,value,message', [
    ('--num_D_steps', '0', 'argument --num_D_steps: must lie in [1, inf), got 0'),
    ('--G_lr', '-0.0001', 'argument --G_lr: must lie in [0, inf), got -0.0001'),
    ('--D_B2', '1.0', 'argument --D_B2: must lie in [0, 1), got 1.0'),
    ('--batch_size', 'x', "argument --batch_size: invalid int value: 'x'"),
    ('--which_train_fn', 'WGAN', "argument --which_train_fn: invalid choice: 'WGAN'"),
])
def test_bad_flag_values_stop_the_parser_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        utils.prepare_parser().parse_args([flag, value])
    assert message in capsys.readouterr().err


def test_parse_given_tells_typed_flags_from_defaults():
    config, given = utils.parse_given(utils.prepare_parser,
                                      ['--G_lr', '1e-4', '--no_pin_memory', '--toggle_grads'])
    assert config['G_lr'] == 1e-4 and config['D_lr'] == 2e-4 and config['pin_memory'] is False
    assert given == {'G_lr': 1e-4, 'pin_memory': False, 'toggle_grads': True}


def test_run_names_hold_no_path_separators():
    config = vars(utils.prepare_parser().parse_args(['--dataset', 'data/sub/mini_32.hdf5']))
    name = utils.name_from_config(config)
    assert name.startswith('BigGAN_mini_32_seed0_') and '/' not in name
    config['dataset'] = '/abs/folder/'
    assert utils.name_from_config(config).startswith('BigGAN_folder_seed0_')
    config['dataset'] = 'I128_hdf5'
    assert utils.name_from_config(config).startswith('BigGAN_I128_hdf5_seed0_')


def test_flags_kept_for_2019_scripts_parse_and_say_they_do_nothing():
    config = vars(utils.prepare_parser().parse_args(['--pbar', 'tqdm', '--config_from_name']))
    assert config['pbar'] == 'tqdm' and config['config_from_name'] is True
    helps = {a.dest: a.help for a in utils.prepare_parser()._actions}
    assert all(helps[k].startswith('does nothing here') for k in ('pbar', 'config_from_name'))


def test_sheets_and_checkpoint_calls_take_their_options_by_keyword():
    with pytest.raises(TypeError):
        utils.save_weights(nn.Linear(1, 1), nn.Linear(1, 1), {}, 'w', 'run', 'best0')
    with pytest.raises(TypeError):
        utils.sample_sheet(nn.Linear(1, 1), 10, 10, 1, 'samples', 'run', 0)


# ----------------------------------------------------------------------------------------
# Latents
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize('t', [0.5, 2.0])
def test_truncated_normal_is_the_normal_cut_at_t(t):
    gen = torch.Generator().manual_seed(0)
    z = utils.truncated_normal((100, 200), t, generator=gen)
    assert z.shape == (100, 200) and z.dtype == torch.float32 and z.abs().max() <= t
    assert stats.kstest(z.flatten().numpy(), stats.truncnorm(-t, t).cdf).statistic < 0.015
    torch.testing.assert_close(
        utils.truncated_normal((100, 200), t, generator=torch.Generator().manual_seed(0)), z)


def test_interp_goes_linearly_from_x0_to_x1():
    x0, x1 = torch.randn(3, 1, 5, dtype=torch.float64), torch.randn(3, 1, 5, dtype=torch.float64)
    out = utils.interp(x0, x1, num_midpoints=3)
    assert out.shape == (3, 5, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out[:, 0], x0[:, 0])
    torch.testing.assert_close(out[:, -1], x1[:, 0])
    torch.testing.assert_close(out[:, 2], (x0[:, 0] + x1[:, 0]) / 2)


# ----------------------------------------------------------------------------------------
# Checkpoint sets
# ----------------------------------------------------------------------------------------


def test_a_save_with_copies_is_one_set_of_independent_files_with_checksums(tmp_path):
    G, D, optim = tiny_nets()
    run = save(tmp_path, G, D, optim, 5, also_as=('copy1',))
    assert files(run) == ['D.pth', 'D_copy1.pth', 'G.pth', 'G_copy1.pth', 'G_optim.pth',
                          'G_optim_copy1.pth', utils.CHECKSUMS, 'state_dict.pth',
                          'state_dict_copy1.pth']
    # A copy is a file of its own (2019's copies were, and damage to one must not reach the
    # other), with the same bytes and the same recorded checksum.
    main, copy = os.path.join(run, 'G.pth'), os.path.join(run, 'G_copy1.pth')
    assert not os.path.samefile(main, copy) and os.stat(main).st_nlink == 1
    assert open(main, 'rb').read() == open(copy, 'rb').read()
    recorded = json.load(open(os.path.join(run, utils.CHECKSUMS)))['files']
    for name in files(run):
        if name.endswith('.pth'):
            assert recorded[name] == {'sha256': checkpoints.file_sha256(os.path.join(run, name)),
                                      'bytes': os.path.getsize(os.path.join(run, name)),
                                      'itr': 5}, name
    save(tmp_path, G, D, optim, 10)  # the next save replaces G.pth, not the copy
    assert utils.load_file(os.path.join(run, 'state_dict_copy1.pth'))['itr'] == 5
    assert utils.load_file(os.path.join(run, 'state_dict.pth'))['itr'] == 10


def big_nets():
    """tiny_nets with a G of ~4 MB: big enough for torch's reader to seek past a truncation."""
    G, D, optim = tiny_nets()
    G = nn.Linear(1000, 1000)
    return G, D, torch.optim.Adam(G.parameters())


def overwrite_middle(path: str, n: int = 200) -> None:
    """Overwrite n bytes in the middle of a file with 0xff (what a bad disk sector does)."""
    with open(path, 'r+b') as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b'\xff' * n)


@pytest.mark.parametrize('damage', ['middle', 'truncate_half', 'truncate_1pc'])
def test_a_file_damaged_after_its_save_is_refused_naming_it_and_its_copies(tmp_path, damage):
    """Bytes overwritten in the middle loaded without complaint, and a checkpoint cut to 1%
    gave a bare OSError naming no file: both are refused, naming the file and the copies."""
    G, D, optim = big_nets()
    save(tmp_path, G, D, optim, 5, also_as=('copy0',))
    run = save(tmp_path, G, D, optim, 10, also_as=('copy1',))
    path = os.path.join(run, 'G.pth')
    if damage == 'middle':
        overwrite_middle(path)
    else:
        os.truncate(path, os.path.getsize(path) // (2 if damage == 'truncate_half' else 100))
    with pytest.raises(utils.CorruptCheckpointError) as err:
        utils.load_file(path)
    message = str(err.value)
    assert message.startswith(f'{path} is damaged: ')
    assert ('copy1 (iteration 10), copy0 (iteration 5)' in message
            and '--resume --load_weights copy1' in message)
    torch.testing.assert_close(utils.load_file(os.path.join(run, 'G_copy1.pth'))['weight'],
                               G.weight)


def test_a_file_that_never_loads_is_named_even_without_a_recorded_checksum(tmp_path):
    G, D, optim = big_nets()
    run = save(tmp_path, G, D, optim, 5, also_as=('copy0',))
    os.remove(os.path.join(run, utils.CHECKSUMS))  # e.g. a run saved before checksums
    path = os.path.join(run, 'G.pth')
    os.truncate(path, os.path.getsize(path) // 100)
    with pytest.raises(utils.CorruptCheckpointError, match=(
            r'G.pth is truncated, corrupt or not a checkpoint \(OSError: .*\)\. This run\'s '
            r'other copies of it: copy0\. Resume from one with --resume --load_weights copy0')):
        utils.load_file(path)


def test_non_finite_weights_or_optimizer_states_are_never_saved(tmp_path):
    G, D, optim = tiny_nets()
    run = save(tmp_path, G, D, optim, 5)
    before = {f: open(os.path.join(run, f), 'rb').read() for f in files(run)}
    with torch.no_grad():
        D.weight[0, 0] = float('nan')
    with pytest.raises(FloatingPointError, match='^D hold non-finite values'):
        save(tmp_path, G, D, optim, 10)
    with torch.no_grad():
        D.weight[0, 0] = 0.0
    next(iter(optim.state.values()))['exp_avg_sq'][0] = float('inf')
    with pytest.raises(FloatingPointError, match='^G_optim hold non-finite values'):
        save(tmp_path, G, D, optim, 10)
    assert {f: open(os.path.join(run, f), 'rb').read() for f in files(run)} == before


def test_nonfinite_parts_finds_nan_and_inf_by_part():
    parts = {'a': {'w': torch.ones(3), 'n': torch.tensor(7)},
             'b': {'state': {0: {'m': torch.tensor([1.0, float('nan')])}}},
             'c': [torch.tensor([float('-inf')])], 'd': {'big': torch.tensor([3e38, -3e38])}}
    assert utils.nonfinite_parts(parts) == ['b', 'c']


def stage_a_save(run, itr, G, D, optim, journal: bool):
    """What a save leaves when killed after staging its files, with or without its journal."""
    parts = {'G': G.state_dict(), 'D': D.state_dict(), 'G_optim': optim.state_dict(),
             'state_dict': {'itr': itr, 'config': {}}}
    for name, obj in parts.items():
        torch.save(obj, os.path.join(run, f'{name}.pth{utils.STAGED}'))
    if journal:
        with open(os.path.join(run, utils.COMMIT_JOURNAL), 'w') as f:
            json.dump({'files': [f'{name}.pth' for name in parts]}, f)
        # killed after two of the four renames
        for name in ('G', 'D'):
            os.replace(os.path.join(run, f'{name}.pth{utils.STAGED}'),
                       os.path.join(run, f'{name}.pth'))


def test_recovery_rolls_a_recorded_save_forward(tmp_path):
    G, D, optim = tiny_nets()
    run = save(tmp_path, G, D, optim, 5)
    with torch.no_grad():
        G.weight.add_(1)
    stage_a_save(run, 10, G, D, optim, journal=True)
    assert utils.load_file(os.path.join(run, 'state_dict.pth'))['itr'] == 5  # a mixed set
    done = utils.recover_checkpoints(run)
    assert done and 'completed' in done[0]
    assert files(run) == ['D.pth', 'G.pth', 'G_optim.pth', utils.CHECKSUMS, 'state_dict.pth']
    assert utils.load_file(os.path.join(run, 'state_dict.pth'))['itr'] == 10
    torch.testing.assert_close(utils.load_file(os.path.join(run, 'G.pth'))['weight'], G.weight)


def test_recovery_drops_an_unrecorded_save_and_temporary_files(tmp_path):
    G, D, optim = tiny_nets()
    run = save(tmp_path, G, D, optim, 5)
    before = {f: open(os.path.join(run, f), 'rb').read() for f in files(run)}
    with torch.no_grad():
        G.weight.add_(1)
    stage_a_save(run, 10, G, D, optim, journal=False)
    open(os.path.join(run, 'G.pth.tmp1234'), 'wb').write(b'half')
    open(os.path.join(run, 'config.json.tmp'), 'w').write('{')
    done = utils.recover_checkpoints(run)
    assert len(done) == 1 and 'removed 6 files' in done[0]
    assert {f: open(os.path.join(run, f), 'rb').read() for f in files(run)} == before
    assert utils.recover_checkpoints(run) == []


def test_a_failed_save_leaves_the_previous_set(tmp_path, monkeypatch):
    G, D, optim = tiny_nets()
    run = save(tmp_path, G, D, optim, 5, also_as=('copy0',))
    before = {f: open(os.path.join(run, f), 'rb').read() for f in files(run)}
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third file of the set finds the disk full
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(OSError, match=r'disk full while saving \S+/G_optim.pth; the '
                                      r'previous checkpoint is intact'):
        save(tmp_path, G, D, optim, 10, also_as=('copy1',))
    assert {f: open(os.path.join(run, f), 'rb').read() for f in files(run)} == before


def test_torch_disk_full_errors_are_said_in_words(tmp_path, monkeypatch):
    """torch.save reports a full disk as an 'enforce fail' RuntimeError."""
    def enforce_fail(obj, f, *args, **kwargs):
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 64')
    monkeypatch.setattr(torch, 'save', enforce_fail)
    monkeypatch.setattr(atomic_io.shutil, 'disk_usage', lambda path: SimpleNamespace(free=1024))
    with pytest.raises(OSError, match=r'disk full while saving \S+/x.pth; the previous'):
        utils.atomic_save({'w': torch.ones(1)}, str(tmp_path / 'x.pth'))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_a_damaged_checkpoint_names_the_file_and_the_copies(tmp_path, damage):
    G, D, optim = tiny_nets()
    run = save(tmp_path, G, D, optim, 5, also_as=('copy0',))
    path = os.path.join(run, 'state_dict.pth')
    data = open(path, 'rb').read()
    damaged = {'truncate': data[:len(data) // 2], 'garbage': b'not a checkpoint' * 10,
               'empty': b''}[damage]
    open(path, 'wb').write(damaged)
    with pytest.raises(utils.CorruptCheckpointError,
                       match=r'state_dict.pth is damaged: it has [\d,]+ bytes where its save '
                             r'wrote [\d,]+ .*copy0 \(iteration 5\).*--resume --load_weights '
                             r'copy0'):
        utils.load_file(path)


def test_a_log_line_after_a_torn_one_starts_on_its_own_line(tmp_path):
    """A killed run can leave `301: 2.5e+` with no newline; the next line appended (a resumed
    run's, or sample.py's next metrics record) used to run on into it."""
    logger = utils.MyLogger(str(tmp_path / 'exp'), logstyle='%.1f')
    (tmp_path / 'exp' / 'G_loss.log').write_text('300: 1.0\n301: 2.5e+')
    logger.log(302, G_loss=0.5)
    assert (tmp_path / 'exp' / 'G_loss.log').read_text() == '300: 1.0\n301: 2.5e+\n302: 0.5\n'
    with pytest.warns(UserWarning, match=r'G_loss.log: dropped 1 unreadable line\(s\) \(line 2\)'):
        logger.truncate_after(302)
    assert (tmp_path / 'exp' / 'G_loss.log').read_text() == '300: 1.0\n302: 0.5\n'
    metrics = utils.MetricsLogger(str(tmp_path / 'm.jsonl'))
    (tmp_path / 'm.jsonl').write_text('{"itr": 1}\n{"itr": 2, "IS')
    metrics.log(itr=3)
    with pytest.warns(UserWarning, match=r'm.jsonl: dropped 1 unreadable line\(s\) \(line 2\)'):
        metrics.truncate_after(10)
    assert [json.loads(line)['itr'] for line in open(tmp_path / 'm.jsonl')] == [1, 3]
