"""Sample a trained BigGAN: .npz dumps, class sheets, interpolations, random grids, IS/FID.

A run is found as train.py finds it (by --experiment_name, or by the training flags its name
derives from) or given directly with --weights (a run folder, or one G*.pth file in it, e.g. a
TFHub/converter.py folder). The config saved with the checkpoint (the `config` in
state_dict.pth, or in the copy --load_weights names; else config.json, as converted runs have
it) supplies the model flags; flags given on this command line override it, and switches
saved on are turned off with --no_<flag> (e.g. --no_use_ema, --no_G_eval_mode). Roots
(--base_root, --weights_root, ...) always come from this command line.

    python sample.py --experiment_name my_run --sample_npz --sample_num_npz 10000
    python sample.py --weights weights/my_run/G_ema_best0.pth --sample_sheets --sample_interps
    python sample.py --weights weights/BigGAN_TFHub_128 --G_eval_mode --sample_random
    python sample.py --weights weights/BigGAN_TFHub_128 --classes "golden retriever,daisy" \\
        --seeds 0-63 --truncation 0.5
    python sample.py --experiment_name my_run --sample_trunc_curves 0.1_0.1_1.0 \\
        --sample_inception_metrics --inception_weights pt_inception-2015-12-05.pth
    bash scripts/sample_BigGAN_bs256x8.sh      # 2019 flags: the run's name derives from them

Outputs (<exp> is the run folder's name; sample_outputs.py writes them, seeded_samples.py seeds/):
    samples/<exp>/samples.npz            x uint8 [N, R, R, 3], y int64 [N]   (--sample_npz)
    samples/<exp>/<itr>/samples*.jpg     per-class sheets                    (--sample_sheets)
    samples/<exp>/<itr>/interp{ZY,Z,Y}0.jpg  joint / z / class interpolations (--sample_interps)
    samples/<exp>/random_samples.jpg     one G_batch_size grid               (--sample_random)
    samples/<exp>/seeds/*.png            an image per class and seed, grids   (--classes --seeds)
    logs/<exp>_sample_metrics.jsonl      IS/FID of the model, one record appended per call
    logs/<exp>_trunc_curves.{jsonl,png}  IS/FID per truncation t (rewritten per sweep)
<itr> is --sample_sheet_folder_num, or the run's iteration when -1. --sample_trunc_curves
start_step_end draws z with the paper's truncation trick (entries with |z_i| > t redrawn until
all lie within t); every other mode draws z ~ N(0, z_var^2), or with --truncation t the
truncated z as well (e.g. --truncation 0.5 --sample_npz --sample_sheets). The sweep runs last: with
--accumulate_stats it re-accumulates standing stats at each t, as the 2019 script did.
Converted TF-Hub / Hugging Face runs draw truncated z as those did (--truncation_style scaled:
t * N(0, 1) cut at +-2), and a BigGAN-deep one takes its BN statistics for t from its table.
G runs under the run's --amp (bf16/fp16 autocast; --amp none for fp32), Inception never does.
--classes takes indices and the run's class names (train.py records them in the run config;
older runs take them from their dataset: see class_names.py); --seeds gives each seed's image
of each class, the same on every call whatever --G_batch_size (see seeded_samples.py). Sheets
label their rows with the class names when the run has them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

import bn_stats
import class_names
import datasets
import flags
import train_fns
import utils
from sample_outputs import (
    Sampler,
    log_metrics,
    measure,
    plot_trunc_curves,
    save_class_sheets,
    save_interps,
    save_npz,
    save_random_grid,
    sweep_truncation,
)
from seeded_samples import parse_seeds, save_seed_images
from utils import TruncatedLatents

# Public names, with sample_outputs.py's (the Sampler and the writers) kept importable here.
__all__ = ['LOCAL_KEYS', 'MODES', 'MAX_TRUNCATION', 'SampleError', 'build_parser',
           'parse_flags', 'find_run', 'read_run', 'check_which_best', 'resolve_data',
           'resolve_class_names', 'resolve_config', 'truncation_values', 'check_truncation_range',
           'check_truncation', 'wants_metrics', 'check_flags', 'seed_request', 'check_inception',
           'load_generator', 'Sampler', 'sampling_latents', 'build_sampler', 'plot_trunc_curves',
           'save_npz', 'save_class_sheets', 'save_interps', 'save_random_grid', 'measure',
           'log_metrics', 'sweep_truncation', 'save_seed_images', 'run', 'main']

# Keys that describe this invocation, not the trained model: never taken from the run.
LOCAL_KEYS = utils.INVOCATION_KEYS | {f.key for f in utils.SAMPLE_FLAGS}
MODES = ('sample_npz', 'sample_sheets', 'sample_interps', 'sample_random',
         'sample_inception_metrics', 'sample_trunc_curves', 'seeds')


class SampleError(Exception):
    """A bad input, saying what was wrong and what to do; the CLI prints it without traceback."""


# ----------------------------------------------------------------------------------------
# Config: the run's saved flags, overridden by the ones given
# ----------------------------------------------------------------------------------------


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """Training flags, sampling flags, --weights, and a hidden --no_<switch> per switch
    (without defaults: see utils.parse_given)."""
    parser = utils.add_sample_parser(utils.prepare_parser(defaults), defaults)
    parser.description = 'Sample a trained BigGAN (see the module docstring of sample.py).'
    parser.add_argument('--weights', default='' if defaults else argparse.SUPPRESS,
                        help='run folder or G*.pth file to load (instead of finding the run '
                        'by --experiment_name / training flags)')
    train_flags = utils.all_flags()
    names = {f.name for f in train_flags + utils.SAMPLE_FLAGS}
    for f in train_flags:
        if f.type == utils.SWITCH and f'no_{f.name}' not in names:
            parser.add_argument(f'--no_{f.name}', dest=f.key, action='store_false',
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def parse_flags(argv: Optional[list[str]]) -> tuple[dict, dict]:
    """(every flag with its default or given value, only the flags given on the command line)."""
    return utils.parse_given(build_parser, argv)


def find_run(cli: dict, weights: str) -> tuple[Path, Optional[Path]]:
    """(run folder, the G*.pth file given by --weights or None)."""
    if weights:
        path = Path(weights).expanduser().resolve()
        if path.is_file():
            return path.parent, path
        if path.is_dir():
            return path, None
        raise SampleError(f'--weights {path} does not exist: give a run folder '
                          f'(<weights_root>/<experiment_name>) or a G*.pth file in one')
    name = cli['experiment_name'] or utils.name_from_config(cli)
    root = Path(cli['weights_root'])
    if not (root / name).is_dir():
        how = ('--experiment_name' if cli['experiment_name']
               else 'the name derived from the training flags given')
        raise SampleError(f'no run folder {root / name} ({how}); '
                          f'{utils.describe_runs(str(root))}. Give '
                          f'--experiment_name NAME with the --base_root/--weights_root it was '
                          f'trained with, the training flags, or --weights PATH')
    return root / name, None


def read_run(run_dir: Path, suffix: Optional[str]) -> tuple[Optional[dict], int]:
    """(config saved with the run or None, its iteration); refuses a half-committed save."""
    if (run_dir / utils.COMMIT_JOURNAL).exists():
        raise SampleError(f'{run_dir} is in the middle of a save (or one was interrupted): '
                          f'retry in a moment; if no training runs, `train.py --resume` of the '
                          f'run completes it')
    try:
        return utils.read_run_config(str(run_dir), suffix)
    except utils.CorruptCheckpointError as err:
        raise SampleError(str(err)) from None


def check_which_best(given: dict, saved: dict, run_dir: Path) -> None:
    """--which_best only chooses what training keeps as best copies: refuse one that differs
    from the run's (2019 scripts that repeat the training flags give the run's own)."""
    if 'which_best' not in given:
        return
    kept = saved.get('which_best', 'IS')
    if given['which_best'] != kept:
        raise SampleError(
            f"--which_best {given['which_best']}: sample.py does not pick checkpoints by a "
            f"metric. Training kept {run_dir}'s best copies by {kept} (G_best0.pth, ...): sample "
            f"one with --load_weights best0, or score any copy with --sample_inception_metrics "
            f"(KID when the data's features file exists). To keep copies by "
            f"{given['which_best']}, train with --which_best {given['which_best']}")


def resolve_data(config: dict, given: dict, saved: Optional[dict]) -> None:
    """Fill resolution, n_classes, classes_per_sheet and moments_path in place."""
    need_moments = ((config['sample_inception_metrics'] or bool(config['sample_trunc_curves']))
                    and not config['no_fid'])
    if saved is not None and 'dataset' not in saved and 'dataset' not in given:
        # A converted TF-Hub G names no dataset: its FID reference is ImageNet at its size.
        guess = f"I{config['resolution']}_hdf5"
        config['dataset'] = guess if (guess in datasets.DATASETS
                                      and config.get('n_classes') == 1000) else ''
    spec, problem = None, 'the run config names no dataset: give --dataset'
    if config['dataset']:
        try:
            spec = datasets.resolve_dataset(config['dataset'], config['data_root'],
                                            resolution=config['resolution'] or None,
                                            single_class_ok=config['unconditional'])
        except (FileNotFoundError, ValueError) as err:
            problem = f'--dataset {config["dataset"]}: {err}'
    if spec is None:
        if need_moments or 'n_classes' not in config:
            raise SampleError(problem)
        per_sheet = 50 if config['resolution'] <= 64 else 20  # the ImageNet sheets
    else:
        if 'n_classes' not in config or given.keys() & {'dataset', 'resolution',
                                                        'unconditional'}:
            config['resolution'] = spec.resolution
            config['n_classes'] = 1 if config['unconditional'] else spec.n_classes
        config['moments_path'] = str(spec.moments_path)
        per_sheet = spec.classes_per_sheet
    config['classes_per_sheet'] = min(config.get('classes_per_sheet') or per_sheet,
                                      config['n_classes'])
    resolve_class_names(config, spec, given, saved)


def resolve_class_names(config: dict, spec: Optional[datasets.DatasetSpec], given: dict,
                        saved: Optional[dict]) -> None:
    """Fill class_names in place: the run's (as its config saved them), else its dataset's;
    None when neither has one name per class."""
    names = config.get('class_names')
    if names is None or given.keys() & {'dataset', 'resolution', 'unconditional'}:
        names = None
        if spec is not None:
            names = class_names.dataset_class_names(config['dataset'], spec)
        elif saved is not None and 'dataset' not in saved and config['n_classes'] == 1000:
            names = class_names.imagenet_class_names()  # a converted TF-Hub / HF generator
    config['class_names'] = class_names.run_class_names(names, config['n_classes'])


def resolve_config(argv: Optional[list[str]] = None) -> tuple[dict, Path, int]:
    """(config, weights file to load, the run's iteration) from the flags and the run."""
    args, given = parse_flags(argv)
    weights = args.pop('weights')
    given.pop('weights', None)
    run_dir, weights_file = find_run(utils.update_config_roots(dict(args)), weights)
    suffix = args['load_weights'] or None
    if weights_file is not None:  # G_ema_best0.pth -> suffix best0
        try:
            suffix = utils.checkpoint_suffix(weights_file.name)
        except ValueError as err:
            raise SampleError(f'--weights: {err}') from None
    saved, itr = read_run(run_dir, suffix)
    config = dict(args)
    if saved is None:
        print(f'{run_dir} holds no saved config: using the flags given')
    else:
        check_which_best(given, saved, run_dir)
        known = utils.config_keys() - LOCAL_KEYS
        config.update({k: v for k, v in utils.plain_config(saved).items() if k in known})
        config.update(given)
    utils.update_config_roots(config)
    config['experiment_name'] = run_dir.name
    config['G_batch_size'] = train_fns.G_batch_size(config)
    resolve_data(config, given, saved)
    if weights_file is None:
        which = 'G_ema' if config['ema'] and config['use_ema'] else 'G'
        weights_file = run_dir / utils.checkpoint_file(which, suffix)
    if not weights_file.is_file():
        has = ', '.join(sorted(p.name for p in run_dir.glob('*.pth'))) or 'no .pth files'
        hint = (' (the run has no EMA copy: sample G with --no_use_ema)'
                if weights_file.name.startswith('G_ema') else '')
        raise SampleError(f'weights {weights_file} are missing{hint}; the folder holds: {has}')
    return config, weights_file, itr


# ----------------------------------------------------------------------------------------
# Checks: everything that can fail, before anything is loaded
# ----------------------------------------------------------------------------------------


def truncation_values(spec: str) -> list[float]:
    """'start_step_end' -> [start, start + step, ..., end]."""
    try:
        start, step, end = (float(v) for v in spec.split('_'))
    except ValueError:
        raise SampleError(f'--sample_trunc_curves {spec!r}: expected start_step_end, '
                          f'e.g. 0.05_0.05_1.0') from None
    if not 0 < start <= end or step <= 0:
        raise SampleError(f'--sample_trunc_curves {spec!r}: need 0 < start <= end, step > 0')
    return [round(start + i * step, 6) for i in range(int((end - start) / step + 1e-6) + 1)]


# The largest truncation that changes anything, per --truncation_style: `resample` redraws
# the entries of z beyond t, fewer than 1 in 15,000 past 4 (no truncation, in effect);
# `scaled` multiplies z by t, so past 1 it widens z beyond the N(0, 1) G was trained on.
MAX_TRUNCATION = {'resample': 4.0, 'scaled': 1.0}


def check_truncation_range(values: list[float], style: str, flag: str) -> None:
    """Refuse truncations beyond what makes sense for the style (see MAX_TRUNCATION)."""
    top = MAX_TRUNCATION[style]
    if values and max(values) > top:
        why = ('beyond it fewer than 1 in 15,000 entries of z are redrawn: no truncation (use '
               '0 for none)' if style == 'resample' else 'it multiplies z by t, so a larger t '
               'draws z wider than the N(0, 1) G was trained on (and the BN statistics of a '
               'converted BigGAN-deep cover 0 to 1)')
        raise SampleError(f'{flag} {max(values):g}: with --truncation_style {style} t must lie '
                          f'in (0, {top:g}]: {why}. Smaller t trades variety for fidelity (the '
                          f'paper shows 0.04 to 2)')


def check_truncation(t: float, config: dict, flag: str = '--truncation') -> None:
    """Refuse a truncation t (0: none) that does not fit the run's z_var and truncation style."""
    if t < 0 or (t > 0 and config['z_var'] != 1.0):
        raise SampleError(f"{flag} {t}: give a positive t (or 0 for none); it draws "
                          f"z ~ N(0, 1) truncated at t, so it does not combine with --z_var "
                          f"{config['z_var']}")
    check_truncation_range([t] if t > 0 else [], config['truncation_style'], flag)


def wants_metrics(config: dict) -> bool:
    """Whether IS/FID are asked for (by --sample_inception_metrics or the truncation sweep)."""
    return config['sample_inception_metrics'] or bool(config['sample_trunc_curves'])


def check_flags(config: dict) -> list[float]:
    """Refuse flags that cannot work before anything is loaded; the sweep's t values (or [])."""
    if not any(config[m] for m in MODES):
        raise SampleError(f"nothing to do: give one or more of --{', --'.join(MODES)}")
    spec = config['sample_trunc_curves']
    truncations = truncation_values(spec) if spec else []
    check_truncation(config['truncation'], config)
    check_truncation_range(truncations, config['truncation_style'], '--sample_trunc_curves')
    if config['G_batch_size'] < 1:
        raise SampleError(f"--G_batch_size {config['G_batch_size']}: give at least 1 (0 takes "
                          f"--batch_size, which must then be at least 1)")
    if config['sample_npz'] and config['sample_num_npz'] < 1:
        raise SampleError(f"--sample_num_npz {config['sample_num_npz']}: --sample_npz needs "
                          f"at least 1 sample")
    if wants_metrics(config) and config['num_inception_images'] < 10:  # the IS's 10 splits
        raise SampleError(f"--num_inception_images {config['num_inception_images']}: the "
                          f"Inception Score needs at least one sample in each of its 10 splits")
    return truncations


def seed_request(config: dict) -> Optional[tuple[list[int], list[int]]]:
    """(class indices, seeds) of --classes and --seeds, each once, or None when not asked."""
    text, seeds = config['classes'].strip(), config['seeds']
    if not (text or seeds):
        return None
    if not seeds:
        raise SampleError(f'--classes {text!r} needs --seeds, e.g. --seeds 0-7 (one image per '
                          f'seed and class)')
    try:
        seeds = parse_seeds(seeds)
    except ValueError as err:
        raise SampleError(f'--seeds {err}') from None
    if not text:
        if config['n_classes'] > 1:
            raise SampleError(f"--seeds needs --classes: class indices (0 to "
                              f"{config['n_classes'] - 1}) or names, comma-separated")
        return [0], seeds  # unconditional: its one class
    names = config['class_names']  # a name with a comma in it is taken whole
    items = [text] if names and text in names else [c.strip() for c in text.split(',')]
    if '' in items:
        raise SampleError(f'--classes {text!r}: an empty entry between commas')
    try:
        classes = class_names.class_indices(items, names, config['n_classes'])
    except class_names.ClassError as err:
        raise SampleError(f'--classes: {err}') from None
    return list(dict.fromkeys(classes)), seeds


def check_inception(config: dict) -> None:
    """Refuse IS/FID now if the Inception weights or the data moments are not usable."""
    import inception_utils  # only when asked: it loads Inception code and weights
    try:
        inception_utils.check_inception_ready(*flags.inception_args(config), config['no_fid'],
                                              resolution=config['resolution'])
    except (FileNotFoundError, ValueError) as err:
        raise SampleError(f'{err}\n(IS/FID were asked for; --no_fid computes IS only, '
                          f'which needs no moments file)') from err


# ----------------------------------------------------------------------------------------
# Model and latents
# ----------------------------------------------------------------------------------------


def load_generator(config: dict, weights_file: Path, device: torch.device) -> nn.Module:
    """The configured G with the weights loaded strictly, in the mode --G_eval_mode asks for."""
    try:
        model = importlib.import_module(config['model'])
        G = model.Generator(**{**config, 'skip_init': True})
        utils.load_state_checked(G, utils.load_file(str(weights_file)), True, str(weights_file))
    except utils.CorruptCheckpointError as err:
        raise SampleError(str(err)) from None
    except (ImportError, TypeError, ValueError) as err:
        raise SampleError(f'{err}\nFlags given here override the run config: drop those that '
                          f'change the model, or give the ones it was trained with.') from err
    return G.to(device).train(not config['G_eval_mode'])


def sampling_latents(config: dict, G: nn.Module, device: torch.device) -> utils.Latents:
    """G_batch_size latents: truncated as --truncation(_style) say if t > 0, else z_var's."""
    B, t = config['G_batch_size'], config['truncation']
    if t > 0:
        return TruncatedLatents(B, G.dim_z, config['n_classes'], device, truncation=t,
                                style=config['truncation_style'])
    return utils.Latents(B, G.dim_z, config['n_classes'], device, z_var=config['z_var'])


def build_sampler(config: dict, weights_file: Path, itr: int,
                  device: Optional[torch.device] = None) -> Sampler:
    """Load G on `device` (default: the GPU if there is one), seed, and make the latents (and
    Inception if asked)."""
    device = device or torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    utils.configure_backends(device)
    G = load_generator(config, weights_file, device)
    net = nn.DataParallel(G) if config['parallel'] and torch.cuda.device_count() > 1 else G
    precision = train_fns.Precision.from_config(config['amp'], device)
    B = config['G_batch_size']
    print(f"Loaded {weights_file} (itr {itr}): G in {'eval' if config['G_eval_mode'] else 'train'}"
          f" mode, {config['amp'] if precision.dtype else 'fp32'}, on {device}, batches of {B}")
    get_metrics = None
    if wants_metrics(config):  # built before seeding: a new Inception's init draws random
        import inception_utils  # numbers, which would change every output's samples
        get_metrics = inception_utils.prepare_inception_metrics(
            *flags.inception_args(config), device=device, no_fid=config['no_fid'])
    utils.seed_rng(config['seed'])  # after building G: the draws do not depend on its init
    t = config['truncation']
    try:  # a converted BigGAN-deep: its BN statistics for t
        bn_table = bn_stats.use_for_truncation(G, str(weights_file.parent), t)
    except ValueError as err:
        raise SampleError(f'--truncation {t}: {err}') from None
    latents = sampling_latents(config, G, device)
    name, folder = config['experiment_name'], config['sample_sheet_folder_num']
    sampler = Sampler(config=config, G=G, net=net, latents=latents, precision=precision,
                      device=device, weights_file=weights_file, itr=itr, name=name,
                      out_dir=os.path.join(config['samples_root'], name),
                      folder=itr if folder == -1 else folder, bn_table=bn_table,
                      get_metrics=get_metrics)
    return sampler


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def run(argv: Optional[list[str]] = None) -> dict:
    """Sample as the flags say; returns what was done (paths, metric records, images/s)."""
    # Config, and every check that can fail, before anything is sampled:
    config, weights_file, itr = resolve_config(argv)
    request = seed_request(config)
    truncations = check_flags(config)
    if wants_metrics(config):
        check_inception(config)

    # Model, precision, latents:
    s = build_sampler(config, weights_file, itr)
    if s.bn_table is not None and truncations and truncations[-1] > 1:
        raise SampleError(f'--sample_trunc_curves {config["sample_trunc_curves"]}: the BN '
                          f'statistics of {bn_stats.TABLE_FILE} cover truncations 0 to 1')
    done = {'weights': str(weights_file), 'config': config}

    # Outputs, in the 2019 order; the truncation sweep last, as it may redo standing stats:
    with torch.inference_mode():
        if request:  # first, in eval mode: no other output's sampling changes its images
            done['seeds'] = save_seed_images(s, *request)
        if config['accumulate_stats']:
            s.accumulate_stats(s.latents)
        if config['sample_npz']:
            done.update(save_npz(s))
        if config['sample_sheets']:
            done['sheets'] = save_class_sheets(s)
        if config['sample_interps']:
            done['interps'] = save_interps(s)
        if config['sample_random']:
            done['random'] = save_random_grid(s)
        if config['sample_inception_metrics']:
            done['metrics'] = log_metrics(s)
        if truncations:
            done['trunc_curves'] = sweep_truncation(s, truncations)
    return done


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: sample, or print what was wrong (no traceback) and return 1."""
    try:
        run(argv)
    except SampleError as err:
        print(f'sample.py: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(flags.run_cli(main, 'sample.py'))
