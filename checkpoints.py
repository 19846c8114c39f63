"""Checkpoint I/O: the 2019 run-folder layout (G.pth, D.pth, G_ema.pth, the optimizers and
state_dict.pth, with rotating copies G_copy0.pth, ...), written as one set that a kill, a NaN
or a full disk never leaves half replaced, and loaded with torch's weights-only allow-list.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import zipfile
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from torch.optim import Optimizer

# ----------------------------------------------------------------------------------------
# File names
# ----------------------------------------------------------------------------------------


def checkpoint_file(name: str, suffix: Optional[str]) -> str:
    """File name of a checkpoint part: G.pth, or with a copy suffix G_best0.pth."""
    return f'{name}_{suffix}.pth' if suffix else f'{name}.pth'


def checkpoint_suffix(filename: str) -> Optional[str]:
    """The copy suffix of a G/G_ema/D file name (G_ema_best0.pth -> best0, G.pth -> None)."""
    stem = filename[:-len('.pth')] if filename.endswith('.pth') else filename
    for prefix in ('G_ema', 'G', 'D'):  # G_ema first: 'G_ema_best0' is not G with 'ema_best0'
        if stem == prefix or stem.startswith(prefix + '_'):
            return stem[len(prefix) + 1:] or None
    raise ValueError(f'{filename} is not a G, G_ema or D checkpoint file (e.g. G_best0.pth)')


# ----------------------------------------------------------------------------------------
# Atomic writes, checked reads
# ----------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary name, fsync, then rename: a kill never leaves half a file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str, write: Callable, mode: str = 'wb') -> None:
    """`write(file)` to a temporary name, fsync, then rename onto `path`."""
    tmp = f'{path}.tmp{os.getpid()}'
    _write_synced(tmp, write, mode)
    os.replace(tmp, path)


def _save_synced(obj: Any, path: str) -> None:
    """torch.save and fsync (see _write_synced)."""
    _write_synced(path, lambda f: torch.save(obj, f))


def _write_synced(path: str, write: Callable, mode: str = 'wb') -> None:
    """Write a file and fsync it. A failure removes it and names it, and a full disk is said
    in words (torch reports one as an 'enforce fail' RuntimeError)."""
    try:
        with open(path, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            os.remove(path)
        full = (getattr(err, 'errno', None) == errno.ENOSPC
                or shutil.disk_usage(os.path.dirname(path) or '.').free < 64 * 2 ** 20)
        what = 'disk full' if full else f'{type(err).__name__}: {err}'
        target = re.sub(r'(\.new|\.tmp\d*)$', '', path)  # the file this write was for
        raise OSError(errno.ENOSPC if full else getattr(err, 'errno', None),
                      f'{what} while saving {target}; the previous checkpoint is intact (this '
                      f'save was not committed)') from err


def load_file(path: str, map_location: Any = 'cpu') -> Any:
    """torch.load with weights_only, allowing the nn.ReLU objects 2019 configs pickled."""
    if not os.path.exists(path):
        raise FileNotFoundError(f'checkpoint file {path} does not exist')
    try:
        with torch.serialization.safe_globals([nn.ReLU]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        # torch's own first line only: its weights_only advice would be wrong for a damaged file
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ''
        raise CorruptCheckpointError(
            f'{path} is truncated, corrupt or not a checkpoint ({type(err).__name__}: {first}). '
            f'If it belongs to a run folder, its rotating copies may be intact: resume from one '
            f'with --resume --load_weights copy0 (or copy1), or sample one with --load_weights '
            f'copy0') from err


class CorruptCheckpointError(ValueError):
    """A checkpoint file that exists but cannot be read (truncated, overwritten, not a .pth)."""


# ----------------------------------------------------------------------------------------
# Committing a set of files
# ----------------------------------------------------------------------------------------


# A save writes every file of its set under a staging name, records the set in a journal,
# then renames the files into place and removes the journal. A kill before the journal
# leaves the old set (its staged files are stale); a kill after it is rolled forward by
# recover_checkpoints at the next start. Either way the run resumes from one complete set.
STAGED = '.new'
COMMIT_JOURNAL = 'checkpoint_commit.json'


def commit_files(root: str, staged: list[str]) -> None:
    """Move staged files (written as `name + STAGED`) into place as one set."""
    atomic_write(os.path.join(root, COMMIT_JOURNAL), lambda f: json.dump({'files': staged}, f),
                 'w')
    _roll_forward(root, staged)


def _roll_forward(root: str, names: list[str]) -> None:
    """Rename the recorded set's staged files into place, then drop the journal."""
    for name in names:
        if os.path.exists(os.path.join(root, name + STAGED)):
            os.replace(os.path.join(root, name + STAGED), os.path.join(root, name))
    _fsync_dir(root)
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
    journal = os.path.join(root, COMMIT_JOURNAL)
    if os.path.exists(journal):
        try:
            with open(journal) as f:
                names = json.load(f)['files']
        except (OSError, ValueError, KeyError):
            names = None  # the journal's own rename is atomic: this is not our journal
        if names is not None:
            _roll_forward(root, names)
            done.append(f'completed the save interrupted after it was recorded: {len(names)} '
                        f'files')
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
    copies, hard links where the file system allows). The set is committed as a whole (see
    STAGED); weights or optimizer states with a NaN or inf are refused (FloatingPointError)
    so that they never replace finite ones.
    """
    root = os.path.join(weights_root, experiment_name)
    parts = {'G': G.state_dict(), 'D': D.state_dict()}
    for name, obj in (('G_optim', G_optim), ('D_optim', D_optim), ('G_ema', G_ema)):
        if obj is not None:
            parts[name] = obj.state_dict()
    bad = nonfinite_parts(parts)
    if bad:
        raise FloatingPointError(f'{", ".join(bad)} hold non-finite values: not saved to {root}')
    parts['state_dict'] = dict(state_dict, config=plain_config(state_dict.get('config', {})),
                               **(extra or {}))
    os.makedirs(root, exist_ok=True)
    staged = []
    try:
        for name, obj in parts.items():
            first = checkpoint_file(name, name_suffix)
            _save_synced(obj, os.path.join(root, first + STAGED))
            staged.append(first)
            for suffix in also_as:
                staged.append(checkpoint_file(name, suffix))
                _link_or_copy(os.path.join(root, first + STAGED),
                              os.path.join(root, staged[-1] + STAGED))
    except BaseException:
        for name in staged:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(root, name + STAGED))
        raise
    commit_files(root, staged)
    return root


def _link_or_copy(source: str, target: str) -> None:
    """A second name for a written file: a hard link (no second write), else a copy."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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


def load_state_checked(module: nn.Module, state: dict, strict: bool, source: str) -> None:
    """load_state_dict that names every missing, unexpected and mis-shaped key."""
    own = module.state_dict()
    wrong = [f'{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}'
             for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or (strict and (missing or unexpected)):
        lines = [f'{source} does not fit this {type(module).__name__}:']
        lines += [f'  shape mismatch {w}' for w in wrong]
        lines += [f'  missing from file: {", ".join(missing)}'] if missing else []
        lines += [f'  not in model: {", ".join(unexpected)}'] if unexpected else []
        lines.append('  (is the config — resolution, G_ch/D_ch, attention, hier, G_shared, '
                     'n_classes — the one this checkpoint was trained with?)')
        raise ValueError('\n'.join(lines))
    module.load_state_dict(state, strict=strict)

