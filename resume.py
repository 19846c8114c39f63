"""How a run starts: new, resumed from its own checkpoint, or fine-tuned from another run's
weights.

train.py calls, in this order: resumed_config (--resume: the run's saved flags, the ones typed
now winning), check_run_folder (a resume needs its folder; a new run never starts over one
that holds a checkpoint), new_state_dict (the counters a checkpoint saves), then load_start:
--resume completes or drops a save a kill interrupted and loads the run's checkpoint with the
config's optimizer settings; --load_weights without --resume loads another run's G, D and
G_ema (or a converted G) for fine-tuning, refusing a G built otherwise than the flags say.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from checkpoints import (
    COMMIT_JOURNAL,
    checkpoint_file,
    checkpoint_suffix,
    describe_runs,
    load_file,
    load_state_checked,
    load_weights,
    plain_config,
    recover_checkpoints,
)
from flags import (
    DERIVED_KEYS,
    G_BUILD_KEYS,
    INVOCATION_KEYS,
    config_keys,
    flag_line,
    prepare_parser,
    read_run_config,
    update_config_roots,
)
from run_names import name_from_config

if TYPE_CHECKING:  # type hints only: the training step is not needed to load a run
    import train_fns


def new_state_dict(config: dict) -> dict:
    """The counters a checkpoint saves (state_dict.pth), at the start of a run."""
    return {'itr': 0, 'epoch': 0, 'save_num': 0, 'save_best_num': 0, 'best_IS': 0,
            'best_FID': 999999, 'best_KID': 999999, 'config': config}


def resumed_config(config: dict, given: Optional[dict]) -> dict:
    """On --resume: the run's saved flags, except those typed on this command line (`given`),
    which win with a note each where they differ. `given` None: the config as it is."""
    if given is None:
        return config
    update_config_roots(config)
    name = config['experiment_name'] or derived_run_name(config)
    run_dir = os.path.join(config['weights_root'], name)
    if not os.path.isdir(run_dir):
        return config  # load_weights says which folder is missing
    saved, _ = read_run_config(run_dir, config['load_weights'] or None)
    if saved is None:
        return config
    keep = config_keys() - INVOCATION_KEYS - DERIVED_KEYS
    saved = {k: v for k, v in plain_config(saved).items() if k in keep}
    for key in sorted(given.keys() & saved.keys()):
        if given[key] != saved[key]:
            print(f'--resume: {key} = {given[key]!r} as given (the run was saved with '
                  f'{saved[key]!r})')
    return {**config, **{k: v for k, v in saved.items() if k not in given},
            'experiment_name': name}


def derived_run_name(config: dict) -> str:
    """The derived name of the run to resume: today's rule, or, where only that folder exists,
    the name this code gave runs before post-2019 flags joined run names."""
    name, legacy = name_from_config(config), name_from_config(config, legacy=True)
    root = config['weights_root']
    if (legacy != name and not os.path.isdir(os.path.join(root, name))
            and os.path.isdir(os.path.join(root, legacy))):
        print(f'--resume: no run folder {name}; resuming {legacy}, the name runs got before '
              f'post-2019 flags (--loss, --amp, --LC, ...) joined run names')
        return legacy
    return name


def run_has_checkpoint(run_dir: str, suffix: Optional[str] = None) -> bool:
    """Whether a run folder holds a checkpoint (or a save that recovery will complete)."""
    return (os.path.isfile(os.path.join(run_dir, checkpoint_file('state_dict', suffix)))
            or os.path.isfile(os.path.join(run_dir, COMMIT_JOURNAL)))


def check_run_folder(config: dict) -> None:
    """A resume needs its run folder; a new run never starts over an existing one: that would
    delete its logs and, at its first save, replace its checkpoint. Nothing is written here."""
    run_dir = os.path.join(config['weights_root'], config['experiment_name'])
    if config['resume']:
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(
                f'--resume: no run folder {run_dir} ({describe_runs(config["weights_root"])})'
                f'. Check --base_root/--weights_root and --experiment_name (or the training flags '
                f'the name is derived from)')
        return
    if not run_has_checkpoint(run_dir):
        return
    _, itr = read_run_config(run_dir)
    raise FileExistsError(
        f'{run_dir} already holds a run (saved at iteration {itr}). Resume it with --resume, '
        f'or start a new run under a new --experiment_name; to start this one over, first '
        f'delete or move {run_dir} and its logs ({config["logs_root"]}/'
        f'{config["experiment_name"]}*). Nothing was changed.')


def load_start(nets: train_fns.Nets, state_dict: dict, precision: train_fns.Precision,
               config: dict, *, is_main: bool, world_size: int) -> dict:
    """Resume the run (after completing or dropping a save a kill interrupted), or start it
    from --load_weights; returns what the checkpoint saved beyond the weights ({} if none)."""
    if config['resume']:
        run_dir = os.path.join(config['weights_root'], config['experiment_name'])
        if is_main and os.path.isdir(run_dir):
            for line in recover_checkpoints(run_dir):
                print(f'{run_dir}: {line}')
        if world_size > 1:
            dist.barrier()  # the other ranks load what rank 0 recovered
        return resume(nets, state_dict, precision, config)
    if config['load_weights']:
        load_for_finetuning(nets, config['load_weights'], config)
    return {}


def resume(nets: train_fns.Nets, state_dict: dict, precision: train_fns.Precision,
           config: dict) -> dict:
    """Load the run's checkpoint and apply the config's optimizer settings; returns the saved
    state ({} for a run killed before its first save, which starts from iteration 0)."""
    run_dir = os.path.join(config['weights_root'], config['experiment_name'])
    suffix = config['load_weights'] or None
    if os.path.isdir(run_dir) and not suffix and not run_has_checkpoint(run_dir):
        print(f'{run_dir} holds no checkpoint yet (the run stopped before its first save): '
              f'starting from iteration 0')
        return {}
    saved = load_weights(nets.G, nets.D, state_dict, config['weights_root'],
                         config['experiment_name'], name_suffix=suffix, G_ema=nets.G_ema,
                         G_optim=nets.G_optim, D_optim=nets.D_optim)
    for optim, who in ((nets.G_optim, 'G'), (nets.D_optim, 'D')):
        set_optimizer_hparams(optim, config[f'{who}_lr'], (config[f'{who}_B1'],
                                                           config[f'{who}_B2']),
                              config['adam_eps'])
    for key in ('G_scaler', 'D_scaler'):
        if saved.get(key) and getattr(precision, key) is not None:
            getattr(precision, key).load_state_dict(saved[key])
    return saved


def set_optimizer_hparams(optim: torch.optim.Optimizer, lr: float, betas: tuple,
                          eps: float) -> None:
    """Apply the config's Adam settings to a loaded optimizer (its state keeps the old ones)."""
    for group in optim.param_groups:
        group.update(lr=lr, betas=betas, eps=eps)


def weights_source(path: str) -> tuple[str, Optional[str]]:
    """(run folder, suffix) named by --load_weights: a folder, or one of its G/G_ema/D files."""
    if not os.path.isfile(path):
        return path, None
    root, name = os.path.split(path)
    try:
        return root, checkpoint_suffix(name)
    except ValueError as err:
        raise ValueError(f'--load_weights {path}: expected a run folder or a file in one; '
                         f'{err}') from None


def check_source_G(config: dict, root: str) -> None:
    """Refuse to fine-tune from a run whose saved config builds G otherwise than the flags."""
    saved, _ = read_run_config(root)
    if not saved:
        return
    defaults = prepare_parser().parse_args([])
    built = {k: saved.get(k, getattr(defaults, k)) for k in G_BUILD_KEYS}
    differ = {k: v for k, v in built.items() if v != config[k]}
    if differ:
        raise ValueError(f'--load_weights {root}: its G was built with '
                         + ', '.join(f'{k}={v!r} (given: {config[k]!r})'
                                     for k, v in differ.items())
                         + f'. Give the flags it was built with: {flag_line(differ)}')


def load_for_finetuning(nets: train_fns.Nets, path: str, config: dict) -> None:
    """Load a run's weights, re-initialising class embeddings whose class count differs; a
    source without D.pth (a converted generator) leaves D at its initialisation."""
    root, suffix = weights_source(path)
    check_source_G(config, root)
    G, G_ema = nets.G, nets.G_ema
    for net, name in ((G, 'G'), (nets.D, 'D'), (G_ema, 'G_ema')):
        fname = os.path.join(root, checkpoint_file(name, suffix))
        if net is None or (name == 'G_ema' and not os.path.exists(fname)):
            continue
        if name == 'D' and not os.path.exists(fname):
            print(f'{root} holds no {os.path.basename(fname)}: D starts fresh (consider '
                  f'--D_warmup so it learns the loaded G before G follows it)')
            continue
        state = load_file(fname)
        embeddings = [n for n, m in net.named_modules() if isinstance(m, nn.Embedding)]
        own = net.state_dict()
        for key in list(state):
            in_embedding = any(key.startswith(e + '.') for e in embeddings)
            if in_embedding and key in own and own[key].shape != state[key].shape:
                state[key] = own[key]  # a new class count: keep the fresh initialisation
        load_state_checked(net, state, True, fname)
        if name == 'G' and G_ema is not None:
            G_ema.load_state_dict(G.state_dict())  # a run without EMA: start the EMA at G
