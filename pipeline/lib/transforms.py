"""The albumentations training transform shared by the augment stage and the benchmark."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

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
