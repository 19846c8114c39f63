"""Building blocks of BigGAN: spectral norm layers, self-attention, batch norms, G/D blocks.

Module and buffer names (`u0`, `sv0`, `stored_mean`, `gain`, `bias`, `conv_sc`, ...) and the
order in which parameters are registered are the 2019 release's: they fix the checkpoint keys
and the parameter order that its Adam states are keyed by. The batch norms (`ccbn`, `bn`,
`use_sync_batchnorm`, ...) live in norms.py and are re-exported here under their 2019 names.

CPU fast paths. Two computations have a plain version, which is what the code means, and a
faster one that gives bit-identical outputs and gradients where it applies:
- `SN.W_`: in eval mode without autograd, reuse the normalised weight computed last time
  while neither the weight nor the u's have changed (sampling a fixed G recomputes nothing).
- `upsample2x`: an NCHW CPU tensor is upsampled by one broadcast copy (`_CPUUpsample2x`).
Both are used while the module-level switch `FAST_PATHS` is True (the default); set
`layers.FAST_PATHS = False` to run the plain version everywhere, e.g. to rule them out when
chasing a numerical difference. Each falls back to the plain version where it does not apply.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# The 2019 code and its checkpoints' users call layers.ccbn, layers.bn, ...: the batch norms
# that moved to norms.py stay reachable here.
from norms import (  # noqa: F401
    BatchNormCCBN,
    BatchStatsNorm,
    GroupNormCCBN,
    InstanceNormCCBN,
    NoNormCCBN,
    NormBase,
    StoredStatsNorm,
    bn,
    ccbn,
    ccbn_class,
    fused_bn,
    local_batchnorm,
    use_sync_batchnorm,
)

FAST_PATHS = True  # the CPU fast paths above; False runs the plain code (read at every call)

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

    def W_(self) -> torch.Tensor:
        """The weight divided by its estimated top singular value (gradient flows via W).

        A training-mode forward advances the power iteration (so the result changes every
        call, as in 2019). With FAST_PATHS, an eval-mode forward without autograd reuses the
        weight it computed last time (`_reused_weight`).
        """
        if FAST_PATHS and not (self.training or torch.is_grad_enabled()
                               or torch.compiler.is_compiling()):
            return self._reused_weight()
        if self.__dict__.get('_sn_cache') is not None:  # a stale copy of the weight: free it
            self._sn_cache = None
        return self._normalized_weight()

    def _reused_weight(self) -> torch.Tensor:
        """`_normalized_weight()` as computed last time if neither the weight nor a u changed.

        In eval mode it is a function of those tensors alone, so reusing it gives the same bits.
        """
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
# Residual blocks
# ----------------------------------------------------------------------------------------


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling: F.interpolate(x, scale_factor=2, mode='nearest')."""
    if FAST_PATHS and _CPUUpsample2x.applies(x):
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
    def applies(x: torch.Tensor) -> bool:
        """CPU tensors PyTorch treats as NCHW (its kernel upsamples channels-last ones as is)."""
        return x.device.type == 'cpu' and (
            x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last))

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
