"""FreezeD (Mo, Cho & Shin 2020, "Freeze the Discriminator: a Simple Baseline for Fine-Tuning
GANs"): fine-tune a trained run with D's first N blocks fixed, `--freeze_D N`.

D's blocks, counted from the input, are the stages of its architecture table (D_arch): each
stage's residual block(s) with that stage's attention layer (D.blocks[i]); BigGAN-deep's input
conv goes with its first stage. The head (D.linear and the projection embedding D.embed)
always trains. A frozen block
- takes no gradient (requires_grad off, kept off after toggle_grads switches D back on), so
  Adam skips its parameters: their weights and optimizer state stay as loaded;
- runs in eval mode, so spectral norm's power iteration leaves its u (and sv) buffers as
  loaded. D has no batch norm, so nothing else changes with the mode.
D_optim still holds every parameter: checkpoints keep their layout, and a frozen run resumes
(or continues without freezing) like any other.

    python train.py ... --load_weights weights/pretrained_run --freeze_D 2 --experiment_name ft
"""
from __future__ import annotations

import importlib
import os

from torch import nn

from checkpoints import checkpoint_file
from resume import weights_source


def frozen_D_modules(D: nn.Module, n: int) -> tuple[nn.Module, ...]:
    """The modules of D's first n blocks (n = 0: none)."""
    if n <= 0:
        return ()
    if n > len(D.blocks):
        raise ValueError(f'--freeze_D {n}: this D has {len(D.blocks)} blocks')
    stem = (D.input_conv,) if hasattr(D, 'input_conv') else ()  # BigGAN-deep
    return (*stem, *D.blocks[:n])


def hold(modules: tuple[nn.Module, ...]) -> None:
    """Keep frozen modules frozen (no gradient, eval mode): call it after anything that
    switches D back to training or back to requiring gradients."""
    for module in modules:
        module.eval()
        module.requires_grad_(False)


def num_D_blocks(config: dict) -> int:
    """How many blocks (stages) D has at the config's resolution."""
    model = importlib.import_module(config['model'])
    arch = model.D_arch(config['D_ch'], config['D_attn'])
    if config['resolution'] not in arch:
        return 0  # check_config's model checks name the resolution
    return len(arch[config['resolution']]['out_channels'])


def check_freeze_D(config: dict) -> None:
    """--freeze_D needs a trained D to freeze, and no more blocks than D has: fail before
    anything is written."""
    n = config['freeze_D']
    if n <= 0:
        return
    blocks = num_D_blocks(config)
    if blocks and n > blocks:
        raise ValueError(f'--freeze_D {n}: D at {config["resolution"]}x{config["resolution"]} '
                         f'has {blocks} blocks; freeze at most {blocks} (the head always '
                         f'trains)')
    if config['resume']:
        return  # D comes from the run's own checkpoint
    source = config['load_weights']
    if not source:
        raise ValueError(f'--freeze_D {n} fixes the first blocks of a trained D: give the run '
                         f'to fine-tune from with --load_weights (a run folder or a G*.pth file '
                         f'in one); a new D would keep its random initialisation')
    root, suffix = weights_source(source)
    d_file = os.path.join(root, checkpoint_file('D', suffix))
    if not os.path.exists(d_file):
        raise ValueError(f'--freeze_D {n}: {root} holds no {os.path.basename(d_file)} (a '
                         f'converted TF-Hub / Hugging Face generator comes without D), so D '
                         f'starts fresh and freezing its first blocks would fix random weights. '
                         f'Fine-tune without --freeze_D (with --D_warmup, say)')

