"""Run names: the 2019 rule that derives a run's folder name from its flags, plus the flags
added since, so a 2019 launch script finds its 2019 run folder and runs that differ only in a
newer flag (--loss, --R1, --amp, ...) never share a folder.

    name_from_config(config)   # 'BigGAN_I128_hdf5_seed0_Gch96_..._ema_loss-rpgan_R1-0.2'
"""
from __future__ import annotations

import hashlib
import os

from flags import all_flags

# Every flag of the 2019 release (SPEC §9): the 2019 run name is built from some of these
# only; every other flag enters the name when it differs from its default (post_2019_parts).
FLAGS_2019 = frozenset("""
    dataset augment num_workers no_pin_memory shuffle load_in_mem use_multiepoch_sampler model
    G_param D_param G_ch D_ch G_depth D_depth D_thin G_shared shared_dim dim_z z_var hier
    cross_replica mybn G_nl D_nl G_attn D_attn norm_style seed G_init D_init skip_init G_lr
    D_lr G_B1 D_B1 G_B2 D_B2 batch_size G_batch_size num_G_accumulations num_D_steps
    num_D_accumulations split_D num_epochs parallel G_fp16 D_fp16 D_mixed_precision
    G_mixed_precision accumulate_stats num_standing_accumulations G_eval_mode save_every
    num_save_copies num_best_copies which_best no_fid test_every num_inception_images hashname
    base_root data_root weights_root logs_root samples_root pbar name_suffix experiment_name
    config_from_name ema ema_decay use_ema ema_start adam_eps BN_eps SN_eps num_G_SVs num_D_SVs
    num_G_SV_itrs num_D_SV_itrs G_ortho D_ortho toggle_grads which_train_fn load_weights resume
    logstyle log_G_spectra log_D_spectra sv_log_interval""".split())


def name_from_config(config: dict, legacy: bool = False) -> str:
    """The experiment name derived from the config: 2019's rule, so runs the 2019 code named
    are found (and resumed) under the same folder names, then each post-2019 flag that
    differs from its default (so runs differing only in --loss, --R1, --amp... never collide).
    `legacy`: the name without those parts, as this code named runs before they were added."""
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
        *([] if legacy else post_2019_parts(c)),
        c['name_suffix'] or None,
    ]
    name = '_'.join(p for p in parts if p is not None)
    return hashname(name) if c['hashname'] else name


def post_2019_parts(config: dict) -> list[str]:
    """'key-value' (a switch: 'key') for each post-2019 flag that changes what a run trains
    and is not at its default, in flag order: e.g. ['loss-rpgan', 'R1-0.2', 'amp-bf16']."""
    parts = []
    for f in all_flags():
        if f.name in FLAGS_2019 or not f.in_name or f.key not in config:
            continue
        value = config[f.key]
        if value == f.default:
            continue
        if value is True:
            parts.append(f.key)
        else:
            text = f'{value:g}' if isinstance(value, float) else str(value)
            parts.append(f"{f.key}-{text.replace(',', '+').replace(os.sep, '_')}")
    return parts


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
