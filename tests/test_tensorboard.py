"""TensorBoard events of train.py (tb_log.py), read back from the event files: the text logs'
values at the same steps, the sample images of each save, each step exactly once after a
SIGKILL and --resume (in the files, and as TensorBoard's server loader shows them, also while
it is running), nothing with --no_tensorboard, and a start-up error without the tensorboard
package."""
import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from torch.utils.tensorboard import SummaryWriter

import tb_log
import train
import utils
from helpers import ROOT, stand_in_inception, write_hdf5
from test_train import SAVE_STEPS, run_flags, run_killable

KEEP_ALL = {'scalars': 0, 'images': 0}  # EventAccumulator keeps a sample unless told


@pytest.fixture
def data_file(tmp_path):
    return write_hdf5(tmp_path / 'tiny.hdf5')


def log_dir(root: Path) -> Path:
    return root / 'run' / 'logs' / 'tiny'


def read_back(root: Path, purge: bool = True) -> EventAccumulator:
    """The run's events as TensorBoard's loader reads them (`purge`: honouring the purge
    markers of resumed runs, as TensorBoard does by default)."""
    events = EventAccumulator(str(log_dir(root)), size_guidance=KEEP_ALL,
                              purge_orphaned_data=purge)
    events.Reload()
    return events


def scalars(events: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] in the order read."""
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()['scalars']}


def raw_steps(root: Path) -> collections.Counter:
    """How often each (tag, step) is in the event files themselves, whatever a reader
    purges."""
    counts = collections.Counter()
    for path in tb_log.event_files(str(log_dir(root))):
        for record in tb_log.read_records(path):
            event = Event.FromString(record)
            for value in event.summary.value:
                counts[value.tag, event.step] += 1
    return counts


def text_log(path: Path) -> list[tuple[int, float]]:
    return [(int(step), float(value)) for step, value in
            (line.split(':') for line in path.read_text().splitlines())]


def test_scalars_equal_the_text_logs_and_each_save_adds_its_images(tmp_path, data_file):
    """Every `itr: value` training log (losses, D outputs, singular values) is a scalar tag
    with the same steps and values; learning rates at the loss steps; the fixed-z grid and
    a class sheet at each save, byte for byte the JPEGs the save wrote."""
    train.main(run_flags(tmp_path, data_file, '--num_epochs', '2', '--save_every', '3',
                         '--log_G_spectra', '--log_D_spectra', '--sv_log_interval', '2'))
    events = read_back(tmp_path)
    tags = scalars(events)
    logs = sorted(log_dir(tmp_path).glob('*.log'))
    assert len(logs) > 20  # 5 loss logs and the singular values of G and D
    for log in logs:
        group = 'sv' if log.stem.endswith('_sv0') else 'train'
        steps, values = zip(*tags.pop(f'{group}/{log.stem}'))
        text_steps, text_values = zip(*text_log(log))
        assert steps == text_steps, log.stem
        torch.testing.assert_close(torch.tensor(values, dtype=torch.float64),
                                   torch.tensor(text_values, dtype=torch.float64),
                                   rtol=1e-6, atol=0, msg=log.stem)
    assert {s for s, _ in text_log(log_dir(tmp_path) / 'G_loss.log')} == set(range(1, 9))
    assert {s for s, _ in text_log(log_dir(tmp_path) / 'G_linear_sv0.log')} == {2, 4, 6, 8}
    for net in ('G', 'D'):  # what is left: the learning rates, at every loss step
        assert tags.pop(f'lr/{net}') == [(s, pytest.approx(2e-4)) for s in range(1, 9)]
    assert not tags

    samples = tmp_path / 'run' / 'samples' / 'tiny'
    for tag, path in (('fixed_z', 'fixed_samples{}.jpg'), ('class_sheet', '{}/samples0.jpg')):
        images = events.Images(f'samples/{tag}')
        assert [e.step for e in images] == [3, 6, 8]  # the saves, and the end of training
        for e in images:
            assert e.encoded_image_string == (samples / path.format(e.step)).read_bytes()


def test_test_metrics_equal_the_jsonl_log(tmp_path, data_file, monkeypatch):
    """IS/FID/KID and precision/recall of each --test_every test, as the jsonl log has them."""
    import calculate_inception_moments
    weights = stand_in_inception(monkeypatch, tmp_path)
    calculate_inception_moments.main(['--dataset', str(data_file), '--num_workers', '0',
                                      '--inception_weights', str(weights)])
    flags = run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '0',
                      '--num_inception_images', '20', '--inception_weights', str(weights))
    flags[flags.index('--test_every') + 1] = '2'
    train.main(flags)
    records = [json.loads(line) for line in
               (tmp_path / 'run' / 'logs' / 'tiny_log.jsonl').read_text().splitlines()]
    tags = scalars(read_back(tmp_path))
    metrics = {k for r in records for k, v in r.items() if k not in ('itr', '_stamp')}
    assert {'IS_mean', 'IS_std', 'FID', 'KID_mean'} <= metrics
    for metric in metrics:
        assert tags[f'test/{metric}'] == [(r['itr'], pytest.approx(r[metric], rel=1e-6))
                                          for r in records], metric
    assert [r['itr'] for r in records] == [2, 4]


def assert_same_events(resumed: Path, straight: Path) -> None:
    """Per tag, exactly the steps of the uninterrupted run, each once, with its values; the
    images of each save, but for one a kill interrupted before its JPEGs were written."""
    want = scalars(read_back(straight))
    assert want and all(count == 1 for count in raw_steps(straight).values())
    counts = raw_steps(resumed)
    assert {k for k, n in counts.items() if n > 1} == set()  # in the files, not just shown
    for purge in (True, False):  # as TensorBoard shows them, and a reader that never purges
        events = read_back(resumed, purge=purge)
        got = scalars(events)
        assert got.keys() == want.keys()
        for tag, points in want.items():
            assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
            torch.testing.assert_close(torch.tensor([v for _, v in got[tag]]),
                                       torch.tensor([v for _, v in points]),
                                       rtol=1e-5, atol=1e-6, msg=tag)
        want_images = [e.step for e in read_back(straight).Images('samples/fixed_z')]
        got_images = [e.step for e in events.Images('samples/fixed_z')]
        lost = set(want_images) - set(got_images)
        assert got_images == [step for step in want_images if step not in lost]
        # A kill between a save's JPEGs and the flush of their image events loses at most
        # that save's images in TensorBoard (its JPEGs may be on disk).
        assert len(lost) <= 1


RESUME_FLAGS = ['--num_epochs', '3', '--save_every', '2', '--use_multiepoch_sampler',
                '--log_G_spectra', '--sv_log_interval', '3']  # 12 iterations


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    """The uninterrupted run the killed and resumed ones are compared with."""
    root = tmp_path_factory.mktemp('straight')
    train.main(run_flags(root, write_hdf5(root / 'tiny.hdf5'), *RESUME_FLAGS))
    return root


@pytest.mark.parametrize('kill', ['in_the_second_save', 'once_saved'])
def test_sigkill_then_resume_logs_each_step_once(tmp_path, data_file, straight, kill):
    """A run SIGKILLed and resumed has the events of the uninterrupted run: `in_the_second
    save` kills it in the save at iteration 4 before that checkpoint is committed, so the
    events of iterations 3-4 are on disk beyond the checkpoint of iteration 2 and must go;
    `once_saved` kills it as soon as its first checkpoint exists (if that save's image
    events were not flushed yet, the resumed run has no images of that save in TensorBoard)."""
    killed = tmp_path / 'killed'
    flags = run_flags(killed, data_file, *RESUME_FLAGS)
    state_file = killed / 'run' / 'weights' / 'tiny' / 'state_dict.pth'
    if kill == 'in_the_second_save':
        assert run_killable(tmp_path, flags, kill_at=SAVE_STEPS + 1) == -signal.SIGKILL
    else:
        proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *flags], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not state_file.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, 'the run ended before it could be killed'
    saved_itr = utils.load_file(str(state_file))['itr']
    assert 0 < saved_itr < 12
    on_disk = max(step for _, step in raw_steps(killed))
    if kill == 'in_the_second_save':
        assert (saved_itr, on_disk) == (2, 4)  # events the resumed run logs again

    train.main(run_flags(killed, data_file, *RESUME_FLAGS, '--resume'))
    assert len(tb_log.event_files(str(log_dir(killed)))) == 2
    assert_same_events(killed, straight)


def test_no_tensorboard_writes_no_events(tmp_path, data_file):
    """--no_tensorboard: the text logs only; the run's name is the same as with events."""
    flags = run_flags(tmp_path, data_file, '--num_epochs', '1', '--save_every', '2',
                      '--no_tensorboard')
    train.main(flags)
    assert (log_dir(tmp_path) / 'G_loss.log').is_file()
    assert not [p for p in tmp_path.rglob('*') if tb_log.EVENTS in p.name]
    parse = utils.prepare_parser().parse_args
    without, default = vars(parse(flags)), vars(parse(flags[:-1]))
    assert (without['tensorboard'], default['tensorboard']) == (False, True)
    without['experiment_name'] = default['experiment_name'] = ''
    assert utils.name_from_config(without) == utils.name_from_config(default)


def test_resume_without_no_tensorboard_writes_events_again(tmp_path, data_file):
    """--no_tensorboard is this invocation's choice, not the run's: a resume without it logs
    the steps it trains (a bare off-switch saved with the run could not be undone)."""
    flags = run_flags(tmp_path, data_file, '--save_every', '2', '--log_every', '1')
    train.main([*flags, '--num_epochs', '1', '--no_tensorboard'])
    assert not tb_log.event_files(str(log_dir(tmp_path)))
    train.main([*flags, '--num_epochs', '2', '--resume'])
    steps = [step for step, _ in scalars(read_back(tmp_path))['train/G_loss']]
    assert steps == [5, 6, 7, 8]  # 4 iterations per epoch: the second epoch's


def test_missing_tensorboard_is_a_start_up_error_naming_the_fix(tmp_path, data_file,
                                                                monkeypatch):
    """Without the package: an error saying `pip install tensorboard` or --no_tensorboard,
    before anything is written; --no_tensorboard does not need it."""
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # import fails
    with pytest.raises(tb_log.TensorBoardMissingError,
                       match='pip install tensorboard, or train with --no_tensorboard'):
        train.main(run_flags(tmp_path, data_file, '--num_epochs', '1'))
    assert not (tmp_path / 'run').exists()
    tb_log.check_available({'tensorboard': False})


def test_a_resume_drops_later_events_and_a_torn_record(tmp_path):
    """drop_events_after keeps the events up to the checkpoint's step and drops the rest and
    half a record a kill left; files with nothing to drop are not rewritten."""
    first, second = tmp_path / 'first', tmp_path / 'second'
    for folder, steps in ((first, range(1, 4)), (second, range(1, 8))):
        writer = SummaryWriter(str(folder))
        for step in steps:
            writer.add_scalar('train/x', step / 2, step)
        writer.close()
    (path,) = tb_log.event_files(str(second))
    with open(path, 'ab') as f:
        f.write(b'\x40\x00\x00\x00\x00\x00\x00\x00torn')  # a record cut short by a kill
    (untouched,) = tb_log.event_files(str(first))
    before = Path(untouched).stat().st_mtime_ns
    for folder in (first, second):
        tb_log.drop_events_after(str(folder), 3)
    assert Path(untouched).stat().st_mtime_ns == before
    for folder in (first, second):
        events = EventAccumulator(str(folder), purge_orphaned_data=False)
        events.Reload()
        assert [(e.step, e.value) for e in events.Scalars('train/x')] == [
            (1, 0.5), (2, 1.0), (3, 1.5)]
    assert not [p for p in second.iterdir() if p.name.startswith('.')]


def test_a_live_tensorboard_drops_what_a_resume_drops(tmp_path):
    """TensorBoard's server loader, reading while a run is killed and resumed: the resumed
    run's restart marker purges the killed run's later events (those it logs again and
    those it does not), since every run starts with the first marker, which it ignores."""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.util import tensor_util
    live = plugin_event_accumulator.EventAccumulator(str(tmp_path), tensor_size_guidance=KEEP_ALL)

    def shown() -> dict[str, list[tuple[int, float]]]:
        live.Reload()
        return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                      for e in live.Tensors(tag)] for tag in live.Tags()['tensors']}
    killed = tb_log.TensorBoardLog(str(tmp_path))
    for step in range(1, 7):
        killed.scalars('train', step, {'x': step})
    killed.scalars('test', 5, {'y': 0.5})
    killed.close()  # as the killed run left it
    assert shown() == {'train/x': [(s, s) for s in range(1, 7)], 'test/y': [(5, 0.5)]}
    resumed = tb_log.TensorBoardLog(str(tmp_path), resume_itr=3)
    for step in range(4, 9):
        resumed.scalars('train', step, {'x': 10 * step})
    resumed.close()
    assert shown() == {'train/x': [(1, 1), (2, 2), (3, 3), *[(s, 10 * s) for s in range(4, 9)]],
                       'test/y': []}
