"""Turns a photo or drawing of one digit (PNG, JPG, ..., any size, dark-on-light or light-on-dark) into a 28x28
MNIST-style uint8 image, as the competition CSVs give them: light ink (up to 255) on black (0), the digit scaled so its
longer side is 20 px and centred by its centre of mass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

SIDE = 28  # output size, as in the competition data
BOX = 20  # the digit's longer side, as in MNIST
INK_FRACTION = 0.15  # pixels dimmer than this fraction of the brightest ink count as background


class ImageError(ValueError):
    """The image file cannot be read or holds no digit; the message says what to do."""


def read_pixels(path: Path) -> np.ndarray:
    """Return the float32 grayscale pixels (0 black .. 255 white) of the image at `path` (see-through: opacity)."""
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
    edges = (pixels[:ring], pixels[-ring:], pixels[:, :ring], pixels[:, -ring:])
    return float(np.median(np.concatenate([edge.ravel() for edge in edges])))


def ink_map(pixels: np.ndarray) -> np.ndarray:
    """Return ink intensity in [0, 1] (0: background), inverting an image whose border (paper) is light."""
    if border_level(pixels) > 127:
        pixels = 255.0 - pixels
    ink = np.clip(pixels - border_level(pixels), 0, None)
    if (peak := float(ink.max())) < 16:
        raise ImageError("no digit found: the image is blank or has too little contrast")
    return np.where(ink / peak < INK_FRACTION, 0.0, ink / peak)


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """Return `ink` cropped to the bounding box of its non-zero pixels."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """Return `ink` resized (antialiased) so its longer side is `box` pixels, aspect ratio kept."""
    h, w = ink.shape
    size = (max(1, round(w * box / max(h, w))), max(1, round(h * box / max(h, w))))
    img = Image.fromarray((ink * 255).astype(np.float32), mode="F")
    return np.clip(np.asarray(img.resize(size, Image.Resampling.BILINEAR)), 0, 255)


def centre_by_mass(digit: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Return a `side` x `side` canvas with `digit` placed so its centre of mass is central (kept inside the canvas)."""
    h, w = digit.shape
    cy, cx = ndimage.center_of_mass(digit) if digit.sum() else ((h - 1) / 2, (w - 1) / 2)
    top = int(np.clip(round((side - 1) / 2 - cy), 0, side - h))
    left = int(np.clip(round((side - 1) / 2 - cx), 0, side - w))
    canvas = np.zeros((side, side), np.float32)
    canvas[top : top + h, left : left + w] = digit
    return canvas


def to_mnist(pixels: np.ndarray) -> np.ndarray:
    """Return grayscale `pixels` of any size as a 28x28 uint8 MNIST-style digit (ink 255 on 0)."""
    canvas = centre_by_mass(fit_box(crop_to_ink(ink_map(np.asarray(pixels, dtype=np.float32)))))
    peak = float(canvas.max())
    return np.round(canvas * (255.0 / peak)).astype(np.uint8) if peak > 0 else canvas.astype(np.uint8)


def load_digit(path: Path) -> np.ndarray:
    """Read the image file at `path` and return it as a 28x28 uint8 MNIST-style digit."""
    return to_mnist(read_pixels(Path(path)))
