"""Turns a photo or drawing of one digit (PNG, JPG, ..., any size, dark-on-light or light-on-dark)
into a 28x28 MNIST-style uint8 image, the representation the competition CSVs give: light ink
(up to 255) on a black (0) background, the digit scaled so its longer side is 20 px and centred
by its centre of mass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIDE = 28  # output size, as in the competition data
BOX = 20  # the digit's longer side, as in MNIST
INK_FRACTION = 0.15  # pixels dimmer than this fraction of the brightest ink count as background


class ImageError(ValueError):
    """The image file cannot be read or holds no digit; the message says what to do."""


def read_pixels(path: Path) -> np.ndarray:
    """Read the image at `path` and return its float32 grayscale pixels (0 black .. 255 white).

    Images with real transparency (a drawing on a transparent canvas) use opacity as the ink."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file: pass the path of a PNG or JPG holding one digit")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                alpha = np.asarray(img.convert("RGBA"))[..., 3].astype(np.float32)
                if alpha.min() < 250:
                    return alpha
            return np.asarray(img.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc}): use a PNG or JPG") from exc


def border_level(pixels: np.ndarray) -> float:
    """Return the median of the outer ring of `pixels` (the background's brightness)."""
    ring = max(1, min(pixels.shape) // 20)
    border = np.concatenate(
        [pixels[:ring].ravel(), pixels[-ring:].ravel(), pixels[:, :ring].ravel(), pixels[:, -ring:].ravel()]
    )
    return float(np.median(border))


def ink_map(pixels: np.ndarray) -> np.ndarray:
    """Return float ink intensity in [0, 1] (0 = background), inverting dark-on-light images.

    The background is judged from the border: a light border means dark ink on light paper."""
    if border_level(pixels) > 127:
        pixels = 255.0 - pixels
    ink = np.clip(pixels - border_level(pixels), 0, None)
    peak = float(ink.max())
    if peak < 16:
        raise ImageError("no digit found: the image is blank or has too little contrast")
    ink /= peak
    ink[ink < INK_FRACTION] = 0.0
    return ink


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """Return `ink` cropped to the bounding box of its non-zero pixels."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """Return `ink` resized (antialiased) so its longer side is `box` pixels, aspect ratio kept."""
    h, w = ink.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray((ink * 255).astype(np.float32), mode="F")
    return np.clip(np.asarray(img.resize(size, Image.Resampling.BILINEAR)), 0, 255)


def centre_by_mass(digit: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Return a side x side canvas with `digit` placed so its centre of mass is at the centre
    (shifted back inside where the centre of mass would push ink off the canvas)."""
    h, w = digit.shape
    total = float(digit.sum())
    ys, xs = np.indices(digit.shape)
    cy = float((ys * digit).sum() / total) if total else (h - 1) / 2
    cx = float((xs * digit).sum() / total) if total else (w - 1) / 2
    centre = (side - 1) / 2
    top = int(np.clip(round(centre - cy), 0, side - h))
    left = int(np.clip(round(centre - cx), 0, side - w))
    canvas = np.zeros((side, side), np.float32)
    canvas[top : top + h, left : left + w] = digit
    return canvas


def to_mnist(pixels: np.ndarray) -> np.ndarray:
    """Return grayscale `pixels` of any size as a 28x28 uint8 MNIST-style digit (ink 255 on 0)."""
    digit = fit_box(crop_to_ink(ink_map(np.asarray(pixels, dtype=np.float32))))
    canvas = centre_by_mass(digit)
    peak = float(canvas.max())
    return np.round(canvas * (255.0 / peak)).astype(np.uint8) if peak > 0 else canvas.astype(np.uint8)


def load_digit(path: Path) -> np.ndarray:
    """Read the image file at `path` and return it as a 28x28 uint8 MNIST-style digit."""
    return to_mnist(read_pixels(Path(path)))
