"""The small-data machinery of a run: DiffAugment at a fixed or adaptive probability, LeCam's
EMAs of D's outputs, and consistency regularisation's transform; their state in checkpoints.

The penalties themselves are objectives, in train_fns.py (`lecam_penalty`,
`consistency_penalty`); the augmentations are in diffaug.py. `SmallData.from_config` is None
for a run that uses none of it, so the 2019 step runs unchanged.

    small = SmallData.from_config(config, device)
    GD = BigGAN.G_D(G, D, augment=small.augment, cr_transform=small.cr_transform)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.distributed

import diffaug


class LeCamEMA:
    """Exponential moving averages of D's mean outputs on reals and fakes (Tseng et al. 2021),
    kept on the device (no host sync). Before `start` they follow the last values (decay 0),
    as in google/lecam-gan; the first value seeds them (no bias towards an initial value)."""

    def __init__(self, decay: float, start: int, device: Union[str, torch.device] = 'cpu'):
        self.decay, self.start, self.updates = decay, start, 0
        self.real = torch.zeros((), device=device)
        self.fake = torch.zeros((), device=device)

    def update(self, D_real: torch.Tensor, D_fake: torch.Tensor, itr: int) -> None:
        """Fold in one minibatch's outputs."""
        averaging = itr >= self.start and self.updates > 0
        weight = 1.0 - self.decay if averaging else 1.0
        self.real.lerp_(D_real.detach().float().mean(), weight)
        self.fake.lerp_(D_fake.detach().float().mean(), weight)
        self.updates += 1

    def state_dict(self) -> dict:
        return {'real': float(self.real), 'fake': float(self.fake), 'updates': self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.real.fill_(state['real'])
        self.fake.fill_(state['fake'])
        self.updates = state['updates']


def parse_p(value: Union[str, float]) -> Optional[float]:
    """--DiffAugment_p: a probability, or None for 'auto'."""
    return None if value == 'auto' else float(value)


@dataclass
class SmallData:
    """What --DiffAugment, --DiffAugment_p, --LC and --CR set up for a run."""
    policy: list[str]
    p: Optional[float]                      # None: adaptive, from `ada`
    ada: Optional[diffaug.AdaptiveP]
    lecam: Optional[LeCamEMA]
    LC: float
    CR: float
    cr_policy: list[str]
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_config(cls, config: dict, device: Union[str, torch.device], *, rank: int = 0,
                    world_size: int = 1) -> Optional[SmallData]:
        """The run's small-data setup, or None when it uses none of it."""
        policy = diffaug.parse_policy(config.get('DiffAugment', ''))
        p = parse_p(config.get('DiffAugment_p', 1.0))
        LC, CR = config.get('LC', 0.0), config.get('CR', 0.0)
        if not policy and LC == 0 and CR == 0:
            return None
        ada = None
        if policy and p is None:
            per_itr = (config['batch_size'] * config['num_D_steps']  # real images seen
                       * config['num_D_accumulations'] * world_size)
            ada = diffaug.AdaptiveP(target=config['ada_target'],
                                    interval=config['ada_interval'], kimg=config['ada_kimg'],
                                    batch_size=per_itr, device=device)
        lecam = LeCamEMA(config['LC_decay'], config['LC_start'], device) if LC > 0 else None
        return cls(policy=policy, p=p, ada=ada, lecam=lecam, LC=LC, CR=CR,
                   cr_policy=diffaug.parse_policy(config['CR_augment']) if CR > 0 else [],
                   rank=rank, world_size=world_size)

    @property
    def augment(self) -> Optional[Callable]:
        """G_D's transform of every image D sees (None without --DiffAugment)."""
        return self._augment if self.policy else None

    @property
    def cr_transform(self) -> Optional[Callable]:
        """CR's transform T (None without --CR)."""
        return self._cr_transform if self.CR > 0 else None

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        p = self.ada.p if self.ada is not None else self.p
        return self._own_draws(lambda: diffaug.augment(x, self.policy, p), x.device)

    def _cr_transform(self, x: torch.Tensor) -> torch.Tensor:
        return self._own_draws(lambda: diffaug.augment(x, self.cr_policy), x.device)

    def _own_draws(self, fn: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """fn() with this rank's own random draws. Under DDP every rank holds the same RNG
        state (each draws the global batch of z and keeps its slice), so augmentations drawn
        from it would repeat on every rank's images: draw them from a stream seeded by one
        shared draw and the rank, leaving the shared RNG where every rank has it."""
        if self.world_size == 1:
            return fn()
        seed = int(torch.randint(2 ** 62, ()))  # the CPU generator: the same on every rank
        with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
            torch.manual_seed(seed + self.rank)
            return fn()

    def after_D_minibatch(self, D_real: torch.Tensor, D_fake: torch.Tensor, itr: int) -> None:
        """Feed the adaptive p and the LeCam EMAs one minibatch of D's outputs."""
        if self.ada is not None:
            self.ada.accumulate(D_real)
        if self.lecam is not None:
            self.lecam.update(D_real, D_fake, itr)

    def after_iteration(self, itr: int) -> None:
        """Adjust the adaptive p (every ada_interval iterations)."""
        if self.ada is not None:
            if self.world_size > 1 and itr % self.ada.interval == 0:
                # One p for all ranks: the overfitting signal of every rank's reals.
                torch.distributed.all_reduce(self.ada.sign_sum)
                torch.distributed.all_reduce(self.ada.count)
            self.ada.step(itr)

    def log_values(self, itr: int) -> dict[str, torch.Tensor]:
        """What the loss logs show of it after iteration `itr`: the adaptive p, and r_t once
        an interval is over (no host sync: the iteration count says when)."""
        if self.ada is None:
            return {}
        if itr < self.ada.interval:
            return {'ada_p': self.ada.p}
        return {'ada_p': self.ada.p, 'ada_r_t': self.ada.r_t}

    def state_dict(self) -> dict:
        """For the checkpoint: the adaptive p's controller and the LeCam EMAs."""
        return {'ada': self.ada.state_dict() if self.ada is not None else None,
                'lecam': self.lecam.state_dict() if self.lecam is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint (parts the run does not use are ignored)."""
        if self.ada is not None and state.get('ada'):
            self.ada.load_state_dict(state['ada'])
        if self.lecam is not None and state.get('lecam'):
            self.lecam.load_state_dict(state['lecam'])
