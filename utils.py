"""Utilities, in sections: config/CLI, seeds, EMA and regularisers, checkpoints, logging,
z/y sampling and sample sheets.

Every flag of the 2019 release is accepted with its name and default (SPEC §9), so 2019
launch scripts parse unchanged. Each flag is defined once, in FLAGS / SAMPLE_FLAGS.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torchvision

import layers

# ----------------------------------------------------------------------------------------
# Config / CLI
# ----------------------------------------------------------------------------------------

SWITCH = 'switch'  # bare flag that turns something on (store_true)


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its name, default, type (or SWITCH) and help line."""
    name: str
    default: Any
    type: Any
    help: str
    dest: Optional[str] = None      # config key when it differs from the name
    choices: Optional[tuple] = None

    @property
    def key(self) -> str:
        """The config key this flag sets."""
        return self.dest or self.name


def bounded(kind: type, low: float, high: Optional[float] = None, open_low: bool = False,
            open_high: bool = False) -> Callable[[str], Any]:
    """An argparse type: a `kind` value within [low, high] (bounds made open as asked), so a
    bad value stops the parser with the flag's name before anything runs."""
    def parse(text: str):
        value = kind(text)
        above = value > low if open_low else value >= low
        below = high is None or (value < high if open_high else value <= high)
        if not (above and below):
            lo, hi = '(' if open_low else '[', ')' if open_high or high is None else ']'
            raise argparse.ArgumentTypeError(
                f'must lie in {lo}{low}, {"inf" if high is None else high}{hi}, got {text}')
        return value
    parse.__name__ = kind.__name__  # argparse says 'invalid int value' for non-numbers
    return parse


POSITIVE_INT, COUNT = bounded(int, 1), bounded(int, 0)
NONNEGATIVE, POSITIVE = bounded(float, 0), bounded(float, 0, open_low=True)
ADAM_BETA = bounded(float, 0, 1, open_high=True)


def _off(name: str, dest: str, help: str) -> Flag:
    """A bare flag that switches off something on by default (config key `dest`)."""
    return Flag(name, True, 'off', help, dest=dest)


FLAGS = [
    # Dataset / data loader
    Flag('dataset', 'I128_hdf5', str, 'dataset name (I32..I256[_hdf5], C10, C100) or a path to '
         'an image folder / .hdf5 file'),
    Flag('resolution', 0, COUNT, 'image resolution for a dataset given by path (0: from the '
         'dataset name or file)'),
    Flag('augment', False, SWITCH, 'random crop / flip augmentation'),
    Flag('num_workers', 8, COUNT, 'data loader worker processes'),
    _off('no_pin_memory', 'pin_memory', 'do not pin loader memory'),
    Flag('shuffle', False, SWITCH, 'shuffle the data'),
    Flag('load_in_mem', False, SWITCH, 'load the whole HDF5 file into RAM'),
    Flag('use_multiepoch_sampler', False, SWITCH, 'per-epoch random orders fixed by the seed '
         '(always shuffled), so a resumed run reads what the original would have'),
    # Model
    Flag('model', 'BigGAN', str, 'model module: BigGAN or BigGANdeep'),
    Flag('G_param', 'SN', str, 'G layers: SN or ortho (plain)', choices=('SN', 'ortho')),
    Flag('D_param', 'SN', str, 'D layers: SN or ortho (plain)', choices=('SN', 'ortho')),
    Flag('G_ch', 64, POSITIVE_INT, 'G channel multiplier'),
    Flag('D_ch', 64, POSITIVE_INT, 'D channel multiplier'),
    Flag('G_depth', 1, POSITIVE_INT, 'G blocks per stage (BigGAN-deep)'),
    Flag('D_depth', 1, POSITIVE_INT, 'D blocks per stage (BigGAN-deep)'),
    _off('D_thin', 'D_wide', 'thin D blocks (hidden channels = in_channels)'),
    Flag('G_shared', False, SWITCH, 'shared class embedding in G'),
    Flag('shared_dim', 0, COUNT, 'shared embedding size (0: dim_z)'),
    Flag('dim_z', 128, POSITIVE_INT, 'latent size'),
    Flag('z_var', 1.0, POSITIVE, 'latent variance'),
    Flag('hier', False, SWITCH, 'hierarchical latents: a z chunk per G stage'),
    Flag('cross_replica', False, SWITCH, 'batch statistics across GPUs (SyncBatchNorm)'),
    Flag('mybn', False, SWITCH, 'fp32 mean-of-squares batch norm with standing stats'),
    Flag('G_nl', 'relu', str, 'G activation', choices=('relu', 'inplace_relu', 'ir')),
    Flag('D_nl', 'relu', str, 'D activation', choices=('relu', 'inplace_relu', 'ir')),
    Flag('G_attn', '64', str, 'G attention resolutions, e.g. 64 or 32_64 (0: none)'),
    Flag('D_attn', '64', str, 'D attention resolutions, e.g. 64 or 32_64 (0: none)'),
    Flag('norm_style', 'bn', str, "G's conditional norm: bn, in, gn, nonorm"),
    # Initialisation and optimisation
    Flag('seed', 0, int, 'random seed'),
    Flag('G_init', 'ortho', str, 'G init', choices=('ortho', 'N02', 'glorot', 'xavier')),
    Flag('D_init', 'ortho', str, 'D init', choices=('ortho', 'N02', 'glorot', 'xavier')),
    Flag('skip_init', False, SWITCH, 'skip weight init (when loading weights anyway)'),
    Flag('G_lr', 5e-5, NONNEGATIVE, 'G learning rate'),
    Flag('D_lr', 2e-4, NONNEGATIVE, 'D learning rate'),
    Flag('G_B1', 0.0, ADAM_BETA, 'G Adam beta1'),
    Flag('D_B1', 0.0, ADAM_BETA, 'D Adam beta1'),
    Flag('G_B2', 0.999, ADAM_BETA, 'G Adam beta2'),
    Flag('D_B2', 0.999, ADAM_BETA, 'D Adam beta2'),
    Flag('batch_size', 64, POSITIVE_INT, 'batch size (per process under DDP)'),
    Flag('G_batch_size', 0, COUNT, 'G batch size (0: batch_size)'),
    Flag('num_G_accumulations', 1, POSITIVE_INT, 'G minibatches accumulated per G step'),
    Flag('num_D_steps', 2, POSITIVE_INT, 'D steps per G step'),
    Flag('num_D_accumulations', 1, POSITIVE_INT, 'D minibatches accumulated per D step'),
    Flag('split_D', False, SWITCH, 'run D on fakes and reals separately'),
    Flag('num_epochs', 100, COUNT, 'epochs to train for'),
    Flag('parallel', False, SWITCH, 'DataParallel over the visible GPUs'),
    Flag('G_fp16', False, SWITCH, '2019 fp16 G; now means --amp fp16'),
    Flag('D_fp16', False, SWITCH, '2019 fp16 D; now means --amp fp16'),
    Flag('D_mixed_precision', False, SWITCH, '2019 mixed precision D; now means --amp fp16'),
    Flag('G_mixed_precision', False, SWITCH, '2019 mixed precision G; now means --amp fp16'),
    Flag('accumulate_stats', False, SWITCH, 'standing stats before sampling/testing'),
    Flag('num_standing_accumulations', 16, POSITIVE_INT, 'batches for standing stats'),
    # Bookkeeping
    Flag('G_eval_mode', False, SWITCH, 'sample and test G in eval mode'),
    Flag('save_every', 2000, COUNT, 'save every N iterations (0: never)'),
    Flag('num_save_copies', 2, COUNT, 'rotating checkpoint copies'),
    Flag('num_best_copies', 2, COUNT, 'best checkpoints kept'),
    Flag('which_best', 'IS', str, 'best by IS or FID', choices=('IS', 'FID')),
    Flag('no_fid', False, SWITCH, 'compute IS only'),
    Flag('test_every', 5000, COUNT, 'test every N iterations (0: never)'),
    Flag('num_inception_images', 50000, COUNT, 'samples for IS/FID'),
    Flag('hashname', False, SWITCH, 'name the run by a stable hash of its config'),
    Flag('base_root', '', str, 'root for data/weights/logs/samples'),
    Flag('data_root', 'data', str, 'data folder'),
    Flag('weights_root', 'weights', str, 'checkpoint folder'),
    Flag('logs_root', 'logs', str, 'log folder'),
    Flag('samples_root', 'samples', str, 'sample folder'),
    Flag('pbar', 'mine', str, 'progress bar style (tqdm is used for any value)'),
    Flag('name_suffix', '', str, 'suffix for the experiment name'),
    Flag('experiment_name', '', str, 'explicit experiment name'),
    Flag('config_from_name', False, SWITCH, 'accepted for 2019 scripts'),
    # EMA
    Flag('ema', False, SWITCH, 'keep an EMA copy of G'),
    Flag('ema_decay', 0.9999, bounded(float, 0, 1), 'EMA decay'),
    Flag('use_ema', False, SWITCH, 'sample and test with the EMA copy'),
    Flag('ema_start', 0, COUNT, 'iteration at which EMA starts'),
    # Numerics
    Flag('adam_eps', 1e-8, POSITIVE, 'Adam epsilon'),
    Flag('BN_eps', 1e-5, POSITIVE, 'batch norm epsilon'),
    Flag('SN_eps', 1e-8, POSITIVE, 'spectral norm epsilon'),
    Flag('num_G_SVs', 1, POSITIVE_INT, 'singular values tracked per G layer'),
    Flag('num_D_SVs', 1, POSITIVE_INT, 'singular values tracked per D layer'),
    Flag('num_G_SV_itrs', 1, POSITIVE_INT, 'power iterations per G forward'),
    Flag('num_D_SV_itrs', 1, POSITIVE_INT, 'power iterations per D forward'),
    # Regularisation and training function
    Flag('G_ortho', 0.0, NONNEGATIVE, 'G orthogonal regularisation strength'),
    Flag('D_ortho', 0.0, NONNEGATIVE, 'D orthogonal regularisation strength'),
    # 2019's --toggle_grads was store_true with default True: passing it changes nothing.
    Flag('toggle_grads', True, SWITCH, "freeze the net not being stepped (on by default; "
         "accepted for 2019 scripts)"),
    _off('no_toggle_grads', 'toggle_grads', "train without freezing the other net's "
         "parameters in each step"),
    Flag('which_train_fn', 'GAN', str, 'training function (GAN: train_fns.py\'s)',
         choices=('GAN',)),
    Flag('load_weights', '', str, 'with --resume: the copy to resume from (e.g. best0, copy1); '
         'without: a run folder or G*.pth file to fine-tune from'),
    Flag('resume', False, SWITCH, 'resume the run'),
    # Logging
    Flag('logstyle', '%3.3e', str, 'number format of the training logs'),
    Flag('log_G_spectra', False, SWITCH, "log G's singular values"),
    Flag('log_D_spectra', False, SWITCH, "log D's singular values"),
    Flag('sv_log_interval', 10, COUNT, 'iterations between singular value logs'),
    # Beyond 2019
    Flag('loss', 'hinge', str, 'adversarial loss: hinge or dcgan', choices=('hinge', 'dcgan')),
    Flag('unconditional', False, SWITCH, 'ignore the labels: one class, no projection in D'),
    Flag('log_every', 50, POSITIVE_INT, 'iterations between reading the losses (host syncs)'),
    Flag('amp', 'none', str, 'mixed precision: none, bf16 or fp16 (with a grad scaler)',
         choices=('none', 'bf16', 'fp16')),
    Flag('channels_last', False, SWITCH, 'channels-last memory format for G and D'),
    Flag('compile', False, SWITCH, 'torch.compile G and D'),
    Flag('inception', 'torchvision', str, 'Inception net for IS/FID: torchvision or tf',
         choices=('torchvision', 'tf')),
    Flag('inception_weights', '', str, 'local Inception weights file (else the hub cache)'),
]

SAMPLE_FLAGS = [
    Flag('sample_npz', False, SWITCH, 'write sample_num_npz samples to an .npz'),
    Flag('sample_num_npz', 50000, int, 'samples in the .npz'),
    Flag('sample_sheets', False, SWITCH, 'per-class sample sheets'),
    Flag('sample_interps', False, SWITCH, 'interpolation sheets'),
    Flag('sample_sheet_folder_num', -1, int, 'sheet folder number (-1: current iteration)'),
    Flag('sample_random', False, SWITCH, 'a random sample grid'),
    Flag('sample_trunc_curves', '', str, 'IS/FID over truncation start_step_end'),
    Flag('sample_inception_metrics', False, SWITCH, 'IS/FID of the model'),
    Flag('truncation', 0.0, float, 'truncation trick for npz, sheets, interps, random grid '
         'and --sample_inception_metrics: z entries with |z_i| > t redrawn (0: off)'),
]

# Keys a run config holds that no flag sets: derived from the data, or 2019 objects.
DERIVED_KEYS = {'n_classes', 'classes_per_sheet', 'moments_path', 'G_activation',
                'D_activation'}


def _add_flags(parser: argparse.ArgumentParser, flags: list[Flag], defaults: bool) -> None:
    """Add flags with their defaults, or (defaults=False) with none: then only the flags
    typed on the command line appear in the parsed namespace."""
    for f in flags:
        default = f.default if defaults else argparse.SUPPRESS
        if f.type == SWITCH:
            parser.add_argument(f'--{f.name}', action='store_true', default=default,
                                help=f.help)
        elif f.type == 'off':
            parser.add_argument(f'--{f.name}', dest=f.key, action='store_false',
                                default=True if defaults else default, help=f.help)
        else:
            shown = str(f.default).replace('%', '%%')  # argparse %-formats help texts
            parser.add_argument(f'--{f.name}', type=f.type, default=default,
                                choices=f.choices, help=f'{f.help} (default: {shown})')


def prepare_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The training parser: every 2019 flag with its 2019 default (see _add_flags)."""
    parser = argparse.ArgumentParser(description='Train a BigGAN.')
    _add_flags(parser, FLAGS, defaults)
    return parser


def add_sample_parser(parser: argparse.ArgumentParser, defaults: bool = True
                      ) -> argparse.ArgumentParser:
    """Add the sampling flags of sample.py to a parser."""
    _add_flags(parser, SAMPLE_FLAGS, defaults)
    return parser


def parse_given(make_parser: Callable[[bool], argparse.ArgumentParser],
                argv: Optional[list[str]] = None) -> tuple[dict, dict]:
    """(every flag with its default or typed value, only the flags typed on the command line),
    from `make_parser(defaults)`."""
    return vars(make_parser(True).parse_args(argv)), vars(make_parser(False).parse_args(argv))


# Keys that describe an invocation (where things are, what to do), not the run: never taken
# from a saved run config.
INVOCATION_KEYS = {'base_root', 'data_root', 'weights_root', 'logs_root', 'samples_root',
                   'experiment_name', 'load_weights', 'resume'}


def read_run_config(run_dir: str, suffix: Optional[str] = None) -> tuple[Optional[dict], int]:
    """(config saved with a run or None, its iteration): config.json, else the `config` of
    state_dict.pth, where 2019 runs keep it."""
    state_path = os.path.join(run_dir, checkpoint_file('state_dict', suffix))
    state = load_file(state_path) if os.path.isfile(state_path) else {}
    itr = int(state.get('itr', 0))
    if os.path.isfile(os.path.join(run_dir, 'config.json')):
        with open(os.path.join(run_dir, 'config.json')) as f:
            return json.load(f), itr
    return state.get('config'), itr


def config_keys() -> set[str]:
    """Every key a run config may hold."""
    return {f.key for f in FLAGS + SAMPLE_FLAGS} | DERIVED_KEYS


def legacy_precision_note(config: dict) -> Optional[str]:
    """Map the 2019 fp16 flags onto `--amp fp16`; returns a note to print, or None."""
    legacy = [k for k in ('G_fp16', 'D_fp16', 'G_mixed_precision', 'D_mixed_precision')
              if config.get(k)]
    if not legacy or config.get('amp', 'none') != 'none':
        return None
    config['amp'] = 'fp16'
    return (f"--{' --'.join(legacy)}: the 2019 fp16 modes are replaced by autocast mixed "
            f"precision; running with --amp fp16 (SN and BN statistics stay fp32). "
            f"--amp bf16 is the better choice on GPUs that support it.")


def update_config_roots(config: dict) -> dict:
    """With --base_root, put weights/, logs/, samples/ (and data/ unless given) under it."""
    if config['base_root']:
        for key in ('weights', 'logs', 'samples'):
            config[f'{key}_root'] = os.path.join(config['base_root'], key)
        if config['data_root'] == 'data':
            config['data_root'] = os.path.join(config['base_root'], 'data')
    return config


def name_from_config(config: dict) -> str:
    """The 2019 experiment name derived from the config (SPEC §3), so 2019 runs are found."""
    c = config
    parts = [
        f"Big{c['which_train_fn']}", dataset_label(c['dataset']),
        c['model'] if c['model'] != 'BigGAN' else None,
        f"seed{c['seed']}", f"Gch{c['G_ch']}", f"Dch{c['D_ch']}",
        f"Gd{c['G_depth']}" if c['G_depth'] > 1 else None,
        f"Dd{c['D_depth']}" if c['D_depth'] > 1 else None,
        f"bs{c['batch_size']}",
        'Gfp16' if c['G_fp16'] else None, 'Dfp16' if c['D_fp16'] else None,
        f"nDs{c['num_D_steps']}" if c['num_D_steps'] > 1 else None,
        f"nDa{c['num_D_accumulations']}" if c['num_D_accumulations'] > 1 else None,
        f"nGa{c['num_G_accumulations']}" if c['num_G_accumulations'] > 1 else None,
        f"Glr{c['G_lr']:2.1e}", f"Dlr{c['D_lr']:2.1e}",
        f"GB{c['G_B1']:3.3f}" if c['G_B1'] else None,
        f"GBB{c['G_B2']:3.3f}" if c['G_B2'] != 0.999 else None,
        f"DB{c['D_B1']:3.3f}" if c['D_B1'] else None,
        f"DBB{c['D_B2']:3.3f}" if c['D_B2'] != 0.999 else None,
        f"Gnl{c['G_nl']}", f"Dnl{c['D_nl']}", f"Ginit{c['G_init']}", f"Dinit{c['D_init']}",
        f"G{c['G_param']}" if c['G_param'] != 'SN' else None,
        f"D{c['D_param']}" if c['D_param'] != 'SN' else None,
        f"Gattn{c['G_attn']}" if c['G_attn'] != '0' else None,
        f"Dattn{c['D_attn']}" if c['D_attn'] != '0' else None,
        f"Gortho{c['G_ortho']:2.1e}" if c['G_ortho'] > 0 else None,
        f"Dortho{c['D_ortho']:2.1e}" if c['D_ortho'] > 0 else None,
        c['norm_style'] if c['norm_style'] != 'bn' else None,
        'cr' if c['cross_replica'] else None, 'Gshared' if c['G_shared'] else None,
        'hier' if c['hier'] else None, 'ema' if c['ema'] else None,
        c['name_suffix'] or None,
    ]
    name = '_'.join(p for p in parts if p is not None)
    return hashname(name) if c['hashname'] else name


def dataset_label(dataset: str) -> str:
    """The dataset's part of a run name: a 2019 name as is, a path by its last component
    (without .hdf5), so the name never holds a path separator."""
    if os.sep not in dataset and '/' not in dataset and not dataset.endswith(('.hdf5', '.h5')):
        return dataset
    name = os.path.basename(os.path.normpath(dataset))
    return name.rsplit('.', 1)[0] if name.endswith(('.hdf5', '.h5')) else name


_ADJECTIVES = ('amber azure bold brave calm clever crisp dapper eager fancy fuzzy gentle '
               'glossy grand happy hardy jolly keen lively lucky mellow merry nimble noble '
               'plucky polite proud quick quiet rapid rustic shiny silent sleek smart snowy '
               'spry stout sunny swift tidy vivid warm wild wise witty zesty').split()
_ANIMALS = ('badger beaver bison camel cobra condor cougar coyote crane dingo eagle falcon '
            'ferret gecko gibbon heron hyena ibex iguana jackal koala lemur llama lynx marmot '
            'moose newt ocelot otter panda parrot puffin quokka rabbit raven salmon seal '
            'shrew sloth stork tapir tiger toucan walrus wombat yak zebra').split()


def hashname(name: str) -> str:
    """Three words from a stable hash of the name (2019's used the per-process hash())."""
    h = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    a = _ADJECTIVES
    return f'{a[h % len(a)]}_{a[(h // len(a)) % len(a)]}_{_ANIMALS[(h >> 64) % len(_ANIMALS)]}'


def save_config(config: dict, path: str) -> None:
    """Write the resolved config as JSON (plain values only), atomically."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    atomic_write(path, lambda f: json.dump(plain_config(config), f, indent=2, sort_keys=True),
                 'w')


def plain_config(config: dict) -> dict:
    """The config without 2019's pickled nn.ReLU entries (rebuilt from G_nl/D_nl)."""
    return {k: v for k, v in config.items() if k not in ('G_activation', 'D_activation')}


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
    (strength / 2) ‖(W Wᵀ) ⊙ (1 - I)‖²_F, computed without building that loss.
    """
    skip = {id(p) for p in blacklist}
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim < 2 or id(param) in skip or param.grad is None:
                continue
            w = param.reshape(param.shape[0], -1)  # a copy for channels_last weights
            gram = torch.mm(w, w.t())
            gram.fill_diagonal_(0)
            param.grad.add_(torch.mm(gram, w).view_as(param), alpha=2 * strength)


def toggle_grad(model: nn.Module, on: bool) -> None:
    """Switch requires_grad of every parameter of a model."""
    for param in model.parameters():
        param.requires_grad_(on)


# ----------------------------------------------------------------------------------------
# Checkpoints: 2019 layout, written atomically, loaded with an allow-list
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
                 experiment_name: str, name_suffix: Optional[str] = None,
                 G_ema: Optional[nn.Module] = None, G_optim=None, D_optim=None,
                 extra: Optional[dict] = None, also_as: tuple[str, ...] = ()) -> str:
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
                 weights_root: str, experiment_name: str, name_suffix: Optional[str] = None,
                 G_ema: Optional[nn.Module] = None, strict: bool = True, G_optim=None,
                 D_optim=None) -> dict:
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


# ----------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------


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
        with open(self.fname, 'a') as f:
            f.write(json.dumps(record, ensure_ascii=True) + '\n')

    def truncate_after(self, itr: int) -> None:
        """Drop records of iterations after `itr` (written by a run that was killed later)."""
        if not os.path.exists(self.fname):
            return
        with open(self.fname) as f:
            kept = [line for line in f if line.strip() and json.loads(line).get('itr', 0) <= itr]
        with open(self.fname, 'w') as f:
            f.writelines(kept)


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
            with open(os.path.join(self.root, f'{name}.log'), 'a') as f:
                f.write(f'{itr}: {self.logstyle % value}\n')

    def truncate_after(self, itr: int) -> None:
        """Drop lines of iterations after `itr`."""
        for fname in os.listdir(self.root):
            if fname.endswith('.log'):
                path = os.path.join(self.root, fname)
                with open(path) as f:
                    kept = [line for line in f if int(line.split(':', 1)[0]) <= itr]
                with open(path, 'w') as f:
                    f.writelines(kept)


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
                 device: Union[str, torch.device] = 'cpu', z_var: float = 1.0, rank: int = 0,
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


def draw_z(shape: tuple, device: Union[str, torch.device] = 'cpu', truncation: float = 0.0
           ) -> torch.Tensor:
    """z ~ N(0, 1), truncated at `truncation` when it is > 0 (the paper's truncation trick)."""
    if truncation > 0:
        return truncated_normal(shape, truncation, device)
    return torch.randn(shape, device=device)


def truncated_normal(shape: tuple, truncation: float, device: Union[str, torch.device] = 'cpu',
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """N(0, 1) samples with every entry |z_i| > truncation redrawn until all lie within it."""
    z = torch.randn(shape, device=device, generator=generator)
    outside = z.abs() > truncation
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), device=device, generator=generator)
        outside = z.abs() > truncation
    return z


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
def sample_sheet(G: nn.Module, classes_per_sheet: int, num_classes: int,
                 samples_per_class: int, samples_root: str, experiment_name: str,
                 folder_number: int, device: Union[str, torch.device] = 'cpu',
                 truncation: float = 0.0) -> list[str]:
    """Per-class sheets samples{i}.jpg: one row per class, `samples_per_class` columns."""
    paths = []
    for i in range(max(num_classes // classes_per_sheet, 1)):
        classes = min(classes_per_sheet, num_classes)
        y = torch.arange(i * classes, (i + 1) * classes, device=device)
        ims = [G(draw_z((classes, G.dim_z), device, truncation), G.shared(y))
               for _ in range(samples_per_class)]
        out = torch.stack(ims, 1).flatten(0, 1)  # (classes * samples_per_class, 3, R, R)
        paths.append(os.path.join(samples_root, experiment_name, str(folder_number),
                                  f'samples{i}.jpg'))
        save_grid(out, paths[-1], nrow=samples_per_class)
    return paths


def interp(x0: torch.Tensor, x1: torch.Tensor, num_midpoints: int) -> torch.Tensor:
    """Linear interpolation [N, 1, D] x2 -> [N, num_midpoints + 2, D]."""
    lerp = torch.linspace(0, 1.0, num_midpoints + 2, device=x0.device).to(x0.dtype)
    return x0 * (1 - lerp.view(1, -1, 1)) + x1 * lerp.view(1, -1, 1)


@torch.no_grad()
def interp_sheet(G: nn.Module, num_per_sheet: int, num_midpoints: int, num_classes: int,
                 samples_root: str, experiment_name: str, folder_number: int,
                 sheet_number: int = 0, fix_z: bool = False, fix_y: bool = False,
                 device: Union[str, torch.device] = 'cpu', truncation: float = 0.0
                 ) -> Optional[str]:
    """Interpolation sheet interp{Z}{Y}{n}.jpg: rows go from one (z, class) to another."""
    n, steps = num_per_sheet, num_midpoints + 2
    if not fix_y and not isinstance(G.shared, nn.Embedding):
        return None  # without a shared embedding there is no class vector to interpolate
    if fix_z:
        zs = draw_z((n, 1, G.dim_z), device, truncation).repeat(1, steps, 1)
    else:
        zs = interp(draw_z((n, 1, G.dim_z), device, truncation),
                    draw_z((n, 1, G.dim_z), device, truncation), num_midpoints)
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
