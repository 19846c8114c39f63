"""BigGAN generator and discriminator (Brock et al. 2019), checkpoint-compatible with 2019.

Both constructors take the whole run config as keyword arguments (the command-line flag names
plus `resolution` and `n_classes`); G ignores the `D_*` keys and D the `G_*` ones. Forward calls:
`G(z, G.shared(y))` and `D(x, y)`.

    G, D = Generator(**config), Discriminator(**config)
    x = G(torch.randn(8, G.dim_z), G.shared(torch.randint(0, 1000, (8,))))
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
from torch.nn import init

import layers
import utils

# ----------------------------------------------------------------------------------------
# Architecture tables: channel multiples of ch per stage, and where attention goes.
# ----------------------------------------------------------------------------------------


def parse_attn(attn: Union[str, int]) -> set[int]:
    """Resolutions listed in an attention flag such as '64', '32_64' or '0' (none)."""
    return {int(r) for r in str(attn).split('_') if r and int(r) > 0}


# resolution: (in_channels, out_channels) as multiples of ch; G stages double from 4x4.
G_CHANNELS = {
    32: ([4, 4, 4], [4, 4, 4]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
    256: ([16, 16, 8, 8, 4, 2], [16, 8, 8, 4, 2, 1]),
    512: ([16, 16, 8, 8, 4, 2, 1], [16, 8, 8, 4, 2, 1, 1]),
}

# resolution: (in_channels after the RGB input, out_channels, downsample, stage resolutions).
# The stage resolutions are the 2019 tables' (they decide where `D_attn` puts attention, and
# so the checkpoint keys); at 32 they read 16 throughout, as in 2019.
D_CHANNELS = {
    32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False], [16, 16, 16, 16]),
    64: ([1, 2, 4, 8], [1, 2, 4, 8, 16], [True] * 4 + [False], [32, 16, 8, 4, 4]),
    128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True] * 5 + [False],
          [64, 32, 16, 8, 4, 4]),
    256: ([1, 2, 4, 8, 8, 16], [1, 2, 4, 8, 8, 16, 16], [True] * 6 + [False],
          [128, 64, 32, 16, 8, 4, 4]),
    512: ([1, 1, 2, 4, 8, 8, 16], [1, 1, 2, 4, 8, 8, 16, 16], [True] * 7 + [False],
          [256, 128, 64, 32, 16, 8, 4, 4]),
}


def _check_resolution(resolution: int, table: dict, what: str) -> None:
    if resolution not in table:
        raise ValueError(f'{what} has no architecture for resolution {resolution}; '
                         f'choose one of {sorted(table)}')


def G_arch(ch: int = 64, attention: str = '64') -> dict[int, dict]:
    """G architecture per resolution: channels, upsampling, stage resolutions, attention."""
    attn = parse_attn(attention)
    arch = {}
    for res, (ins, outs) in G_CHANNELS.items():
        stage_res = [8 * 2 ** i for i in range(len(outs))]
        arch[res] = {'in_channels': [ch * m for m in ins],
                     'out_channels': [ch * m for m in outs],
                     'upsample': [True] * len(outs),
                     'resolution': stage_res,
                     'attention': {r: r in attn for r in stage_res}}
    return arch


def D_arch(ch: int = 64, attention: str = '64') -> dict[int, dict]:
    """D architecture per resolution: channels, downsampling, stage resolutions, attention."""
    attn = parse_attn(attention)
    arch = {}
    for res, (ins, outs, down, stage_res) in D_CHANNELS.items():
        arch[res] = {'in_channels': [3] + [ch * m for m in ins],
                     'out_channels': [ch * m for m in outs],
                     'downsample': down,
                     'resolution': stage_res,
                     'attention': {r: r in attn for r in stage_res}}
    return arch


# ----------------------------------------------------------------------------------------
# Shared helpers (BigGANdeep.py uses them too)
# ----------------------------------------------------------------------------------------


def activation(nl: Union[str, nn.Module]) -> nn.Module:
    """The activation of `G_nl`/`D_nl`: relu, inplace_relu or ir (or a 2019 nn.ReLU object)."""
    if isinstance(nl, nn.Module):
        return nl
    if nl == 'relu':
        return nn.ReLU(inplace=False)
    if nl in ('inplace_relu', 'ir'):
        return nn.ReLU(inplace=True)
    raise ValueError(f"G_nl/D_nl must be relu, inplace_relu or ir, got {nl!r}")


def init_weights(module: nn.Module, style: str) -> int:
    """Initialise every conv, linear and embedding weight; returns their parameter count."""
    count = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            if style == 'ortho':
                init.orthogonal_(m.weight)
            elif style == 'N02':
                init.normal_(m.weight, 0, 0.02)
            elif style in ('glorot', 'xavier'):
                init.xavier_uniform_(m.weight)
            else:
                raise ValueError(f"G_init/D_init must be ortho, N02, glorot or xavier, "
                                 f"got {style!r}")
            count += sum(p.numel() for p in m.parameters())
    return count


def check_config_keys(owner: str, extra: dict) -> None:
    """Reject keys that are not run-config keys, so a typo never passes silently."""
    unknown = sorted(set(extra) - utils.config_keys())
    if unknown:
        raise TypeError(f'{owner} got unknown config keys {unknown}; see `python train.py '
                        f'--help` for the flag names')


# ----------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------


class Generator(nn.Module):
    """BigGAN G: z (split per stage with `hier`) and a class embedding to an image in [-1, 1]."""

    def __init__(self, *, G_ch: int = 64, dim_z: int = 128, bottom_width: int = 4,
                 resolution: int = 128, G_attn: str = '64', n_classes: int = 1000,
                 num_G_SVs: int = 1, num_G_SV_itrs: int = 1, G_shared: bool = True,
                 shared_dim: int = 0, hier: bool = False, mybn: bool = False,
                 G_nl: str = 'relu', G_activation: Optional[nn.Module] = None,
                 BN_eps: float = 1e-5, SN_eps: float = 1e-12, G_init: str = 'ortho',
                 skip_init: bool = False, G_param: str = 'SN', norm_style: str = 'bn',
                 G_depth: int = 1, G_output_BN_eps: float = 1e-5, G_output_conv_ch: int = 3,
                 **config):
        super().__init__()
        check_config_keys('Generator', config)
        if G_output_conv_ch < 3:
            raise ValueError(f'G_output_conv_ch {G_output_conv_ch}: the image takes the first 3 '
                             f'output channels, so give at least 3')
        self.ch, self.dim_z, self.bottom_width = G_ch, dim_z, bottom_width
        self.resolution, self.n_classes, self.G_depth = resolution, n_classes, G_depth
        self.G_shared, self.hier = G_shared, hier
        self.shared_dim = shared_dim if shared_dim > 0 else dim_z
        self.activation = activation(G_activation if G_activation is not None else G_nl)
        self.init = G_init
        _check_resolution(resolution, G_CHANNELS, type(self).__module__ + '.Generator')
        self.arch = self.make_arch(G_ch, G_attn)[resolution]
        if hier and not G_shared:
            raise ValueError('--hier needs --G_shared: the z chunks are concatenated to the '
                             'shared class embedding')
        self.set_latent_layout()

        self.which_conv, self.which_linear, _ = layers.layer_makers(
            G_param, num_G_SVs, num_G_SV_itrs, SN_eps)
        # G's class embedding is never spectrally normalised (SN on it randomly cripples G).
        bn_linear = (functools.partial(self.which_linear, bias=False) if G_shared
                     else nn.Embedding)
        self.which_bn = functools.partial(
            layers.ccbn, which_linear=bn_linear, mybn=mybn, norm_style=norm_style, eps=BN_eps,
            input_size=self.ccbn_input_size if G_shared else n_classes)

        # Registration order (shared, linear, blocks, output_layer) is 2019's parameter order.
        self.shared = nn.Embedding(n_classes, self.shared_dim) if G_shared else nn.Identity()
        self.linear = self.which_linear(self.linear_input_size,
                                        self.arch['in_channels'][0] * bottom_width ** 2)
        self.blocks = nn.ModuleList(nn.ModuleList(b) for b in self.make_blocks())
        # The output BN's eps is its own (2019 kept 1e-5 whatever BN_eps said, and trained its
        # checkpoints so). The Hugging Face BigGAN-deep ports use BN_eps there, and a last conv
        # with G_ch outputs of which the image is the first 3: its spectral norm is taken over
        # all of them, so a 3-output conv would divide by a different singular value.
        self.output_layer = nn.Sequential(
            layers.bn(self.arch['out_channels'][-1], eps=G_output_BN_eps, mybn=mybn),
            self.activation, self.which_conv(self.arch['out_channels'][-1], G_output_conv_ch))
        self.param_count = 0 if skip_init else init_weights(self, G_init)

    make_arch = staticmethod(G_arch)

    def set_latent_layout(self) -> None:
        """With `hier`, z splits into one chunk per stage plus one for the first linear."""
        if self.hier:
            self.num_slots = len(self.arch['in_channels']) + 1
            self.z_chunk_size = self.dim_z // self.num_slots
            self.dim_z = self.z_chunk_size * self.num_slots  # rounded down to split evenly
        else:
            self.num_slots, self.z_chunk_size = 1, 0
        self.ccbn_input_size = self.shared_dim + self.z_chunk_size
        self.linear_input_size = self.dim_z // self.num_slots

    def make_blocks(self) -> list[list[nn.Module]]:
        """One [GBlock, optional Attention] list per stage."""
        blocks = []
        for i, (cin, cout) in enumerate(zip(self.arch['in_channels'],
                                            self.arch['out_channels'])):
            stage = [layers.GBlock(cin, cout, which_conv=self.which_conv,
                                   which_bn=self.which_bn, activation=self.activation,
                                   upsample=self.arch['upsample'][i])]
            if self.arch['attention'][self.arch['resolution'][i]]:
                stage.append(layers.Attention(cout, self.which_conv))
            blocks.append(stage)
        return blocks

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, R, R] in [-1, 1] from z [B, dim_z] and y = G.shared(labels)."""
        if self.hier:
            zs = torch.split(z, self.z_chunk_size, 1)
            z, ys = zs[0], [torch.cat([y, z_i], 1) for z_i in zs[1:]]
        else:
            ys = [y] * len(self.blocks)
        h = self.linear(z).view(z.size(0), -1, self.bottom_width, self.bottom_width)
        for stage, y_stage in zip(self.blocks, ys):
            for block in stage:
                h = block(h, y_stage)
        return self.to_rgb(h)

    def to_rgb(self, h: torch.Tensor) -> torch.Tensor:
        """BN, ReLU, the last conv, its first 3 channels, tanh."""
        h = self.output_layer(h)
        return torch.tanh(h if h.size(1) == 3 else h[:, :3])


# ----------------------------------------------------------------------------------------
# Discriminator
# ----------------------------------------------------------------------------------------


class Discriminator(nn.Module):
    """BigGAN D: residual blocks, global sum pooling, linear + class projection head.

    With one class (unconditional) the projection term is left out.
    """

    def __init__(self, *, D_ch: int = 64, D_wide: bool = True, resolution: int = 128,
                 D_attn: str = '64', n_classes: int = 1000, num_D_SVs: int = 1,
                 num_D_SV_itrs: int = 1, D_nl: str = 'relu',
                 D_activation: Optional[nn.Module] = None, SN_eps: float = 1e-12,
                 output_dim: int = 1, D_init: str = 'ortho', skip_init: bool = False,
                 D_param: str = 'SN', D_depth: int = 1, **config):
        super().__init__()
        check_config_keys('Discriminator', config)
        self.ch, self.D_wide, self.resolution = D_ch, D_wide, resolution
        self.n_classes, self.D_depth = n_classes, D_depth
        self.activation = activation(D_activation if D_activation is not None else D_nl)
        self.init = D_init
        _check_resolution(resolution, self.arch_table, type(self).__module__ + '.Discriminator')
        self.arch = self.make_arch(D_ch, D_attn)[resolution]
        self.which_conv, self.which_linear, self.which_embedding = layers.layer_makers(
            D_param, num_D_SVs, num_D_SV_itrs, SN_eps)

        self.make_stem()
        self.blocks = nn.ModuleList(nn.ModuleList(b) for b in self.make_blocks())
        self.linear = self.which_linear(self.arch['out_channels'][-1], output_dim)
        if n_classes > 1:
            self.embed = self.which_embedding(n_classes, self.arch['out_channels'][-1])
        self.param_count = 0 if skip_init else init_weights(self, D_init)

    make_arch = staticmethod(D_arch)
    arch_table = D_CHANNELS

    def make_stem(self) -> None:
        """BigGAN's D starts directly with a DBlock (BigGAN-deep adds an input conv)."""

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input stem (identity here)."""
        return x

    def make_blocks(self) -> list[list[nn.Module]]:
        """One [DBlock, optional Attention] list per stage; only the first is not pre-activated."""
        blocks = []
        for i, (cin, cout) in enumerate(zip(self.arch['in_channels'],
                                            self.arch['out_channels'])):
            stage = [layers.DBlock(cin, cout, which_conv=self.which_conv, wide=self.D_wide,
                                   preactivation=i > 0, activation=self.activation,
                                   downsample=self.arch['downsample'][i])]
            if self.arch['attention'][self.arch['resolution'][i]]:
                stage.append(layers.Attention(cout, self.which_conv))
            blocks.append(stage)
        return blocks

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage (its block(s), then its attention), from the input:
        [B, C_i, H_i, W_i] each; the last is what the head pools."""
        h, outputs = self.stem(x), []
        for stage in self.blocks:
            for block in stage:
                h = block(h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits [B, output_dim] for images x [B, 3, R, R] of classes y [B]."""
        h = self.stage_outputs(x)[-1]
        h = torch.sum(self.activation(h), [2, 3])  # global sum pooling, (B, C)
        out = self.linear(h)
        if self.n_classes > 1:  # projection discriminator term
            out = out + torch.sum(self.embed(y) * h, 1, keepdim=True)
        return out


# ----------------------------------------------------------------------------------------
# G and D in one module
# ----------------------------------------------------------------------------------------


def unwrap(net: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel/DataParallel wrapper (or the model)."""
    return net.module if isinstance(net, (nn.parallel.DistributedDataParallel,
                                          nn.DataParallel)) else net


class D_pass(nn.Module):
    """D on every image it sees in one call: the groups of images (fakes, reals, extra views)
    are concatenated, augmented (DiffAugment/ADA: the one place augmentation is applied) and
    judged together; D's outputs come back split per group.

    `split_D` (2019's --split_D) runs the first group (the fakes) and the rest in two calls.
    """

    def __init__(self, D: nn.Module, *, augment: Optional[Callable] = None,
                 split_D: bool = False):
        super().__init__()
        self.D, self.augment, self.split_D = D, augment, split_D

    def see(self, images: torch.Tensor) -> torch.Tensor:
        """The images as D sees them: augmented if the run augments."""
        return self.augment(images) if self.augment is not None else images

    def forward(self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
                ) -> list[torch.Tensor]:
        """D's outputs [n_i, 1] on each group images[i] [n_i, 3, R, R] of classes labels[i]."""
        sizes = [x.shape[0] for x in images]
        if self.split_D and len(images) > 1:
            return [self.D(self.see(images[0]), labels[0]),
                    *self.D(self.see(_cat(images[1:])), _cat(labels[1:])).split(sizes[1:])]
        return list(self.D(self.see(_cat(images)), _cat(labels)).split(sizes))


def _cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.cat, without a copy for a single tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors), 0)


class G_D(nn.Module):
    """G then D in one pass (the G step): D's outputs on G(z, gy) and on any given images, so
    DataParallel/DDP need not gather G's output.

    Under DDP, G and D are wrapped separately: give G_D the wrapped G and the plain D (D is not
    being trained in the G step, so it has no gradients to all-reduce). The D step runs G
    without a graph itself and calls `D_pass` (train_fns.GAN_training_function).
    """

    def __init__(self, G: nn.Module, D: nn.Module, *, augment: Optional[Callable] = None,
                 split_D: bool = False):
        super().__init__()
        self.G = G
        self.D_pass = D_pass(D, augment=augment, split_D=split_D)

    def forward(self, z: torch.Tensor, gy: torch.Tensor, images: Sequence[torch.Tensor] = (),
                labels: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(G(z, gy), D's outputs on [G(z, gy), *images]), D in one pass."""
        G_z = self.G(z, unwrap(self.G).shared(gy))
        return G_z, self.D_pass([G_z, *images], [gy, *labels])
