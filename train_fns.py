"""The GAN objectives and the training step: the file to edit to try a new objective.

An objective is one class here, registered by name (objectives.py says what it is handed):

    @register
    class LSGAN(Loss):                      # --loss lsgan
        name = 'lsgan'
        def D_terms(self, b):               # b.D_real, b.D_fake: D's outputs [B, 1], fp32
            return {'D_loss_real': (b.D_real - 1).pow(2).mean(),
                    'D_loss_fake': (b.D_fake + 1).pow(2).mean()}
        def G_terms(self, b):
            return {'G_loss': b.D_fake.pow(2).mean()}

A `Regulariser` owns its flags (the first is its weight: on when not 0) and composes with any
loss: `--LC`, `--CR`, `--R1`, `--R2` below. The step (`GAN_training_function`) sums, backprops
and logs each objective's terms; checkpoints keep each objective's state; logs/plot_logs.py
draws every logged term. README "Add an objective" has a worked example.

What the loop does between iterations (saving with sample sheets, IS/FID tests) is in
train_loop.py; `save_and_sample` and `test` are importable from here under their 2019 names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

import diffaug
import freeze
import utils
from BigGAN import G_D, unwrap
from flags import COUNT, NONNEGATIVE, POSITIVE_INT, Flag, augment_policy, bounded
from objectives import Batch, Loss, Objective, Objectives, Regulariser, register, total
from small_data import Augmentation, own_draws
from train_loop import (  # noqa: F401  (train.py, sample.py and 2019 code import these here)
    AfterStep,
    G_batch_size,
    Nets,
    Precision,
    backward,
    check_finite,
    latent_batch_size,
    optimizer_step,
    save_and_sample,
    sync_unless_last,
    test,
)

# ----------------------------------------------------------------------------------------
# Adversarial losses (--loss)
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


@register
class Hinge(Loss):
    """Hinge loss, BigGAN's (the default)."""
    name = 'hinge'

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        real, fake = loss_hinge_dis(b.D_fake, b.D_real)
        return {'D_loss_real': real, 'D_loss_fake': fake}

    def G_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        return {'G_loss': loss_hinge_gen(b.D_fake)}


@register
class DCGAN(Loss):
    """Non-saturating loss (Goodfellow et al. 2014) via softplus."""
    name = 'dcgan'

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        real, fake = loss_dcgan_dis(b.D_fake, b.D_real)
        return {'D_loss_real': real, 'D_loss_fake': fake}

    def G_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        return {'G_loss': loss_dcgan_gen(b.D_fake)}


@register
class LSGAN(Loss):
    """Least squares (Mao et al. 2017) with reals high, as in hinge: D pushes D(x) to 1 and
    D(G(z)) to -1, G pushes D(G(z)) to 0 (targets a=-1, b=1, c=0: the Pearson chi^2 form).
    google/lecam-gan's loss_ls_* mirror the targets (reals -1, fakes +1), which flips D's sign
    and so does not combine with --LC; this one does."""
    name = 'lsgan'

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        return {'D_loss_real': (b.D_real - 1).pow(2).mean(),
                'D_loss_fake': (b.D_fake + 1).pow(2).mean()}

    def G_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        return {'G_loss': b.D_fake.pow(2).mean()}


@register
class RpGAN(Loss):
    """Relativistic pairing (Jolicoeur-Martineau 2019), R3GAN's loss (Huang et al. 2024): each
    fake is judged against the real it is paired with in the minibatch. With --R1 and --R2 it
    is R3GAN's objective."""
    name = 'rpgan'
    G_needs_reals = True

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        return {'D_loss': F.softplus(b.D_fake - b.D_real).mean()}

    def G_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        return {'G_loss': F.softplus(b.D_real - b.D_fake).mean()}


# ----------------------------------------------------------------------------------------
# Regularisers (each on when its first flag is not 0; they compose with any loss)
# ----------------------------------------------------------------------------------------


@register
class LeCam(Regulariser):
    """LeCam (Tseng et al. 2021): D's outputs on reals held near the EMA of its mean output on
    fakes and vice versa, LC * [mean(relu(D_real - ema_fake)^2) + mean(relu(ema_real -
    D_fake)^2)], from iteration LC_start. Defaults as google/lecam-gan's BigGAN code
    (`ema_losses`: decay 0.9, start 1000; their StyleGAN2 code uses 0.99). Before the start
    the EMAs follow the last minibatch (decay 0), as there."""
    name = 'LeCam'
    flags = (Flag('LC', 0.0, NONNEGATIVE, "LeCam regularisation weight: D's outputs held near "
                  "EMAs of the other side's mean outputs"),
             Flag('LC_decay', 0.9, bounded(float, 0, 1, open_high=True), 'LeCam: decay of the '
                  "EMAs of D's mean outputs (google/lecam-gan's BigGAN code: 0.9)"),
             Flag('LC_start', 1000, COUNT, 'LeCam: iteration from which the EMAs average and '
                  'the term applies (before it they follow the last values)'))

    FORK_DECAY = 0.9  # google/lecam-gan biggan_cifar's `ema_losses`

    def setup(self) -> None:
        self.decay, self.start = self.config['LC_decay'], self.config['LC_start']
        if self.rank == 0 and self.decay != self.FORK_DECAY:
            # Runs started before the default became the fork's keep 0.99 when resumed.
            print(f"LeCam: EMA decay --LC_decay {self.decay:g}; google/lecam-gan's BigGAN code "
                  f"(the lc-*.sh scripts) uses {self.FORK_DECAY:g}, its StyleGAN2 code 0.99")
        self.ema_real = torch.zeros((), device=self.device)
        self.ema_fake = torch.zeros((), device=self.device)
        self.updates = 0

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        self.update(b.D_real, b.D_fake, b.itr)
        penalty = (F.relu(b.D_real - self.ema_fake).pow(2).mean()
                   + F.relu(self.ema_real - b.D_fake).pow(2).mean())
        return {'D_loss_LC': self.weight * penalty * (b.itr > self.start)}

    def update(self, D_real: torch.Tensor, D_fake: torch.Tensor, itr: int) -> None:
        """Fold one minibatch's mean outputs into the EMAs (on the device: no host sync); the
        first value seeds them."""
        weight = 1.0 - self.decay if itr >= self.start and self.updates > 0 else 1.0
        self.ema_real.lerp_(D_real.detach().float().mean(), weight)
        self.ema_fake.lerp_(D_fake.detach().float().mean(), weight)
        self.updates += 1

    def state_dict(self) -> dict:
        return {'real': float(self.ema_real), 'fake': float(self.ema_fake),
                'updates': self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema_real.fill_(state['real'])
        self.ema_fake.fill_(state['fake'])
        self.updates = state['updates']


@register
class Consistency(Regulariser):
    """Consistency regularisation (Zhang et al. 2020): CR * mean((D(x) - D(T(x)))^2) on reals,
    T = --CR_augment, with D(T(x)) from D's one pass."""
    name = 'CR'
    flags = (Flag('CR', 0.0, NONNEGATIVE, 'consistency regularisation weight: lambda * (D(x) - '
                  'D(T(x)))^2 on real images'),
             Flag('CR_augment', 'flip,translation', augment_policy, 'consistency '
                  'regularisation: the transform T, a comma list of flip, translation, color, '
                  'cutout'))

    def setup(self) -> None:
        self.policy = diffaug.parse_policy(self.config['CR_augment'])

    def views(self, real: torch.Tensor, y_real: torch.Tensor) -> dict[str, torch.Tensor]:
        return {'real_T': own_draws(lambda: diffaug.augment(real, self.policy), real.device,
                                    self.rank, self.world_size)}

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        return {'D_loss_CR': self.weight * (b.D_real - b.views['real_T']).pow(2).mean()}


REG_EVERY = Flag('reg_every', 1, POSITIVE_INT, '--R1/--R2: compute the penalties every N '
                 'iterations with weight x N (lazy regularisation; StyleGAN2 uses 16)')


@register
class R1(Regulariser):
    """R1 (Mescheder et al. 2018): gamma/2 * E||grad_x D(x)||^2 on reals (zero-centred), the
    gradient taken w.r.t. the reals before augmentation, as StyleGAN2-ADA does."""
    name = 'R1'
    flags = (Flag('R1', 0.0, NONNEGATIVE, 'R1 penalty weight gamma: gamma/2 E|grad D(x)|^2 on '
                  'real images'), REG_EVERY)
    grad_of = ('real',)

    def setup(self) -> None:
        self.every = self.config['reg_every']

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        grad = b.grad(b.D_real, b.real)  # [B, 3, R, R]
        return {'D_loss_R1': self.weight / 2 * grad.square().sum([1, 2, 3]).mean()}


@register
class R2(Regulariser):
    """R2 (Mescheder et al. 2018; R3GAN): R1's penalty on the fakes, gamma/2 * E||grad_x
    D(G(z))||^2, G's output taken as given."""
    name = 'R2'
    flags = (Flag('R2', 0.0, NONNEGATIVE, 'R2 penalty weight gamma: gamma/2 E|grad D(G(z))|^2 '
                  'on generated images'), REG_EVERY)
    grad_of = ('fake',)

    def setup(self) -> None:
        self.every = self.config['reg_every']

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        grad = b.grad(b.D_fake, b.fake)  # [B, 3, R, R]
        return {'D_loss_R2': self.weight / 2 * grad.square().sum([1, 2, 3]).mean()}


# ----------------------------------------------------------------------------------------
# The training step
# ----------------------------------------------------------------------------------------


@dataclass
class Passes:
    """The forward passes of a step, each wrapped by train.py for DDP/DataParallel/compile:
    G making the D step's fakes (run without a graph), D on everything it sees in the D step
    (`BigGAN.D_pass`, augmenting), and G then D in the G step (`BigGAN.G_D`)."""
    G: nn.Module
    D_pass: nn.Module
    G_D: nn.Module

    @classmethod
    def of(cls, GD: G_D, G: Optional[nn.Module] = None) -> Passes:
        """The passes of one plain G_D (G defaults to the G_D's)."""
        return cls(G if G is not None else unwrap(GD.G), GD.D_pass, GD)


def collect_terms(due: list[Objective], b: Batch, side: str, latest: dict
                  ) -> tuple[dict, dict, dict]:
    """(loss terms, regulariser terms, terms to log) of the due objectives on one minibatch.
    Lazy objectives' terms are weighted by their interval for the loss, and logged without it
    through `latest` (their last value, logged until they are next computed)."""
    loss_terms, reg_terms, logged = {}, {}, {}
    for o in due:
        terms = o.D_terms(b) if side == 'D' else o.G_terms(b)
        clash = terms.keys() & (logged.keys() | loss_terms.keys() | reg_terms.keys())
        if clash:
            raise ValueError(f'{type(o).__name__} logs {", ".join(sorted(clash))}, which another '
                             f'objective of this run logs too: give its terms other names')
        if o.every > 1:
            latest.update({k: v.detach() for k, v in terms.items()})
            terms = {k: v * o.every for k, v in terms.items()}
        else:
            logged.update(terms)
        (loss_terms if isinstance(o, Loss) else reg_terms).update(terms)
    return loss_terms, reg_terms, logged


def detached(b: Batch) -> Batch:
    """A minibatch's D outputs without their graph (G's loss read off a D step)."""
    return Batch(b.fake.detach(), b.y_fake, b.D_fake.detach(),
                 None if b.real is None else b.real.detach(), b.y_real,
                 None if b.D_real is None else b.D_real.detach(), itr=b.itr)


class GANStep:
    """One BigGAN iteration: num_D_steps D steps of num_D_accumulations minibatches, then one
    G step of num_G_accumulations (none in the first D_warmup iterations), then the EMA."""

    def __init__(self, nets: Nets, passes: Passes, state_dict: dict, config: dict, *,
                 latents: utils.Latents, objectives: Objectives,
                 augment: Optional[Augmentation], ema: Optional[utils.ema],
                 precision: Precision, G_ddp: Optional[nn.Module], D_ddp: Optional[nn.Module]):
        self.nets, self.passes, self.state_dict, self.config = nets, passes, state_dict, config
        self.latents, self.objectives, self.augment, self.ema = latents, objectives, augment, ema
        self.precision, self.G_ddp, self.D_ddp = precision, G_ddp, D_ddp
        self.shared_params = tuple(nets.G.shared.parameters())  # no ortho reg on embeddings

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Train on one iteration's reals; returns the losses to log (detached: no sync)."""
        itr, config = self.state_dict['itr'], self.config
        due = self.objectives.due(itr)
        bs = config['batch_size']
        reals = list(zip(torch.split(x, bs), torch.split(y, bs)))  # one per D minibatch
        D_batch, logged = self.D_step(reals, itr, due)
        if itr <= config.get('D_warmup', 0):
            # D only: a fresh D learns a loaded G's fakes before G follows its gradients. G's
            # loss is read off the last D minibatch (no extra forward).
            logged.update(self.objectives.loss.G_terms(detached(D_batch)))
        else:
            logged.update(self.G_step(x, y, itr, due))
        if self.ema is not None:
            self.ema.update(itr)
        if self.augment is not None:
            self.augment.after_iteration(itr)
        return self.log_values(logged, D_batch, itr)

    def D_step(self, reals: list, itr: int, due: list[Objective]) -> tuple[Batch, dict]:
        """num_D_steps steps of D; returns the last minibatch and its terms."""
        config, D, D_optim = self.config, self.nets.D, self.nets.D_optim
        if config['toggle_grads']:
            utils.toggle_grad(D, True)
            freeze.hold(self.nets.D_frozen)  # --freeze_D: its first blocks take no gradient
            utils.toggle_grad(self.nets.G, False)
        n_acc, minibatches = config['num_D_accumulations'], iter(reals)
        for _ in range(config['num_D_steps']):
            D_optim.zero_grad(set_to_none=True)
            for acc in range(n_acc):
                with sync_unless_last(self.D_ddp, acc, n_acc):
                    with self.precision.autocast():
                        b = self.D_minibatch(*next(minibatches), itr, due)
                        loss_terms, reg_terms, logged = collect_terms(
                            due, b, 'D', self.objectives.latest)
                        D_loss = (total(loss_terms) + total(reg_terms)) / n_acc
                    backward(D_loss, self.precision.D_scaler)
            optimizer_step(D_optim, self.precision.D_scaler, D,
                           ortho_strength=config['D_ortho'])
        return b, logged

    def D_minibatch(self, real: torch.Tensor, y_real: torch.Tensor, itr: int,
                    due: list[Objective]) -> Batch:
        """D's outputs on batch_size fakes, the reals and any views, from one D pass."""
        z, y = (t[:self.config['batch_size']] for t in self.latents.sample_())
        G = self.passes.G
        with torch.no_grad():
            fake = G(z, unwrap(G).shared(y))
        grad_of = {name for o in due for name in o.grad_of}
        if 'fake' in grad_of:
            fake.requires_grad_(True)
        if 'real' in grad_of:
            real = real.detach().requires_grad_(True)
        views = {k: v for o in due for k, v in o.views(real, y_real).items()}
        outputs = self.passes.D_pass([fake, real, *views.values()],
                                     [y, y_real, *[y_real] * len(views)])
        D_fake, D_real, *D_views = (o.float() for o in outputs)
        if self.augment is not None:
            self.augment.observe(D_real)  # the adaptive p follows D's outputs on reals
        return Batch(fake, y, D_fake, real, y_real, D_real, dict(zip(views, D_views)), itr)

    def G_step(self, x: torch.Tensor, y: torch.Tensor, itr: int, due: list[Objective]) -> dict:
        """One G step of num_G_accumulations minibatches; returns the last one's terms."""
        config, G, n_acc = self.config, self.nets.G, self.config['num_G_accumulations']
        if config['toggle_grads']:
            utils.toggle_grad(self.nets.D, False)
            utils.toggle_grad(G, True)
        self.nets.G_optim.zero_grad(set_to_none=True)
        for acc in range(n_acc):
            with sync_unless_last(self.G_ddp, acc, n_acc):
                with self.precision.autocast():
                    b = self.G_minibatch(x, y, acc, itr)
                    loss_terms, reg_terms, logged = collect_terms(
                        due, b, 'G', self.objectives.latest)
                    G_loss = (total(loss_terms) + total(reg_terms)) / n_acc
                backward(G_loss, self.precision.G_scaler)
        optimizer_step(self.nets.G_optim, self.precision.G_scaler, G,
                       ortho_strength=config['G_ortho'], blacklist=self.shared_params)
        return logged

    def G_minibatch(self, x: torch.Tensor, y: torch.Tensor, index: int, itr: int) -> Batch:
        """D's outputs on G_batch_size fakes (and, for a relativistic loss, as many reals of
        this iteration, taken in turn) from one pass of G then D."""
        G_bs = G_batch_size(self.config)
        z, y_fake = (t[:G_bs] for t in self.latents.sample_())
        real = y_real = None
        if self.objectives.loss.G_needs_reals:
            rows = (index * G_bs + torch.arange(G_bs, device=x.device)) % x.shape[0]
            real, y_real = x[rows], y[rows]
        fake, outputs = self.passes.G_D(z, y_fake, *(([real], [y_real]) if real is not None
                                                      else ()))
        D_fake, *D_real = (o.float() for o in outputs)
        return Batch(fake, y_fake, D_fake, real, y_real, D_real[0] if D_real else None,
                     itr=itr)

    def log_values(self, logged: dict, b: Batch, itr: int) -> dict[str, torch.Tensor]:
        """The terms of the last minibatches (lazy ones: their last value), D's mean outputs,
        the objectives' and augmentation's scalars; detached."""
        # D's mean outputs show overfitting (reals drifting up, fakes down) beside the losses.
        values = {**{k: v.detach() for k, v in logged.items()}, **self.objectives.latest,
                  'D_real': b.D_real.detach().mean(), 'D_fake': b.D_fake.detach().mean()}
        for o in self.objectives.all:
            values.update(o.log())
        if self.augment is not None:
            values.update(self.augment.log_values(itr))
        return values


def GAN_training_function(nets: Nets, GD: Union[G_D, Passes], state_dict: dict, config: dict, *,
                          latents: utils.Latents, objectives: Optional[Objectives] = None,
                          augment: Optional[Augmentation] = None,
                          ema: Optional[utils.ema] = None, precision: Optional[Precision] = None,
                          G_ddp: Optional[nn.Module] = None, D_ddp: Optional[nn.Module] = None
                          ) -> Callable:
    """Build `train(x, y) -> losses`: one iteration (GANStep) of the run's objectives.

    `x`, `y` hold batch_size * num_D_steps * num_D_accumulations real images and labels.
    `latents` draws `latent_batch_size(config)` rows: each D minibatch pits batch_size fakes
    against batch_size reals (as in 2019), each G minibatch has G_batch_size. `GD` is a plain
    G_D, or the Passes train.py wrapped for DDP/DataParallel/compile; G_ddp / D_ddp are the
    DDP wrappers (if any) whose `no_sync` skips the all-reduce of all but the last
    accumulated minibatch. `objectives` defaults to those the config names.
    """
    passes = GD if isinstance(GD, Passes) else Passes.of(GD, nets.G)
    objectives = objectives or Objectives(config, next(nets.G.parameters()).device)
    return GANStep(nets, passes, state_dict, config, latents=latents, objectives=objectives,
                   augment=augment, ema=ema, precision=precision or Precision(), G_ddp=G_ddp,
                   D_ddp=D_ddp)
