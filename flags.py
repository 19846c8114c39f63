"""The command-line flags and the run config.

Each flag is defined once, in FLAGS (training) or SAMPLE_FLAGS (sample.py), with its default,
type and help line. Every flag of the 2019 release keeps its 2019 name and default, so 2019
launch scripts parse unchanged. The run config is the dict of parsed flags; it is saved as
JSON with the run and names the run the way 2019 did.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Union

from checkpoints import (
    CONFIG_FILE,
    as_committed,
    atomic_write,
    checkpoint_file,
    dump_config,
    load_file,
)
from image_transforms import TRANSFORMS
from run_lock import RunLockedError

# ----------------------------------------------------------------------------------------
# Flags: each defined once, with its 2019 name and default
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
    in_name: bool = True            # a post-2019 flag: in the run name when not its default

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


def probability_or_auto(text: str) -> Union[float, str]:
    """An argparse type: 'auto', or a probability in [0, 1]."""
    if text == 'auto':
        return text
    return bounded(float, 0, 1)(text)


def augment_policy(text: str) -> str:
    """An argparse type: a comma list of augmentation policies (checked, kept as given)."""
    import diffaug
    try:
        diffaug.parse_policy(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _off(name: str, dest: str, help: str) -> Flag:
    """A bare flag that switches off something on by default (config key `dest`)."""
    return Flag(name, True, 'off', help, dest=dest, in_name=False)


FLAGS = [
    # Dataset / data loader
    Flag('dataset', 'I128_hdf5', str, 'dataset name (I32..I256[_hdf5], C10, C100) or a path to '
         'an image folder / .hdf5 file'),
    # Not in the run name: train.py fills it in from the data before naming the run.
    Flag('resolution', 0, COUNT, 'image resolution for a dataset given by path (0: from the '
         'dataset name or file)', in_name=False),
    Flag('transform', 'center-crop', str, "how an image folder's images become squares: the "
         'centred square, the centred 2:1 window with black bars, or the short side padded by '
         'reflection or with --pad_value (an HDF5 file keeps the one it was packed with)',
         choices=TRANSFORMS),
    Flag('pad_value', 0, bounded(int, 0, 255), 'the grey level of --transform pad-constant'),
    Flag('augment', False, SWITCH, 'random crop / flip augmentation'),
    Flag('num_workers', 8, COUNT, 'data loader worker processes'),
    _off('no_pin_memory', 'pin_memory', 'do not pin loader memory'),
    Flag('shuffle', False, SWITCH, 'shuffle the data'),
    Flag('load_in_mem', False, SWITCH, 'load the whole HDF5 file into RAM (once per node, '
         'shared by its ranks and loader workers)'),
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
    Flag('which_best', 'IS', str, 'keep the best checkpoints by IS (higher is better), FID '
         'or KID (lower is better)', choices=('IS', 'FID', 'KID')),
    Flag('no_fid', False, SWITCH, 'compute IS only'),
    Flag('test_every', 5000, COUNT, 'test every N iterations (0: never)'),
    Flag('num_inception_images', 50000, COUNT, 'samples for IS/FID'),
    Flag('hashname', False, SWITCH, 'name the run by a stable hash of its config'),
    Flag('base_root', '', str, 'root for data/weights/logs/samples'),
    Flag('data_root', 'data', str, 'data folder'),
    Flag('weights_root', 'weights', str, 'checkpoint folder'),
    Flag('logs_root', 'logs', str, 'log folder'),
    Flag('samples_root', 'samples', str, 'sample folder'),
    Flag('pbar', 'mine', str, 'does nothing here, accepted for 2019 scripts: progress bars '
         'are always tqdm'),
    Flag('name_suffix', '', str, 'suffix for the experiment name'),
    Flag('experiment_name', '', str, 'explicit experiment name'),
    Flag('config_from_name', False, SWITCH, 'does nothing here, accepted for 2019 scripts: '
         'a run is found by its name anyway, and --resume reads its saved config'),
    # EMA
    Flag('ema', False, SWITCH, 'keep an EMA copy of G'),
    Flag('ema_decay', 0.9999, bounded(float, 0, 1), 'EMA decay'),
    Flag('use_ema', False, SWITCH, 'sample and test with the EMA copy'),
    Flag('ema_start', 0, COUNT, 'iteration at which EMA starts'),
    # Numerics
    Flag('adam_eps', 1e-8, POSITIVE, 'Adam epsilon'),
    Flag('BN_eps', 1e-5, POSITIVE, 'batch norm epsilon'),
    Flag('SN_eps', 1e-8, POSITIVE, 'spectral norm epsilon'),
    Flag('G_output_BN_eps', 1e-5, POSITIVE, "epsilon of G's output batch norm (2019 kept "
         "1e-5 whatever --BN_eps says; converted Hugging Face BigGAN-deep runs use 1e-4)"),
    Flag('G_output_conv_ch', 3, bounded(int, 3), "output channels of G's last conv, the "
         "image being the first 3 (converted Hugging Face BigGAN-deep runs keep G_ch of them)"),
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
    Flag('which_train_fn', 'GAN', str, 'training function: only GAN, the one in train_fns.py '
         '(edit it to try a new objective)', choices=('GAN',)),
    Flag('load_weights', '', str, 'with --resume: the copy to resume from (e.g. best0, copy1); '
         'without: a run folder or G*.pth file to fine-tune from'),
    Flag('resume', False, SWITCH, 'resume the run'),
    Flag('D_warmup', 0, COUNT, "first N iterations train D only (G's weights, and so "
         "G_ema's, stay as loaded; its BN running stats still follow the batches): a fresh D "
         "meets a --load_weights G"),
    Flag('freeze_D', 0, COUNT, "FreezeD (Mo et al. 2020): D's first N blocks from the input "
         'stay as loaded while fine-tuning from --load_weights (see freeze.py)'),
    # Logging
    Flag('logstyle', '%3.3e', str, 'number format of the training logs'),
    Flag('log_G_spectra', False, SWITCH, "log G's singular values"),
    Flag('log_D_spectra', False, SWITCH, "log D's singular values"),
    Flag('sv_log_interval', 10, COUNT, 'iterations between singular value logs'),
    # Beyond 2019
    # --loss takes any Loss registered in train_fns.py (all_flags fills in the choices).
    Flag('loss', 'hinge', str, 'adversarial loss, a Loss class of train_fns.py'),
    Flag('unconditional', False, SWITCH, 'ignore the labels: one class, no projection in D'),
    Flag('log_every', 50, POSITIVE_INT, 'iterations between reading the losses (host syncs)',
         in_name=False),
    _off('no_tensorboard', 'tensorboard', 'write no TensorBoard events (by default every log '
         'also goes to <logs_root>/<experiment_name>/; a --resume without it writes them)'),
    Flag('amp', 'none', str, 'mixed precision: none, bf16 or fp16 (with a grad scaler)',
         choices=('none', 'bf16', 'fp16')),
    Flag('channels_last', False, SWITCH, 'channels-last memory format for G and D',
         in_name=False),
    Flag('compile', False, SWITCH, 'torch.compile G and D', in_name=False),
    Flag('compile_mode', 'default', str, 'torch.compile mode with --compile: default, '
         'reduce-overhead (CUDA graphs: one launch per graph, not per kernel) or '
         'max-autotune', choices=('default', 'reduce-overhead', 'max-autotune'), in_name=False),
    Flag('inception', 'torchvision', str, 'Inception net for IS/FID: torchvision or tf',
         choices=('torchvision', 'tf'), in_name=False),
    Flag('inception_weights', '', str, 'local Inception weights file (else the hub cache)',
         in_name=False),
    # Small data (the flag names of the DiffAugment and LeCam forks of the 2019 code)
    Flag('DiffAugment', '', augment_policy, 'differentiable augmentation of every image D '
         'sees, real and generated, in the D and G steps: a comma list of color, translation, '
         'cutout'),
    Flag('DiffAugment_p', 1.0, probability_or_auto, 'probability each DiffAugment policy is '
         'applied to an image: a number in [0, 1], or auto (adapted from E[sign(D(x_real))], '
         'as ADA)'),
    Flag('ada_target', 0.6, bounded(float, 0, 1), 'auto p: the E[sign(D(x_real))] to hold'),
    Flag('ada_interval', 4, POSITIVE_INT, 'auto p: iterations between adjustments'),
    Flag('ada_kimg', 500.0, POSITIVE, 'auto p: thousands of real images over which p can '
         'move from 0 to 1'),
    Flag('mirror_augment', False, SWITCH, 'random horizontal flips of the real images'),
    Flag('num_samples', 0, COUNT, 'train on a fixed random subset of N images (seeded by '
         '--seed, kept by a resume; 0: all)'),
    Flag('truncation_style', 'resample', str, 'how sample.py --truncation t draws z: '
         'resample (the paper: N(0, 1) with every |z_i| > t redrawn) or scaled (TF-Hub and '
         'Hugging Face BigGAN: t times N(0, 1) redrawn outside +-2)',
         choices=('resample', 'scaled'), in_name=False),
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
         'and --sample_inception_metrics (0: off); how z is cut: the run\'s --truncation_style'),
    Flag('classes', '', str, 'with --seeds: the classes to sample, as indices and/or class '
         'names, comma-separated (e.g. 207,980 or "golden retriever,daisy")'),
    Flag('seeds', '', str, 'one image per seed for each of --classes, e.g. 0-63 or 1,5,9 (the '
         'same image for the same seed and class on every call), as PNGs and a grid'),
]

# Keys a run config holds that no flag sets: derived from the data, or 2019 objects.
DERIVED_KEYS = {'n_classes', 'classes_per_sheet', 'moments_path', 'G_activation',
                'D_activation', 'class_names'}


# The flags that decide what a G computes: a fine-tune must build G as its source was built
# (train.py checks them; TFHub/hf_converter.py prints them for a converted run).
G_BUILD_KEYS = ('model', 'G_ch', 'G_depth', 'dim_z', 'shared_dim', 'hier', 'G_shared', 'G_attn',
                'G_param', 'norm_style', 'BN_eps', 'SN_eps', 'G_output_BN_eps',
                'G_output_conv_ch')


def flag_line(values: dict) -> str:
    """The command-line flags that set `values`: '--k v', a bare '--k' for a switch that is
    on; a switch that is off is left out (off is its default)."""
    return ' '.join(f'--{k}' if v is True else f'--{k} {v}' for k, v in values.items()
                    if v is not False)


# Keys that describe an invocation (where things are, what to do), not the run: never taken
# from a saved run config. TensorBoard is one: a run saved with --no_tensorboard writes events
# again when resumed without it (a bare off-switch could not be undone at a resume).
INVOCATION_KEYS = {'base_root', 'data_root', 'weights_root', 'logs_root', 'samples_root',
                   'experiment_name', 'load_weights', 'resume', 'tensorboard'}


# ----------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------


def all_flags() -> list[Flag]:
    """FLAGS plus the flags of the objectives registered in train_fns.py (and anywhere else
    imported before parsing), with --loss's choices the registered losses."""
    import objectives
    import train_fns  # noqa: F401  (registers the objectives)
    losses = tuple(objectives.LOSSES)
    flags = [replace(f, choices=losses) if f.name == 'loss' else f for f in FLAGS]
    taken = {f.name for f in flags}
    extra = objectives.objective_flags()
    clash = [f.name for f in extra if f.name in taken]
    if clash:
        raise ValueError(f'objective flags {", ".join(clash)} are already flags of train.py')
    return flags + extra


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
    parser = argparse.ArgumentParser(allow_abbrev=False, description='Train a BigGAN.')
    _add_flags(parser, all_flags(), defaults)
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


# What the scripts report as one `error:` line: bad flags, missing or damaged files, a run
# that cannot start or continue (their messages say what to do). Anything else is a bug and
# keeps its traceback; BIGGAN_DEBUG=1 shows tracebacks for these too.
USER_ERRORS = (OSError, ValueError, FloatingPointError, RunLockedError)
DEBUG_ENV = 'BIGGAN_DEBUG'


def run_cli(main: Callable[[], Any], script: str) -> int:
    """Run a script's main() and return its exit status (main's int result, else 0); a
    USER_ERRORS exception is printed as `script: error: ...` without a traceback (unless
    BIGGAN_DEBUG is set) and gives status 1."""
    try:
        result = main()
    except USER_ERRORS as err:
        if os.environ.get(DEBUG_ENV, '') not in ('', '0'):
            raise
        print(f'{script}: error: {err}\n({DEBUG_ENV}=1 shows where it was raised)',
              file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


# ----------------------------------------------------------------------------------------
# The run config
# ----------------------------------------------------------------------------------------


def config_keys() -> set[str]:
    """Every key a run config may hold."""
    return {f.key for f in all_flags() + SAMPLE_FLAGS} | DERIVED_KEYS


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


def read_run_config(run_dir: str, suffix: Optional[str] = None) -> tuple[Optional[dict], int]:
    """(config saved with a run or None, its iteration): the `config` of state_dict.pth (or of
    the copy `suffix` names), the flags that checkpoint was trained with; else config.json (a
    run stopped before its first save, a converted generator)."""
    # A save interrupted after its journal is completed by the next train.py start: read the
    # state it completes.
    state_path = as_committed(os.path.join(run_dir, checkpoint_file('state_dict', suffix)))
    state = load_file(state_path) if os.path.isfile(state_path) else {}
    itr = int(state.get('itr', 0))
    if state.get('config'):
        return state['config'], itr
    if os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        with open(os.path.join(run_dir, CONFIG_FILE)) as f:
            return json.load(f), itr
    return None, itr


def save_config(config: dict, path: str) -> None:
    """Write the resolved config as JSON (plain values only), atomically."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    atomic_write(path, lambda f: dump_config(config, f), 'w')


def inception_args(config: dict) -> tuple[str, str, Optional[str]]:
    """(moments file, Inception network, its weights file or None) from a run config, in the
    order inception_utils.check_inception_ready and prepare_inception_metrics take them."""
    return (config.get('moments_path', ''), config['inception'],
            config['inception_weights'] or None)
