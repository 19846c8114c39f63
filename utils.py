"""Training helpers, in sections: seeds and RNG state, EMA and regularisers, logging, z/y
sampling, standing stats and sample sheets.

The command-line flags and run config live in flags.py, checkpoint I/O in checkpoints.py;
their public names are re-exported here.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
import warnings
import zipfile
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torchvision

import layers

# The 2019 code and its users call utils.prepare_parser, utils.load_weights, ...: the names
# that moved to flags.py and checkpoints.py stay reachable here.
from checkpoints import (  # noqa: F401
    CHECKSUMS,
    COMMIT_JOURNAL,
    CONFIG_FILE,
    STAGED,
    CorruptCheckpointError,
    atomic_save,
    atomic_write,
    checkpoint_file,
    checkpoint_suffix,
    commit_files,
    describe_runs,
    load_file,
    load_state_checked,
    load_weights,
    nonfinite_parts,
    plain_config,
    recover_checkpoints,
    save_weights,
)
from flags import (  # noqa: F401
    ADAM_BETA,
    COUNT,
    DEBUG_ENV,
    DERIVED_KEYS,
    FLAGS,
    INVOCATION_KEYS,
    NONNEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    SAMPLE_FLAGS,
    SWITCH,
    Flag,
    add_sample_parser,
    all_flags,
    bounded,
    config_keys,
    legacy_precision_note,
    parse_given,
    prepare_parser,
    read_run_config,
    save_config,
    update_config_roots,
)
from run_names import dataset_label, hashname, name_from_config  # noqa: F401

# ----------------------------------------------------------------------------------------
# Seeds and RNG state
# ----------------------------------------------------------------------------------------


def seed_rng(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_itr(seed: int, itr: int) -> None:
    """Seed torch from (seed, iteration): a resumed run draws what the original drew."""
    torch.manual_seed(seed * 100_000_007 + itr)


def rng_state() -> dict:
    """Every RNG's state, in types that load with `weights_only=True`."""
    np_state = np.random.get_state()
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:])}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states saved by `rng_state`."""
    random.setstate(state['python'])
    torch.set_rng_state(state['torch'])
    kind, keys, *rest = state['numpy']
    np.random.set_state((kind, keys.numpy(), *rest))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'][:torch.cuda.device_count()])


# ----------------------------------------------------------------------------------------
# EMA and regularisers
# ----------------------------------------------------------------------------------------


class ema:
    """Exponential moving average of G: every state-dict entry, params and buffers alike.

    Before `start_itr` the copy is pegged to G (decay 0).
    """

    def __init__(self, source: nn.Module, target: nn.Module, decay: float = 0.9999,
                 start_itr: int = 0):
        self.source, self.target, self.decay, self.start_itr = source, target, decay, start_itr
        self.source_dict, self.target_dict = source.state_dict(), target.state_dict()
        self.target.load_state_dict(self.source_dict)
        self.keys = [k for k, v in self.source_dict.items() if v.is_floating_point()]

    @torch.no_grad()
    def update(self, itr: Optional[int] = None) -> None:
        """ema = decay * ema + (1 - decay) * G, for all entries at once."""
        decay = self.decay if itr is None or itr >= self.start_itr else 0.0
        src = [self.source_dict[k] for k in self.keys]
        tgt = [self.target_dict[k] for k in self.keys]
        torch._foreach_lerp_(tgt, src, 1.0 - decay)


def ortho(model: nn.Module, strength: float = 1e-4, blacklist: tuple = ()) -> None:
    """Add the orthogonal-regularisation gradient to every >=2-dim parameter's grad.

    With W viewed [out, -1]: grad += strength * 2 ((W Wᵀ) ⊙ (1 - I)) W, the gradient of
    (strength / 2) ‖(W Wᵀ) ⊙ (1 - I)‖²_F, computed without building that loss. For a tall
    W (out > in: G's first linear, [16·ch·16, z chunk], and the BN gain/bias linears) the
    same gradient is W (Wᵀ W) - diag(W Wᵀ) W, which never forms the [out, out] matrix: at
    BigGAN-128 ch96 that matrix is 24,576² (2.4 GB) and took 19% of a res-64 CPU step.
    """
    skip = {id(p) for p in blacklist}
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim < 2 or id(param) in skip or param.grad is None:
                continue
            w = param.reshape(param.shape[0], -1)  # a copy for channels_last weights
            if w.shape[0] > w.shape[1]:
                grad = torch.mm(w, torch.mm(w.t(), w)) - w.square().sum(1, keepdim=True) * w
            else:
                grad = torch.mm(w, w.t())
                grad.fill_diagonal_(0)
                grad = torch.mm(grad, w)
            param.grad.add_(grad.view_as(param), alpha=2 * strength)


def toggle_grad(model: nn.Module, on: bool) -> None:
    """Switch requires_grad of every parameter of a model."""
    for param in model.parameters():
        param.requires_grad_(on)


# ----------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# z/y sampling, standing stats, sample sheets
# ----------------------------------------------------------------------------------------


class Latents:
    """Preallocated z [B, dim_z] and class y [B] buffers, resampled in place.

    Under DDP every rank draws the whole global batch (world_size x B, from the same seed)
    and keeps its own slice: N processes train exactly like one with the N-times batch.
    """

    def __init__(self, batch_size: int, dim_z: int, n_classes: int,
                 device: Union[str, torch.device] = 'cpu', *, z_var: float = 1.0, rank: int = 0,
                 world_size: int = 1):
        self.z_all = torch.empty(batch_size * world_size, dim_z, device=device)
        self.y_all = torch.empty(batch_size * world_size, dtype=torch.long, device=device)
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        self.z, self.y = self.z_all[rows], self.y_all[rows]
        self.n_classes, self.z_var = n_classes, z_var

    def sample_(self) -> tuple[torch.Tensor, torch.Tensor]:
        """New z ~ N(0, z_var²) (2019 used z_var as the std) and uniform classes.

        Returns views of the buffers, which the next call overwrites: copy what you keep.
        """
        self.z_all.normal_(0, self.z_var)
        self.y_all.random_(0, self.n_classes)
        return self.z, self.y


class TruncatedLatents(Latents):
    """Latents with z truncated at `truncation` (the truncation trick; `style` as for
    `truncated_normal`)."""

    def __init__(self, batch_size: int, dim_z: int, n_classes: int,
                 device: Union[str, torch.device] = 'cpu', *, truncation: float,
                 style: str = 'resample'):
        super().__init__(batch_size, dim_z, n_classes, device)
        self.truncation, self.style = truncation, style

    def sample_(self) -> tuple[torch.Tensor, torch.Tensor]:
        """New truncated z and uniform classes."""
        self.z.copy_(truncated_normal(self.z.shape, self.truncation, self.z.device,
                                      style=self.style))
        self.y.random_(0, self.n_classes)
        return self.z, self.y


def draw_z(shape: tuple, device: Union[str, torch.device] = 'cpu', truncation: float = 0.0,
           style: str = 'resample') -> torch.Tensor:
    """z ~ N(0, 1), truncated at `truncation` when it is > 0 (see `truncated_normal`)."""
    if truncation > 0:
        return truncated_normal(shape, truncation, device, style=style)
    return torch.randn(shape, device=device)


TRUNCATION_STYLES = ('resample', 'scaled')


def truncated_normal(shape: tuple, truncation: float, device: Union[str, torch.device] = 'cpu',
                     generator: Optional[torch.Generator] = None, *, style: str = 'resample'
                     ) -> torch.Tensor:
    """Truncated z. `resample` (the paper, 2019): N(0, 1) truncated to [-t, t], the law of
    redrawing every |z_i| > t. `scaled` (TF-Hub and Hugging Face BigGAN, whose per-truncation
    BN statistics assume it): t times N(0, 1) truncated to [-2, 2]."""
    if style not in TRUNCATION_STYLES:
        raise ValueError(f'truncation style {style!r}: choose one of {TRUNCATION_STYLES}')
    z = torch.empty(shape, device=device)
    if style == 'scaled':
        return truncation * nn.init.trunc_normal_(z, std=1.0, a=-2.0, b=2.0,
                                                  generator=generator)
    return nn.init.trunc_normal_(z, std=1.0, a=-truncation, b=truncation, generator=generator)


@contextlib.contextmanager
def preserved_buffers(net: nn.Module):
    """Restore every buffer (SN vectors, BN stats) on exit: sampling leaves training intact.

    Sampling in train mode, or with standing stats, rewrites G's buffers; a checkpoint saved
    before it would then not hold the state training continues from (no exact resume).
    """
    saved = [b.detach().clone() for b in net.buffers()]
    try:
        with layers.local_batchnorm(net):  # rank 0 samples alone: no cross-rank BN stats
            yield net
    finally:
        with torch.no_grad():
            for b, s in zip(net.buffers(), saved):
                b.copy_(s)


def accumulate_standing_stats(G: nn.Module, latents: Latents, num_accumulations: int = 16
                              ) -> None:
    """Replace G's BN statistics by their average over `num_accumulations` fresh batches."""
    norms = [m for m in G.modules() if isinstance(m, layers.StoredStatsNorm)]
    for m in norms:
        m.start_standing_stats()
    G.train()
    with torch.no_grad():
        for _ in range(num_accumulations):
            z, y = latents.sample_()
            G(z, G.shared(y))
    for m in norms:
        m.finish_standing_stats()
    G.eval()


def save_grid(images: torch.Tensor, path: str, nrow: Optional[int] = None) -> None:
    """Images in [-1, 1] as one grid file (square-ish unless `nrow` images per row)."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    nrow = nrow or int(len(images) ** 0.5)
    torchvision.utils.save_image(images.float().cpu(), path, nrow=nrow, normalize=True,
                                 value_range=(-1, 1))


def configure_backends(device: torch.device) -> None:
    """On CUDA: TF32 matmuls/convolutions and cuDNN autotuning (no effect on the CPU)."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


@torch.no_grad()
def sample_sheet(G: nn.Module, *, classes_per_sheet: int, num_classes: int,
                 samples_per_class: int, samples_root: str, experiment_name: str,
                 folder_number: int, device: Union[str, torch.device] = 'cpu',
                 truncation: float = 0.0, truncation_style: str = 'resample') -> list[str]:
    """Per-class sheets samples{i}.jpg: one row per class, `samples_per_class` columns."""
    paths = []
    for i in range(max(num_classes // classes_per_sheet, 1)):
        classes = min(classes_per_sheet, num_classes)
        y = torch.arange(i * classes, (i + 1) * classes, device=device)
        ims = [G(draw_z((classes, G.dim_z), device, truncation, truncation_style), G.shared(y))
               for _ in range(samples_per_class)]
        out = torch.stack(ims, 1).flatten(0, 1)  # (classes * samples_per_class, 3, R, R)
        paths.append(os.path.join(samples_root, experiment_name, str(folder_number),
                                  f'samples{i}.jpg'))
        save_grid(out, paths[-1], nrow=samples_per_class)
    return paths


def interp(x0: torch.Tensor, x1: torch.Tensor, num_midpoints: int) -> torch.Tensor:
    """Linear interpolation [N, 1, D] x2 -> [N, num_midpoints + 2, D]."""
    weight = torch.linspace(0, 1.0, num_midpoints + 2, device=x0.device).to(x0.dtype)
    return torch.lerp(x0, x1, weight.view(1, -1, 1))  # broadcasts to (N, num_midpoints + 2, D)


@torch.no_grad()
def interp_sheet(G: nn.Module, *, num_per_sheet: int, num_midpoints: int, num_classes: int,
                 samples_root: str, experiment_name: str, folder_number: int,
                 sheet_number: int = 0, fix_z: bool = False, fix_y: bool = False,
                 device: Union[str, torch.device] = 'cpu', truncation: float = 0.0,
                 truncation_style: str = 'resample') -> Optional[str]:
    """Interpolation sheet interp{Z}{Y}{n}.jpg: rows go from one (z, class) to another."""
    n, steps = num_per_sheet, num_midpoints + 2

    def z_ends() -> torch.Tensor:
        return draw_z((n, 1, G.dim_z), device, truncation, truncation_style)

    if not fix_y and not isinstance(G.shared, nn.Embedding):
        return None  # without a shared embedding there is no class vector to interpolate
    if fix_z:
        zs = z_ends().repeat(1, steps, 1)
    else:
        zs = interp(z_ends(), z_ends(), num_midpoints)
    y0 = G.shared(torch.randint(0, num_classes, (n,), device=device)).view(n, 1, -1)
    if fix_y:
        ys = y0.repeat(1, steps, *[1] * (y0.dim() - 2))
    else:
        y1 = G.shared(torch.randint(0, num_classes, (n,), device=device)).view(n, 1, -1)
        ys = interp(y0, y1, num_midpoints)
    ys = ys.flatten(0, 1)  # (n * steps, shared_dim), or (n * steps, 1) class indices
    out = G(zs.flatten(0, 1), ys.squeeze(-1) if ys.dtype == torch.long else ys)
    style = ('Z' if not fix_z else '') + ('Y' if not fix_y else '')
    path = os.path.join(samples_root, experiment_name, str(folder_number),
                        f'interp{style}{sheet_number}.jpg')
    save_grid(out, path, nrow=steps)
    return path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, R, R] in [-1, 1] -> uint8 [B, R, R, 3] (rounded, on the images' device)."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(
        0, 2, 3, 1)


def npz_batch(images: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """A batch as write_npz stores it: uint8 [B, R, R, 3] C-ordered, and the labels on the CPU.

    The labels are a copy: y is the latents' reused buffer (and .cpu() of a CPU tensor is the
    tensor itself), which the next draw overwrites.
    """
    x = np.ascontiguousarray(to_uint8(images).cpu().numpy())
    return x, y.to('cpu', copy=True)


def write_npz(path: str, sample: Callable, num: int) -> None:
    """Stream `num` samples into an uncompressed .npz: x uint8 [N, R, R, 3], y int64 [N].

    Only one batch of images is in memory at a time: x.npy is written into the zip batch by
    batch (the header first, from the first batch's shape); the labels (8 bytes each) are
    kept and written after. A temporary name is renamed at the end, or removed when anything
    fails or interrupts the writing (an existing file at `path` is then left as it was).
    """
    if num < 1:
        raise ValueError(f'an .npz of {num} samples: give at least 1')
    tmp, labels, done = f'{path}.tmp', [], 0
    try:
        with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open('x.npy', 'w', force_zip64=True) as f:  # size unknown, may be >2GB
                while done < num:
                    images, y = sample()
                    x, y = npz_batch(images[:num - done], y[:num - done])
                    if done == 0:
                        np.lib.format.write_array_header_1_0(f, {
                            'descr': np.lib.format.dtype_to_descr(x.dtype),
                            'fortran_order': False, 'shape': (num, *x.shape[1:])})
                    f.write(x.tobytes())
                    labels.append(y)
                    done += len(x)
            with zf.open('y.npy', 'w') as f:
                np.lib.format.write_array(f, torch.cat(labels).numpy().astype(np.int64))
        os.replace(tmp, path)
    except BaseException:  # a failure or Ctrl-C midway: leave no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
