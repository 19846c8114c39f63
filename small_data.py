"""The augmentation of everything D sees: DiffAugment at a fixed or adaptive (ADA) probability.

It is independent of the objective: `BigGAN.D_pass` applies it to every image D sees, fakes and
reals, in the D and the G step (one place). The transforms are in diffaug.py; this holds the
run's policy, its adaptive p and that p's state in checkpoints. `Augmentation.from_config` is
None without --DiffAugment. The small-data regularisers (--LC, --CR) are objectives in
train_fns.py.

    augment = Augmentation.from_config(config, device)
    GD = BigGAN.G_D(G, D, augment=augment)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.distributed

import diffaug


def parse_p(value: Union[str, float]) -> Optional[float]:
    """--DiffAugment_p: a probability, or None for 'auto'."""
    return None if value == 'auto' else float(value)


@dataclass
class Augmentation:
    """What --DiffAugment and --DiffAugment_p set up for a run (a callable on image batches)."""
    policy: list[str]
    p: Optional[float]                      # None: adaptive, from `ada`
    ada: Optional[diffaug.AdaptiveP]
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_config(cls, config: dict, device: Union[str, torch.device], *, rank: int = 0,
                    world_size: int = 1) -> Optional[Augmentation]:
        """The run's augmentation, or None without --DiffAugment."""
        policy = diffaug.parse_policy(config.get('DiffAugment', ''))
        if not policy:
            return None
        p, ada = parse_p(config.get('DiffAugment_p', 1.0)), None
        if p is None:
            per_itr = (config['batch_size'] * config['num_D_steps']  # real images seen
                       * config['num_D_accumulations'] * world_size)
            ada = diffaug.AdaptiveP(target=config['ada_target'],
                                    interval=config['ada_interval'], kimg=config['ada_kimg'],
                                    batch_size=per_itr, device=device)
        return cls(policy=policy, p=p, ada=ada, rank=rank, world_size=world_size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x augmented, each policy applied to each image with probability p."""
        p = self.ada.p if self.ada is not None else self.p
        return own_draws(lambda: diffaug.augment(x, self.policy, p), x.device, self.rank,
                         self.world_size)

    def observe(self, D_real: torch.Tensor) -> None:
        """Feed the adaptive p one D minibatch's outputs on reals."""
        if self.ada is not None:
            self.ada.accumulate(D_real)

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
        """For the checkpoint: the adaptive p's controller."""
        return {'ada': self.ada.state_dict() if self.ada is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint (also the 'small_data' entry of earlier checkpoints)."""
        if self.ada is not None and state.get('ada'):
            self.ada.load_state_dict(state['ada'])


def own_draws(fn: Callable[[], torch.Tensor], device: torch.device, rank: int,
              world_size: int) -> torch.Tensor:
    """fn() with this rank's own random draws. Under DDP every rank holds the same RNG state
    (each draws the global batch of z and keeps its slice), so augmentations drawn from it
    would repeat on every rank's images: draw them from a stream seeded by one shared draw and
    the rank, leaving the shared RNG where every rank has it."""
    if world_size == 1:
        return fn()
    seed = int(torch.randint(2 ** 62, ()))  # the CPU generator: the same on every rank
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(seed + rank)
        return fn()
