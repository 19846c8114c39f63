"""How an image of any shape becomes the R x R square the models train on, and which way a
dataset was made: `make_hdf5.py --transform` and `train.py --transform` (image folders).

    center-crop       the centred square of side min(w, h), resized to R x R (the default; the
                      2019 release's CenterCrop + Resize)
    center-crop-wide  the centred 2:1 (width:height) window, resized to R x R/2 and placed in
                      the middle of a black R x R canvas (bars of R/4 rows above and below)
    pad               the short side padded to a square by reflection (no edge repeat:
                      ... c b | a b c ... as numpy's and torch's 'reflect'), resized to R x R
    pad-constant      the same with every padded pixel the grey level --pad_value (0-255)

Centring: an odd number of cropped or padded pixels puts the extra one at the right / bottom
(center-crop rounds the offset as torchvision does). center-crop-wide keeps every image: one
wider than 2:1 loses columns (2h of its w stay), one narrower than 2:1 (a 4:3 photo, a portrait)
loses rows (w // 2 of its h stay). stylegan2-ada-pytorch's `dataset_tool.py
--transform=center-crop-wide` drops, silently, images wider than the output's aspect and images
narrower than the output in pixels, and crops round(W h / w) rows of the input, which is the
window's height only when the input is W pixels wide (their issue #47: other widths come out
squashed); the window here is the same shape at every input size.

An HDF5 file records its transform in its attributes (`transform`, and `pad_value` for
pad-constant); files without them (packed before, or by 2019's make_hdf5.py) are center-crop.

Example:
    t = ImageTransform('pad-constant', pad_value=255)
    square = t(Image.open('photo.jpg').convert('RGB'), 64)  # PIL RGB image, 64 x 64
"""
import os
from dataclasses import dataclass

import h5py
import numpy as np
from PIL import Image

TRANSFORMS = ('center-crop', 'center-crop-wide', 'pad', 'pad-constant')
DEFAULT_TRANSFORM = 'center-crop'
RESAMPLE = Image.BILINEAR


def center_crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop the long edge to a square (torchvision's rounding), resize to resolution."""
    w, h = img.size
    s = min(w, h)
    left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
    img = img.crop((left, top, left + s, top + s))
    return img if s == resolution else img.resize((resolution, resolution), RESAMPLE)


def center_crop_wide(img: Image.Image, resolution: int) -> Image.Image:
    """The centred 2:1 window, resized to R x R/2, in the middle of a black R x R canvas."""
    w, h = img.size
    if w >= 2 * h:  # wider than 2:1: keep all rows, the middle 2h columns
        left = (w - 2 * h) // 2
        box = (left, 0, left + 2 * h, h)
    else:  # narrower: keep all columns, the middle w // 2 rows
        rows = max(1, w // 2)
        top = (h - rows) // 2
        box = (0, top, w, top + rows)
    band_size = (resolution, resolution // 2)
    band = img.crop(box)
    if band.size != band_size:
        band = band.resize(band_size, RESAMPLE)
    canvas = Image.new('RGB', (resolution, resolution))  # black
    canvas.paste(band, (0, (resolution - band_size[1]) // 2))
    return canvas


def pad_resize(img: Image.Image, resolution: int, value: int | None) -> Image.Image:
    """Pad the short side to a square, by reflection (value None) or with grey `value`, and
    resize to resolution."""
    w, h = img.size
    s = max(w, h)
    top, left = (s - h) // 2, (s - w) // 2
    pad = ((top, s - h - top), (left, s - w - left), (0, 0))
    pixels = np.asarray(img)  # (h, w, 3)
    if value is None:
        # A one-pixel side has nothing to reflect: numpy would raise, repeating it is the limit.
        mode = 'reflect' if min(w, h) > 1 else 'edge'
        pixels = np.pad(pixels, pad, mode=mode)
    else:
        pixels = np.pad(pixels, pad, mode='constant', constant_values=value)
    img = Image.fromarray(pixels, 'RGB')  # (s, s)
    return img if s == resolution else img.resize((resolution, resolution), RESAMPLE)


@dataclass(frozen=True)
class ImageTransform:
    """One of TRANSFORMS, and the grey level pad-constant fills with (0 for the others)."""
    name: str = DEFAULT_TRANSFORM
    pad_value: int = 0

    def __post_init__(self):
        if self.name not in TRANSFORMS:
            raise ValueError(f'unknown transform {self.name!r}: choose from '
                             f'{", ".join(TRANSFORMS)}')
        if not 0 <= self.pad_value <= 255 or int(self.pad_value) != self.pad_value:
            raise ValueError(f'pad_value {self.pad_value}: a grey level, an integer in 0-255')
        if self.pad_value and self.name != 'pad-constant':
            raise ValueError(f'pad_value {self.pad_value} is the fill of the pad-constant '
                             f'transform; {self.name} does not use it')

    def __call__(self, img: Image.Image, resolution: int) -> Image.Image:
        """The RGB image `img` as an R x R RGB image."""
        if self.name == 'center-crop':
            return center_crop_resize(img, resolution)
        if self.name == 'center-crop-wide':
            return center_crop_wide(img, resolution)
        return pad_resize(img, resolution, self.pad_value if self.name == 'pad-constant' else None)

    def __str__(self) -> str:
        return (f'{self.name} (pad_value {self.pad_value})' if self.name == 'pad-constant'
                else self.name)

    @property
    def attrs(self) -> dict:
        """The HDF5 attributes that record it (pad_value for pad-constant only)."""
        if self.name == 'pad-constant':
            return {'transform': self.name, 'pad_value': int(self.pad_value)}
        return {'transform': self.name}


CENTER_CROP = ImageTransform()


def hdf5_transform(path: str | os.PathLike) -> ImageTransform:
    """The transform an HDF5 file was packed with (its attributes; none: center-crop)."""
    with h5py.File(path, 'r') as f:
        name, value = f.attrs.get('transform', DEFAULT_TRANSFORM), f.attrs.get('pad_value', 0)
    name = name.decode() if isinstance(name, bytes) else str(name)
    try:
        return ImageTransform(name, int(value))
    except ValueError as e:
        raise ValueError(f'{path}: its attributes record an unusable transform ({e})') from e


def run_transform(kind: str, path: str | os.PathLike, config: dict,
                  given: dict | None = None) -> ImageTransform:
    """The transform a run's images go through, for its config: the config's `transform` and
    `pad_value` for an image folder; an HDF5 file's own (a different one asked for, i.e.
    typed, in `given`, or not the default, is an error); center-crop for CIFAR (used as is)."""
    asked = ImageTransform(config.get('transform', DEFAULT_TRANSFORM), config.get('pad_value', 0))
    typed = asked != CENTER_CROP or bool(given and given.keys() & {'transform', 'pad_value'})
    if kind == 'folder':
        return asked
    if kind == 'hdf5':
        packed = hdf5_transform(path)
        if typed and asked != packed:
            raise ValueError(f'--transform {asked}: {path} was packed with the transform '
                             f'{packed}, and its pixels are already cropped or padded. Drop '
                             f'--transform (the run records the file\'s), or repack the image '
                             f'folder with make_hdf5.py --transform {asked.name}')
        return packed
    if typed and asked != CENTER_CROP:
        raise ValueError(f'--transform {asked}: the {kind} images are square and used as they '
                         f'are; drop --transform')
    return CENTER_CROP
