"""The training logs: one `itr: value` text file per series (MyLogger), a .jsonl of test
records (MetricsLogger), both torn-line safe and truncated to a checkpoint on resume; and the
singular values the logs record (get_SVs). Reachable as utils.X under their 2019 names.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from typing import Callable, Optional

import torch.nn as nn

from atomic_io import atomic_write


def append_line(path: str, line: str) -> None:
    """Append one line to a log file, first ending a last line that a kill cut short (so the
    new line never merges into it; readers then skip the torn one)."""
    with open(path, 'ab+') as f:
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b'\n':
                f.write(b'\n')
        f.write(line.encode() + b'\n')


def _keep_lines(path: str, keep: Callable[[str], bool]) -> None:
    """Rewrite a log file (atomically) with the lines `keep` accepts, blank lines dropped; a
    line `keep` cannot parse (raises ValueError: a torn line) is dropped with a warning."""
    kept, torn = [], []
    with open(path, errors='replace') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                if keep(line):
                    kept.append(line.rstrip('\n') + '\n')
            except (ValueError, KeyError, TypeError, AttributeError):
                torn.append(number)
    if torn:
        warnings.warn(f'{path}: dropped {len(torn)} unreadable line(s) (line '
                      f'{", ".join(map(str, torn[:10]))}), e.g. the last line of a run that was '
                      f'killed while writing it', stacklevel=3)
    atomic_write(path, lambda f: f.writelines(kept), 'w')


class MetricsLogger:
    """Appends one JSON object per record (with a timestamp) to a .jsonl file."""

    def __init__(self, fname: str, reinitialize: bool = False):
        self.fname = fname
        os.makedirs(os.path.dirname(fname) or '.', exist_ok=True)
        if reinitialize and os.path.exists(fname):
            os.remove(fname)

    def log(self, record: Optional[dict] = None, **kwargs) -> None:
        """Append a record."""
        record = dict(record or {}, **kwargs, _stamp=time.time())
        append_line(self.fname, json.dumps(record, ensure_ascii=True))

    def truncate_after(self, itr: int) -> None:
        """Drop records of iterations after `itr` (written by a run that was killed later) and
        lines a kill cut short."""
        if os.path.exists(self.fname):
            _keep_lines(self.fname, lambda line: json.loads(line).get('itr', 0) <= itr)


class MyLogger:
    """Plain-text training logs, one file per metric: lines `itr: value`."""

    def __init__(self, root: str, reinitialize: bool = False, logstyle: str = '%3.3f'):
        self.root, self.logstyle = root, logstyle
        os.makedirs(root, exist_ok=True)
        if reinitialize:
            for fname in os.listdir(root):
                if fname.endswith('.log'):
                    os.remove(os.path.join(root, fname))

    def log(self, itr: int, **kwargs: float) -> None:
        """Append each metric to its own file."""
        for name, value in kwargs.items():
            append_line(os.path.join(self.root, f'{name}.log'), f'{itr}: {self.logstyle % value}')

    def truncate_after(self, itr: int) -> None:
        """Drop lines of iterations after `itr`, and lines a kill cut short."""
        def keep(line: str) -> bool:
            step, value = line.split(':', 1)
            float(value)  # a torn value ('2.5e+') raises
            return int(step) <= itr
        for fname in os.listdir(self.root):
            if fname.endswith('.log'):
                _keep_lines(os.path.join(self.root, fname), keep)


def get_SVs(net: nn.Module, prefix: str) -> dict[str, float]:
    """Every logged singular value of a net, keyed like 2019's SV logs."""
    return {f'{prefix}_{key}'.replace('.', '_'): float(value)
            for key, value in net.state_dict().items() if 'sv' in key.split('.')[-1]}
