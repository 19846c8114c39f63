"""Train a BigGAN or BigGAN-deep.

    python train.py --dataset data/demo_32.hdf5 --shuffle --batch_size 64 \\
        --G_ch 32 --D_ch 32 --G_shared --shared_dim 32 --hier --dim_z 64 --ema --use_ema
    torchrun --nproc_per_node=8 train.py <the same flags>      # DDP, one process per GPU

`run` reads top to bottom: config and checks -> models, optimizers, EMA -> resume or
fine-tune (resume.py) -> the objectives (train_fns.py) and augmentation -> parallel wrappers
-> data -> the training step (train_fns.GAN_training_function) -> `loop`, which calls
train_fns.AfterStep for logging, saving/sampling (--save_every) and IS/FID tests
(--test_every). Runs live in
<weights_root>/<experiment_name>/ and are found again by their name (--resume). One process
writes a run folder at a time (run_lock.py): a second train.py on the same run is refused at
start, naming the first.
"""
from __future__ import annotations

import datetime
import functools
import importlib
import os
import signal
import sys
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import class_names
import datasets
import flags
import freeze
import image_transforms
import layers
import resume
import run_lock
import tb_log
import train_fns
import utils
from BigGAN import G_D, D_pass
from objectives import Objectives
from small_data import Augmentation


def setup_distributed() -> tuple[int, int, torch.device]:
    """Join the torchrun process group if launched by torchrun: (rank, world_size, device)."""
    if 'RANK' not in os.environ or int(os.environ.get('WORLD_SIZE', 1)) == 1:
        return 0, 1, torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    # Rank 0 samples, saves and runs IS/FID tests alone while the others wait at their next
    # all-reduce: allow that an hour instead of the default 10 minutes.
    timeout = datetime.timedelta(hours=1)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group('nccl', device_id=torch.device('cuda', local_rank),
                                timeout=timeout)
        device = torch.device('cuda', local_rank)
    else:
        dist.init_process_group('gloo', timeout=timeout)
        device = torch.device('cpu')
    return dist.get_rank(), dist.get_world_size(), device


def prepare_config(config: dict, given: Optional[dict] = None) -> dict:
    """Resolve roots, precision flags, the dataset's resolution/classes/transform and the run's
    name (`given`: the flags typed, see setup_config)."""
    note = utils.legacy_precision_note(config)
    if note:
        print(note)
    utils.update_config_roots(config)
    spec = datasets.resolve_dataset(config['dataset'], config['data_root'],
                                    resolution=config['resolution'] or None,
                                    single_class_ok=config['unconditional'])
    config['resolution'] = spec.resolution
    config['n_classes'] = 1 if config['unconditional'] else spec.n_classes
    config['class_names'] = class_names.run_class_names(  # sample.py --classes takes them
        class_names.dataset_class_names(config['dataset'], spec), config['n_classes'])
    config['classes_per_sheet'] = min(spec.classes_per_sheet, config['n_classes'])
    config['G_batch_size'] = train_fns.G_batch_size(config)
    if config['G_batch_size'] < config['batch_size']:
        print(f"--G_batch_size {config['G_batch_size']} < --batch_size {config['batch_size']}: "
              f"D sees {config['batch_size']} fakes per minibatch and G steps on "
              f"{config['G_batch_size']} (the 2019 code ignored a smaller G_batch_size)")
    config['experiment_name'] = config['experiment_name'] or utils.name_from_config(config)
    config['moments_path'] = str(spec.moments_path)
    # After naming: the name has --transform as typed; the config records the one the images
    # went through (an HDF5 file's own: files packed before transforms were recorded say none).
    used = image_transforms.run_transform(spec.kind, spec.path, config, given)
    config['transform'], config['pad_value'] = used.name, used.pad_value
    return config


def check_config(config: dict, world_size: int = 1, num_gpus: int = 0) -> None:
    """Flag combinations that would crash later or silently do something else: fail now,
    before anything is written to disk."""
    source = config['load_weights']
    if source and not config['resume'] and not os.path.exists(source):
        if os.sep in source or source.endswith('.pth'):
            raise FileNotFoundError(f'--load_weights {source} does not exist: give a run folder '
                                    f'or a G*.pth file in one to fine-tune from')
        name = config['experiment_name']
        raise ValueError(
            f'--load_weights {source} without --resume: a suffix such as {source} names a '
            f'checkpoint copy (G_{source}.pth, ...) of this run, read only when resuming. To '
            f'continue run {name} from it add --resume; to start a new run from its weights give '
            f'the file, e.g. --load_weights {os.path.join(config["weights_root"], name)}'
            f'/G_{source}.pth with a new --experiment_name')
    if config['cross_replica'] and config['parallel'] and world_size == 1 and num_gpus > 1:
        raise ValueError(
            "--cross_replica with --parallel: DataParallel normalises each GPU's share of the "
            'batch on its own, so BN statistics would not be synced. Launch one process per '
            'GPU instead: torchrun --nproc_per_node=N train.py ... without --parallel (and '
            'with --batch_size divided by N: under DDP it is per GPU); there --cross_replica '
            "uses PyTorch's SyncBatchNorm")


def total_iterations(num_images: int, num_epochs: int, images_per_itr: int,
                     multiepoch: bool) -> int:
    """Iterations a run trains for: whole batches per epoch (drop_last), or, with the
    multi-epoch sampler, whole batches of the stream of all epochs (batches span epochs)."""
    if multiepoch:
        return num_images * num_epochs // images_per_itr
    return num_images // images_per_itr * num_epochs


def setup_config(config: dict, given: Optional[dict], world_size: int) -> dict:
    """The run's config: resumed flags, resolved data and name, and every check that can
    fail before anything is written to disk."""
    if config['resume']:
        config = resume.resumed_config(config, given)
    config = prepare_config(config, given)
    check_config(config, world_size, torch.cuda.device_count())
    freeze.check_freeze_D(config)
    tb_log.check_available(config)
    resume.check_run_folder(config)
    check_test_setup(config)
    return config


def check_test_setup(config: dict) -> None:
    """Testing needs Inception weights and the moments file (--which_best KID: the features
    file too): fail now, not hours later."""
    if config['test_every'] > 0:
        import inception_utils
        inception_utils.check_inception_ready(*flags.inception_args(config),
                                              config['no_fid'], resolution=config['resolution'],
                                              features=config['which_best'] == 'KID')


def build_models(config: dict, device: torch.device):
    """G, D and (with --ema) G_ema of the configured model module, on the device."""
    model = importlib.import_module(config['model'])
    # Built on the device: orthogonal init of a ch96 model's large weights is a QR per
    # layer, tens of seconds on the CPU and well under a second on a GPU.
    with torch.device(device):
        G = model.Generator(**config)
        D = model.Discriminator(**config)
        G_ema = None
        if config['ema']:
            G_ema = model.Generator(**{**config, 'skip_init': True})
            G_ema.requires_grad_(False)
    if config['channels_last']:
        for net in (G, D, G_ema):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    return G, D, G_ema


def build_optimizers(G: nn.Module, D: nn.Module, config: dict, device: torch.device):
    """Adam for G and D with the flags' learning rates, betas and eps.

    Fused on CUDA; elsewhere the multi-tensor (foreach) form, one op per step for all
    parameters instead of ~10 per parameter, with the same results as the per-parameter loop.
    """
    impl = {'fused': True} if device.type == 'cuda' else {'foreach': True}
    G_optim = torch.optim.Adam(G.parameters(), lr=config['G_lr'], weight_decay=0,
                               betas=(config['G_B1'], config['G_B2']), eps=config['adam_eps'],
                               **impl)
    D_optim = torch.optim.Adam(D.parameters(), lr=config['D_lr'], weight_decay=0,
                               betas=(config['D_B1'], config['D_B2']), eps=config['adam_eps'],
                               **impl)
    return G_optim, D_optim


def build_nets(config: dict, device: torch.device) -> train_fns.Nets:
    """G, D, G_ema and both optimizers."""
    G, D, G_ema = build_models(config, device)
    nets = train_fns.Nets(G, D, G_ema, *build_optimizers(G, D, config, device),
                          D_frozen=freeze.frozen_D_modules(D, config.get('freeze_D', 0)))
    freeze.hold(nets.D_frozen)  # before any DDP wrapper: it reduces the trained ones only
    return nets


def build_ema(nets: train_fns.Nets, config: dict) -> Optional[utils.ema]:
    """The EMA of G into G_ema (--ema), starting at --ema_start; None without --ema."""
    if nets.G_ema is None:
        return None
    return utils.ema(nets.G, nets.G_ema, config['ema_decay'], config['ema_start'])


def inception_metrics(config: dict, device: torch.device) -> Optional[Callable]:
    """The IS/FID function of --test_every (None when not testing)."""
    if config['test_every'] <= 0:
        return None
    import inception_utils  # only when testing: it loads the Inception weights
    return inception_utils.prepare_inception_metrics(
        *flags.inception_args(config), device=device, no_fid=config['no_fid'])


def lock_run_folder(config: dict, is_main: bool, world_size: int
                    ) -> Optional[run_lock.RunLock]:
    """Rank 0 takes the run folder's lock (run_lock.py): one writer per run. Every rank stops
    with rank 0's error if it cannot, instead of waiting for it at the first collective."""
    run_dir = os.path.join(config['weights_root'], config['experiment_name'])
    lock, error = None, None
    if is_main:
        try:
            lock = run_lock.acquire(run_dir)
        except Exception as err:  # passed on to the other ranks first
            error = err
    if world_size > 1:
        message = [None if error is None else str(error)]
        dist.broadcast_object_list(message, src=0)
        if not is_main and message[0] is not None:
            raise run_lock.RunLockedError(f'rank 0 could not lock {run_dir}: {message[0]}')
    if error is not None:
        raise error
    return lock


def wrap_parallel(nets: train_fns.Nets, config: dict, device: torch.device, world_size: int,
                  augment: Optional[Augmentation] = None,
                  objectives: Optional[Objectives] = None
                  ) -> tuple[train_fns.Passes, Optional[nn.Module], Optional[nn.Module]]:
    """The step's passes (train_fns.Passes: G's fakes for the D step, D's pass, G then D) and
    the DDP wrappers of G and D (None without DDP). Under torchrun G and D are DDP-wrapped
    each, and each pass uses the wrapper of the net it trains; with --parallel on several GPUs
    each pass is a DataParallel; with --compile each is compiled, except D's pass when a
    gradient penalty needs its double backward (torch.compile has none)."""
    G, D, G_ddp, D_ddp = nets.G, nets.D, None, None
    if world_size > 1:
        if config['cross_replica']:
            layers.use_sync_batchnorm(G)
        ids = [device.index] if device.type == 'cuda' else None
        G_ddp = nn.parallel.DistributedDataParallel(G, device_ids=ids)
        D_ddp = nn.parallel.DistributedDataParallel(D, device_ids=ids)
    split_D = config['split_D']
    passes = train_fns.Passes(G, D_pass(D_ddp or D, augment=augment, split_D=split_D),
                              G_D(G_ddp or G, D, augment=augment, split_D=split_D))
    if world_size == 1 and config['parallel'] and torch.cuda.device_count() > 1:
        passes = train_fns.Passes(*(nn.DataParallel(m) for m in vars(passes).values()))
    if config['compile']:
        compiled = functools.partial(torch.compile, mode=config.get('compile_mode', 'default'))
        double_backward = objectives is not None and any(o.grad_of for o in objectives.all)
        passes = train_fns.Passes(compiled(passes.G), passes.D_pass if double_backward
                                  else compiled(passes.D_pass), compiled(passes.G_D))
    return passes, G_ddp, D_ddp


def build_objectives(config: dict, device: torch.device, saved: dict, *, rank: int,
                     world_size: int) -> tuple[Objectives, Optional[Augmentation]]:
    """The run's objectives (train_fns.py) and augmentation, with the state a checkpoint saved
    (checkpoints from before objectives were classes kept both under 'small_data')."""
    objectives = Objectives(config, device, rank=rank, world_size=world_size)
    augment = Augmentation.from_config(config, device, rank=rank, world_size=world_size)
    legacy = saved.get('small_data') or {}
    objectives.load_state_dict(saved.get('objectives')
                               or ({'LC': legacy['lecam']} if legacy.get('lecam') else {}))
    if augment is not None:
        augment.load_state_dict(saved.get('augment') or legacy)
    return objectives, augment


def images_per_itr(config: dict, world_size: int = 1) -> int:
    """Real images one iteration consumes, over all ranks."""
    return (config['batch_size'] * config['num_D_steps'] * config['num_D_accumulations']
            * world_size)


def build_loader(config: dict, start_itr: int, rank: int, world_size: int,
                 subset: Optional[list] = None):
    """This rank's loader: each batch holds the real images of one whole iteration.
    `subset`: the --num_samples images a resumed run recorded."""
    minibatches = config['num_D_steps'] * config['num_D_accumulations']
    return datasets.get_data_loaders(**{**config, 'batch_size': images_per_itr(config),
                                        'start_itr': start_itr, 'rank': rank,
                                        'world_size': world_size, 'subset': subset,
                                        'minibatches': minibatches})[0]


def resume_position(itr: int, epoch: int, itrs_per_epoch: int, multiepoch: bool
                    ) -> tuple[int, int]:
    """(epoch, its first batch) to continue from after `itr` iterations saved in `epoch`.

    A run resumed mid-epoch continues that epoch at the batch where it stopped, unless the
    counters do not fit this dataset (e.g. a 2019 run resumed on other data: then the epoch
    starts anew). The multi-epoch sampler skips ahead by itself: always batch 0.
    """
    start_batch = itr - epoch * itrs_per_epoch
    if multiepoch:
        return epoch, 0
    if start_batch == itrs_per_epoch:  # saved at an epoch's last iteration, before the loop
        return epoch + 1, 0            # moved on to the next epoch
    return epoch, start_batch if 0 <= start_batch < itrs_per_epoch else 0


def describe_length(config: dict, num_images: int, world_size: int) -> str:
    """The start-up line: how many iterations of how many images, and where it resumes."""
    per_itr = images_per_itr(config, world_size)
    total = total_iterations(num_images, config['num_epochs'], per_itr,
                             config['use_multiepoch_sampler'])
    ranks = f' x {world_size} ranks' if world_size > 1 else ''
    return (f"Training {total:,} iterations: {config['num_epochs']} epochs of {num_images:,} "
            f"images at {per_itr:,} real images per iteration (batch {config['batch_size']} x "
            f"{config['num_D_steps']} D steps x {config['num_D_accumulations']} "
            f"accumulations{ranks})")


def to_device(x: torch.Tensor, y: torch.Tensor, config: dict, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the device, in the model's memory format; all labels 0 if unconditional."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if config['unconditional']:
        y = torch.zeros_like(y)
    if config['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def install_stop_handlers() -> dict:
    """SIGTERM/SIGUSR1 ask the loop to save and exit at the end of the current iteration."""
    stop = {'signal': None}

    def handler(signum, frame):
        stop['signal'] = signum
    for sig in (signal.SIGTERM, getattr(signal, 'SIGUSR1', None)):
        if sig is not None:
            signal.signal(sig, handler)
    return stop


def run(config: dict, given: Optional[dict] = None) -> dict:
    """Train as the config says; returns the final state_dict (itr, epoch, best scores).

    `given`: the flags typed on the command line; with --resume the run's saved config
    supplies the others. Every check runs before anything is written to disk, and the run
    folder is locked (one writer per run) before the first write.
    """
    rank, world_size, device = setup_distributed()
    config = setup_config(config, given, world_size)
    lock = lock_run_folder(config, rank == 0, world_size)
    try:
        state_dict = train_run(config, rank, world_size, device)
    finally:
        if lock is not None:
            lock.release()
    if world_size > 1:
        dist.destroy_process_group()
    return state_dict


def train_run(config: dict, rank: int, world_size: int, device: torch.device) -> dict:
    """The training run of a checked config, its run folder locked: returns the final
    state_dict."""
    is_main = rank == 0
    utils.configure_backends(device)
    utils.seed_rng(config['seed'])  # the same initial weights on every rank

    # Models, optimizers, EMA; resume or fine-tune; objectives; parallel wrappers:
    nets = build_nets(config, device)
    ema = build_ema(nets, config)
    state_dict = resume.new_state_dict(config)
    precision = train_fns.Precision.from_config(config['amp'], device)
    saved = resume.load_start(nets, state_dict, precision, config, is_main=is_main,
                              world_size=world_size)
    objectives, augment = build_objectives(config, device, saved, rank=rank,
                                           world_size=world_size)
    passes, G_ddp, D_ddp = wrap_parallel(nets, config, device, world_size, augment, objectives)

    # Data; the training step; what runs after it (rank 0 opens the logs now, and a new run
    # writes its config.json):
    loader = build_loader(config, state_dict['itr'], rank, world_size, saved.get('subset'))
    latents = utils.Latents(train_fns.latent_batch_size(config), nets.G.dim_z,
                            config['n_classes'], device, z_var=config['z_var'], rank=rank,
                            world_size=world_size)
    train = train_fns.GAN_training_function(
        nets, passes, state_dict, config, latents=latents, objectives=objectives,
        augment=augment, ema=ema, precision=precision, G_ddp=G_ddp, D_ddp=D_ddp)
    after_step = train_fns.AfterStep(nets, state_dict, config, precision=precision,
                                     latents=latents, is_main=is_main, resumed=bool(saved),
                                     get_inception_metrics=inception_metrics(config, device),
                                     objectives=objectives, augment=augment,
                                     subset=getattr(loader.dataset, 'indices', None))
    if is_main:
        print(f'Objective: {objectives.describe()}')
    if 'rng' in saved:
        utils.set_rng_state(saved['rng'])
    try:
        return loop(train, after_step, loader, nets, state_dict, config, device,
                    world_size=world_size, is_main=is_main)
    finally:
        after_step.close()  # the TensorBoard events logged since the last save


def loop(train: Callable, after_step: train_fns.AfterStep, loader, nets: train_fns.Nets,
         state_dict: dict, config: dict, device: torch.device, *, world_size: int,
         is_main: bool) -> dict:
    """Train until --num_epochs (or a stop signal), then save; returns the state_dict."""
    stop = install_stop_handlers()
    multiepoch = config['use_multiepoch_sampler']
    itrs_per_epoch = max(len(loader.dataset) // images_per_itr(config, world_size), 1)
    if is_main:
        print(describe_length(config, len(loader.dataset), world_size)
              + (f"; resuming at iteration {state_dict['itr']:,}" if config['resume'] else ''))
    state_dict['epoch'], start_batch = resume_position(state_dict['itr'], state_dict['epoch'],
                                                       itrs_per_epoch, multiepoch)
    stopping = False
    while state_dict['epoch'] < config['num_epochs']:
        if not multiepoch:
            loader.sampler.set_epoch(state_dict['epoch'], start_batch)
            start_batch = 0
        bar = tqdm(loader, disable=not is_main, desc=f"epoch {state_dict['epoch']}",
                   dynamic_ncols=True, file=sys.stdout)
        for x, y in bar:
            state_dict['itr'] += 1
            itr = state_dict['itr']
            utils.seed_itr(config['seed'], itr)  # randomness per iteration: exact resume
            nets.train()
            losses = train(*to_device(x, y, config, device))
            if multiepoch:
                state_dict['epoch'] = itr // itrs_per_epoch
            stopping = stop['signal'] is not None
            after_step(itr, losses, bar, stopping)
            if stopping:
                bar.write(f"signal {stop['signal']}: exiting at iteration {itr}"
                          + (', saved' if config['save_every'] > 0 else
                             ' (--save_every 0: not saved)'))
                break
        if multiepoch or stopping:  # one multi-epoch sampler pass covers every epoch
            break
        state_dict['epoch'] += 1
    if config['save_every'] > 0 and state_dict['itr'] % config['save_every'] and not stopping:
        after_step.save()  # the end of training, between two saves
    return state_dict


def main(argv: Optional[list[str]] = None) -> dict:
    """Parse the flags and train."""
    return run(*utils.parse_given(utils.prepare_parser, argv))


if __name__ == '__main__':
    sys.exit(flags.run_cli(main, 'train.py'))
