"""Project a real image into a trained BigGAN: the latent z (and optionally the class
embedding) whose G output is closest to it.

    python project.py --experiment_name my_run --target photo.png --class "golden retriever"
    python project.py --experiment_name demo --target data/demo/04_red_ring/00000.png \\
        --class 04_red_ring --steps 300      # the demo run of scripts/launch_demo.sh
    python project.py --weights weights/my_run --target photo.png --top_k 5 --truncation 1.0
    python project.py --experiment_name my_run --target photo.png --class 3 \\
        --optimize_embedding --features inception --inception_weights pt_inception.pth

The run is found and loaded as sample.py finds and loads it (its flags: --experiment_name,
--weights, --base_root, --load_weights, --truncation, --use_ema, ...); G runs in eval mode as
for `sample.py --seeds`. D comes from the D*.pth beside the G weights.

Loss: `perceptual + --pixel_weight * pixel MSE` in [-1, 1]. The perceptual distance compares
feature maps of a fixed network (D's blocks, or Inception's Mixed_5d/6e/7c and pool with
--features inception): each map unit-normalised over channels at every position (as LPIPS,
without its learned weights), squared differences averaged over positions, summed over maps.
Optimisation (the ideas of stylegan2-ada's projector): Adam on z from the best of 16 z drawn
from the prior, the learning rate ramped up over the first 5% of the steps and down (cosine)
over the last 25%, and Gaussian noise added to z early on (decaying quadratically to 0 at 75%).
Truncation: with t > 0 (the run's, or --truncation) z is clamped after every step (and with
its noise) to [-t, t], the support of the truncated prior (`scaled` runs: [-2t, 2t]).
Class: --class (index or name, as sample.py --classes), else the best of --top_k classes:
D ranks all classes by its class-conditional (projection) score of the target, each of the
top k gets a short projection of z (its own embedding) of --search_steps, and the lowest
loss wins; then a full projection (of the embedding too with --optimize_embedding).

Outputs in samples/<exp>/projection/<target stem>/ (or --out), written only once all is done:
    target_vs_projection.png     target beside the reconstruction, labelled (nearest-upscaled)
    latent.npz                   z, class, embedding (with --optimize_embedding), losses, ...
    interp_to_<class>.png        the projected z from its class to --interp_class (default next)
    progress.png                 the reconstruction at 8 points of the optimisation
Same flags, seed, device and thread count give an identical latent.npz.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import atomic_io
import checkpoints
import class_names
import datasets
import flags
import grids
import sample
import utils
from seeded_samples import seeded_sampling

NUM_STARTS = 16  # z drawn from the prior; the projection starts from the closest
LR_RAMPUP, LR_RAMPDOWN, NOISE_RAMP = 0.05, 0.25, 0.75  # fractions of the steps
NUM_SNAPSHOTS = 8
MIN_SHOWN = 128  # target_vs_projection.png shows images at least this many pixels wide
INCEPTION_MAPS = ('Mixed_5d', 'Mixed_6e', 'Mixed_7c')


class ProjectError(ValueError):
    """A bad input, saying what was wrong; printed as one line, nothing written."""


def build_parser() -> argparse.ArgumentParser:
    """project.py's own flags; every other flag goes to sample.py's run loading."""
    p = argparse.ArgumentParser(prog='project.py', allow_abbrev=False, description=(
        "Project an image into a trained BigGAN (see the module docstring). Other flags are "
        "sample.py's (--experiment_name, --weights, --truncation, ...)."))
    add = p.add_argument
    add('--target', required=True, help="PNG/JPEG image at the run's resolution")
    add('--class', dest='class_', metavar='CLASS', default=None, help='class index or name')
    add('--top_k', type=flags.POSITIVE_INT, default=3,
        help='without --class: try the k classes D scores highest, keep the best')
    add('--search_steps', type=flags.COUNT, default=0,
        help='steps per --top_k candidate (0: a quarter of --steps)')
    add('--steps', type=flags.POSITIVE_INT, default=500, help='optimisation steps')
    add('--lr', type=flags.POSITIVE, default=0.1, help="Adam's peak learning rate")
    add('--noise', type=flags.NONNEGATIVE, default=0.2,
        help='std of the noise added to z at step 0 (fading out by 75%% of the steps)')
    add('--features', choices=('D', 'inception'), default='D',
        help="network of the perceptual distance: the run's D, or Inception (--inception)")
    add('--pixel_weight', type=flags.NONNEGATIVE, default=1.0, help='weight of the pixel MSE')
    add('--optimize_embedding', action='store_true',
        help='optimise the class embedding as well as z')
    add('--interp_class', default=None,
        help='class the interpolation goes to (default: the next one)')
    add('--out', default='', help='output folder (default: samples/<exp>/projection/<stem>)')
    add('--seed', type=int, default=0, help='seed of the starting z and the noise')
    return p


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------


def read_target(path: Path, resolution: int) -> torch.Tensor:
    """The image as float [1, 3, R, R] in [-1, 1]; refuses another resolution."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert('RGB'))  # [H, W, 3] uint8
    except OSError as err:
        raise ProjectError(f'--target {path}: not a readable image ({err})') from None
    h, w = rgb.shape[:2]
    if (h, w) != (resolution, resolution):
        raise ProjectError(
            f'--target {path} is {w}x{h} but the run makes {resolution}x{resolution} images: '
            f'centre-crop and resize it first as the data were (make_hdf5.py / datasets.py: '
            f'crop the long edge to a square, then resize to {resolution})')
    return datasets.to_float(rgb.transpose(2, 0, 1))[None]


def class_of(text: str, config: dict, flag: str) -> int:
    """A class index or name, checked against the run as sample.py --classes checks them."""
    try:
        return class_names.class_index(text, config['class_names'], config['n_classes'])
    except class_names.ClassError as err:
        raise ProjectError(f'{flag}: {err}') from None


def d_weights_file(weights_file: Path) -> Path:
    """The D*.pth of the same checkpoint as a G*.pth (G_ema_best0.pth -> D_best0.pth)."""
    part = checkpoints.split_checkpoint_file(weights_file.name)
    return weights_file.parent / checkpoints.checkpoint_file('D', part[1] if part else None)


def check_args(args: argparse.Namespace, config: dict, d_file: Path) -> None:
    """Refuse flag values and combinations that cannot work, before anything is loaded."""
    sample.check_truncation(config['truncation'], config)
    if args.features == 'inception':  # the weights file, before anything is loaded
        import inception_utils
        try:
            inception_utils.resolve_inception_weights(config['inception'],
                                                      config['inception_weights'] or None)
        except FileNotFoundError as err:
            raise ProjectError(f'--features inception: {err}') from None
    if args.features == 'D' and not d_file.is_file():
        raise ProjectError(f'--features D: the run has no {d_file.name} beside its G (converted '
                           f'TF-Hub / Hugging Face runs have no D): use --features inception')
    if args.class_ is None and config['n_classes'] > 1 and not d_file.is_file():
        raise ProjectError(f'without --class the classes are ranked by D, and the run has no '
                           f'{d_file.name}: give --class')


# ----------------------------------------------------------------------------------------
# Feature networks and the loss
# ----------------------------------------------------------------------------------------


def load_D(config: dict, d_file: Path, device: torch.device) -> nn.Module:
    """The run's D with its weights, in eval mode (SN reads its stored u), frozen."""
    D = importlib.import_module(config['model']).Discriminator(
        **{**config, 'skip_init': True})
    try:
        utils.load_state_checked(D, utils.load_file(str(d_file)), True, str(d_file))
    except utils.CorruptCheckpointError as err:
        raise ProjectError(str(err)) from None
    return D.to(device).eval().requires_grad_(False)


def inception_features(config: dict, device: torch.device) -> Callable:
    """x -> [Mixed_5d, Mixed_6e, Mixed_7c maps, pool] of the Inception net (--inception)."""
    import inception_utils  # only when asked: it loads Inception code and weights
    net = inception_utils.load_inception_net(inception=config['inception'], device=device,
                                             inception_weights=config['inception_weights'] or None)
    maps: list[torch.Tensor] = []
    for name in INCEPTION_MAPS:
        getattr(net.net, name).register_forward_hook(lambda m, i, out: maps.append(out))

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        """The hooked maps and the pool of images x."""
        maps.clear()
        pool, _ = net(x)
        return [*maps, pool[:, :, None, None]]
    return features


def perceptual(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """[B] distances: per map, channel-unit-normalised features, squared differences averaged
    over positions; summed over the maps (b may have batch 1)."""
    unit = functools.partial(F.normalize, dim=1, eps=1e-10)
    return sum((unit(fa.float()) - unit(fb.float())).square().sum(1).mean((1, 2))
               for fa, fb in zip(a, b))


# ----------------------------------------------------------------------------------------
# Class vectors: G.shared(y) with a shared embedding, else a one-hot row of class weights
# ----------------------------------------------------------------------------------------


def class_vector(G: nn.Module, c: int, n_classes: int) -> torch.Tensor:
    """[1, dim]: G.shared's row for class c, or c one-hot (see soft_classes)."""
    device = next(G.parameters()).device
    if isinstance(G.shared, nn.Embedding):
        return G.shared(torch.tensor([c], device=device)).detach()
    return F.one_hot(torch.tensor([c], device=device), n_classes).float()


def _embedding_as_linear(m: nn.Embedding, c: torch.Tensor) -> torch.Tensor:
    """A class-weights vector c [B, n_classes] through an embedding table: c @ table."""
    return c @ (m.W_() if hasattr(m, 'W_') else m.weight)


@contextlib.contextmanager
def soft_classes(G: nn.Module) -> Iterator[None]:
    """Without a shared embedding, each ccbn looks its gain and bias up by class index: within,
    they take a vector of class weights instead (one-hot: the same as the index)."""
    tables = [m for m in G.modules() if isinstance(m, nn.Embedding) and m is not G.shared]
    for m in tables:
        m.forward = functools.partial(_embedding_as_linear, m)
    try:
        yield
    finally:
        for m in tables:
            del m.forward


# ----------------------------------------------------------------------------------------
# The optimisation
# ----------------------------------------------------------------------------------------


@dataclass
class Projection:
    """What one projection found."""
    c: int
    z: torch.Tensor  # [1, dim_z]
    y: torch.Tensor  # [1, dim]: the class vector used (optimised with --optimize_embedding)
    loss: float  # without noise, at the final z
    losses: list[float]  # per step (with the step's noise)
    snapshots: list[torch.Tensor]  # [1, 3, R, R] images during the optimisation


@dataclass
class Problem:
    """The fixed parts: G, the loss of images against the target, the prior of z."""
    G: nn.Module
    loss: Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, R, R] -> [B]
    bound: Optional[float]  # |z| <= bound (truncation), or None
    n_classes: int
    autocast: Callable

    def render(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """G's images of z and class vectors y, z clamped to the truncation's support."""
        if self.bound is not None:
            z = z.clamp(-self.bound, self.bound)
        with self.autocast():
            return self.G(z, y).float()


def schedule(step: int, steps: int) -> tuple[float, float]:
    """(learning-rate factor, noise factor) at a step: ramp up, cosine ramp down; noise
    decaying quadratically to 0 at NOISE_RAMP of the steps."""
    t = step / steps
    lr = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    lr = (0.5 - 0.5 * np.cos(lr * np.pi)) * min(1.0, t / LR_RAMPUP)
    return float(lr), max(0.0, 1.0 - t / NOISE_RAMP) ** 2


def start_z(p: Problem, y: torch.Tensor, dim_z: int, truncation: float, style: str,
            generator: torch.Generator) -> torch.Tensor:
    """The closest of NUM_STARTS z drawn from the prior (truncated at t when t > 0)."""
    shape = (NUM_STARTS, dim_z)
    z = (utils.truncated_normal(shape, truncation, 'cpu', generator, style=style)
         if truncation > 0 else torch.randn(shape, generator=generator))
    z = z.to(y.device)
    with torch.no_grad():
        losses = p.loss(p.render(z, y.expand(NUM_STARTS, -1)))
    return z[int(losses.argmin())][None].clone()


def project(p: Problem, c: int, steps: int, args: argparse.Namespace, truncation: float,
            style: str, desc: str) -> Projection:
    """Adam on z (and the class vector with --optimize_embedding) for `steps` steps."""
    generator = torch.Generator().manual_seed(args.seed)
    y0 = class_vector(p.G, c, p.n_classes)
    z = start_z(p, y0, p.G.dim_z, truncation, style, generator).requires_grad_(True)
    y = y0.clone().requires_grad_(args.optimize_embedding)
    opt = torch.optim.Adam([z, y] if args.optimize_embedding else [z], lr=args.lr)
    losses, snapshots = [], []
    shots = {round(i * (steps - 1) / (NUM_SNAPSHOTS - 1)) for i in range(NUM_SNAPSHOTS)}
    for step in tqdm(range(steps), desc=desc, unit='step', file=sys.stdout, leave=False):
        lr_factor, noise_factor = schedule(step, steps)
        for group in opt.param_groups:
            group['lr'] = args.lr * lr_factor
        noise = torch.randn(z.shape, generator=generator).to(z.device)
        images = p.render(z + args.noise * noise_factor * noise, y)
        loss = p.loss(images).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if p.bound is not None:
            with torch.no_grad():
                z.clamp_(-p.bound, p.bound)
        losses.append(loss.item())
        if step in shots:
            snapshots.append(images.detach())
    with torch.no_grad():
        final = float(p.loss(p.render(z, y)).sum())
    return Projection(c, z.detach(), y.detach(), final, losses, snapshots)


def rank_classes(D: nn.Module, target: torch.Tensor, k: int) -> list[int]:
    """The k classes with the highest class-conditional score of D (its projection term
    embed(c) . h(target); the unconditional term is the same for every class)."""
    with torch.no_grad():
        h = D.activation(D.stage_outputs(target)[-1]).sum((2, 3))[0]  # [C], as D's head pools
        scores = D.embed(torch.arange(D.n_classes, device=target.device)) @ h  # [n_classes]
    return scores.argsort(descending=True)[:k].tolist()


def choose_class(p: Problem, D: nn.Module, target: torch.Tensor, args: argparse.Namespace,
                 truncation: float, style: str) -> tuple[int, list[dict]]:
    """The class of the lowest loss among D's top k after a short projection each (of z
    only: a class is judged with its own embedding)."""
    steps = args.search_steps or max(1, args.steps // 4)
    search, trials = argparse.Namespace(**{**vars(args), 'optimize_embedding': False}), []
    for c in rank_classes(D, target, min(args.top_k, p.n_classes)):
        found = project(p, c, steps, search, truncation, style, f'class {c}')
        trials.append({'class': c, 'loss': found.loss})
    return min(trials, key=lambda r: r['loss'])['class'], trials


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG file contents."""
    buf = io.BytesIO()
    image.save(buf, format='PNG')
    return buf.getvalue()


def side_by_side(images: torch.Tensor, captions: list[str]) -> Image.Image:
    """Images [N, 3, R, R] in one row, nearest-upscaled to >= MIN_SHOWN pixels, each with
    its caption above it."""
    scale = max(1, -(-MIN_SHOWN // images.shape[-1]))
    row = grids.grid_image(F.interpolate(images.float(), scale_factor=scale, mode='nearest'),
                           nrow=len(images))
    font = ImageFont.load_default(14)
    out = Image.new('RGB', (row.width, row.height + 22), 'white')
    out.paste(row, (0, 22))
    draw, cell = ImageDraw.Draw(out), images.shape[-1] * scale + grids.PADDING
    for i, text in enumerate(captions):
        draw.text((grids.PADDING + i * cell + 2, 4), text, fill='black', font=font)
    return out


def interp_row(p: Problem, found: Projection, to_class: int) -> torch.Tensor:
    """[10, 3, R, R]: the projected z, its class vector moving linearly to to_class's."""
    y1 = class_vector(p.G, to_class, p.n_classes)
    ys = utils.interp(found.y[None], y1[None], 8)[0]  # (10, dim)
    with torch.no_grad():
        return p.render(found.z.expand(len(ys), -1), ys)


def outputs(p: Problem, found: Projection, target: torch.Tensor, config: dict,
            args: argparse.Namespace, to_class: Optional[int], record: dict) -> dict[str, bytes]:
    """Every output file's name and contents (nothing is written here)."""
    names = config['class_names']
    with torch.no_grad():
        recon = p.render(found.z, found.y)
    files = {'target_vs_projection.png': png_bytes(side_by_side(
        torch.cat([target, recon]).cpu(), ['target', 'projection']))}
    latent = {k: np.asarray(v) for k, v in record.items() if k != 'trials'}
    for key in ('class', 'loss'):  # the --top_k search: each candidate and its loss
        latent[f'trial_{key}'] = np.asarray([r[key] for r in record['trials']])
    latent.update(z=found.z.cpu().numpy(), losses=np.asarray(found.losses, np.float32))
    if args.optimize_embedding:
        latent['embedding'] = found.y.cpu().numpy()
    buf = io.BytesIO()
    np.savez(buf, **latent)
    files['latent.npz'] = buf.getvalue()
    if to_class is not None:
        label = (f'{class_names.label(found.c, names)} -> '
                 f'{class_names.label(to_class, names)}')
        image = grids.labeled_grid(interp_row(p, found, to_class).cpu(), 10, [label])
        files[f'interp_to_{class_names.file_label(to_class, names)}.png'] = png_bytes(image)
    shots = torch.cat(found.snapshots).cpu()
    files['progress.png'] = png_bytes(grids.labeled_grid(
        shots, len(shots), [f'steps 0 to {len(found.losses)}']))
    return files


def write_outputs(folder: Path, files: dict[str, bytes]) -> None:
    """Each file under a temporary name, then renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_io.atomic_write(str(folder / name), lambda f, data=data: f.write(data))


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------


def make_problem(s: sample.Sampler, D: Optional[nn.Module], target: torch.Tensor,
                 args: argparse.Namespace) -> Problem:
    """G, the loss against the target on the chosen features, and the truncation's bound."""
    features = (D.stage_outputs if args.features == 'D'
                else inception_features(s.config, s.device))
    with torch.no_grad():
        target_features = features(target)

    def loss(images: torch.Tensor) -> torch.Tensor:
        """[B] losses of images against the target."""
        pixel = (images - target).square().mean((1, 2, 3))
        return perceptual(features(images), target_features) + args.pixel_weight * pixel

    t = s.config['truncation']
    bound = None if t <= 0 else t * (2 if s.config['truncation_style'] == 'scaled' else 1)
    return Problem(s.G.requires_grad_(False), loss, bound, s.config['n_classes'],
                   s.precision.autocast)


def run(argv: Optional[list[str]] = None) -> dict:
    """Project as the flags say; returns what was found and written."""
    # Flags, the run, and every check that can fail, before anything is loaded:
    args, run_argv = build_parser().parse_known_args(argv)
    config, weights_file, itr = sample.resolve_config(run_argv)
    d_file = d_weights_file(weights_file)
    check_args(args, config, d_file)
    target_path = Path(args.target).expanduser()
    target = read_target(target_path, config['resolution'])
    n, names = config['n_classes'], config['class_names']
    c = class_of(args.class_, config, '--class') if args.class_ else (0 if n == 1 else None)
    to_class = (class_of(args.interp_class, config, '--interp_class')
                if args.interp_class is not None else None)
    folder = Path(args.out).expanduser() if args.out else (
        Path(config['samples_root']) / config['experiment_name'] / 'projection' / target_path.stem)

    # Models: G as sample.py --seeds runs it (eval mode, the run's BN statistics), and D:
    s = sample.build_sampler({**config, 'G_eval_mode': True}, weights_file, itr)
    D = load_D(config, d_file, s.device) if d_file.is_file() else None
    target = target.to(s.device)
    start = time.perf_counter()
    with seeded_sampling(s, config['truncation']), torch.enable_grad(), soft_classes(s.G):
        p = make_problem(s, D, target, args)
        t, style = config['truncation'], config['truncation_style']
        trials = []
        if c is None:
            c, trials = choose_class(p, D, target, args, t, style)
        found = project(p, c, args.steps, args, t, style, 'projection')
        if to_class is None and n > 1:
            to_class = (c + 1) % n
        record = {'class_index': c, 'class_name': names[c] if names else str(c),
                  'truncation': t, 'truncation_style': style, 'loss': found.loss,
                  'steps': args.steps, 'seed': args.seed, 'features': args.features,
                  'pixel_weight': args.pixel_weight, 'target': str(target_path),
                  'weights': str(weights_file), 'trials': trials}
        files = outputs(p, found, target, config, args, to_class, record)
    seconds = time.perf_counter() - start
    write_outputs(folder, files)
    print(f"Projected {target_path} as class {class_names.label(c, names)}: loss "
          f"{found.losses[0]:.4f} at step 0, {found.loss:.4f} after {args.steps} steps "
          f"({seconds:.1f} s); "
          f"wrote {', '.join(files)} to {folder}")
    return {**record, 'folder': folder, 'files': [folder / f for f in files],
            'projection': found, 'seconds': seconds}


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry: project, or print what was wrong (no traceback) and return 1."""
    try:
        run(argv)
    except (sample.SampleError, ProjectError) as err:
        print(f'project.py: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(flags.run_cli(main, 'project.py'))
