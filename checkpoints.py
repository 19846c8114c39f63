"""Checkpoint I/O: the 2019 run-folder layout (G.pth, D.pth, G_ema.pth, the optimizers and
state_dict.pth, with rotating copies G_copy0.pth, ...), written as one set that a kill, a NaN
or a full disk never leaves half replaced, and loaded with torch's weights-only allow-list.

Every file a save commits has its SHA-256 recorded (CHECKSUMS), and every load checks it: a
file damaged after its save (truncated, or bytes overwritten in the middle) is refused with
its name and the run's other copies to fall back on. The copies (G_copy0.pth, G_best0.pth,
...) are files of their own, never hard links, so damage to one never reaches another. The
files are written and fsynced by atomic_io.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import zipfile
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.optim import Optimizer

# The durable writes live in atomic_io.py; utils and flags import atomic_save/atomic_write here.
from atomic_io import (  # noqa: F401
    FICLONE,
    atomic_save,
    atomic_write,
    copy_synced,
    write_synced,
)

# ----------------------------------------------------------------------------------------
# File names
# ----------------------------------------------------------------------------------------


def checkpoint_file(name: str, suffix: Optional[str]) -> str:
    """File name of a checkpoint part: G.pth, or with a copy suffix G_best0.pth."""
    return f'{name}_{suffix}.pth' if suffix else f'{name}.pth'


# The files of a set, longest name first (G_ema_copy0 is G_ema's copy0, not G's 'ema_copy0').
PARTS = ('state_dict', 'G_optim', 'D_optim', 'G_ema', 'G', 'D')


def split_checkpoint_file(filename: str) -> Optional[tuple[str, Optional[str]]]:
    """(part, copy suffix) of a checkpoint file name (G_ema_best0.pth -> ('G_ema', 'best0'),
    D.pth -> ('D', None)); None for any other name."""
    if not filename.endswith('.pth'):
        return None
    stem = filename[:-len('.pth')]
    for part in PARTS:
        if stem == part:
            return part, None
        if stem.startswith(part + '_'):
            return part, stem[len(part) + 1:]
    return None


def checkpoint_suffix(filename: str) -> Optional[str]:
    """The copy suffix of a G/G_ema/D file name (G_ema_best0.pth -> best0, G.pth -> None)."""
    split = split_checkpoint_file(filename if filename.endswith('.pth') else filename + '.pth')
    if split is None or split[0] not in ('G_ema', 'G', 'D'):
        raise ValueError(f'{filename} is not a G, G_ema or D checkpoint file (e.g. G_best0.pth)')
    return split[1]


# ----------------------------------------------------------------------------------------
# Hashed writes, checked reads
# ----------------------------------------------------------------------------------------


class _HashingWriter:
    """A binary file that hashes what is written through it (torch.save writes any object
    with write/flush), so a save records its SHA-256 without reading the file back."""

    def __init__(self, f):
        self.f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def checksum(self) -> dict:
        return {'sha256': self.sha256.hexdigest(), 'bytes': self.bytes}


def _save_synced(obj: Any, path: str) -> dict:
    """torch.save and fsync (see atomic_io.write_synced); returns the file's checksum record."""
    writer = None

    def save(f) -> None:
        nonlocal writer
        writer = _HashingWriter(f)
        torch.save(obj, writer)
    write_synced(path, save)
    return writer.checksum()


def load_file(path: str, map_location: Any = 'cpu') -> Any:
    """torch.load with weights_only, allowing the nn.ReLU objects 2019 configs pickled, after
    checking the file against the checksum its save recorded (if any). A file that cannot be
    read raises CorruptCheckpointError naming it and the run's copies to fall back on."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'checkpoint file {path} does not exist')
    check_checksum(path)
    try:
        with torch.serialization.safe_globals([nn.ReLU]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
            OSError) as err:
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        # torch's own first line only: its weights_only advice would be wrong for a damaged file
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ''
        raise CorruptCheckpointError(
            f'{path} is truncated, corrupt or not a checkpoint ({type(err).__name__}: '
            f'{first}). {fallback_advice(path)}') from err


class CorruptCheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read (truncated, overwritten, not a .pth)."""


# ----------------------------------------------------------------------------------------
# Checksums, and the copies to fall back on
# ----------------------------------------------------------------------------------------


# {file name: {'sha256', 'bytes', 'itr'}} of every file the run's saves committed.
CHECKSUMS = 'checkpoint_checksums.json'


def _read_json(path: str) -> dict:
    """A JSON object file, {} if absent or unreadable (then nothing can be checked)."""
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict):
            return data
    return {}


def recorded_checksums(root: str) -> dict:
    """{file name: checksum record} of a run folder's committed files (CHECKSUMS)."""
    return _read_json(os.path.join(root, CHECKSUMS)).get('files', {})


def _journal_checksums(root: str) -> dict:
    """The checksum records of the save in progress (or interrupted after its journal)."""
    return _read_json(os.path.join(root, COMMIT_JOURNAL)).get('checksums', {})


def as_committed(path: str) -> str:
    """The file that will hold `path`'s contents once an interrupted save is completed: its
    staged version if the journal records one (recover_checkpoints renames it into place),
    else `path`. Reads before the completion (a resume's config) then see the set it
    completes."""
    root, name = os.path.split(path)
    journal = _read_json(os.path.join(root, COMMIT_JOURNAL))
    staged = path + STAGED
    return staged if name in journal.get('files', ()) and os.path.exists(staged) else path


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            digest.update(block)
    return digest.hexdigest()


def check_checksum(path: str) -> None:
    """Raise CorruptCheckpointError if the file differs from what its save recorded (a file
    no save of ours recorded, e.g. of a 2019 run, is not checked). While a save is being
    committed a file may be the old or the new one: either record passes."""
    root, name = os.path.split(path)
    if name.endswith(STAGED):  # a staged file of a recorded save (see as_committed)
        name = name[:-len(STAGED)]
        records = [_journal_checksums(root).get(name)]
    else:
        records = [recorded_checksums(root).get(name), _journal_checksums(root).get(name)]
    records = [r for r in records if r]
    if not records:
        return
    size = os.path.getsize(path)
    sizes = {r.get('bytes') for r in records}
    if size in sizes and file_sha256(path) in {r.get('sha256') for r in records}:
        return
    record = records[0]
    what = (f'it has {size:,} bytes where its save wrote {record.get("bytes", 0):,}'
            if size not in sizes else 'its SHA-256 differs from the one its save recorded')
    raise CorruptCheckpointError(
        f'{path} is damaged: {what} (iteration {record.get("itr", "?")}, {CHECKSUMS}). '
        f'{fallback_advice(path)} If you replaced it by hand with a file you trust, delete '
        f'its entry from {os.path.join(root, CHECKSUMS)}.')


def fallback_advice(path: str) -> str:
    """The run's other copies of a damaged file's set, newest first, and how to use one."""
    root, name = os.path.split(path.removesuffix(STAGED))
    split = split_checkpoint_file(name)
    if split is None or not os.path.isdir(root):
        return 'It is not a file of a run folder\'s checkpoint set.'
    part, own = split
    records = recorded_checksums(root)
    copies = []
    for other in os.listdir(root):
        found = split_checkpoint_file(other)
        if found and found[0] == part and found[1] != own:
            itr = records.get(other, {}).get('itr')
            copies.append((-1 if itr is None else itr, found[1]))
    if not copies:
        return (f'The run folder {root} holds no other copy of {part} (--num_save_copies 0, or '
                f'no save since): restore the file from a backup.')
    copies.sort(key=lambda c: (-c[0], c[1] or ''))
    listed = ', '.join(f'{suffix or "the main set"}'
                       + (f' (iteration {itr})' if itr >= 0 else '') for itr, suffix in copies)
    use = next((suffix for _, suffix in copies if suffix), None)
    how = (f'Resume from one with --resume --load_weights {use}; sample one with sample.py '
           f'--load_weights {use} (or --weights {os.path.join(root, checkpoint_file("G", use))})'
           if use else 'Resume or sample the main set (no --load_weights)')
    return f'This run\'s other copies of it: {listed}. {how}.'


# ----------------------------------------------------------------------------------------
# Committing a set of files
# ----------------------------------------------------------------------------------------


# A save writes every file of its set under a staging name, records the set and the files'
# checksums in a journal, then renames the files into place, adds the checksums to CHECKSUMS
# and removes the journal. A kill before the journal leaves the old set (its staged files are
# stale); a kill after it is rolled forward by recover_checkpoints at the next start. Either
# way the run resumes from one complete set.
STAGED = '.new'
COMMIT_JOURNAL = 'checkpoint_commit.json'


def commit_files(root: str, staged: list[str], checksums: Optional[dict] = None) -> None:
    """Move staged files (written as `name + STAGED`) into place as one set; `checksums`:
    {name: record} of the files, kept in CHECKSUMS for loads to check."""
    journal = {'files': staged, 'checksums': checksums or {}}
    atomic_write(os.path.join(root, COMMIT_JOURNAL), lambda f: json.dump(journal, f), 'w')
    _roll_forward(root, journal)


def _roll_forward(root: str, journal: dict) -> None:
    """Rename the recorded set's staged files into place, record their checksums, then drop
    the journal."""
    for name in journal['files']:
        if os.path.exists(os.path.join(root, name + STAGED)):
            os.replace(os.path.join(root, name + STAGED), os.path.join(root, name))
    _fsync_dir(root)
    recorded = recorded_checksums(root)
    # The committed files replace their old records (a journal without checksums, from before
    # they were kept, leaves its files unrecorded rather than checked against old records).
    files = {**{k: v for k, v in recorded.items() if k not in journal['files']},
             **journal.get('checksums', {})}
    if files != recorded:
        atomic_write(os.path.join(root, CHECKSUMS),
                     lambda f: json.dump({'files': files}, f, indent=1, sort_keys=True), 'w')
    os.remove(os.path.join(root, COMMIT_JOURNAL))
    _fsync_dir(root)


def _fsync_dir(root: str) -> None:
    """Make renames in a folder durable (a no-op where folders cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_checkpoints(root: str) -> list[str]:
    """Finish a save a kill interrupted after its journal, drop staged and temporary files of
    one it interrupted before; returns what was done, to print."""
    done = []
    journal = _read_json(os.path.join(root, COMMIT_JOURNAL))
    if isinstance(journal.get('files'), list):  # the journal's rename is atomic: else not ours
        _roll_forward(root, journal)
        done.append(f'completed the save interrupted after it was recorded: '
                    f'{len(journal["files"])} files')
    stale = sorted(f for f in os.listdir(root) if f.endswith(STAGED)
                   or re.fullmatch(r'.+\.tmp\d*', f))
    for name in stale:
        os.remove(os.path.join(root, name))
    if stale:
        done.append(f'removed {len(stale)} files of an interrupted save: {", ".join(stale)}')
    return done


# ----------------------------------------------------------------------------------------
# Saving and loading a run
# ----------------------------------------------------------------------------------------


# Here rather than in flags.py, which imports this module: every save writes the config.
CONFIG_FILE = 'config.json'


def dump_config(config: dict, f) -> None:
    """Write a run config as config.json holds it: plain values, indented, keys sorted."""
    json.dump(plain_config(config), f, indent=2, sort_keys=True)


def plain_config(config: dict) -> dict:
    """The config without 2019's pickled nn.ReLU entries (rebuilt from G_nl/D_nl)."""
    return {k: v for k, v in config.items() if k not in ('G_activation', 'D_activation')}


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() and obj.numel() else []
    if isinstance(obj, dict):
        obj = list(obj.values())
    values = obj if isinstance(obj, (list, tuple)) else ()
    return [t for v in values for t in _tensors(v)]


def nonfinite_parts(parts: dict[str, Any]) -> list[str]:
    """Names of the parts (state dicts) holding a NaN or inf, by one max-abs reduction per
    device: a save syncs with the device once, the training step never does."""
    maxes: dict[torch.device, list[torch.Tensor]] = {}
    owners: dict[torch.device, list[str]] = {}
    for name, obj in parts.items():
        for t in _tensors(obj):
            maxes.setdefault(t.device, []).append(t.detach())
            owners.setdefault(t.device, []).append(name)
    bad = set()
    for device, tensors in maxes.items():
        # max |x| is finite exactly when every entry is (NaN propagates through the max).
        finite = torch.stack(torch._foreach_norm(tensors, float('inf'))).isfinite().tolist()
        bad.update(name for name, ok in zip(owners[device], finite) if not ok)
    return sorted(bad)


def save_weights(G: nn.Module, D: nn.Module, state_dict: dict, weights_root: str,
                 experiment_name: str, *, name_suffix: Optional[str] = None,
                 G_ema: Optional[nn.Module] = None, G_optim: Optional[Optimizer] = None,
                 D_optim: Optional[Optimizer] = None, extra: Optional[dict] = None,
                 also_as: tuple[str, ...] = ()) -> str:
    """Write G, D, their optimizers, G_ema and state_dict (plus `extra`) into the run folder,
    under `name_suffix` and, in the same set, under each suffix of `also_as` (rotating
    copies: independent files). The main set (no suffix) also writes config.json, the config
    in state_dict, so that the folder's config is always the one of its checkpoint. The set
    is committed as a whole (see STAGED) with each file's checksum; weights or optimizer
    states with a NaN or inf are refused (FloatingPointError) so that they never replace
    finite ones.
    """
    root = os.path.join(weights_root, experiment_name)
    parts = {'G': G.state_dict(), 'D': D.state_dict()}
    for name, obj in (('G_optim', G_optim), ('D_optim', D_optim), ('G_ema', G_ema)):
        if obj is not None:
            parts[name] = obj.state_dict()
    bad = nonfinite_parts(parts)
    if bad:
        raise FloatingPointError(f'{", ".join(bad)} hold non-finite values: not saved to {root}')
    config = plain_config(state_dict.get('config', {}))
    parts['state_dict'] = dict(state_dict, config=config, **(extra or {}))
    os.makedirs(root, exist_ok=True)
    staged, checksums, itr = [], {}, int(state_dict.get('itr', 0))
    try:
        for name, obj in parts.items():
            first = checkpoint_file(name, name_suffix)
            checksums[first] = {**_save_synced(obj, os.path.join(root, first + STAGED)),
                                'itr': itr}
            staged.append(first)
            for suffix in also_as:
                staged.append(checkpoint_file(name, suffix))
                copy_synced(os.path.join(root, first + STAGED),
                            os.path.join(root, staged[-1] + STAGED))
                checksums[staged[-1]] = checksums[first]
        if name_suffix is None and config:
            write_synced(os.path.join(root, CONFIG_FILE + STAGED),
                         lambda f: dump_config(config, f), 'w')
            staged.append(CONFIG_FILE)
    except BaseException:
        for name in staged + [CONFIG_FILE]:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(root, name + STAGED))
        raise
    commit_files(root, staged, checksums)
    return root


def describe_runs(weights_root: str) -> str:
    """The run folders under a weights root, in words, for 'no run folder' errors."""
    if not os.path.isdir(weights_root):
        return f'{weights_root} does not exist'
    runs = sorted(d for d in os.listdir(weights_root)
                  if os.path.isdir(os.path.join(weights_root, d)))
    return f'runs in {weights_root}: {", ".join(runs[:10])}' if runs else \
        f'{weights_root} holds no runs'


def load_weights(G: Optional[nn.Module], D: Optional[nn.Module], state_dict: dict,
                 weights_root: str, experiment_name: str, *, name_suffix: Optional[str] = None,
                 G_ema: Optional[nn.Module] = None, strict: bool = True,
                 G_optim: Optional[Optimizer] = None, D_optim: Optional[Optimizer] = None
                 ) -> dict:
    """Load a run folder (ours or the 2019 release's) into the given modules.

    Updates the keys of `state_dict` it already has from state_dict.pth and returns the whole
    loaded state (with extra resume entries such as RNG states).
    """
    root = os.path.join(weights_root, experiment_name)
    if not os.path.isdir(root):
        raise FileNotFoundError(f'no run folder {root}: check --weights_root/--base_root and '
                                f'--experiment_name (or the flags the name is derived from)')
    targets = [('G', G), ('D', D), ('G_ema', G_ema), ('G_optim', G_optim),
               ('D_optim', D_optim)]
    for name, target in targets:
        if target is None:
            continue
        path = os.path.join(root, checkpoint_file(name, name_suffix))
        loaded = load_file(path)
        if name.endswith('optim'):
            target.load_state_dict(loaded)
        else:
            load_state_checked(target, loaded, strict, path)
    saved = load_file(os.path.join(root, checkpoint_file('state_dict', name_suffix)))
    for key in state_dict:
        if key in saved and key != 'config':
            state_dict[key] = saved[key]
    return saved


def state_dict_diff(own: dict, state: dict) -> tuple[list[str], list[str], list[str]]:
    """(keys of `own` missing from `state`, keys of `state` not in `own`, keys whose shapes
    differ), each in its dict's order."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    return missing, unexpected, reshaped


def load_state_checked(module: nn.Module, state: dict, strict: bool, source: str) -> None:
    """load_state_dict that names every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    missing, unexpected, reshaped = state_dict_diff(own, state)
    missing, unexpected = sorted(missing), sorted(unexpected)
    wrong = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
             for k in reshaped]
    if wrong or (strict and (missing or unexpected)):
        lines = [f'{source} does not fit this {type(module).__name__}:']
        lines += [f'  shape mismatch {w}' for w in wrong]
        lines += [f'  missing from file: {", ".join(missing)}'] if missing else []
        lines += [f'  not in model: {", ".join(unexpected)}'] if unexpected else []
        lines.append('  (is the config — resolution, G_ch/D_ch, attention, hier, G_shared, '
                     'n_classes — the one this checkpoint was trained with?)')
        raise ValueError('\n'.join(lines))
    module.load_state_dict(state, strict=strict)

