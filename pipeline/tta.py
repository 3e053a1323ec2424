"""Test-time augmentation: deterministic affine views of each image (keras.ops, any backend),
averaged through a model's class probabilities."""

from __future__ import annotations

import math

import keras
import numpy as np

from pipeline.training import as_input

# (rotation degrees, zoom, shift x px, shift y px), in the order views are added.
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 0.0),
    (0.0, 1.0, 0.0, 1.0),
    (0.0, 1.0, 0.0, -1.0),
    (8.0, 1.0, 0.0, 0.0),
    (-8.0, 1.0, 0.0, 0.0),
    (0.0, 1.08, 0.0, 0.0),
    (0.0, 0.93, 0.0, 0.0),
)


def view_matrix(view: tuple[float, float, float, float], side: int = 28) -> list[float]:
    """Return the 8-value projective transform (output -> input pixel) for `view` about the centre."""
    angle, zoom, dx, dy = view
    theta = math.radians(angle)
    cos, sin = math.cos(theta) / zoom, math.sin(theta) / zoom
    centre = (side - 1) / 2.0
    tx = centre - cos * centre + sin * centre - dx
    ty = centre - sin * centre - cos * centre - dy
    return [cos, -sin, tx, sin, cos, ty, 0.0, 0.0]


def apply_view(images: np.ndarray, view: tuple[float, float, float, float], chunk: int = 4096) -> np.ndarray:
    """Return float32 images (n, 28, 28, 1) transformed by `view` (bilinear, zero fill), `chunk` at a time."""
    x = as_input(images)
    if view == (0.0, 1.0, 0.0, 0.0):
        return x
    matrix = np.asarray(view_matrix(view, images.shape[1]), np.float32)
    out = np.empty_like(x)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        transform = keras.ops.convert_to_tensor(np.tile(matrix, (len(part), 1)))  # one per image: JAX needs that
        moved = keras.ops.image.affine_transform(part, transform, interpolation="bilinear", fill_mode="constant")
        out[start : start + len(part)] = keras.ops.convert_to_numpy(moved)
    return out


def views_for(count: int) -> list[tuple[float, float, float, float]]:
    """Return the identity view plus the first `count` deterministic views."""
    if not 0 <= count <= len(VIEWS):
        raise ValueError(f"predict.tta_views must be between 0 and {len(VIEWS)}, got {count}")
    return [(0.0, 1.0, 0.0, 0.0), *VIEWS[:count]]


def predict_views(model: keras.Model, images: np.ndarray, views: int, batch_size: int) -> np.ndarray:
    """Return probabilities (views + 1, n, 10) of `images` for the original and each view."""
    out = []
    for view in views_for(views):
        x = apply_view(images, view)
        out.append(np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32))
    return np.stack(out)
