"""Building blocks of BigGAN: spectral norm layers, self-attention, batch norms, G/D blocks.

Module and buffer names (`u0`, `sv0`, `stored_mean`, `gain`, `bias`, `conv_sc`, ...) and the
order in which parameters are registered are the 2019 release's: they fix the checkpoint keys
and the parameter order that its Adam states are keyed by.
"""
from __future__ import annotations

import contextlib
import functools
import math
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
        """The weight divided by its estimated top singular value (gradient flows via W).

        A training-mode forward advances the power iteration (so the result changes every
        call, as in 2019). An eval-mode forward without autograd returns the weight it
        computed last time while neither the weight nor the u's have changed: sampling and
        testing a fixed G recompute nothing per batch.
        """
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            if self.__dict__.get('_sn_cache') is not None:  # a stale copy of the weight
                self._sn_cache = None
            return self._normalized_weight()
        key = self._cache_key()
        if key is None:
            return self._normalized_weight()
        cache = self.__dict__.get('_sn_cache')
        if cache is None or cache[0] != key:
            cache = self._sn_cache = (key, self._normalized_weight())
        return cache[1]

    def _cache_key(self) -> Optional[tuple]:
        """Storage and in-place version of the weight and u's: any change alters it."""
        tensors = (self.weight, *self.u)
        if any(t.is_inference() for t in tensors):  # no version counters to read
            return None
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def _normalized_weight(self) -> torch.Tensor:
        """W / sigma(W), running the power iteration (and storing u, sv) in training mode."""
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
                 padding=0, dilation=1, groups=1, bias: bool = True, *,
                 num_svs: int = 1, num_itrs: int = 1, eps: float = 1e-12):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias)
        self._init_sn(num_svs, num_itrs, out_channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class SNLinear(nn.Linear, SN):
    """Linear layer whose weight is spectrally normalised."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 num_svs: int = 1, num_itrs: int = 1, eps: float = 1e-12):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_sn(num_svs, num_itrs, out_features, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.W_(), self.bias)


class SNEmbedding(nn.Embedding, SN):
    """Embedding whose [num_embeddings, dim] table is spectrally normalised as a matrix."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None,
                 max_norm=None, norm_type=2, scale_grad_by_freq=False, sparse=False,
                 _weight=None, *, num_svs: int = 1, num_itrs: int = 1, eps: float = 1e-12):
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
        o = softmax_attention(theta, phi, g)               # (B, ch/2, N)
        o = self.o(o.reshape(B, self.ch // 2, H, W))
        return x + self.gamma * o


def softmax_attention(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g · softmax(thetaᵀ phi)ᵀ for theta [B, d, N], phi [B, d, M], g [B, dv, M] -> [B, dv, N].

    One fused attention kernel (no 1/sqrt(d) scaling), so the [B, N, M] attention matrix is
    never stored: flash attention on the CPU and the GPU, memory-efficient attention on the
    GPU in fp32. Those kernels take [B, heads, N, d] inputs, and flash wants queries, keys
    and values of one width: theta and phi get zero channels up to g's width, which leave
    every dot product exactly as it was. Without them PyTorch falls back to its unfused
    "math" kernel (2019's bmm-softmax-bmm with the matrix in memory: 3x slower on the CPU).
    """
    width = max(theta.size(1), g.size(1))

    def heads(t: torch.Tensor) -> torch.Tensor:  # [B, c, L] -> [B, 1, L, width], contiguous
        t = t.transpose(1, 2)
        t = F.pad(t, (0, width - t.size(2))) if t.size(2) < width else t.contiguous()
        return t.unsqueeze(1)

    o = F.scaled_dot_product_attention(heads(theta), heads(phi), heads(g), scale=1.0)
    return o.squeeze(1)[..., :g.size(1)].transpose(1, 2)


# ----------------------------------------------------------------------------------------
# Batch norms: one class per normalisation; stored stats only where a style keeps them
# ----------------------------------------------------------------------------------------


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


class StoredStatsNorm(nn.Module):
    """A norm with running statistics in `stored_mean`/`stored_var`, used in eval mode.

    Standing stats: `start_standing_stats()` zeroes them, each training-mode forward then adds
    its batch statistics, and `finish_standing_stats()` divides by the count.
    """

    def __init__(self, num_channels: int, eps: float, momentum: float, mybn: bool):
        super().__init__()
        self.eps, self.momentum, self.mybn = eps, momentum, mybn
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


class ccbn(nn.Module):
    """Class-conditional norm: normalise x, then `out * (1 + gain(y)) + bias(y)`.

    `gain` and `bias` map the conditioning vector y with `which_linear`. `ccbn(...)` builds the
    subclass for `norm_style`, which supplies `normalize(x, gain, bias)`: BatchNormCCBN (bn) and
    InstanceNormCCBN (in), StoredStatsNorms too; GroupNormCCBN (gn, gn_ch_N, gn_grp_N) and
    NoNormCCBN (nonorm), which keep no statistics.
    """

    def __new__(cls, *args, norm_style: str = 'bn', **kwargs):
        if cls is ccbn:  # build the subclass that normalises as norm_style says
            styles = {'bn': BatchNormCCBN, 'in': InstanceNormCCBN, 'nonorm': NoNormCCBN}
            cls = GroupNormCCBN if norm_style.startswith('gn') else styles.get(norm_style)
            if cls is None:
                raise ValueError(f'norm_style must be bn, in, gn[_ch_N|_grp_N] or nonorm, '
                                 f'got {norm_style!r}')
        return super().__new__(cls)

    def __init__(self, output_size: int, input_size: int, which_linear: Callable,
                 eps: float = 1e-5, momentum: float = 0.1, *, mybn: bool = False,
                 norm_style: str = 'bn'):
        self._init_norm(output_size, eps, momentum, mybn)
        self.output_size, self.input_size, self.norm_style = output_size, input_size, norm_style
        self.gain = which_linear(input_size, output_size)
        self.bias = which_linear(input_size, output_size)

    def _init_norm(self, num_channels: int, eps: float, momentum: float, mybn: bool) -> None:
        """Initialise the module and its normalisation's state (a stats norm's __init__)."""
        nn.Module.__init__(self)
        self.eps = eps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        return self.normalize(x, gain, bias)


class BatchNormCCBN(ccbn, BatchStatsNorm):
    """ccbn normalising over the batch (norm_style bn, 2019's and the default)."""

    _init_norm = BatchStatsNorm.__init__


class InstanceNormCCBN(ccbn, StoredStatsNorm):
    """ccbn normalising each sample over H and W (norm_style in), with running stats."""

    _init_norm = StoredStatsNorm.__init__

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


# ----------------------------------------------------------------------------------------
# Residual blocks
# ----------------------------------------------------------------------------------------


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling."""
    if x.device.type == 'cpu' and (x.is_contiguous() or
                                   not x.is_contiguous(memory_format=torch.channels_last)):
        return _CPUUpsample2x.apply(x)
    return F.interpolate(x, scale_factor=2, mode='nearest')


class _CPUUpsample2x(torch.autograd.Function):
    """F.interpolate(x, scale_factor=2, mode='nearest') for NCHW tensors on the CPU.

    PyTorch's CPU kernel converts NCHW input to channels-last and back (two full copies:
    ~20 ms at [8, 128, 64, 64], 7% of a res-64 training step); the forward here is one
    broadcast copy with the same values. The backward is PyTorch's own, so gradients are
    bit for bit those of F.interpolate (summing each 2x2 block in another order would not be).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ctx.input_size = (B, C, H, W)
        return x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        B, C, H, W = ctx.input_size
        return torch.ops.aten.upsample_nearest2d_backward(grad, [2 * H, 2 * W], [B, C, H, W],
                                                          2.0, 2.0)


class GBlock(nn.Module):
    """BigGAN G residual block: BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus (up-conv1x1) skip."""

    def __init__(self, in_channels: int, out_channels: int, *, which_conv: Callable,
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

    def __init__(self, in_channels: int, out_channels: int, *, which_conv: Callable,
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
