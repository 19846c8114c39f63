"""Building blocks of BigGAN: spectral norm layers, self-attention, batch norms, G/D blocks.

Module and buffer names (`u0`, `sv0`, `stored_mean`, `gain`, `bias`, `conv_sc`, ...) and the
order in which parameters are registered are the 2019 release's: they fix the checkpoint keys
and the parameter order that its Adam states are keyed by.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------
# Spectral normalisation
# ----------------------------------------------------------------------------------------


def gram_schmidt(x: torch.Tensor, ys: list[torch.Tensor]) -> torch.Tensor:
    """Remove from row vector x its components along each row vector in ys."""
    for y in ys:
        x = x - torch.mm(y, x.t()) * y / torch.mm(y, y.t())
    return x


def power_iteration(W: torch.Tensor, us: list[torch.Tensor], eps: float
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One power-iteration step for each singular pair of W [out, in], Gram-Schmidt'ed.

    `us` are the left vectors [1, out]; returns the new left and right vectors (no grad).
    """
    new_us, vs = [], []
    for u in us:
        v = F.normalize(gram_schmidt(torch.mm(u, W), vs), eps=eps)
        vs.append(v)
        u = F.normalize(gram_schmidt(torch.mm(v, W.t()), new_us), eps=eps)
        new_us.append(u)
    return new_us, vs


class SN:
    """Mixin adding power-iteration spectral normalisation to a layer with a `weight`.

    Buffers `u{i}` [1, outputs] hold the left singular vector estimates and `sv{i}` [1] the
    singular values (for logging). Only training-mode forwards update them.
    """

    def _init_sn(self, num_svs: int, num_itrs: int, num_outputs: int, eps: float) -> None:
        self.num_svs, self.num_itrs, self.sn_eps = num_svs, num_itrs, eps
        for i in range(num_svs):
            self.register_buffer(f'u{i}', torch.randn(1, num_outputs))
            self.register_buffer(f'sv{i}', torch.ones(1))

    @property
    def u(self) -> list[torch.Tensor]:
        """Left singular vector estimates, one per tracked singular value."""
        return [getattr(self, f'u{i}') for i in range(self.num_svs)]

    @property
    def sv(self) -> list[torch.Tensor]:
        """Singular value estimates from the last training-mode forward."""
        return [getattr(self, f'sv{i}') for i in range(self.num_svs)]

    def W_(self) -> torch.Tensor:
        """The weight divided by its estimated top singular value (gradient flows via W)."""
        # The power iteration is a fixed-point method on tiny vectors: run it in fp32
        # even when the surrounding forward is under autocast.
        with torch.autocast(device_type=self.weight.device.type, enabled=False):
            W_mat = self.weight.float().reshape(self.weight.size(0), -1)  # [out, in*k*k]
            with torch.no_grad():
                us = self.u
                # In eval mode the stored u's are not advanced, so every step would repeat
                # the first one (this is what the 2019 code computed): run it once.
                for _ in range(self.num_itrs if self.training else 1):
                    us, vs = power_iteration(W_mat, us, self.sn_eps)
            sv0 = torch.mm(torch.mm(vs[0], W_mat.t()), us[0].t()).squeeze()
            if self.training:
                with torch.no_grad():
                    for i, (u_buf, sv_buf) in enumerate(zip(self.u, self.sv)):
                        u_buf.copy_(us[i])
                        sv_buf.copy_(sv0 if i == 0 else
                                     torch.mm(torch.mm(vs[i], W_mat.t()), us[i].t()).view(1))
        return self.weight / sv0.to(self.weight.dtype)


class SNConv2d(nn.Conv2d, SN):
    """Conv2d whose weight is spectrally normalised."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1,
                 padding=0, dilation=1, groups=1, bias: bool = True,
                 num_svs: int = 1, num_itrs: int = 1, eps: float = 1e-12):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias)
        self._init_sn(num_svs, num_itrs, out_channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class SNLinear(nn.Linear, SN):
    """Linear layer whose weight is spectrally normalised."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 num_svs: int = 1, num_itrs: int = 1, eps: float = 1e-12):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_sn(num_svs, num_itrs, out_features, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.W_(), self.bias)


class SNEmbedding(nn.Embedding, SN):
    """Embedding whose [num_embeddings, dim] table is spectrally normalised as a matrix."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None,
                 max_norm=None, norm_type=2, scale_grad_by_freq=False, sparse=False,
                 _weight=None, num_svs: int = 1, num_itrs: int = 1, eps: float = 1e-12):
        nn.Embedding.__init__(self, num_embeddings, embedding_dim, padding_idx, max_norm,
                              norm_type, scale_grad_by_freq, sparse, _weight)
        self._init_sn(num_svs, num_itrs, num_embeddings, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.W_())


def layer_makers(param: str, num_svs: int, num_itrs: int, eps: float
                 ) -> tuple[Callable, Callable, Callable]:
    """`which_conv`, `which_linear`, `which_embedding` for `G_param`/`D_param` SN or ortho.

    Blocks only ever call these partials, so they never know whether SN is on.
    """
    if param == 'SN':
        sn = dict(num_svs=num_svs, num_itrs=num_itrs, eps=eps)
        return (functools.partial(SNConv2d, kernel_size=3, padding=1, **sn),
                functools.partial(SNLinear, **sn), functools.partial(SNEmbedding, **sn))
    if param == 'ortho':  # plain layers, for training with orthogonal regularisation only
        return functools.partial(nn.Conv2d, kernel_size=3, padding=1), nn.Linear, nn.Embedding
    raise ValueError(f"G_param/D_param must be 'SN' or 'ortho', got {param!r}")


# ----------------------------------------------------------------------------------------
# Self-attention
# ----------------------------------------------------------------------------------------


class Attention(nn.Module):
    """SA-GAN non-local block: x + gamma * o(g · softmax(thetaᵀ phi)ᵀ)."""

    def __init__(self, ch: int, which_conv: Callable = SNConv2d):
        super().__init__()
        self.ch = ch
        self.theta = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.phi = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.g = which_conv(ch, ch // 2, kernel_size=1, padding=0, bias=False)
        self.o = which_conv(ch // 2, ch, kernel_size=1, padding=0, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.))

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, _, H, W = x.shape
        theta = self.theta(x).flatten(2)                   # (B, ch/8, N)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)      # (B, ch/8, N/4)
        g = F.max_pool2d(self.g(x), 2).flatten(2)          # (B, ch/2, N/4)
        # softmax(thetaᵀ phi) gᵀ as one fused attention call (no 1/sqrt(d) scaling).
        o = F.scaled_dot_product_attention(theta.transpose(1, 2), phi.transpose(1, 2),
                                           g.transpose(1, 2), scale=1.0)  # (B, N, ch/2)
        o = self.o(o.transpose(1, 2).reshape(B, self.ch // 2, H, W))
        return x + self.gamma * o


# ----------------------------------------------------------------------------------------
# Batch norm
# ----------------------------------------------------------------------------------------


def fused_bn(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, gain: torch.Tensor,
             bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise x with given statistics and apply gain and bias as one scale and shift."""
    scale = torch.rsqrt(var + eps) * gain
    shift = bias - mean * scale
    return x * scale.to(x.dtype) + shift.to(x.dtype)


class StoredStatsNorm(nn.Module):
    """Batch-norm statistics kept in `stored_mean`/`stored_var`, with standing-stats support.

    Default path: `F.batch_norm` (cuDNN, unbiased running variance). With `mybn`: mean of
    squares minus squared mean in fp32 (biased variance), as the 2019 `--mybn` did.
    Standing stats: `start_standing_stats()` zeroes the stored stats, each training-mode
    forward then adds its batch stats, and `finish_standing_stats()` divides by the count.
    A subclass says which of this applies to it: `has_stored_stats` (False for gn/nonorm
    ccbns, which standing stats skip) and `uses_batch_stats` (what --cross_replica syncs).
    """

    # Class defaults, so that a norm without stored stats answers them too.
    accumulate_standing = False
    sync_enabled = False
    sync_bn: Optional[nn.SyncBatchNorm] = None  # set by use_sync_batchnorm

    @property
    def has_stored_stats(self) -> bool:
        """Whether `stored_mean`/`stored_var` exist (eval mode normalises with them)."""
        return True

    @property
    def uses_batch_stats(self) -> bool:
        """Whether training normalises over the batch, so --cross_replica syncs it."""
        return True

    def _init_stats(self, num_channels: int, eps: float, momentum: float, mybn: bool) -> None:
        self.eps, self.momentum, self.mybn = eps, momentum, mybn
        self.register_buffer('stored_mean', torch.zeros(num_channels))
        self.register_buffer('stored_var', torch.ones(num_channels))
        self.register_buffer('standing_count', torch.zeros(()), persistent=False)
        self.accumulate_standing = False
        self._register_load_state_dict_pre_hook(_load_2019_bn_keys)

    def start_standing_stats(self) -> None:
        """Zero the stored stats and sum batch stats over the next training forwards.

        A no-op for a norm without stored stats: there is nothing to accumulate.
        """
        if not self.has_stored_stats:
            return
        self.stored_mean.zero_()
        self.stored_var.zero_()
        self.standing_count.zero_()
        self.accumulate_standing = True

    def finish_standing_stats(self) -> None:
        """Turn the accumulated sums into the average batch statistics."""
        if self.accumulate_standing and self.standing_count > 0:
            self.stored_mean.div_(self.standing_count)
            self.stored_var.div_(self.standing_count)
        self.accumulate_standing = False

    def normalize(self, x: torch.Tensor, gain: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """BN of x [B, C, H, W] followed by `x * gain + bias` (each broadcastable or None)."""
        synced = self.training and self.sync_enabled
        if synced and x.device.type == 'cuda':
            out = _pytorch_sync_batch_norm(self, x)
        elif not (self.training and (synced or self.mybn or self.accumulate_standing)):
            # Statistics in fp32 even under autocast: F.batch_norm accumulates in fp32 and
            # keeps the fp32 stored stats (mixed-type BN).
            out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None,
                               self.training, self.momentum, self.eps)
        else:  # batch statistics computed here, in fp32: --mybn, standing stats, CPU sync
            mean, var, bessel = _all_reduced_stats(self, x) if synced else _local_stats(x)
            self._record_stats(mean, var, bessel)
            return fused_bn(x, mean.view(1, -1, 1, 1), var.view(1, -1, 1, 1),
                            1.0 if gain is None else gain, 0.0 if bias is None else bias,
                            self.eps)
        return out if gain is None else out * gain + bias

    @torch.no_grad()
    def _record_stats(self, mean: torch.Tensor, var: torch.Tensor, bessel) -> None:
        """Fold batch stats into the stored ones: summed (standing) or by momentum.

        `var` is the biased batch variance; `bessel` = n / (n - 1) makes it unbiased, as
        F.batch_norm stores it (2019's --mybn stored the biased one).
        """
        stat_var = var if self.mybn else var * bessel
        if self.accumulate_standing:
            self.stored_mean.add_(mean)
            self.stored_var.add_(stat_var)
            self.standing_count.add_(1)
        else:
            self.stored_mean.lerp_(mean, self.momentum)
            self.stored_var.lerp_(stat_var, self.momentum)


def _local_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """fp32 per-channel mean, biased variance and Bessel factor of x [B, C, H, W]."""
    var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
    n = x.numel() // x.size(1)
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


class ccbn(StoredStatsNorm):
    """Class-conditional BN: normalise, then `out * (1 + gain(y)) + bias(y)`."""

    def __init__(self, output_size: int, input_size: int, which_linear: Callable,
                 eps: float = 1e-5, momentum: float = 0.1, mybn: bool = False,
                 norm_style: str = 'bn', cross_replica: bool = False):
        # cross_replica: accepted as 2019 callers pass it; syncing is `use_sync_batchnorm`'s.
        super().__init__()
        self.output_size, self.input_size = output_size, input_size
        self.gain = which_linear(input_size, output_size)
        self.bias = which_linear(input_size, output_size)
        self.norm_style = norm_style
        if self.has_stored_stats:
            self._init_stats(output_size, eps, momentum, mybn)
        elif not (norm_style == 'nonorm' or norm_style.startswith('gn')):
            raise ValueError(f"norm_style must be bn, in, gn[_ch_N|_grp_N] or nonorm, "
                             f"got {norm_style!r}")
        elif norm_style.startswith('gn') and output_size % _num_groups(norm_style, output_size):
            raise ValueError(f'--norm_style {norm_style}: {_num_groups(norm_style, output_size)} '
                             f'groups do not divide a G layer of {output_size} channels; pick '
                             f"gn_grp_N with N dividing every layer's channels, or gn_ch_N")
        self.eps = eps

    @property
    def has_stored_stats(self) -> bool:
        """bn and in keep running stats (2019's buffers); gn and nonorm keep none."""
        return self.norm_style in ('bn', 'in')

    @property
    def uses_batch_stats(self) -> bool:
        """Only bn: in normalises each sample by its own stats, gn and nonorm keep none."""
        return self.norm_style == 'bn'

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        if self.norm_style == 'bn':
            return self.normalize(x, gain, bias)
        if self.norm_style == 'in':
            out = self._instance_norm(x)
        elif self.norm_style.startswith('gn'):
            out = F.group_norm(x, _num_groups(self.norm_style, x.size(1)), eps=self.eps)
        else:
            out = x
        return out * gain + bias

    def _instance_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Instance norm with running stats; summed into standing stats while accumulating."""
        if not (self.training and self.accumulate_standing):
            return F.instance_norm(x, self.stored_mean, self.stored_var, None, None,
                                   self.training, self.momentum, self.eps)
        # What F.instance_norm folds into its running stats: the batch mean of the
        # per-instance means and variances (Bessel-corrected over H*W unless --mybn).
        var, mean = torch.var_mean(x.detach().float(), dim=(2, 3), correction=0)  # (B, C)
        n = x[0, 0].numel()
        self._record_stats(mean.mean(0), var.mean(0), n / max(n - 1, 1))
        return F.instance_norm(x, eps=self.eps)


def _num_groups(norm_style: str, channels: int) -> int:
    """Groups for `gn` (16), `gn_ch_N` (N channels per group) or `gn_grp_N` (N groups)."""
    if '_ch_' in norm_style:
        return max(channels // int(norm_style.split('_')[-1]), 1)
    if '_grp_' in norm_style:
        return int(norm_style.split('_')[-1])
    return 16


class bn(StoredStatsNorm):
    """Unconditional BN with its own `gain` (ones) and `bias` (zeros) parameters."""

    def __init__(self, output_size: int, eps: float = 1e-5, momentum: float = 0.1,
                 mybn: bool = False, cross_replica: bool = False):
        # cross_replica: accepted as 2019 callers pass it; syncing is `use_sync_batchnorm`'s.
        super().__init__()
        self.output_size = output_size
        self.gain = nn.Parameter(torch.ones(output_size))
        self.bias = nn.Parameter(torch.zeros(output_size))
        self._init_stats(output_size, eps, momentum, mybn)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.normalize(x, self.gain.view(1, -1, 1, 1), self.bias.view(1, -1, 1, 1))


class identity(nn.Module):
    """Pass-through, standing in for G's shared embedding when `G_shared` is off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ----------------------------------------------------------------------------------------
# Residual blocks
# ----------------------------------------------------------------------------------------


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling."""
    return F.interpolate(x, scale_factor=2, mode='nearest')


class GBlock(nn.Module):
    """BigGAN G residual block: BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus (up-conv1x1) skip."""

    def __init__(self, in_channels: int, out_channels: int, which_conv: Callable,
                 which_bn: Callable, activation: nn.Module, upsample: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.activation, self.upsample = activation, upsample
        self.conv1 = which_conv(in_channels, out_channels)
        self.conv2 = which_conv(out_channels, out_channels)
        self.learnable_sc = in_channels != out_channels or upsample
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels, kernel_size=1, padding=0)
        self.bn1 = which_bn(in_channels)
        self.bn2 = which_bn(out_channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.activation(self.bn1(x, y))
        if self.upsample:
            h, x = upsample2x(h), upsample2x(x)
        h = self.conv1(h)
        h = self.conv2(self.activation(self.bn2(h, y)))
        if self.learnable_sc:
            x = self.conv_sc(x)
        return h + x


class DBlock(nn.Module):
    """BigGAN D residual block: (ReLU)-conv3x3-ReLU-conv3x3-(avgpool), plus 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int, which_conv: Callable,
                 wide: bool = True, preactivation: bool = False,
                 activation: Optional[nn.Module] = None, downsample: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = out_channels if wide else in_channels
        self.preactivation, self.activation = preactivation, activation
        self.downsample = nn.AvgPool2d(2) if downsample else None
        self.conv1 = which_conv(in_channels, self.hidden_channels)
        self.conv2 = which_conv(self.hidden_channels, out_channels)
        self.learnable_sc = in_channels != out_channels or downsample
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels, kernel_size=1, padding=0)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Skip path: conv then pool after pre-activation, pool then conv in the first block."""
        if self.preactivation and self.learnable_sc:
            x = self.conv_sc(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if not self.preactivation and self.learnable_sc:
            x = self.conv_sc(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Out of place: an in-place ReLU here would also clip the shortcut's input.
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(self.activation(self.conv1(h)))
        if self.downsample is not None:
            h = self.downsample(h)
        return h + self.shortcut(x)


# ----------------------------------------------------------------------------------------
# Cross-replica (synchronised) batch norm
# ----------------------------------------------------------------------------------------


def use_sync_batchnorm(net: nn.Module, process_group=None) -> None:
    """Make every BN of `net` normalise with statistics over all DDP ranks (--cross_replica).

    Only norms that normalise over the batch are synced (`uses_batch_stats`): in, gn and
    nonorm ccbns are left alone. On GPUs this is PyTorch's own SyncBatchNorm; the stored
    stats stay in our buffers (and checkpoint keys), which it updates in place.
    """
    for m in net.modules():
        if isinstance(m, StoredStatsNorm) and m.uses_batch_stats:
            sync = nn.SyncBatchNorm(m.stored_mean.numel(), eps=m.eps, momentum=m.momentum,
                                    affine=False, process_group=process_group)
            object.__setattr__(m, 'sync_bn', sync)  # not a submodule: no extra state keys
            m.sync_enabled = True


@contextlib.contextmanager
def local_batchnorm(net: nn.Module):
    """Within the block, BN of a --cross_replica net uses this process's batch only."""
    synced = [m for m in net.modules()
              if isinstance(m, StoredStatsNorm) and m.sync_bn is not None]
    for m in synced:
        m.sync_enabled = False
    try:
        yield net
    finally:
        for m in synced:
            m.sync_enabled = True


def _pytorch_sync_batch_norm(norm: StoredStatsNorm, x: torch.Tensor) -> torch.Tensor:
    """PyTorch's SyncBatchNorm over all ranks, updating norm's stored stats in place."""
    sync = norm.sync_bn
    sync.running_mean, sync.running_var = norm.stored_mean, norm.stored_var
    return sync(x)


def _all_reduced_stats(norm: StoredStatsNorm, x: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, biased variance and Bessel factor over every rank's batch (with autograd).

    PyTorch's SyncBatchNorm is GPU-only: on CPU (gloo) all-reduce the sums ourselves.
    """
    import torch.distributed.nn.functional as dist_fn
    group = norm.sync_bn.process_group or torch.distributed.group.WORLD
    xf = x.float()
    n = torch.full((1,), xf.numel() // xf.size(1), dtype=torch.float32, device=x.device)
    stats = torch.cat([xf.sum((0, 2, 3)), xf.square().sum((0, 2, 3)), n])
    stats = dist_fn.all_reduce(stats, group=group)
    C = x.size(1)
    count = stats[2 * C]
    mean = stats[:C] / count
    return mean, stats[C:2 * C] / count - mean.square(), count / (count - 1).clamp(min=1)
