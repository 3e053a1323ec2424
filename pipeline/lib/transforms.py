"""The albumentations training transform and the augmented copies it makes, shared by the augment stage and the
tools: chunk k of `chunk_rows` images always gets the seed chunk_seed(seed, k), so the copies are the same whichever
process makes them and however many there are (joblib's worker processes)."""

from __future__ import annotations

import os
from typing import Any

import albumentations as A
import cv2
import numpy as np
from joblib import Parallel, delayed

from pipeline.params import AugmentParams


def build_transform(cfg: AugmentParams, seed: int) -> A.Compose:
    """Return a seeded transform for 28x28 digits: an elastic distortion with probability `cfg.elastic_prob`
    (Simard et al. 2003: uniform displacements in [-1, 1] smoothed by a Gaussian of `elastic_sigma` pixels and
    scaled by `elastic_alpha`), then an affine one (rotation, zoom, shift; never a flip)."""
    elastic = A.ElasticTransform(
        alpha=cfg.elastic_alpha,
        sigma=cfg.elastic_sigma,
        interpolation=cv2.INTER_LINEAR,
        noise_distribution="uniform",
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        p=cfg.elastic_prob,
    )
    return A.Compose(
        [
            *([elastic] if cfg.elastic_prob > 0 else []),
            A.Affine(
                rotate=(-cfg.rotate_deg, cfg.rotate_deg),
                scale=(1.0 - cfg.scale, 1.0 + cfg.scale),
                translate_percent={"x": (-cfg.shift, cfg.shift), "y": (-cfg.shift, cfg.shift)},
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            ),
        ],
        seed=seed,
    )


def chunk_seed(seed: int, chunk: int) -> int:
    """Return the transform seed for chunk number `chunk`, derived from the global `seed`."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def augment_chunk(images: np.ndarray, copies: int, cfg: AugmentParams, seed: int) -> np.ndarray:
    """Return `copies` augmented versions of each image in `images` (n, 28, 28) as (n * copies, 28, 28)."""
    cv2.setNumThreads(1)
    transform = build_transform(cfg, seed)
    out = np.empty((len(images) * copies, *images.shape[1:]), dtype=np.uint8)
    for i, image in enumerate(images):
        for c in range(copies):
            out[i * copies + c] = transform(image=image)["image"]
    return out


def worker_count(cfg: AugmentParams) -> int:
    """Return the number of worker processes: `cfg.workers`, or one per core when 0."""
    return cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)


def augment(images: np.ndarray, cfg: AugmentParams, seed: int, workers: int = 1, bar: Any = None) -> dict:
    """Return `cfg.copies` augmented copies of each of `images` (x), the row each was made from (source) and its
    copy number (copy), made chunk by chunk in `workers` processes, advancing progress `bar` per chunk."""
    starts = range(0, len(images), cfg.chunk_rows)
    jobs = (
        delayed(augment_chunk)(images[s : s + cfg.chunk_rows], cfg.copies, cfg, chunk_seed(seed, k))
        for k, s in enumerate(starts)
    )
    parts = [np.empty((0, *images.shape[1:]), np.uint8)]
    # max_nbytes=None: chunks travel pickled, so no memory-mapped file is left behind by a killed run
    for part in Parallel(n_jobs=min(workers, len(starts)) or 1, max_nbytes=None, return_as="generator")(jobs):
        parts.append(part)
        if bar is not None:
            bar.update(len(part) // cfg.copies)
    source = np.repeat(np.arange(len(images), dtype=np.int32), cfg.copies)
    return {
        "x": np.concatenate(parts),
        "source": source,
        "copy": np.tile(np.arange(cfg.copies, dtype=np.int8), len(images)),
    }
