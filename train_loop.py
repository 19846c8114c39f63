"""What train.py's loop runs around the training step: the nets a checkpoint holds, mixed
precision, and between iterations logs, saves with sample sheets, and IS/FID tests.

train_fns.py holds the objectives and the step itself (`GAN_training_function`), and
re-exports `save_and_sample` and `test` from here under their 2019 names. `AfterStep` is
everything the loop does between iterations: add a periodic task there.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn, Optional

import torch
import torch.nn as nn

import freeze
import metrics
import tb_log
import utils

# ----------------------------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------------------------


@dataclass
class Precision:
    """Autocast settings and (for fp16) one gradient scaler per network."""
    device_type: str = 'cpu'
    dtype: Optional[torch.dtype] = None  # None: fp32
    G_scaler: Optional[torch.amp.GradScaler] = field(default=None)
    D_scaler: Optional[torch.amp.GradScaler] = field(default=None)

    @classmethod
    def from_config(cls, amp: str, device: torch.device) -> Precision:
        """`--amp none|bf16|fp16` on the given device."""
        dtype = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
        scalers = {}
        if dtype == torch.float16:  # fp16 overflows without loss scaling; bf16 does not
            scalers = {k: torch.amp.GradScaler(device.type) for k in ('G_scaler', 'D_scaler')}
        return cls(device.type, dtype, **scalers)

    def autocast(self):
        """The autocast context of a forward pass (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def backward(loss: torch.Tensor, scaler) -> None:
    """loss.backward(), scaled by the fp16 grad scaler if there is one."""
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(optim: torch.optim.Optimizer, scaler, net: nn.Module, *,
                   ortho_strength: float, blacklist: tuple = ()) -> None:
    """Optional ortho reg on the (unscaled) gradients, then the optimizer step."""
    if scaler is not None:
        scaler.unscale_(optim)
    if ortho_strength > 0:
        utils.ortho(net, ortho_strength, blacklist=blacklist)
    if scaler is not None:
        scaler.step(optim)
        scaler.update()
    else:
        optim.step()


def sync_unless_last(net: nn.Module, index: int, count: int):
    """DDP: all-reduce gradients only on the last accumulated minibatch."""
    if index < count - 1 and hasattr(net, 'no_sync'):
        return net.no_sync()
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------
# What a checkpoint holds
# ----------------------------------------------------------------------------------------


@dataclass
class Nets:
    """G, D, the EMA copy of G and the two optimizers: what a checkpoint holds."""
    G: nn.Module
    D: nn.Module
    G_ema: Optional[nn.Module]
    G_optim: torch.optim.Optimizer
    D_optim: torch.optim.Optimizer
    D_frozen: tuple[nn.Module, ...] = ()  # --freeze_D: D's first blocks (freeze.py)

    def sampling_G(self, config: dict) -> nn.Module:
        """The G to sample and test with: the EMA copy with --ema --use_ema, else G."""
        use_ema = config['ema'] and config['use_ema'] and self.G_ema is not None
        return self.G_ema if use_ema else self.G

    def train(self, mode: bool = True) -> None:
        """Training (or eval) mode for G, D and G_ema."""
        for net in (self.G, self.D, self.G_ema):
            if net is not None:
                net.train(mode)
        freeze.hold(self.D_frozen)  # frozen blocks stay in eval mode: SN keeps their u

    @contextlib.contextmanager
    def sampling_mode(self, eval_mode: bool):
        """G and G_ema in eval mode inside the block if `eval_mode` (--G_eval_mode)."""
        nets = [net for net in (self.G, self.G_ema) if net is not None and eval_mode]
        for net in nets:
            net.eval()
        yield
        for net in nets:
            net.train()

    def save(self, state_dict: dict, config: dict, *, name_suffix: Optional[str] = None,
             extra: Optional[dict] = None, also_as: tuple[str, ...] = ()) -> str:
        """Write the whole set to the run folder (see utils.save_weights)."""
        return utils.save_weights(self.G, self.D, state_dict, config['weights_root'],
                                  config['experiment_name'], name_suffix=name_suffix,
                                  G_ema=self.G_ema if config['ema'] else None,
                                  G_optim=self.G_optim, D_optim=self.D_optim, extra=extra,
                                  also_as=also_as)


def G_batch_size(config: dict) -> int:
    """G's batch in the G step and in sampling: --G_batch_size, or --batch_size if 0."""
    return config['G_batch_size'] or config['batch_size']


def latent_batch_size(config: dict) -> int:
    """Latent rows an iteration draws per minibatch: D's batch_size fakes and G's
    G_batch_size, whichever is larger (as 2019 drew them)."""
    return max(G_batch_size(config), config['batch_size'])


def check_finite(losses: dict[str, float], itr: int, last_checkpoint: str) -> None:
    """Stop a run whose losses went NaN/inf instead of training on garbage for hours."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        stop_non_finite(f'non-finite losses {bad}', itr, last_checkpoint)


def stop_non_finite(what: str, itr: int, last_checkpoint: str) -> NoReturn:
    """Raise FloatingPointError saying what went non-finite and where to resume from."""
    raise FloatingPointError(
        f'{what} at iteration {itr}. The last good checkpoint is {last_checkpoint}; resume '
        f'from it (--resume; flags given with it override the saved ones) with lower learning '
        f'rates, --amp bf16 instead of fp16, or a larger --adam_eps/--SN_eps.')


# ----------------------------------------------------------------------------------------
# Saving, sampling and testing
# ----------------------------------------------------------------------------------------


def save_and_sample(nets: Nets, state_dict: dict, config: dict, *, latents: utils.Latents,
                    fixed_z: torch.Tensor, fixed_y: torch.Tensor,
                    extra: Optional[dict] = None) -> dict[str, str]:
    """Save the checkpoint and a rotating copy as one set, then a fixed-z grid, sheets and
    interps; returns the paths of the grid and the first class sheet. Raises
    FloatingPointError, saving nothing, if a weight is NaN or inf."""
    copies = ()
    if config['num_save_copies'] > 0:
        copies = (f"copy{state_dict['save_num']}",)
        # The saved state already names the next copy: a resumed run rotates like the
        # uninterrupted one.
        state_dict['save_num'] = (state_dict['save_num'] + 1) % config['num_save_copies']
    nets.save(state_dict, config, extra=extra, also_as=copies)
    with utils.preserved_buffers(nets.sampling_G(config)) as which_G:
        return _write_samples(which_G, state_dict, config, latents=latents, fixed_z=fixed_z,
                              fixed_y=fixed_y)


def _write_samples(which_G: nn.Module, state_dict: dict, config: dict, *,
                   latents: utils.Latents, fixed_z: torch.Tensor, fixed_y: torch.Tensor
                   ) -> dict[str, str]:
    """The fixed-z grid, class sheets and interpolation sheets of one save; returns the
    paths of the grid and the first class sheet."""
    if config['accumulate_stats']:
        utils.accumulate_standing_stats(which_G, latents, config['num_standing_accumulations'])
    itr, name, root = state_dict['itr'], config['experiment_name'], config['samples_root']
    with torch.no_grad():
        fixed_Gz = which_G(fixed_z, which_G.shared(fixed_y))
    fixed_path = os.path.join(root, name, f'fixed_samples{itr}.jpg')
    utils.save_grid(fixed_Gz, fixed_path)
    where = dict(num_classes=config['n_classes'], samples_root=root, experiment_name=name,
                 folder_number=itr, device=fixed_z.device)
    sheets = utils.sample_sheet(which_G, classes_per_sheet=config['classes_per_sheet'],
                                samples_per_class=10, class_names=config.get('class_names'),
                                **where)
    for fix_z, fix_y in ((False, False), (False, True), (True, False)):
        utils.interp_sheet(which_G, num_per_sheet=16, num_midpoints=8, fix_z=fix_z,
                           fix_y=fix_y, **where)
    return {'fixed_z': fixed_path, 'class_sheet': sheets[0]}


def test(nets: Nets, state_dict: dict, config: dict, *, latents: utils.Latents,
         sample: Callable, get_inception_metrics: Callable,
         test_log: Optional[utils.MetricsLogger] = None, extra: Optional[dict] = None,
         is_main: bool = True) -> dict:
    """IS/FID (and KID, precision/recall, density/coverage when the data's real-features file
    exists) of the sampling G; keep the `num_best_copies` best checkpoints by --which_best;
    log to jsonl.

    Under DDP every rank calls this (each samples its share of the images); only the main
    rank saves and logs.
    """
    with utils.preserved_buffers(nets.sampling_G(config)) as which_G:
        if config['accumulate_stats']:
            utils.accumulate_standing_stats(which_G, latents,
                                            config['num_standing_accumulations'])
        result = get_inception_metrics(sample, config['num_inception_images'], num_splits=10)
    IS_mean, IS_std, FID = result
    FID = None if FID is None else float(FID)  # None with --no_fid
    small_data = metrics.small_data_metrics(result)  # KID, P/R, density/coverage if computed
    KID = small_data.get('KID_mean')
    state_dict.setdefault('best_KID', 999999)  # state dicts from before KID lack it
    improved = {'IS': IS_mean > state_dict['best_IS'],
                'FID': FID is not None and FID < state_dict['best_FID'],
                'KID': KID is not None and KID < state_dict['best_KID']}[config['which_best']]
    best_num = state_dict['save_best_num']
    if improved:  # the saved state already holds the new best score and next copy number
        state_dict['save_best_num'] = (best_num + 1) % max(config['num_best_copies'], 1)
    state_dict['best_IS'] = max(state_dict['best_IS'], float(IS_mean))
    if FID is not None and math.isfinite(FID):
        state_dict['best_FID'] = min(state_dict['best_FID'], FID)
    if KID is not None and math.isfinite(KID):
        state_dict['best_KID'] = min(state_dict['best_KID'], KID)
    if improved and is_main:
        nets.save(state_dict, config, name_suffix=f'best{best_num}', extra=extra)
    record = dict(itr=int(state_dict['itr']), IS_mean=float(IS_mean), IS_std=float(IS_std),
                  FID=FID, **small_data)
    if is_main:
        test_log.log(**record)
    return record


# ----------------------------------------------------------------------------------------
# Between iterations
# ----------------------------------------------------------------------------------------


class AfterStep:
    """What the loop does after each iteration: log losses (--log_every) and singular values
    (--sv_log_interval), save and sample (--save_every, and on a stop signal), test IS/FID
    (--test_every), each also to TensorBoard (tb_log.py) unless --no_tensorboard. Only the
    main rank writes; every rank samples its share of a test."""

    def __init__(self, nets: Nets, state_dict: dict, config: dict, *,
                 precision: Precision, latents: utils.Latents,
                 get_inception_metrics: Optional[Callable], is_main: bool, resumed: bool,
                 objectives: Optional[Any] = None, augment: Optional[Any] = None,
                 subset: Optional[Any] = None):
        self.nets, self.state_dict, self.config = nets, state_dict, config
        # Saved with every checkpoint: the objectives' state (e.g. LeCam's EMAs), the adaptive
        # augmentation's p, and the --num_samples subset.
        self.objectives, self.augment, self.subset = objectives, augment, subset
        self.precision, self.latents, self.is_main = precision, latents, is_main
        self.get_inception_metrics = get_inception_metrics
        fixed = utils.Latents(config['G_batch_size'], nets.G.dim_z, config['n_classes'],
                              latents.z.device, z_var=config['z_var'])
        self.fixed_z, self.fixed_y = (t.clone() for t in fixed.sample_())  # for every save
        self.run_dir = os.path.join(config['weights_root'], config['experiment_name'])
        self.last_save = self._where() if resumed else 'none yet'
        self.test_log = self.train_log = self.tb = None
        if is_main:
            self._open_logs()

    def _where(self) -> str:
        return f"{self.run_dir} (iteration {self.state_dict['itr']})"

    def _open_logs(self) -> None:
        """The run's first writes: the jsonl test log and per-series train logs (a resumed run
        drops what a killed run logged after its last checkpoint, and a torn last line), and
        for a new run config.json. A resumed run's config.json changes only with its next
        checkpoint (utils.save_weights writes it): a resume that fails keeps the config of the
        checkpoint it came from."""
        config, name, itr = self.config, self.config['experiment_name'], self.state_dict['itr']
        if not config['resume']:
            utils.save_config(config, os.path.join(self.run_dir, utils.CONFIG_FILE))
        self.test_log = utils.MetricsLogger(os.path.join(config['logs_root'], f'{name}_log.jsonl'),
                                            reinitialize=not config['resume'])
        self.train_log = utils.MyLogger(os.path.join(config['logs_root'], name),
                                        reinitialize=not config['resume'],
                                        logstyle=config['logstyle'])
        if config['resume']:
            self.test_log.truncate_after(itr)
            self.train_log.truncate_after(itr)
        if config['tensorboard']:  # beside the text logs; a resume drops later events too
            self.tb = tb_log.TensorBoardLog(os.path.join(config['logs_root'], name),
                                            resume_itr=itr if config['resume'] else None)

    def __call__(self, itr: int, losses: dict, bar, stopping: bool) -> None:
        config = self.config
        if itr % config['log_every'] == 0 or itr == 1:
            self.log_losses(itr, losses, bar)
        if config['sv_log_interval'] > 0 and itr % config['sv_log_interval'] == 0:
            self.log_spectra(itr)
        if config['save_every'] > 0 and (itr % config['save_every'] == 0 or stopping):
            self.save()
        if config['test_every'] > 0 and itr % config['test_every'] == 0:
            self.test(bar)

    def log_losses(self, itr: int, losses: dict, bar) -> None:
        """Log the losses, stopping a run whose losses went NaN/inf (the only host sync)."""
        values = {k: float(v) for k, v in losses.items()}
        check_finite(values, itr, self.last_save)
        if self.is_main:
            self.train_log.log(itr, **values)
            if self.tb is not None:
                self.tb.scalars('train', itr, values)
                self.tb.scalars('lr', itr, {'G': self.nets.G_optim.param_groups[0]['lr'],
                                            'D': self.nets.D_optim.param_groups[0]['lr']})
            bar.set_postfix({k: f'{v:+.3f}' for k, v in values.items()}, refresh=False)

    def log_spectra(self, itr: int) -> None:
        """Log G's and/or D's singular values (--log_G_spectra, --log_D_spectra)."""
        if not self.is_main:
            return
        svs = {**(utils.get_SVs(self.nets.G, 'G') if self.config['log_G_spectra'] else {}),
               **(utils.get_SVs(self.nets.D, 'D') if self.config['log_D_spectra'] else {})}
        if svs:
            self.train_log.log(itr, **svs)
            if self.tb is not None:
                self.tb.scalars('sv', itr, svs)

    def extra_state(self) -> dict:
        """What a checkpoint saves beyond weights: RNG states, the objectives' state, the
        adaptive augmentation, the --num_samples subset and fp16 gradient scalers."""
        extra = {'rng': utils.rng_state()}
        if self.objectives is not None:
            extra['objectives'] = self.objectives.state_dict()
        if self.augment is not None:
            extra['augment'] = self.augment.state_dict()
        if self.subset is not None:  # --num_samples: the images this run trains on
            extra['subset'] = [int(i) for i in self.subset]
        for key in ('G_scaler', 'D_scaler'):
            if getattr(self.precision, key) is not None:
                extra[key] = getattr(self.precision, key).state_dict()
        return extra

    def save(self) -> None:
        """Checkpoint and sample sheets (main rank); a non-finite weight stops the run."""
        if not self.is_main:
            return
        if self.tb is not None:  # the events up to the checkpoint reach the disk before it
            self.tb.flush()
        try:
            with self.nets.sampling_mode(self.config['G_eval_mode']):
                images = save_and_sample(self.nets, self.state_dict, self.config,
                                         latents=self.latents, fixed_z=self.fixed_z,
                                         fixed_y=self.fixed_y, extra=self.extra_state())
        except FloatingPointError as err:  # nothing was written
            stop_non_finite(str(err), self.state_dict['itr'], self.last_save)
        self.last_save = self._where()
        if self.tb is not None:
            for tag, path in (images or {}).items():  # None: a test stubbed the sheets out
                self.tb.image_file(f'samples/{tag}', path, self.state_dict['itr'])
            self.tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard event file (at the end of the run)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of test samples from the sampling G, with their labels."""
        which_G = self.nets.sampling_G(self.config)
        with torch.no_grad():
            z, y = self.latents.sample_()
            return which_G(z, which_G.shared(y)), y

    def test(self, bar) -> None:
        """IS/FID, keeping the best checkpoints; a non-finite best copy stops the run."""
        itr = self.state_dict['itr']
        try:
            with self.nets.sampling_mode(self.config['G_eval_mode']):
                record = test(
                    self.nets, self.state_dict, self.config, latents=self.latents,
                    sample=self.sample, get_inception_metrics=self.get_inception_metrics,
                    test_log=self.test_log, extra=self.extra_state() if self.is_main else None,
                    is_main=self.is_main)
        except FloatingPointError as err:  # a best copy was refused: nothing written
            stop_non_finite(str(err), itr, self.last_save)
        if self.is_main:
            more = ''.join(f", {k} {record[k]:.4g}" for k in
                           ('KID_mean', 'KID_std', 'precision', 'recall', 'density',
                            'coverage') if k in record)
            bar.write(f"itr {itr}: IS {record['IS_mean']:.3f} +/- {record['IS_std']:.3f}, "
                      f"FID {record['FID']}{more}")
            if self.tb is not None:  # every number of the jsonl record (FID None: not tested)
                self.tb.scalars('test', itr, {k: v for k, v in record.items() if k != 'itr'})
                self.tb.flush()  # after this step's checkpoint: kept by a resume, as in jsonl
