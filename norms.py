"""Batch norms of BigGAN: class-conditional `ccbn` (G's blocks) and plain `bn` (G's output).

`layers` re-exports every name here (`layers.ccbn`, `layers.bn`, `layers.use_sync_batchnorm`,
...), where the 2019 code and SPEC §1 look for them. Buffer and sub-module names (`stored_mean`,
`stored_var`, `gain`, `bias`) are the 2019 release's: they fix the checkpoint keys.

Which state a norm keeps follows its classes:
- NormBase: every norm here; only `eps` (gn and nonorm ccbns keep no statistics).
- StoredStatsNorm: running statistics `stored_mean`/`stored_var`, used in eval mode, and
  standing statistics (norm_style `in` ccbns are one).
- BatchStatsNorm: normalises over the batch (`bn`, bn ccbns): the norm --mybn and
  --cross_replica change.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def fused_bn(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, *, gain: torch.Tensor,
             bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise x with given statistics and apply gain and bias as one scale and shift."""
    scale = torch.rsqrt(var + eps) * gain
    shift = bias - mean * scale
    return x * scale.to(x.dtype) + shift.to(x.dtype)


def _local_stats(x: torch.Tensor, dims: tuple[int, ...] = (0, 2, 3)
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """fp32 mean and biased variance of x [B, C, H, W] over `dims`, and the Bessel factor."""
    var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
    n = math.prod(x.size(d) for d in dims)
    return mean, var, n / max(n - 1, 1)


def _load_2019_bn_keys(state_dict, prefix, *args) -> None:
    """Accept 2019 checkpoints of `--mybn`/`--cross_replica` runs, whose stats sat in `bn.*`."""
    for old, new in (('bn.stored_mean', 'stored_mean'), ('bn.stored_var', 'stored_var'),
                     ('bn.running_mean', 'stored_mean'), ('bn.running_var', 'stored_var')):
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
    # 2019's myBN counter only mattered while accumulating (never saved in that state).
    for stale in ('bn.accumulation_counter', 'bn.num_batches_tracked'):
        state_dict.pop(prefix + stale, None)


class NormBase(nn.Module):
    """Base of every norm here; the subclasses that keep statistics add them in __init__."""

    def __init__(self, num_channels: int, eps: float, momentum: float, mybn: bool):
        super().__init__()
        self.eps = eps


class StoredStatsNorm(NormBase):
    """A norm with running statistics in `stored_mean`/`stored_var`, used in eval mode.

    Standing stats: `start_standing_stats()` zeroes them, each training-mode forward then adds
    its batch statistics, and `finish_standing_stats()` divides by the count.
    """

    def __init__(self, num_channels: int, eps: float, momentum: float, mybn: bool):
        super().__init__(num_channels, eps, momentum, mybn)
        self.momentum, self.mybn = momentum, mybn
        self.register_buffer('stored_mean', torch.zeros(num_channels))
        self.register_buffer('stored_var', torch.ones(num_channels))
        self.register_buffer('standing_count', torch.zeros(()), persistent=False)
        self.accumulate_standing = False
        self._register_load_state_dict_pre_hook(_load_2019_bn_keys)

    def start_standing_stats(self) -> None:
        """Zero the stored stats and sum batch stats over the next training forwards."""
        for stat in (self.stored_mean, self.stored_var, self.standing_count):
            stat.zero_()
        self.accumulate_standing = True

    def finish_standing_stats(self) -> None:
        """Turn the accumulated sums into the average batch statistics."""
        if self.accumulate_standing and self.standing_count > 0:
            self.stored_mean.div_(self.standing_count)
            self.stored_var.div_(self.standing_count)
        self.accumulate_standing = False

    @torch.no_grad()
    def _record_stats(self, mean: torch.Tensor, var: torch.Tensor, bessel) -> None:
        """Fold batch stats into the stored ones: summed (standing) or by momentum.

        `var` is biased; `bessel` = n / (n - 1) unbiases it as F.batch_norm does (not --mybn).
        """
        stat_var = var if self.mybn else var * bessel
        if self.accumulate_standing:
            self.stored_mean.add_(mean)
            self.stored_var.add_(stat_var)
            self.standing_count.add_(1)
        else:
            self.stored_mean.lerp_(mean, self.momentum)
            self.stored_var.lerp_(stat_var, self.momentum)


class BatchStatsNorm(StoredStatsNorm):
    """Batch norm: normalises over the batch in training, the norm --cross_replica syncs.

    Default path: `F.batch_norm` (cuDNN, unbiased running variance). With `mybn`: mean of
    squares minus squared mean in fp32, as the 2019 `--mybn` did. Cross-replica state:
    `sync_bn` (set by `use_sync_batchnorm`), used while `sync_enabled` (see `local_batchnorm`).
    """

    def __init__(self, num_channels: int, eps: float, momentum: float, mybn: bool):
        super().__init__(num_channels, eps, momentum, mybn)
        self.sync_bn: Optional[nn.SyncBatchNorm] = None  # never a submodule: no state keys
        self.sync_enabled = False

    def normalize(self, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """BN of x [B, C, H, W] followed by `x * gain + bias` (each broadcastable to x)."""
        synced = self.training and self.sync_enabled
        if synced and x.device.type == 'cuda':
            self.sync_bn.running_mean = self.stored_mean  # updated in place: our stats stay
            self.sync_bn.running_var = self.stored_var    # the checkpoint's
            out = self.sync_bn(x)
        elif not (self.training and (synced or self.mybn or self.accumulate_standing)):
            # Statistics in fp32 even under autocast: F.batch_norm accumulates in fp32 and
            # keeps the fp32 stored stats (mixed-type BN).
            out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None,
                               self.training, self.momentum, self.eps)
        else:  # batch statistics computed here, in fp32: --mybn, standing stats, CPU sync
            mean, var, bessel = self._all_reduced_stats(x) if synced else _local_stats(x)
            self._record_stats(mean, var, bessel)
            return fused_bn(x, mean.view(1, -1, 1, 1), var.view(1, -1, 1, 1), gain=gain,
                            bias=bias, eps=self.eps)
        return out * gain + bias

    def _all_reduced_stats(self, x: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, biased variance and Bessel factor over every rank's batch (with autograd).

        PyTorch's SyncBatchNorm is GPU-only: on CPU (gloo) all-reduce the sums ourselves.
        """
        import torch.distributed.nn.functional as dist_fn
        group = self.sync_bn.process_group or torch.distributed.group.WORLD
        xf = x.float()
        n = torch.full((1,), xf.numel() // xf.size(1), dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum((0, 2, 3)), xf.square().sum((0, 2, 3)), n])
        stats = dist_fn.all_reduce(stats, group=group)
        C, count = x.size(1), stats[-1]
        mean = stats[:C] / count
        return mean, stats[C:2 * C] / count - mean.square(), count / (count - 1).clamp(min=1)


def use_sync_batchnorm(net: nn.Module, process_group=None) -> None:
    """Make every batch norm of `net` use statistics over all DDP ranks (--cross_replica).

    Only BatchStatsNorms normalise over the batch: in, gn and nonorm ccbns need no sync. On
    GPUs this is PyTorch's own SyncBatchNorm; the stored stats stay in our buffers.
    """
    for m in net.modules():
        if isinstance(m, BatchStatsNorm):
            sync = nn.SyncBatchNorm(m.stored_mean.numel(), eps=m.eps, momentum=m.momentum,
                                    affine=False, process_group=process_group)
            object.__setattr__(m, 'sync_bn', sync)  # not a submodule: no extra state keys
            m.sync_enabled = True


@contextlib.contextmanager
def local_batchnorm(net: nn.Module):
    """Within the block, BN of a --cross_replica net uses this process's batch only."""
    synced = [m for m in net.modules() if isinstance(m, BatchStatsNorm) and m.sync_bn is not None]
    for m in synced:
        m.sync_enabled = False
    try:
        yield net
    finally:
        for m in synced:
            m.sync_enabled = True


class bn(BatchStatsNorm):
    """Unconditional BN with its own `gain` (ones) and `bias` (zeros) parameters."""

    def __init__(self, output_size: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 mybn: bool = False):
        super().__init__(output_size, eps, momentum, mybn)
        self.output_size = output_size
        self.gain = nn.Parameter(torch.ones(output_size))
        self.bias = nn.Parameter(torch.zeros(output_size))

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.normalize(x, self.gain.view(1, -1, 1, 1), self.bias.view(1, -1, 1, 1))


class ccbn(NormBase):
    """Class-conditional norm: normalise x, then `out * (1 + gain(y)) + bias(y)`.

    `gain` and `bias` map the conditioning vector y with `which_linear`. How x is normalised,
    and so which statistics the norm keeps, is `norm_style`'s: each style is a subclass that
    supplies `normalize(x, gain, bias)` (see `ccbn_class`). Calling `ccbn(...)` builds the
    subclass for its `norm_style`, so every G norm is an `isinstance(m, ccbn)` whatever its style.
    """

    def __new__(cls, *args, norm_style: str = 'bn', **kwargs):
        # ccbn(...) is built as ccbn_class(norm_style); Python then runs that class's __init__.
        return super().__new__(ccbn_class(norm_style) if cls is ccbn else cls)

    def __init__(self, output_size: int, input_size: int, which_linear: Callable,
                 eps: float = 1e-5, momentum: float = 0.1, *, mybn: bool = False,
                 norm_style: str = 'bn'):
        super().__init__(output_size, eps, momentum, mybn)  # the style's statistics, if any
        self.output_size, self.input_size, self.norm_style = output_size, input_size, norm_style
        self.gain = which_linear(input_size, output_size)
        self.bias = which_linear(input_size, output_size)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        return self.normalize(x, gain, bias)


class BatchNormCCBN(ccbn, BatchStatsNorm):
    """ccbn normalising over the batch (norm_style bn, 2019's and the default)."""


class InstanceNormCCBN(ccbn, StoredStatsNorm):
    """ccbn normalising each sample over H and W (norm_style in), with running stats."""

    def normalize(self, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Instance norm; standing stats sum what F.instance_norm folds into its running stats."""
        if not (self.training and self.accumulate_standing):
            out = F.instance_norm(x, self.stored_mean, self.stored_var, None, None,
                                  self.training, self.momentum, self.eps)
        else:  # the batch mean of the per-instance means and variances, as it records them
            mean, var, bessel = _local_stats(x.detach(), dims=(2, 3))  # (B, C) each
            self._record_stats(mean.mean(0), var.mean(0), bessel)
            out = F.instance_norm(x, eps=self.eps)
        return out * gain + bias


class GroupNormCCBN(ccbn):
    """ccbn with group norm: `gn` (16 groups), `gn_ch_N` (N channels a group), `gn_grp_N`."""

    def __init__(self, output_size: int, *args, norm_style: str = 'gn', **kwargs):
        super().__init__(output_size, *args, norm_style=norm_style, **kwargs)
        if '_ch_' in norm_style:
            self.num_groups = max(output_size // int(norm_style.split('_')[-1]), 1)
        else:
            self.num_groups = int(norm_style.split('_')[-1]) if '_grp_' in norm_style else 16
        if output_size % self.num_groups:  # said at construction, not mid-forward
            raise ValueError(f'--norm_style {norm_style}: {self.num_groups} groups do not '
                             f'divide a G layer of {output_size} channels; pick gn_grp_N with '
                             f"N dividing every layer's channels, or gn_ch_N")

    def normalize(self, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Group norm, then the class-conditional affine."""
        return F.group_norm(x, self.num_groups, eps=self.eps) * gain + bias


class NoNormCCBN(ccbn):
    """ccbn without normalisation (norm_style nonorm): the class-conditional affine only."""

    def normalize(self, x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x itself, then the class-conditional affine."""
        return x * gain + bias


def ccbn_class(norm_style: str) -> type[ccbn]:
    """The ccbn subclass for a --norm_style: bn, in, gn (gn_ch_N, gn_grp_N) or nonorm."""
    if norm_style.startswith('gn'):
        return GroupNormCCBN
    styles = {'bn': BatchNormCCBN, 'in': InstanceNormCCBN, 'nonorm': NoNormCCBN}
    if norm_style not in styles:
        raise ValueError(f'norm_style must be bn, in, gn[_ch_N|_grp_N] or nonorm, '
                         f'got {norm_style!r}')
    return styles[norm_style]
