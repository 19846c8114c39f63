"""Sample grids as images: a batch laid out as torchvision's `save_image` draws it (2-pixel
black padding), optionally with a label beside each row, such as the class name of a sheet row.

Labels go in a white margin added on the left; the grid itself is pasted unchanged beside it.
The margin is a multiple of 16 pixels wide, so a JPEG encodes the grid in the same 8x8 blocks
(and 2x2 chroma groups) as without labels: its images decode to the same pixels (only the
padding column beside the margin changes, by the decoder's chroma smoothing). The text is
drawn in DejaVu Sans (shipped with matplotlib), which covers Latin, Greek and Cyrillic names;
without it in Pillow's own font.

    image = label_rows(grid_image(images, nrow=10), ['0 tench', '1 goldfish'], row_height=34)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
import torchvision
from PIL import Image, ImageDraw, ImageFont

PADDING = 2  # torchvision's make_grid default, between and around the images
MAX_LABEL_CHARS = 40  # longer labels are cut (ImageNet's longest name with its index: 34)


def grid_image(images: torch.Tensor, nrow: int) -> Image.Image:
    """Images [B, 3, R, R] in [-1, 1] as one RGB grid, `nrow` images per row, pixel for pixel
    what torchvision.utils.save_image(images, normalize=True, value_range=(-1, 1)) writes."""
    grid = torchvision.utils.make_grid(images.float().cpu(), nrow=nrow, padding=PADDING,
                                       normalize=True, value_range=(-1, 1))
    return uint8_image(grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8))


def uint8_grid(images: torch.Tensor, nrow: int) -> Image.Image:
    """uint8 images [B, 3, R, R] as one RGB grid, `nrow` per row, their pixels unchanged."""
    return uint8_image(torchvision.utils.make_grid(images.cpu(), nrow=nrow, padding=PADDING))


def uint8_image(image: torch.Tensor) -> Image.Image:
    """A uint8 [3, H, W] tensor as a PIL RGB image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), 'RGB')


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans at `size` pixels, else Pillow's own font (a bitmap one without FreeType)."""
    try:
        import matplotlib
        path = Path(matplotlib.__file__).parent / 'mpl-data' / 'fonts' / 'ttf' / 'DejaVuSans.ttf'
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: no sizes
        return ImageFont.load_default()


def _printable(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """`text` cut to MAX_LABEL_CHARS, and in Latin-1 for the bitmap font, which has no more."""
    if len(text) > MAX_LABEL_CHARS:
        text = text[:MAX_LABEL_CHARS - 3] + '...'
    if not isinstance(font, ImageFont.FreeTypeFont):
        text = text.encode('latin-1', 'replace').decode('latin-1')
    return text


def label_rows(grid: Image.Image, labels: Sequence[str], row_height: int,
               top: int = PADDING) -> Image.Image:
    """`grid` with a white margin on its left holding labels[i] beside row i, whose images
    start at y = top + i * row_height (images of side R in a grid: row_height R + 2)."""
    font = _font(max(10, min(20, row_height // 3)))
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    texts = [_printable(str(label), font) for label in labels]
    boxes = [probe.textbbox((0, 0), text, font=font) for text in texts]
    width = max([box[2] for box in boxes] + [0]) + 2 * 4
    width = -(-width // 16) * 16  # keeps the grid on JPEG's 16-pixel block grid
    out = Image.new('RGB', (grid.width + width, grid.height), 'white')
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, box) in enumerate(zip(texts, boxes)):
        centre = top + i * row_height + (row_height - PADDING) / 2
        draw.text((4, centre - (box[1] + box[3]) / 2), text, fill='black', font=font)
    return out


def save_grid_image(image: Image.Image, path: str) -> None:
    """Write a grid image (format from the extension), making its folder."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    image.save(path)


def labeled_grid(images: torch.Tensor, nrow: int, labels: Optional[Sequence[str]] = None
                 ) -> Image.Image:
    """Images [B, 3, R, R] in [-1, 1] as a grid (see grid_image), with `labels` beside its
    rows when given (one per row)."""
    image = grid_image(images, nrow)
    if labels is None:
        return image
    return label_rows(image, labels, row_height=images.shape[-2] + PADDING)
