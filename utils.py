"""Training helpers, in sections: seeds and RNG state, EMA and regularisers, logging, z/y
sampling, standing stats and sample sheets, and the 2019 names (compatibility) at the end.

The command-line flags and run config live in flags.py, checkpoint I/O in checkpoints.py;
their public names are re-exported here.
"""
from __future__ import annotations

import contextlib
import os
import random
import zipfile
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn as nn

import grids
import layers

# The 2019 code and its users call utils.prepare_parser, utils.save_weights, ...: the names
# that moved to flags.py and checkpoints.py stay reachable here (load_weights and config_keys
# take their 2019 forms in the section "2019 names" at the end).
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
    nonfinite_parts,
    plain_config,
    recover_checkpoints,
    save_weights,
)
from class_names import label as class_label
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
# Logging (loggers.py; the 2019 names stay reachable here)
# ----------------------------------------------------------------------------------------

from loggers import MetricsLogger, MyLogger, append_line, get_SVs  # noqa: E402,F401

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


def accumulate_standing_stats(G: nn.Module, latents: Union[Latents, torch.Tensor], *args: Any,
                              num_accumulations: int = 16) -> None:
    """Replace G's BN statistics by their average over `num_accumulations` fresh batches.

    Called as (G, latents[, num_accumulations]), or in 2019's form (G, z, y, n_classes[,
    num_accumulations]) with z [B, dim_z] and y [B] tensors (e.g. from `prepare_z_y`), which
    are redrawn in place as 2019 redrew them: z ~ N(0, 1) whatever z_var, y uniform.
    """
    if isinstance(latents, torch.Tensor):
        if len(args) < 2:
            raise TypeError('accumulate_standing_stats(G, z, y, n_classes[, num_accumulations]): '
                            'give y and n_classes after z')
        latents, args = _RedrawnZY(latents, args[0], args[1]), args[2:]
    if len(args) > 1:
        raise TypeError(f'accumulate_standing_stats got {len(args)} extra positional arguments')
    num_accumulations = args[0] if args else num_accumulations
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


def save_grid(images: torch.Tensor, path: str, nrow: Optional[int] = None,
              labels: Optional[Sequence[str]] = None) -> None:
    """Images in [-1, 1] as one grid file (square-ish unless `nrow` images per row), with
    `labels` beside its rows when given (see grids.py)."""
    nrow = nrow or int(len(images) ** 0.5)
    grids.save_grid_image(grids.labeled_grid(images, nrow, labels), path)


def configure_backends(device: torch.device) -> None:
    """On CUDA: TF32 matmuls/convolutions and cuDNN autotuning (no effect on the CPU)."""
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def _device_of(G: nn.Module, device: Optional[Union[str, torch.device]]
               ) -> Union[str, torch.device]:
    """`device`, or where G's parameters are when it is None."""
    return device if device is not None else next(G.parameters()).device


@torch.no_grad()
def sample_sheet(G: nn.Module, *, classes_per_sheet: int, num_classes: int,
                 samples_per_class: int, samples_root: str, experiment_name: str,
                 folder_number: int, device: Optional[Union[str, torch.device]] = None,
                 truncation: float = 0.0, truncation_style: str = 'resample',
                 parallel: bool = False, z_: Optional[torch.Tensor] = None,
                 class_names: Optional[Sequence[str]] = None) -> list[str]:
    """Per-class sheets samples{i}.jpg: one row per class, `samples_per_class` columns, each
    row labelled '<index> <name>' when `class_names` are given.

    `device` defaults to G's. 2019's keywords are taken too: `parallel` (its DataParallel
    switch; G runs where it is, multi-GPU is DDP here) and `z_`, a `prepare_z_y` z whose
    redraws (with its z_var, not truncated) give the sheets' z when it has a row per class.
    """
    device = _device_of(G, device)
    classes = min(classes_per_sheet, num_classes)

    def z_rows() -> torch.Tensor:
        if z_ is not None and hasattr(z_, 'sample_') and classes <= z_.size(0):
            z_.sample_()
            return z_[:classes].as_subclass(torch.Tensor)
        return draw_z((classes, G.dim_z), device, truncation, truncation_style)

    paths = []
    for i in range(max(num_classes // classes_per_sheet, 1)):
        y = torch.arange(i * classes, (i + 1) * classes, device=device)
        ims = [G(z_rows(), G.shared(y)) for _ in range(samples_per_class)]
        out = torch.stack(ims, 1).flatten(0, 1)  # (classes * samples_per_class, 3, R, R)
        paths.append(os.path.join(samples_root, experiment_name, str(folder_number),
                                  f'samples{i}.jpg'))
        labels = None if class_names is None else [
            class_label(c, class_names) for c in range(i * classes, (i + 1) * classes)]
        save_grid(out, paths[-1], nrow=samples_per_class, labels=labels)
    return paths


def interp(x0: torch.Tensor, x1: torch.Tensor, num_midpoints: int) -> torch.Tensor:
    """Linear interpolation [N, 1, D] x2 -> [N, num_midpoints + 2, D]."""
    weight = torch.linspace(0, 1.0, num_midpoints + 2, device=x0.device).to(x0.dtype)
    return torch.lerp(x0, x1, weight.view(1, -1, 1))  # broadcasts to (N, num_midpoints + 2, D)


@torch.no_grad()
def interp_sheet(G: nn.Module, *, num_per_sheet: int, num_midpoints: int, num_classes: int,
                 samples_root: str, experiment_name: str, folder_number: int,
                 sheet_number: int = 0, fix_z: bool = False, fix_y: bool = False,
                 device: Optional[Union[str, torch.device]] = None, truncation: float = 0.0,
                 truncation_style: str = 'resample', parallel: bool = False) -> Optional[str]:
    """Interpolation sheet interp{Z}{Y}{n}.jpg: rows go from one (z, class) to another.

    `device` defaults to G's; 2019's `parallel` is taken and changes nothing (see
    `sample_sheet`).
    """
    n, steps, device = num_per_sheet, num_midpoints + 2, _device_of(G, device)

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


# ----------------------------------------------------------------------------------------
# 2019 names (compatibility)
# ----------------------------------------------------------------------------------------
# What the 2019 sample.py, train_fns.py and notebooks call on utils, under its 2019 name and
# call form. Also 2019 forms: accumulate_standing_stats(G, z, y, n_classes, n), and the
# `parallel` and `z_` keywords of sample_sheet / interp_sheet. Left out: dset_dict,
# MultiEpochSampler, CenterCropLongEdge, RandomCropLongEdge (datasets.py builds data its own
# way, with other signatures), Adam16 (--amp), progress (tqdm), write_metadata (config.json),
# initiate_standing_stats (standing stats end with a finish step: accumulate_standing_stats),
# and what 2019's own code never called (default_ortho, print_grad_norms, query_gpu).

# They are defined in compat2019.py.
from compat2019 import (  # noqa: E402,F401
    LEGACY_CONFIG_KEYS,
    Distribution,
    activation_dict,
    classes_per_sheet_dict,
    config_keys,
    count_parameters,
    get_data_loaders,
    imsize_dict,
    join_strings,
    load_weights,
    nclass_dict,
    prepare_root,
    prepare_z_y,
    root_dict,
    sample_1hot,
)
from compat2019 import sample as sample  # noqa: E402  (2019's sample(G, z_, y_, config))


class _RedrawnZY:
    """2019's standing-stats draws as a `Latents`: z ~ N(0, 1) and y uniform, in place."""

    def __init__(self, z: torch.Tensor, y: torch.Tensor, n_classes: int):
        self.z, self.y, self.n_classes = z, y, n_classes

    def sample_(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Redraw z and y in place; returns them as plain tensors."""
        self.z.normal_()
        self.y.random_(0, self.n_classes)
        return self.z.as_subclass(torch.Tensor), self.y.as_subclass(torch.Tensor)
