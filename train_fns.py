"""The GAN objective and training step, plus periodic saving/sampling and testing.

This is the file to edit to try a new objective: losses are small functions registered in
LOSSES, and `GAN_training_function` is the whole iteration (D steps, then one G step).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Callable, NoReturn, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import utils

# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------


def loss_hinge_dis(D_fake: torch.Tensor, D_real: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge D loss (Lim & Ye 2017; SN-GAN, SA-GAN, BigGAN): real and fake parts."""
    return F.relu(1. - D_real).mean(), F.relu(1. + D_fake).mean()


def loss_hinge_gen(D_fake: torch.Tensor) -> torch.Tensor:
    """Hinge G loss: -E[D(G(z))]."""
    return -D_fake.mean()


def loss_dcgan_dis(D_fake: torch.Tensor, D_real: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """DCGAN (non-saturating, Goodfellow et al. 2014) D loss via softplus."""
    return F.softplus(-D_real).mean(), F.softplus(D_fake).mean()


def loss_dcgan_gen(D_fake: torch.Tensor) -> torch.Tensor:
    """DCGAN non-saturating G loss."""
    return F.softplus(-D_fake).mean()


LOSSES = {'hinge': (loss_hinge_dis, loss_hinge_gen), 'dcgan': (loss_dcgan_dis, loss_dcgan_gen)}


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


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _step(optim: torch.optim.Optimizer, scaler, net: nn.Module, ortho_strength: float,
          blacklist: tuple = ()) -> None:
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


def _sync_unless_last(net: nn.Module, index: int, count: int):
    """DDP: all-reduce gradients only on the last accumulated minibatch."""
    if index < count - 1 and hasattr(net, 'no_sync'):
        return net.no_sync()
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------------


def latent_batch_size(config: dict) -> int:
    """Latent rows an iteration draws per minibatch: D's batch_size fakes and G's
    G_batch_size, whichever is larger (as 2019 drew them)."""
    return max(config['G_batch_size'] or config['batch_size'], config['batch_size'])


def GAN_training_function(G: nn.Module, D: nn.Module, GD: nn.Module,
                          G_optim: torch.optim.Optimizer, D_optim: torch.optim.Optimizer,
                          latents: utils.Latents, ema: Optional[utils.ema], state_dict: dict,
                          config: dict, precision: Optional[Precision] = None,
                          G_ddp: Optional[nn.Module] = None, D_ddp: Optional[nn.Module] = None
                          ) -> Callable:
    """Build `train(x, y) -> losses`: one BigGAN iteration (SPEC §3).

    `x`, `y` hold batch_size * num_D_steps * num_D_accumulations real images and labels.
    `latents` draws `latent_batch_size(config)` rows: each D minibatch pits batch_size fakes
    against batch_size reals (as in 2019), each G minibatch has G_batch_size.
    Losses come back as detached tensors, so the step never waits for the device.
    G_ddp / D_ddp are the DDP wrappers (if any) whose `no_sync` skips the all-reduce of
    all but the last accumulated minibatch.
    """
    precision = precision or Precision()
    loss_dis, loss_gen = LOSSES[config.get('loss', 'hinge')]
    bs = config['batch_size']
    G_bs = config['G_batch_size'] or bs
    shared_params = tuple(G.shared.parameters())  # ortho reg makes no sense on embeddings

    def train(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x, y = torch.split(x, bs), torch.split(y, bs)
        counter = 0
        if config['toggle_grads']:
            utils.toggle_grad(D, True)
            utils.toggle_grad(G, False)
        for _ in range(config['num_D_steps']):
            D_optim.zero_grad(set_to_none=True)
            for acc in range(config['num_D_accumulations']):
                z_, y_ = latents.sample_()
                with _sync_unless_last(D_ddp, acc, config['num_D_accumulations']):
                    with precision.autocast():
                        D_fake, D_real = GD(z_[:bs], y_[:bs], x[counter], y[counter],
                                            train_G=False, split_D=config['split_D'])
                        D_loss_real, D_loss_fake = loss_dis(D_fake.float(), D_real.float())
                        D_loss = (D_loss_real + D_loss_fake) / config['num_D_accumulations']
                    _backward(D_loss, precision.D_scaler)
                counter += 1
            _step(D_optim, precision.D_scaler, D, config['D_ortho'])

        if config['toggle_grads']:
            utils.toggle_grad(D, False)
            utils.toggle_grad(G, True)
        G_optim.zero_grad(set_to_none=True)
        for acc in range(config['num_G_accumulations']):
            z_, y_ = latents.sample_()
            with _sync_unless_last(G_ddp, acc, config['num_G_accumulations']):
                with precision.autocast():
                    D_fake = GD(z_[:G_bs], y_[:G_bs], train_G=True, split_D=config['split_D'])
                    G_loss = loss_gen(D_fake.float()) / config['num_G_accumulations']
                _backward(G_loss, precision.G_scaler)
        _step(G_optim, precision.G_scaler, G, config['G_ortho'], blacklist=shared_params)

        if ema is not None:
            ema.update(state_dict['itr'])
        return {'G_loss': G_loss.detach() * config['num_G_accumulations'],
                'D_loss_real': D_loss_real.detach(), 'D_loss_fake': D_loss_fake.detach()}

    return train


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


def sampling_G(G: nn.Module, G_ema: Optional[nn.Module], config: dict) -> nn.Module:
    """The G to sample and test with: the EMA copy with --ema --use_ema, else G."""
    return G_ema if config['ema'] and config['use_ema'] and G_ema is not None else G


def save_and_sample(G: nn.Module, D: nn.Module, G_ema: Optional[nn.Module],
                    latents: utils.Latents, fixed_z: torch.Tensor, fixed_y: torch.Tensor,
                    state_dict: dict, config: dict, experiment_name: str,
                    optims: tuple, extra: Optional[dict] = None) -> None:
    """Save the checkpoint and a rotating copy as one set, then a fixed-z grid, sheets and
    interps. Raises FloatingPointError, saving nothing, if a weight is NaN or inf."""
    copies = ()
    if config['num_save_copies'] > 0:
        copies = (f"copy{state_dict['save_num']}",)
        # The saved state already names the next copy: a resumed run rotates like the
        # uninterrupted one.
        state_dict['save_num'] = (state_dict['save_num'] + 1) % config['num_save_copies']
    utils.save_weights(G, D, state_dict, config['weights_root'], experiment_name, None,
                       G_ema if config['ema'] else None, *optims, extra=extra, also_as=copies)

    with utils.preserved_buffers(sampling_G(G, G_ema, config)) as which_G:
        _write_samples(which_G, latents, fixed_z, fixed_y, state_dict, config, experiment_name)


def _write_samples(which_G: nn.Module, latents: utils.Latents, fixed_z: torch.Tensor,
                   fixed_y: torch.Tensor, state_dict: dict, config: dict,
                   experiment_name: str) -> None:
    """The fixed-z grid, class sheets and interpolation sheets of one save."""
    if config['accumulate_stats']:
        utils.accumulate_standing_stats(which_G, latents, config['num_standing_accumulations'])
    root = os.path.join(config['samples_root'], experiment_name)
    os.makedirs(root, exist_ok=True)
    with torch.no_grad():
        fixed_Gz = which_G(fixed_z, which_G.shared(fixed_y))
    torchvision.utils.save_image(fixed_Gz.float().cpu(),
                                 os.path.join(root, f"fixed_samples{state_dict['itr']}.jpg"),
                                 nrow=int(fixed_Gz.shape[0] ** 0.5), normalize=True,
                                 value_range=(-1, 1))
    device = fixed_z.device
    utils.sample_sheet(which_G, classes_per_sheet=config['classes_per_sheet'],
                       num_classes=config['n_classes'], samples_per_class=10,
                       samples_root=config['samples_root'], experiment_name=experiment_name,
                       folder_number=state_dict['itr'], device=device)
    for fix_z, fix_y in ((False, False), (False, True), (True, False)):
        utils.interp_sheet(which_G, num_per_sheet=16, num_midpoints=8,
                           num_classes=config['n_classes'], samples_root=config['samples_root'],
                           experiment_name=experiment_name, folder_number=state_dict['itr'],
                           fix_z=fix_z, fix_y=fix_y, device=device)


def test(G: nn.Module, D: nn.Module, G_ema: Optional[nn.Module], latents: utils.Latents,
         state_dict: dict, config: dict, sample: Callable, get_inception_metrics: Callable,
         experiment_name: str, test_log: Optional[utils.MetricsLogger], optims: tuple,
         extra: Optional[dict] = None, is_main: bool = True) -> dict:
    """IS/FID of the sampling G; keep the `num_best_copies` best checkpoints; log to jsonl.

    Under DDP every rank calls this (each samples its share of the images); only the main
    rank saves and logs.
    """
    with utils.preserved_buffers(sampling_G(G, G_ema, config)) as which_G:
        if config['accumulate_stats']:
            utils.accumulate_standing_stats(which_G, latents,
                                            config['num_standing_accumulations'])
        IS_mean, IS_std, FID = get_inception_metrics(sample, config['num_inception_images'],
                                                     num_splits=10, prints=False)
    FID = None if FID is None else float(FID)  # None with --no_fid
    improved = (IS_mean > state_dict['best_IS'] if config['which_best'] == 'IS'
                else FID is not None and FID < state_dict['best_FID'])
    best_num = state_dict['save_best_num']
    if improved:  # the saved state already holds the new best score and next copy number
        state_dict['save_best_num'] = (best_num + 1) % max(config['num_best_copies'], 1)
    state_dict['best_IS'] = max(state_dict['best_IS'], float(IS_mean))
    if FID is not None and math.isfinite(FID):
        state_dict['best_FID'] = min(state_dict['best_FID'], FID)
    if improved and is_main:
        utils.save_weights(G, D, state_dict, config['weights_root'], experiment_name,
                           f'best{best_num}', G_ema if config['ema'] else None, *optims,
                           extra=extra)
    record = dict(itr=int(state_dict['itr']), IS_mean=float(IS_mean), IS_std=float(IS_std),
                  FID=FID)
    if is_main:
        test_log.log(**record)
    return record
