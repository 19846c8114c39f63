"""Differentiable augmentation for D on small data: DiffAugment, with ADA's adaptive p.

DiffAugment (Zhao et al., NeurIPS 2020; mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py)
augments every image D sees, reals and fakes alike, with transforms that gradients pass
through, so D cannot memorise a small training set and G still learns through the augmented
fakes. The policies draw the same random numbers in the same order as the forks' code, so at
p = 1 and one seed, `augment` returns the forks' images exactly.

ADA (Karras et al., "Training Generative Adversarial Networks with Limited Data", 2020) applies
each augmentation to an image with probability p and tunes p from the overfitting signal
r_t = E[sign(D(x_real))]: `AdaptiveP`, whose p goes straight into `augment`.

All randomness comes from the global torch RNG of x's device, so the training loop's
per-iteration seeding makes augmentation reproducible and resume-exact. Example:

    x = augment(x, 'color,translation,cutout')           # the paper's DiffAugment
    ada = AdaptiveP(batch_size=64, device='cuda')
    out = D(augment(x, policy, ada.p), y); ada.accumulate(out); ada.step(itr)
"""
from __future__ import annotations

import math
from typing import Callable

import torch

POLICIES: tuple[str, ...] = ('color', 'translation', 'cutout', 'flip')
TRANSLATION_RATIO = 0.125  # largest shift, as a fraction of the side (the forks' default)
CUTOUT_RATIO = 0.5  # side of the cut square, as a fraction of the image's side


def parse_policy(policy: str) -> list[str]:
    """'translation,cutout' -> ['translation', 'cutout']; '' or 'none' -> [] (spaces ignored)."""
    policy = policy.replace(' ', '')
    names = [] if policy in ('', 'none') else [n for n in policy.split(',') if n]
    _check(names)
    return names


def _check(names: list[str]) -> None:
    """Unknown or repeated policy names are errors (a typo must not silently train unaugmented)."""
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f'unknown augmentation policy {", ".join(unknown)}: '
                         f'choose from {", ".join(POLICIES)}')
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f'augmentation policy {", ".join(repeated)} given more than once')


def _per_image(x: torch.Tensor) -> torch.Tensor:
    """One uniform [0, 1) draw per image, shaped (B, 1, 1, 1) and in x's dtype as the forks draw."""
    return torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)


def _brightness(x: torch.Tensor) -> torch.Tensor:
    """x + U(-0.5, 0.5), one shift per image."""
    return x + (_per_image(x) - 0.5)


def _saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's deviation from its mean over channels by U(0, 2) (0 gives grey)."""
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - mean) * (_per_image(x) * 2) + mean


def _contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale each image's deviation from its mean over C, H, W by U(0.5, 1.5)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_per_image(x) + 0.5) + mean


def _color(x: torch.Tensor) -> torch.Tensor:
    """Brightness, then saturation, then contrast: the forks' 'color'."""
    return _contrast(_saturation(_brightness(x)))


def _translation(x: torch.Tensor, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by whole pixels (tx, ty), each uniform in [-s, s], zeros moving in.

    The forks' convention: out[b, :, i, j] = x[b, :, i + tx, j + ty] (0 outside x), so content
    moves up by tx rows and left by ty columns; s = int(side * ratio + 0.5) per side.
    """
    B, _, H, W = x.shape
    s_rows, s_cols = int(H * ratio + 0.5), int(W * ratio + 0.5)
    tx = torch.randint(-s_rows, s_rows + 1, size=[B, 1], device=x.device)
    ty = torch.randint(-s_cols, s_cols + 1, size=[B, 1], device=x.device)
    rows = torch.arange(H, device=x.device) + tx  # (B, H): the source row of each output row
    cols = torch.arange(W, device=x.device) + ty  # (B, W)
    out = x.gather(2, rows.clamp(0, H - 1)[:, None, :, None].expand(x.shape))
    out = out.gather(3, cols.clamp(0, W - 1)[:, None, None, :].expand(x.shape))
    inside = (((rows >= 0) & (rows < H))[:, None, :, None]
              & ((cols >= 0) & (cols < W))[:, None, None, :])  # (B, 1, H, W)
    return torch.where(inside, out, 0.0)


def _cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero one size x size square per image at a uniform centre, clipped at the borders.

    As the forks: size = int(side * ratio + 0.5), centre offset uniform in
    [0, side + 1 - size % 2), square from offset - size // 2 for size pixels.
    """
    B, _, H, W = x.shape
    size_rows, size_cols = int(H * ratio + 0.5), int(W * ratio + 0.5)
    top = torch.randint(0, H + (1 - size_rows % 2), size=[B, 1], device=x.device)
    left = torch.randint(0, W + (1 - size_cols % 2), size=[B, 1], device=x.device)
    top, left = top - size_rows // 2, left - size_cols // 2
    rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_rows = (rows >= top) & (rows < top + size_rows)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size_cols)  # (B, W)
    return torch.where(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0, x)


def _flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror left-right; `augment` picks the images (a random flip: half of them at p = 1)."""
    return x.flip(3)


# name -> (transform of the whole batch, share of images it reaches per unit of p)
AUGMENTS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float]] = {
    'color': (_color, 1.0), 'translation': (_translation, 1.0),
    'cutout': (_cutout, 1.0), 'flip': (_flip, 0.5)}


def _apply_some(x: torch.Tensor, out: torch.Tensor, prob: float | torch.Tensor) -> torch.Tensor:
    """out for each image with probability prob, else x: one draw per image, after out's draws."""
    if not isinstance(prob, torch.Tensor) and prob >= 1:
        return out  # every image, with no extra draw: the forks' random stream
    chosen = torch.rand(x.size(0), device=x.device) < prob  # a tensor prob stays on device
    return torch.where(chosen[:, None, None, None], out, x)


def augment(x: torch.Tensor, policy: list[str] | str, p: float | torch.Tensor = 1.0
            ) -> torch.Tensor:
    """Apply each policy in order, each to each image [B, C, H, W] with probability p.

    p = 1 (a number) augments every image as the forks do (flip: a random half); p < 1 or
    any tensor p (0-dim, e.g. `AdaptiveP.p`, read on device without a host sync) adds one
    Bernoulli draw per image and policy. Returns a new tensor; x is left unchanged.
    """
    names = parse_policy(policy) if isinstance(policy, str) else list(policy)
    _check(names)
    if not isinstance(p, torch.Tensor) and not 0 <= p <= 1:
        raise ValueError(f'augmentation probability {p}: must lie in [0, 1]')
    out = x
    for name in names:
        transform, share = AUGMENTS[name]
        out = _apply_some(out, transform(out), share * p)
    return out if names else x.clone()  # every policy builds a new tensor


DiffAugment = augment  # the forks' name


class AdaptiveP:
    """ADA's controller of p from the overfitting signal r_t = E[sign(D(x_real))].

    Every `interval` iterations p += sign(r_t - target) * batch_size * interval / (kimg * 1000),
    clamped to [0, 1], so p can cross from 0 to 1 in `kimg` thousand real images. p, r_t and
    the sums are 0-dim float32 tensors on `device` (D's), updated in place: no host syncs, and
    a reference to `p` held elsewhere follows it. r_t is nan until the first adjustment.
    """

    def __init__(self, *, target: float = 0.6, interval: int = 4, kimg: float = 500.0,
                 batch_size: int, p: float = 0.0, device: str | torch.device = 'cpu'):
        if interval < 1 or batch_size < 1 or kimg <= 0 or not 0 <= p <= 1:
            raise ValueError(f'AdaptiveP needs interval >= 1, batch_size >= 1, kimg > 0 and p '
                             f'in [0, 1]; got {interval}, {batch_size}, {kimg}, {p}')
        self.target, self.interval = target, interval
        self.speed = batch_size * interval / (kimg * 1000)  # |change of p| per adjustment
        self.p = torch.tensor(float(p), device=device)
        self.r_t = torch.tensor(math.nan, device=device)
        self.sign_sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)

    def accumulate(self, D_real: torch.Tensor) -> None:
        """Add sign(D_real) of this iteration's reals to the interval's sums."""
        signs = D_real.detach().float().sign()  # in bf16 a sum of signs stops counting at 256
        self.sign_sum += signs.sum()
        self.count += signs.numel()

    def step(self, itr: int) -> None:
        """Once per iteration, after `accumulate`: at each multiple of `interval`, move p."""
        if itr % self.interval:
            return
        self.r_t.copy_(self.sign_sum / self.count)  # nan when nothing was accumulated
        direction = torch.sign(self.r_t - self.target).nan_to_num(0.0)
        self.p.add_(direction * self.speed).clamp_(0, 1)
        self.sign_sum.zero_()
        self.count.zero_()

    def state_dict(self) -> dict:
        """p, r_t and the interval's partial sums as plain numbers, for a checkpoint."""
        return {'p': float(self.p), 'r_t': float(self.r_t),
                'sign_sum': float(self.sign_sum), 'count': int(self.count)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`: the p sequence continues as if never interrupted."""
        for key in ('p', 'r_t', 'sign_sum', 'count'):
            getattr(self, key).fill_(state[key])
