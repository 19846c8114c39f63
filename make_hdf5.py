"""Pack an image folder into one HDF5 file: `imgs` uint8 [N, 3, R, R], `labels` int64 [N].

Examples:
    # The 2019 way: data/ImageNet (one subfolder per class) -> data/ILSVRC128.hdf5
    python make_hdf5.py --dataset I128 --batch_size 256 --data_root data
    # Any class-per-subfolder image folder -> OUT/<folder name>_<R>.hdf5
    python make_hdf5.py --dataset path/to/folder --resolution 64 --data_root OUT
    # The built-in demo: writes the PNG folder data/demo (10 classes x 500 images, 32x32),
    # then packs it like any folder into data/demo_32.hdf5
    python make_hdf5.py --make_demo data/demo --resolution 32
    # Non-square images: letterbox a 2:1 window, or pad to a square (reflect / a grey level)
    python make_hdf5.py --dataset path/to/cars --resolution 128 --transform center-crop-wide
    python make_hdf5.py --dataset path/to/folder --resolution 64 --transform pad-constant \\
        --pad_value 255

Images go through `image_files.load_image` (the same preprocessing the folder dataset uses),
decoded in --num_workers processes and streamed to disk batch by batch, so memory does not
grow with the dataset. The file is written as `<output>.partial` and renamed when complete:
an interrupted run never leaves a half-written file under the final name. Every file under
the folder is either packed or skipped: the images are the files directly inside a class
folder with an extension PIL opens (`image_files.find_images`, as training from the folder
reads it); the others (non-image, hidden or nested files) and the images PIL fails to decode
are counted in the summary, and listed with their reasons in `<output stem>_skipped.txt`
beside the output. The file's attrs hold n_classes, resolution, classes (the folder names, in
label order: the class names train.py records and sample.py --classes takes), source and
n_skipped, and the --transform that made the squares: `transform` (and `pad_value` for
pad-constant; see image_transforms.py). `make_demo_folder` draws the built-in demo dataset
(coloured shapes on gradient backgrounds, one class per shape and colour) from a seed.
"""
import argparse
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from BigGAN import G_CHANNELS
from datasets import DATASETS, resolve_dataset
from flags import run_cli
from image_files import SkippedFile, count_kinds, find_images, load_image, unreadable
from image_transforms import CENTER_CROP, TRANSFORMS, ImageTransform


class _Decoder(Dataset):
    """(uint8 [3, R, R] image or None, label, SkippedFile if PIL failed or None) per sample."""

    def __init__(self, samples: list[tuple[str, int]], resolution: int,
                 transform: ImageTransform):
        self.samples, self.resolution, self.transform = samples, resolution, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, int, SkippedFile | None]:
        path, label = self.samples[index]
        try:
            return load_image(path, self.resolution, self.transform), label, None
        except Exception as e:  # any decoder failure skips one image, never the whole run
            return None, label, unreadable(path, e)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[SkippedFile]]:
    """Stack the decoded images of a batch (as tensors: shared memory, not pickles)."""
    good = [(img, label) for img, label, err in items if err is None]
    imgs = torch.from_numpy(np.stack([img for img, _ in good])) if good else torch.empty(0)
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return imgs, labels, [err for _, _, err in items if err is not None]


@dataclass
class PackResult:
    """What pack_folder wrote: the file, how many images, and each file it skipped and why.

    `skipped_files` holds the folder's files that are not images of a class (kinds
    'non-image', 'hidden', 'nested': see image_files.find_images), then the 'unreadable' images.
    """
    path: Path
    n_images: int
    skipped_files: list[SkippedFile]
    log_path: Path | None

    @property
    def skipped(self) -> list[str]:
        """One 'path: reason' line per skipped file, as in the log."""
        return [f'{s.path}: {s.reason}' for s in self.skipped_files]


def pack_folder(folder: str | os.PathLike, output: str | os.PathLike, resolution: int, *,
                batch_size: int = 256, num_workers: int = 16, chunk_size: int = 500,
                compression: bool = False, progress: bool = True,
                single_class_ok: bool = False,
                transform: ImageTransform = CENTER_CROP) -> PackResult:
    """Pack a class-per-subfolder image folder into `output` (see the module docstring)."""
    listing = find_images(folder, single_class_ok)
    samples, classes = listing.samples, listing.classes
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + '.partial')
    log_path = output.with_name(output.stem + '_skipped.txt')
    loader = DataLoader(_Decoder(samples, resolution, transform), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    r, n, skipped = resolution, 0, list(listing.skipped)  # then the images PIL cannot decode
    lzf = 'lzf' if compression else None
    try:
        with h5py.File(partial, 'w') as f:
            # Preallocated for every image, shrunk at the end by the number skipped.
            chunk = min(chunk_size, len(samples))
            imgs = f.create_dataset('imgs', (len(samples), 3, r, r), np.uint8,
                                    maxshape=(None, 3, r, r), chunks=(chunk, 3, r, r),
                                    compression=lzf)
            labels = f.create_dataset('labels', (len(samples),), np.int64, maxshape=(None,),
                                      chunks=(chunk,), compression=lzf)
            with tqdm(total=len(samples), unit='img', disable=not progress) as bar:
                for batch_imgs, batch_labels, errors in loader:
                    k = len(batch_labels)
                    if k:
                        imgs[n:n + k] = batch_imgs.numpy()
                        labels[n:n + k] = batch_labels.numpy()
                    n += k
                    skipped.extend(errors)
                    bar.update(k + len(errors))
            if n == 0:
                raise ValueError(f'none of the {len(samples)} images in {folder} could be read')
            imgs.resize(n, axis=0)
            labels.resize(n, axis=0)
            f.attrs.update(n_classes=len(classes), resolution=r, classes=classes,
                           source=str(Path(folder).resolve()), n_skipped=len(skipped),
                           **transform.attrs)
        result = PackResult(output, n, skipped, log_path if skipped else None)
        if skipped:
            log_path.write_text(''.join(f'{line}\n' for line in result.skipped))
        else:
            log_path.unlink(missing_ok=True)  # a stale log from an earlier run would mislead
        if _terminated:  # a kill whose SystemExit did not reach us: still never rename
            sys.exit(128 + _terminated[0])
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return result


# ----------------------------------------------------------------------------- demo data

DEMO_SHAPES = ('circle', 'square', 'triangle', 'cross', 'ring')
DEMO_COLOURS = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (50, 80, 230),
                'yellow': (240, 210, 30)}


def demo_classes() -> list[tuple[str, str]]:
    """The demo's (shape, colour) classes, ordered so any prefix mixes shapes and colours."""
    colours = list(DEMO_COLOURS)
    return [(shape, colours[(s + d) % len(colours)])
            for d in range(len(colours)) for s, shape in enumerate(DEMO_SHAPES)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], r: float, *,
                angle: float, fill: tuple[int, int, int]) -> None:
    """Draw one shape of radius r centred at `centre`, rotated by angle (radians)."""
    cx, cy = centre

    def polygon(points: list[tuple[float, float]]) -> None:
        """Fill `points` (offsets from the centre) rotated by angle."""
        c, s = np.cos(angle), np.sin(angle)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in points], fill=fill)

    if shape == 'circle':
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == 'ring':
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, int(r * 0.4)))
    elif shape == 'square':
        polygon([(-r, -r), (r, -r), (r, r), (-r, r)])
    elif shape == 'triangle':
        polygon([(r * np.cos(a), r * np.sin(a)) for a in np.pi * (np.array([-0.5, 1 / 6, 5 / 6]))])
    else:  # cross: two bars
        w = r * 0.35
        polygon([(-r, -w), (r, -w), (r, w), (-r, w)])
        polygon([(-w, -r), (w, -r), (w, r), (-w, r)])


def demo_image(shape: str, colour: str, resolution: int, rng: np.random.Generator) -> Image.Image:
    """One demo image: a jittered shape on a two-tone gradient background (4x supersampled)."""
    size = resolution * 4
    top, bottom = rng.integers(0, 256, 3) // 3 + 40, rng.integers(0, 256, 3) // 3 + 40
    ramp = np.linspace(0, 1, size)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1).astype(np.uint8)
    img = Image.fromarray(bg, 'RGB')
    r = size * rng.uniform(0.18, 0.32)
    cx, cy = rng.uniform(r, size - r, 2)
    fill = tuple(int(v) for v in np.clip(np.array(DEMO_COLOURS[colour]) + rng.integers(-25, 26, 3),
                                         0, 255))
    _draw_shape(ImageDraw.Draw(img), shape, (cx, cy), r, angle=rng.uniform(0, 2 * np.pi),
                fill=fill)
    return img.resize((resolution, resolution), Image.LANCZOS)


def make_demo_folder(root: str | os.PathLike, *, resolution: int = 32,
                     images_per_class: int = 500, n_classes: int = 10, seed: int = 0) -> Path:
    """Write the demo dataset, root/<NN_colour_shape>/<i>.png, from a seed; returns root."""
    classes = demo_classes()
    if not 2 <= n_classes <= len(classes):
        raise ValueError(f'the demo has 2 to {len(classes)} classes; got n_classes={n_classes}')
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f'{root} exists and is not empty; remove it or pick another path')
    rng = np.random.default_rng(seed)
    for label, (shape, colour) in enumerate(classes[:n_classes]):
        folder = root / f'{label:02d}_{colour}_{shape}'
        folder.mkdir(parents=True)
        for i in range(images_per_class):
            demo_image(shape, colour, resolution, rng).save(folder / f'{i:05d}.png')
    return root


# ----------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The 2019 make_hdf5.py flags (same names and defaults) plus resolution/output/demo."""
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n')[0])
    p.add_argument('--dataset', default='I128',
                   help='I32/I64/I128/I256 (folder <data_root>/ImageNet) or an image folder path')
    p.add_argument('--data_root', default='data', help='where the data is and the file goes')
    p.add_argument('--batch_size', type=int, default=256, help='images per write')
    p.add_argument('--num_workers', type=int, default=16, help='decoding processes')
    p.add_argument('--chunk_size', type=int, default=500, help='HDF5 chunk length (images)')
    p.add_argument('--compression', action='store_true', help='LZF-compress the file')
    p.add_argument('--unconditional', action='store_true',
                   help='accept a folder with a single class subfolder (unconditional data)')
    p.add_argument('--resolution', type=int, default=None,
                   help=f'output size, one of {sorted(G_CHANNELS)}; required for a folder '
                        f'path (named datasets fix it)')
    p.add_argument('--output', default='',
                   help='output file (default <data_root>/ILSVRC<R>.hdf5 for named datasets, '
                        '<data_root>/<folder name>_<R>.hdf5 for a folder path)')
    p.add_argument('--transform', default='center-crop', choices=TRANSFORMS,
                   help='how an image becomes a square: center-crop (the centred square), '
                        'center-crop-wide (the centred 2:1 window, black bars above and '
                        'below), pad (the short side padded by reflection), pad-constant '
                        '(padded with the grey level --pad_value); default center-crop')
    p.add_argument('--pad_value', type=int, default=None, metavar='0-255',
                   help='the grey level of --transform pad-constant (default 0: black)')
    p.add_argument('--make_demo', default='', metavar='FOLDER',
                   help='write the built-in demo dataset to FOLDER (kept if it exists), '
                        'then pack it; --resolution defaults to 32')
    p.add_argument('--demo_images_per_class', type=int, default=500, help='demo size')
    p.add_argument('--demo_classes', type=int, default=10, help='demo classes (2 to 20)')
    p.add_argument('--seed', type=int, default=0, help='demo random seed')
    args = p.parse_args(argv)
    if args.pad_value is not None and args.transform != 'pad-constant':
        p.error(f'--pad_value is the fill of --transform pad-constant (not {args.transform})')
    try:
        args.image_transform = ImageTransform(args.transform, args.pad_value or 0)
    except ValueError as e:
        p.error(str(e))
    return args


# Signals received. The handler's SystemExit can be swallowed where it lands in library code
# that ignores exceptions (seen once in CI: a SIGTERMed packer exited 0), so pack_folder
# checks this list before it renames the finished file into place.
_terminated: list[int] = []


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn `kill` into SystemExit so the partial file is removed on the way out."""
    _terminated.append(signum)
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, make the demo folder if asked, pack, report what was skipped and why."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Checked before any image is written or read: a file at another size trains nothing.
    if args.resolution is not None and args.resolution not in G_CHANNELS:
        raise SystemExit(f'--resolution {args.resolution}: no model has an '
                         f'architecture for {args.resolution}x{args.resolution} images, so '
                         f'nothing could train on the file; use one of '
                         f'{", ".join(map(str, sorted(G_CHANNELS)))}')

    # Demo: write the image folder first; it is then packed like any user folder.
    if args.make_demo:
        args.resolution = args.resolution or 32
        demo = Path(args.make_demo)
        if demo.exists() and any(demo.iterdir()):
            print(f'Using the existing demo folder {demo}')
        else:
            make_demo_folder(demo, resolution=args.resolution,
                             images_per_class=args.demo_images_per_class,
                             n_classes=args.demo_classes, seed=args.seed)
            print(f'Wrote the demo image folder {demo}')
        args.dataset = str(demo)

    # Source folder and output file.
    named = DATASETS.get(args.dataset)
    if named is not None and named.kind != 'folder':
        raise SystemExit(f'{args.dataset} is not an image folder dataset: make_hdf5.py packs '
                         f'I32/I64/I128/I256 or a folder path')
    spec = resolve_dataset(args.dataset, args.data_root, resolution=args.resolution,
                           single_class_ok=args.unconditional)
    if spec.kind != 'folder':
        raise SystemExit(f'{spec.path} is already an HDF5 file')
    if named is not None:
        default_out = resolve_dataset(f'{args.dataset}_hdf5', args.data_root).path
    else:
        default_out = Path(args.data_root) / f'{spec.name}_{spec.resolution}.hdf5'
    output = Path(args.output) if args.output else default_out

    # Pack.
    print(f'Packing {spec.path} at {spec.resolution}x{spec.resolution} '
          f'({args.image_transform}) into {output}')
    result = pack_folder(spec.path, output, spec.resolution, batch_size=args.batch_size,
                         num_workers=args.num_workers, chunk_size=args.chunk_size,
                         compression=args.compression, single_class_ok=args.unconditional,
                         transform=args.image_transform)
    for line in result.skipped[:10]:
        print(f'  skipped {line}')
    if len(result.skipped) > 10:
        print(f'  ... and {len(result.skipped) - 10} more')
    summary = f'Wrote {result.n_images} images, {spec.n_classes} classes, to {result.path}'
    if result.skipped_files:
        summary += (f'; skipped {len(result.skipped_files)} files '
                    f'({count_kinds(result.skipped_files)}), listed in {result.log_path}')
    print(summary)


if __name__ == '__main__':
    sys.exit(run_cli(main, 'make_hdf5.py'))
