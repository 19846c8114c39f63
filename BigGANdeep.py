"""BigGAN-deep: bottleneck residual blocks, `G_depth`/`D_depth` blocks per stage.

Everything but the blocks, the tables and G's conditioning is BigGAN.py's, imported from there.

    G, D = Generator(**config), Discriminator(**config)   # config['G_depth'] == 2, ...
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import BigGAN
import layers
from BigGAN import G_D, D_pass  # noqa: F401  (same wrappers; part of the BigGANdeep API)

# resolution: (in_channels, out_channels, downsample, stage resolutions) as multiples of ch,
# after the input conv (RGB -> in_channels[0]); stage resolutions as in the 2019 tables.
# Every stage downsamples at 64/128/256, so D ends on a 4x4 map: 2019's tables list one more
# True than there are stages and its loop reads the first len(out_channels) of them. At 32
# the last stage keeps its 8x8 map (32 -> 16 -> 8 -> 8).
D_CHANNELS = {
    32: ([4, 4, 4], [4, 4, 4], [True, True, False], [16, 16, 16]),
    64: ([1, 2, 4, 8], [2, 4, 8, 16], [True] * 4, [32, 16, 8, 4]),
    128: ([1, 2, 4, 8, 16], [2, 4, 8, 16, 16], [True] * 5, [64, 32, 16, 8, 4]),
    256: ([1, 2, 4, 8, 8, 16], [2, 4, 8, 8, 16, 16], [True] * 6, [128, 64, 32, 16, 8, 4]),
}


def D_arch(ch: int = 64, attention: str = '64') -> dict[int, dict]:
    """BigGAN-deep D architecture per resolution."""
    attn = BigGAN.parse_attn(attention)
    return {res: {'in_channels': [ch * m for m in ins], 'out_channels': [ch * m for m in outs],
                  'downsample': down, 'resolution': stage_res,
                  'attention': {r: r in attn for r in stage_res}}
            for res, (ins, outs, down, stage_res) in D_CHANNELS.items()}


class GBlock(nn.Module):
    """Bottleneck G block: 1x1 down to in/4, two 3x3, 1x1 up; channels dropped on the skip."""

    def __init__(self, in_channels: int, out_channels: int, *, which_conv: Callable,
                 which_bn: Callable, activation: nn.Module, upsample: bool = False,
                 channel_ratio: int = 4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = in_channels // channel_ratio
        self.activation, self.upsample = activation, upsample
        self.conv1 = which_conv(in_channels, self.hidden_channels, kernel_size=1, padding=0)
        self.conv2 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = which_conv(self.hidden_channels, out_channels, kernel_size=1, padding=0)
        self.bn1 = which_bn(in_channels)
        self.bn2 = which_bn(self.hidden_channels)
        self.bn3 = which_bn(self.hidden_channels)
        self.bn4 = which_bn(self.hidden_channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.activation(self.bn1(x, y)))
        h = self.activation(self.bn2(h, y))
        if self.in_channels != self.out_channels:
            x = x[:, :self.out_channels]
        if self.upsample:
            h, x = layers.upsample2x(h), layers.upsample2x(x)
        h = self.conv2(h)
        h = self.conv3(self.activation(self.bn3(h, y)))
        h = self.conv4(self.activation(self.bn4(h, y)))
        return h + x


class DBlock(nn.Module):
    """Bottleneck D block: 1x1 to out/4, two 3x3, pool, 1x1; skip grows by concatenation."""

    def __init__(self, in_channels: int, out_channels: int, *, which_conv: Callable,
                 activation: nn.Module, downsample: bool = False, channel_ratio: int = 4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.hidden_channels = out_channels // channel_ratio
        self.activation = activation
        self.downsample = nn.AvgPool2d(2) if downsample else None
        self.conv1 = which_conv(in_channels, self.hidden_channels, kernel_size=1, padding=0)
        self.conv2 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv3 = which_conv(self.hidden_channels, self.hidden_channels)
        self.conv4 = which_conv(self.hidden_channels, out_channels, kernel_size=1, padding=0)
        self.learnable_sc = in_channels != out_channels
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels - in_channels,
                                      kernel_size=1, padding=0)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Pool, then append conv_sc's new channels to x's own."""
        if self.downsample is not None:
            x = self.downsample(x)
        if self.learnable_sc:
            x = torch.cat([x, self.conv_sc(x)], 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Out of place: an in-place ReLU here would also clip the shortcut's input.
        h = self.conv1(F.relu(x))
        h = self.conv2(self.activation(h))
        h = self.activation(self.conv3(self.activation(h)))
        if self.downsample is not None:
            h = self.downsample(h)
        return self.conv4(h) + self.shortcut(x)


class Generator(BigGAN.Generator):
    """BigGAN-deep G: with `hier`, cat([shared(y), z]) feeds the first linear and every ccbn."""

    def __init__(self, *, G_depth: int = 2, **config):
        super().__init__(G_depth=G_depth, **config)

    def set_latent_layout(self) -> None:
        """The whole z conditions every block (no chunks)."""
        self.num_slots, self.z_chunk_size = 1, 0
        self.ccbn_input_size = self.shared_dim + (self.dim_z if self.hier else 0)
        self.linear_input_size = self.dim_z + (self.shared_dim if self.hier else 0)

    def make_blocks(self) -> list[list[nn.Module]]:
        """`G_depth` [GBlock] lists per stage; attention joins the stage's last block."""
        blocks = []
        for i, (cin, cout) in enumerate(zip(self.arch['in_channels'],
                                            self.arch['out_channels'])):
            for j in range(self.G_depth):
                last = j == self.G_depth - 1
                # The first block keeps the stage's in_channels; later ones output cout.
                block_in = cin if j <= 1 else cout
                block_out = cin if j == 0 and self.G_depth > 1 else cout
                blocks.append([GBlock(block_in, block_out, which_conv=self.which_conv,
                                      which_bn=self.which_bn, activation=self.activation,
                                      upsample=self.arch['upsample'][i] and last)])
            if self.arch['attention'][self.arch['resolution'][i]]:
                blocks[-1].append(layers.Attention(cout, self.which_conv))
        return blocks

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, R, R] in [-1, 1] from z [B, dim_z] and y = G.shared(labels)."""
        if self.hier:
            z = y = torch.cat([y, z], 1)
        h = self.linear(z).view(z.size(0), -1, self.bottom_width, self.bottom_width)
        for stage in self.blocks:
            for block in stage:
                h = block(h, y)
        return self.to_rgb(h)


class Discriminator(BigGAN.Discriminator):
    """BigGAN-deep D: an input conv, then `D_depth` bottleneck blocks per stage."""

    make_arch = staticmethod(D_arch)
    arch_table = D_CHANNELS

    def __init__(self, *, D_depth: int = 2, **config):
        super().__init__(D_depth=D_depth, **config)

    def make_stem(self) -> None:
        """RGB to the first stage's channels (registered before the blocks, as in 2019)."""
        self.input_conv = self.which_conv(3, self.arch['in_channels'][0])

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input conv."""
        return self.input_conv(x)

    def make_blocks(self) -> list[list[nn.Module]]:
        """One list per stage: `D_depth` DBlocks (the first downsamples), then attention."""
        blocks = []
        for i, (cin, cout) in enumerate(zip(self.arch['in_channels'],
                                            self.arch['out_channels'])):
            stage: list[nn.Module] = [
                DBlock(cin if j == 0 else cout, cout, which_conv=self.which_conv,
                       activation=self.activation,
                       downsample=self.arch['downsample'][i] and j == 0)
                for j in range(self.D_depth)]
            if self.arch['attention'][self.arch['resolution'][i]]:
                stage.append(layers.Attention(cout, self.which_conv))
            blocks.append(stage)
        return blocks
