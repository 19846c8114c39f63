"""What an objective is: the base classes, the registry, and what the step hands an objective.

The objectives themselves live in train_fns.py, the file a researcher edits. An objective is one
class there, registered by name with `@register`:
- a `Loss` is the adversarial loss (`--loss NAME`; exactly one per run);
- a `Regulariser` adds terms to it and composes with any loss and other regularisers; it owns
  its flags (the first is its weight, and the regulariser is on when the weight is not 0).

Each says D's loss terms for a minibatch (`D_terms`) and G's (`G_terms`) as a dict of named
scalars, which the step sums, backpropagates and logs under those names. `every = N` makes
all of an objective's terms lazy (StyleGAN2): computed every N iterations, weighted by N.
`grad_of` names the inputs ('real', 'fake') D's outputs must be differentiable w.r.t. (a
gradient penalty), `views` adds images to D's one pass (e.g. transformed reals), and
`state_dict`/`load_state_dict`/`log` keep state in checkpoints and extra scalars in the logs.
Everything else (DDP, accumulation, autocast and fp16 loss scaling, checkpoints, logs and
plots) follows without further code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch

from flags import Flag

LOSSES: dict[str, type] = {}        # --loss NAME -> Loss subclass
REGULARISERS: dict[str, type] = {}  # weight flag -> Regulariser subclass, in registration order
LATEST = '_lazy_terms'  # Objectives.state_dict's key for the lazy terms' last values


@dataclass
class Batch:
    """One minibatch as an objective sees it. D's outputs are fp32, shaped [B, 1].

    `fake` and `real` are the images before augmentation (D saw them augmented); in the D step
    `fake` is G's output without a graph to G. They require grad where an objective due this
    iteration names them in `grad_of`; use `grad` to differentiate D's outputs w.r.t. them.
    `real` and `D_real` are None in the G step unless the loss sets `G_needs_reals`.
    """
    fake: torch.Tensor
    y_fake: torch.Tensor
    D_fake: torch.Tensor
    real: Optional[torch.Tensor] = None
    y_real: Optional[torch.Tensor] = None
    D_real: Optional[torch.Tensor] = None
    views: dict[str, torch.Tensor] = field(default_factory=dict)  # D's outputs on `views`
    itr: int = 0

    def grad(self, outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """d outputs.sum() / d inputs in fp32, with a graph (so a penalty on it trains D).

        The gradient is taken of D's outputs themselves, never of a loss the fp16 grad scaler
        scaled: the penalty is computed on the true, unscaled gradient (each output's own
        gradient is 1, so nothing underflows in fp16; a scaled one overflowed at the scaler's
        initial 2^16). The scaler then scales the whole D loss, penalty included, for backward.
        """
        (grad,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
        return grad.float()


class Objective:
    """Base of losses and regularisers: override `D_terms`/`G_terms` (and what else you need)."""
    name: ClassVar[str] = ''                 # registry key
    flags: ClassVar[tuple[Flag, ...]] = ()   # flags this objective owns
    grad_of: ClassVar[tuple[str, ...]] = ()  # 'real' / 'fake': inputs it differentiates D w.r.t.

    def __init__(self, config: dict, device: Union[str, torch.device] = 'cpu', *,
                 rank: int = 0, world_size: int = 1):
        self.config, self.device = config, torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.every = 1  # lazy: terms every N iterations, weight x N (set it in setup)
        self.setup()

    def setup(self) -> None:
        """Read flags from self.config and create state (tensors on self.device)."""

    def due(self, itr: int) -> bool:
        """Whether this objective's terms are computed at iteration `itr`."""
        return self.every <= 1 or itr % self.every == 0

    def views(self, real: torch.Tensor, y_real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra images (of the reals' classes) for D's pass; outputs come back in Batch.views."""
        return {}

    def D_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        """D's loss terms for one D minibatch, by log name (D_loss_*)."""
        return {}

    def G_terms(self, b: Batch) -> dict[str, torch.Tensor]:
        """G's loss terms for one G minibatch, by log name (G_loss*)."""
        return {}

    def log(self) -> dict[str, torch.Tensor]:
        """Extra scalars for the training logs (read every --log_every iterations)."""
        return {}

    def state_dict(self) -> dict:
        """State a checkpoint keeps (plain values or tensors)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""


class Loss(Objective):
    """An adversarial loss: `--loss <name>`."""
    G_needs_reals: ClassVar[bool] = False  # the G step also runs D on reals (relativistic losses)


class Regulariser(Objective):
    """A regulariser: on when its first flag (its weight) is not 0; `self.weight` holds it."""

    def __init__(self, config: dict, *args, **kwargs):
        self.weight = config[self.flags[0].key]
        super().__init__(config, *args, **kwargs)


def register(cls: type) -> type:
    """Class decorator: make a Loss selectable by --loss, a Regulariser switch on by its flag."""
    table = LOSSES if issubclass(cls, Loss) else REGULARISERS
    if issubclass(cls, Regulariser):
        if not cls.flags or cls.flags[0].default != 0:
            raise TypeError(f'{cls.__name__}: a Regulariser needs flags, the first its weight '
                            f'with default 0 (off)')
        key = cls.flags[0].key
    elif issubclass(cls, Loss):
        key = cls.name
    else:
        raise TypeError(f'{cls.__name__}: register a subclass of Loss or Regulariser')
    old = table.get(key)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__,
                                                                  cls.__qualname__):
        raise ValueError(f'objective {key!r} is registered twice: {old.__qualname__} and '
                         f'{cls.__qualname__}')
    table[key] = cls
    return cls


def objective_flags() -> list[Flag]:
    """Every registered regulariser's flags, once each (regularisers may share a flag)."""
    found: dict[str, Flag] = {}
    for cls in REGULARISERS.values():
        for flag in cls.flags:
            if found.setdefault(flag.name, flag) != flag:
                raise ValueError(f'flag --{flag.name} is defined differently by two objectives')
    return list(found.values())


class Objectives:
    """The run's loss and switched-on regularisers, called in that order by the step."""

    def __init__(self, config: dict, device: Union[str, torch.device] = 'cpu', *,
                 rank: int = 0, world_size: int = 1):
        name = config.get('loss', 'hinge')
        if name not in LOSSES:
            raise ValueError(f'--loss {name}: no such loss; registered: {", ".join(LOSSES)}')
        run = dict(rank=rank, world_size=world_size)
        self.loss = LOSSES[name](config, device, **run)
        self.regularisers = [cls(config, device, **run) for key, cls in REGULARISERS.items()
                             if config.get(key, 0)]
        # The last value of each lazy term, logged between the iterations that compute it
        # (and kept by checkpoints, so a resumed run logs what the uninterrupted one did).
        self.latest: dict[str, torch.Tensor] = {}

    @property
    def all(self) -> list[Objective]:
        """The loss, then the regularisers."""
        return [self.loss, *self.regularisers]

    def due(self, itr: int) -> list[Objective]:
        """The objectives whose terms are computed at iteration `itr`."""
        return [o for o in self.all if o.due(itr)]

    def state_dict(self) -> dict:
        """Each objective's state by registry key (those that keep any), and the lazy terms'
        last values."""
        states = {self.key(o): o.state_dict() for o in self.all}
        states = {k: v for k, v in states.items() if v}
        if self.latest:
            states[LATEST] = {k: float(v) for k, v in self.latest.items()}
        return states

    def load_state_dict(self, state: dict) -> None:
        """Restore each objective present in `state` (others start fresh)."""
        for o in self.all:
            if self.key(o) in state:
                o.load_state_dict(state[self.key(o)])
        device = self.loss.device
        self.latest = {k: torch.tensor(v, device=device) for k, v in state.get(LATEST, {}).items()}

    @staticmethod
    def key(o: Objective) -> str:
        """An objective's registry key: the loss name, or the regulariser's weight flag."""
        return o.flags[0].key if isinstance(o, Regulariser) else o.name

    def describe(self) -> str:
        """'loss hinge; regularisers LC 0.3, R1 1 (every 16 iterations)' for the start-up line."""
        regs = [f'{self.key(o)} {o.weight:g}' + (f' (every {o.every} iterations)'
                                                 if o.every > 1 else '')
                for o in self.regularisers]
        return f'loss {self.loss.name}' + (f'; regularisers {", ".join(regs)}' if regs else '')


def total(terms: dict[str, torch.Tensor]):
    """The sum of a dict of terms, left to right as they were added (0 when empty)."""
    return sum(terms.values())
