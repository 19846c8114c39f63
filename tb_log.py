"""TensorBoard events of a training run (on unless --no_tensorboard): `tensorboard --logdir
logs` shows every run under <logs_root>/<experiment_name>/, beside its text logs.

Tags: `train/<name>` for each value of the loss logs (objective terms, D_real/D_fake, ada_p)
and `lr/G`, `lr/D` at --log_every; `sv/<layer>` at --sv_log_interval with --log_G_spectra /
--log_D_spectra; `test/<metric>` (IS_mean, FID, KID_mean, ...) at --test_every; the images
`samples/fixed_z` and `samples/class_sheet` at each save (the JPEG files the save wrote).

A resumed run continues the same curves. A killed run may have written events after its last
checkpoint, which the resumed run logs again. TensorBoard's restart marker (SessionLog START,
SummaryWriter's purge_step) alone does not hide them: its server ignores a run's first marker
and its fast (Rust) loader none, so it only replaces the steps logged again. So at a resume
every event file loses its events of later steps (rewritten under a temporary name, then
renamed) and any reader shows each step once; the new file, whose name sorts after the old
ones, starts with the marker, and a TensorBoard already showing the later events drops them at
its next reload (the Python loader; the Rust one replaces those logged again and keeps the
others until it restarts).
"""
from __future__ import annotations

import io
import numbers
import os
import struct
import time
from collections.abc import Iterator
from typing import Optional

from atomic_io import write_synced

EVENTS = 'tfevents'  # TensorBoard reads every file whose name holds this
_REWRITE = '.tb_rewrite'  # temporary names of rewritten event files: no EVENTS in them
FLUSH_SECS = 120  # the writer thread's own flushes; each save and test flushes too
MAX_QUEUE = 1000  # events queued for the writer thread before a log call would wait


class TensorBoardMissingError(ImportError, ValueError):
    """The tensorboard package is absent (a ValueError too: a one-line user error)."""


def check_available(config: dict) -> None:
    """--tensorboard (the default) needs the tensorboard package: say so before anything is
    written."""
    if not config['tensorboard']:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise TensorBoardMissingError(
            f'TensorBoard logging (on by default) needs the tensorboard package ({err}): '
            f'pip install tensorboard, or train with --no_tensorboard') from err


class TensorBoardLog:
    """A run's TensorBoard writer: scalars and sample images at the steps they belong to."""

    def __init__(self, log_dir: str, resume_itr: Optional[int] = None):
        """Write to `log_dir`. A new run (`resume_itr` None) removes event files a run that
        never saved left there; a resumed one drops events after `resume_itr`."""
        from torch.utils.tensorboard import SummaryWriter
        os.makedirs(log_dir, exist_ok=True)
        if resume_itr is None:
            for path in event_files(log_dir):
                os.remove(path)
        else:
            drop_events_after(log_dir, resume_itr)
            _wait_to_sort_last(log_dir)
        # purge_step writes TensorBoard's restart marker (SessionLog START) at that step. Its
        # server ignores a run's first marker, so a new run writes one at step 1 too.
        self.writer = SummaryWriter(log_dir, max_queue=MAX_QUEUE, flush_secs=FLUSH_SECS,
                                    purge_step=(resume_itr or 0) + 1)

    def scalars(self, group: str, itr: int, values: dict[str, float]) -> None:
        """`group/<name>` = value at step itr, for each value that is a number."""
        for name, value in values.items():
            if isinstance(value, numbers.Real):
                self.writer.add_scalar(f'{group}/{name}', value, itr)

    def image_file(self, tag: str, path: str, itr: int) -> None:
        """An image file (JPEG, PNG) as written, without decoding and re-encoding it."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary
        with open(path, 'rb') as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            channels = len(image.getbands())
        image = Summary.Image(height=height, width=width, colorspace=channels,
                              encoded_image_string=data)
        self.writer.file_writer.add_summary(
            Summary(value=[Summary.Value(tag=tag, image=image)]), itr)

    def flush(self) -> None:
        """Write what is queued to the event file (each save: a killed run keeps its events
        up to the checkpoint)."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def event_files(log_dir: str) -> list[str]:
    """The event files of a run folder, in the order TensorBoard reads them (by name)."""
    if not os.path.isdir(log_dir):
        return []
    return sorted(os.path.join(log_dir, name) for name in os.listdir(log_dir)
                  if EVENTS in name and not name.startswith(_REWRITE))


def read_records(path: str) -> Iterator[bytes]:
    """The serialized events of one event file (TFRecord framing: length, its CRC, data, the
    data's CRC), up to a record a kill cut short."""
    with open(path, 'rb') as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack('<Q', header[:8])
            body = f.read(length + 4)
            if len(body) < length + 4:
                return
            yield body[:length]


def drop_events_after(log_dir: str, itr: int) -> None:
    """Rewrite each event file that holds events of steps after `itr` (or a torn last record)
    without them; files that need no change are left as they are."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter
    for name in os.listdir(log_dir):
        if name.startswith(_REWRITE):  # a rewrite a kill interrupted: never renamed
            os.remove(os.path.join(log_dir, name))
    for path in event_files(log_dir):
        records = list(read_records(path))
        keep = [r for r in records if Event.FromString(r).step <= itr]
        whole = sum(12 + len(r) + 4 for r in records) == os.path.getsize(path)
        if len(keep) == len(records) and whole:
            continue
        tmp = os.path.join(log_dir, f'{_REWRITE}{os.getpid()}.tmp')

        def write(f, keep=keep) -> None:
            writer = RecordWriter(f)
            for record in keep:
                writer.write(record)
        write_synced(tmp, write)
        os.replace(tmp, path)


def _wait_to_sort_last(log_dir: str, most: float = 2.0) -> None:
    """Wait (at most `most` seconds) until the clock has passed the second in the newest
    event file's name: the new file's name, which starts with the time in whole seconds,
    then sorts after it, and TensorBoard reads the steps in order."""
    stamps = [int(part) for path in event_files(log_dir)
              for part in os.path.basename(path).split('.')[3:4] if part.isdigit()]
    deadline = time.time() + most
    while stamps and int(time.time()) <= max(stamps) and time.time() < deadline:
        time.sleep(0.05)
