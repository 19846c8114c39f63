"""Utilities: the command-line flags and run config (more sections follow below).

Every flag of the 2019 release is accepted with its name and default (SPEC §9), so 2019
launch scripts parse unchanged. Each flag is defined once, in FLAGS / SAMPLE_FLAGS.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Optional

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


def _off(name: str, dest: str, help: str) -> Flag:
    """A bare flag that switches off something on by default (config key `dest`)."""
    return Flag(name, True, 'off', help, dest=dest)


FLAGS = [
    # Dataset / data loader
    Flag('dataset', 'I128_hdf5', str, 'dataset name (I32..I256[_hdf5], C10, C100) or a path to '
         'an image folder / .hdf5 file'),
    Flag('resolution', 0, int, 'image resolution for a dataset given by path (0: from the '
         'dataset name or file)'),
    Flag('augment', False, SWITCH, 'random crop / flip augmentation'),
    Flag('num_workers', 8, int, 'data loader worker processes'),
    _off('no_pin_memory', 'pin_memory', 'do not pin loader memory'),
    Flag('shuffle', False, SWITCH, 'shuffle the data'),
    Flag('load_in_mem', False, SWITCH, 'load the whole HDF5 file into RAM'),
    Flag('use_multiepoch_sampler', False, SWITCH, 'fixed per-epoch order that resumes exactly'),
    # Model
    Flag('model', 'BigGAN', str, 'model module: BigGAN or BigGANdeep'),
    Flag('G_param', 'SN', str, 'G layers: SN or ortho (plain)', choices=('SN', 'ortho')),
    Flag('D_param', 'SN', str, 'D layers: SN or ortho (plain)', choices=('SN', 'ortho')),
    Flag('G_ch', 64, int, 'G channel multiplier'),
    Flag('D_ch', 64, int, 'D channel multiplier'),
    Flag('G_depth', 1, int, 'G blocks per stage (BigGAN-deep)'),
    Flag('D_depth', 1, int, 'D blocks per stage (BigGAN-deep)'),
    _off('D_thin', 'D_wide', 'thin D blocks (hidden channels = in_channels)'),
    Flag('G_shared', False, SWITCH, 'shared class embedding in G'),
    Flag('shared_dim', 0, int, 'shared embedding size (0: dim_z)'),
    Flag('dim_z', 128, int, 'latent size'),
    Flag('z_var', 1.0, float, 'latent variance'),
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
    Flag('G_init', 'ortho', str, 'G init: ortho, N02, glorot, xavier'),
    Flag('D_init', 'ortho', str, 'D init: ortho, N02, glorot, xavier'),
    Flag('skip_init', False, SWITCH, 'skip weight init (when loading weights anyway)'),
    Flag('G_lr', 5e-5, float, 'G learning rate'),
    Flag('D_lr', 2e-4, float, 'D learning rate'),
    Flag('G_B1', 0.0, float, 'G Adam beta1'),
    Flag('D_B1', 0.0, float, 'D Adam beta1'),
    Flag('G_B2', 0.999, float, 'G Adam beta2'),
    Flag('D_B2', 0.999, float, 'D Adam beta2'),
    Flag('batch_size', 64, int, 'batch size (per process under DDP)'),
    Flag('G_batch_size', 0, int, 'G batch size (0: batch_size)'),
    Flag('num_G_accumulations', 1, int, 'G minibatches accumulated per G step'),
    Flag('num_D_steps', 2, int, 'D steps per G step'),
    Flag('num_D_accumulations', 1, int, 'D minibatches accumulated per D step'),
    Flag('split_D', False, SWITCH, 'run D on fakes and reals separately'),
    Flag('num_epochs', 100, int, 'epochs to train for'),
    Flag('parallel', False, SWITCH, 'DataParallel over the visible GPUs'),
    Flag('G_fp16', False, SWITCH, '2019 fp16 G; now means --amp fp16'),
    Flag('D_fp16', False, SWITCH, '2019 fp16 D; now means --amp fp16'),
    Flag('D_mixed_precision', False, SWITCH, '2019 mixed precision D; now means --amp fp16'),
    Flag('G_mixed_precision', False, SWITCH, '2019 mixed precision G; now means --amp fp16'),
    Flag('accumulate_stats', False, SWITCH, 'standing stats before sampling/testing'),
    Flag('num_standing_accumulations', 16, int, 'batches for standing stats'),
    # Bookkeeping
    Flag('G_eval_mode', False, SWITCH, 'sample and test G in eval mode'),
    Flag('save_every', 2000, int, 'save every N iterations (0: never)'),
    Flag('num_save_copies', 2, int, 'rotating checkpoint copies'),
    Flag('num_best_copies', 2, int, 'best checkpoints kept'),
    Flag('which_best', 'IS', str, 'best by IS or FID', choices=('IS', 'FID')),
    Flag('no_fid', False, SWITCH, 'compute IS only'),
    Flag('test_every', 5000, int, 'test every N iterations (0: never)'),
    Flag('num_inception_images', 50000, int, 'samples for IS/FID'),
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
    Flag('ema_decay', 0.9999, float, 'EMA decay'),
    Flag('use_ema', False, SWITCH, 'sample and test with the EMA copy'),
    Flag('ema_start', 0, int, 'iteration at which EMA starts'),
    # Numerics
    Flag('adam_eps', 1e-8, float, 'Adam epsilon'),
    Flag('BN_eps', 1e-5, float, 'batch norm epsilon'),
    Flag('SN_eps', 1e-8, float, 'spectral norm epsilon'),
    Flag('num_G_SVs', 1, int, 'singular values tracked per G layer'),
    Flag('num_D_SVs', 1, int, 'singular values tracked per D layer'),
    Flag('num_G_SV_itrs', 1, int, 'power iterations per G forward'),
    Flag('num_D_SV_itrs', 1, int, 'power iterations per D forward'),
    # Regularisation and training function
    Flag('G_ortho', 0.0, float, 'G orthogonal regularisation strength'),
    Flag('D_ortho', 0.0, float, 'D orthogonal regularisation strength'),
    _off('toggle_grads', 'toggle_grads', "do not freeze the other net's parameters per step"),
    Flag('which_train_fn', 'GAN', str, 'training function'),
    Flag('load_weights', '', str, 'suffix of weights to load (e.g. best0, copy1)'),
    Flag('resume', False, SWITCH, 'resume the run'),
    # Logging
    Flag('logstyle', '%3.3e', str, 'number format of the training logs'),
    Flag('log_G_spectra', False, SWITCH, "log G's singular values"),
    Flag('log_D_spectra', False, SWITCH, "log D's singular values"),
    Flag('sv_log_interval', 10, int, 'iterations between singular value logs'),
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
]

# Keys a run config holds that no flag sets: derived from the data, or 2019 objects.
DERIVED_KEYS = {'n_classes', 'G_activation', 'D_activation'}


def _add_flags(parser: argparse.ArgumentParser, flags: list[Flag]) -> None:
    for f in flags:
        if f.type == SWITCH:
            parser.add_argument(f'--{f.name}', action='store_true', help=f.help)
        elif f.type == 'off':
            parser.add_argument(f'--{f.name}', dest=f.key, action='store_false', help=f.help)
        else:
            parser.add_argument(f'--{f.name}', type=f.type, default=f.default,
                                choices=f.choices, help=f'{f.help} (default: {f.default})')


def prepare_parser() -> argparse.ArgumentParser:
    """The training parser: every 2019 flag with its 2019 default."""
    parser = argparse.ArgumentParser(description='Train a BigGAN.')
    _add_flags(parser, FLAGS)
    return parser


def add_sample_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the sampling flags of sample.py to a parser."""
    _add_flags(parser, SAMPLE_FLAGS)
    return parser


def config_keys() -> set[str]:
    """Every key a run config may hold."""
    return {f.key for f in FLAGS + SAMPLE_FLAGS} | DERIVED_KEYS
