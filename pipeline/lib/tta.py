"""Test-time augmentation: deterministic affine views of each image (whole-pixel shifts in NumPy,
rotations and zooms through keras.ops: any backend), averaged through a model's class probabilities."""

from __future__ import annotations

import math

import keras
import numpy as np

# (rotation degrees, zoom, shift x px, shift y px), in the order views are added.
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 1.0, 0.0), (0.0, 1.0, -1.0, 0.0), (0.0, 1.0, 0.0, 1.0), (0.0, 1.0, 0.0, -1.0),  # one-pixel shifts
    (8.0, 1.0, 0.0, 0.0), (-8.0, 1.0, 0.0, 0.0), (0.0, 1.08, 0.0, 0.0), (0.0, 0.93, 0.0, 0.0),  # rotations, zooms
)  # fmt: skip


def view_matrix(view: tuple[float, float, float, float], side: int = 28) -> list[float]:
    """Return the 8-value projective transform (output -> input pixel) for `view` about the centre."""
    angle, zoom, dx, dy = view
    theta = math.radians(angle)
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    centre = (side - 1) / 2.0
    tx = centre - cos * centre + sin * centre - dx
    ty = centre - sin * centre - cos * centre - dy
    return [cos, -sin, tx, sin, cos, ty, 0.0, 0.0]


def is_shift(view: tuple[float, float, float, float]) -> bool:
    """Return whether `view` only moves the image by whole pixels (no rotation or zoom)."""
    angle, zoom, dx, dy = view
    return angle == 0.0 and zoom == 1.0 and float(dx).is_integer() and float(dy).is_integer()


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Return float32 images (n, h, w, 1) moved `dx` px right and `dy` px down, zero fill (= the bilinear view)."""
    n, h, w = images.shape[:3]
    out = np.zeros((n, h, w, 1), np.float32)
    if abs(dx) < w and abs(dy) < h:
        rows_to, rows_from = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
        cols_to, cols_from = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
        out[:, rows_to, cols_to, 0] = images[:, rows_from, cols_from]
    return out


def affine_view(images: np.ndarray, view: tuple[float, float, float, float], chunk: int = 4096) -> np.ndarray:
    """Return float32 images (n, 28, 28, 1) transformed by `view` with keras.ops (bilinear, zero fill)."""
    x = images.astype(np.float32)[..., None]
    matrix = np.asarray(view_matrix(view, images.shape[1]), np.float32)
    out = np.empty_like(x)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        transform = keras.ops.convert_to_tensor(np.tile(matrix, (len(part), 1)))  # one per image: JAX needs that
        moved = keras.ops.image.affine_transform(part, transform, interpolation="bilinear", fill_mode="constant")
        out[start : start + len(part)] = keras.ops.convert_to_numpy(moved)
    return out


def apply_view(images: np.ndarray, view: tuple[float, float, float, float]) -> np.ndarray:
    """Return float32 images (n, 28, 28, 1) transformed by `view`: whole-pixel shifts in NumPy, others by keras.ops."""
    return shifted(images, int(view[2]), int(view[3])) if is_shift(view) else affine_view(images, view)


def views_for(count: int) -> list[tuple[float, float, float, float]]:
    """Return the identity view plus the first `count` (0 to len(VIEWS): params.TTA_VIEWS) deterministic views."""
    return [(0.0, 1.0, 0.0, 0.0), *VIEWS[:count]]


def predict_views(model: keras.Model, images: np.ndarray, views: int, batch_size: int, bar=None) -> np.ndarray:
    """Return probabilities (views + 1, n, 10) of `images` for the original and each view, one batch at a time through
    model.predict_on_batch (no per-call data pipeline, as model.predict sets up), advancing progress `bar` if given."""
    chosen = views_for(views)
    if len(images) == 0:
        return np.zeros((len(chosen), 0, model.output_shape[-1]), np.float32)
    parts: list[list[np.ndarray]] = [[] for _ in chosen]
    for start in range(0, len(images), batch_size):
        block = images[start : start + batch_size]
        for probs, view in zip(parts, chosen, strict=True):
            probs.append(np.asarray(model.predict_on_batch(apply_view(block, view)), dtype=np.float32))
        if bar is not None:
            bar.update(len(block))
    return np.stack([np.concatenate(probs) for probs in parts])
