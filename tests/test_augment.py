"""Augment: copies tagged with their source row, deterministic, never flipped, and fold-safe."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline import augment, paths
from pipeline.lib.fitting import EpochSampler
from pipeline.lib.transforms import augment as make_copies
from pipeline.params import AugmentParams

CFG = AugmentParams(copies=3, rotate_deg=10, scale=0.1, shift=0.1, chunk_rows=16, workers=1, preview_rows=2)


def test_copies_are_tagged_with_their_source_row(digits):
    images, _ = digits
    out = make_copies(images, CFG, seed=1)
    assert out["x"].shape == (180, 28, 28) and out["x"].dtype == np.uint8
    assert np.array_equal(np.bincount(out["source"]), [3] * 60)
    assert out["copy"].tolist()[:6] == [0, 1, 2, 0, 1, 2]


def test_copies_are_small_affine_changes_never_flips():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 5:11, 4:9] = 255  # a blob in the top-left quadrant
    out = make_copies(image, CFG, seed=2)
    for copy in out["x"]:
        assert not np.array_equal(copy, image[0])
        rows, cols = np.nonzero(copy > 127)
        assert rows.mean() < 12 and cols.mean() < 12  # a flip would move the blob to another quadrant


def test_augmentation_is_seeded_and_independent_of_worker_count(digits):
    images, _ = digits
    one = make_copies(images, CFG, seed=5, workers=1)
    two = make_copies(images, CFG, seed=5, workers=2)
    assert np.array_equal(one["x"], two["x"])
    assert not np.array_equal(one["x"], make_copies(images, CFG, seed=6)["x"])


def centre(image: np.ndarray) -> np.ndarray:
    """Return the (row, column) centre of mass of `image`'s ink."""
    ink = image.astype(float)
    return np.array([(ink.sum(axis=1) * np.arange(28)).sum(), (ink.sum(axis=0) * np.arange(28)).sum()]) / ink.sum()


def test_elastic_distortion_moves_strokes_locally_seeded_and_only_when_asked(digits):
    images, _ = digits
    still = replace(CFG, rotate_deg=0.0, scale=0.0, shift=0.0)  # no affine change: only the elastic one is left
    assert np.array_equal(make_copies(images, still, seed=4)["x"], np.repeat(images, 3, axis=0))
    elastic = replace(still, elastic_prob=1.0)
    one = make_copies(images, elastic, seed=4)
    changed = np.abs(one["x"].astype(int) - np.repeat(images, 3, axis=0)).mean(axis=(1, 2)) > 0
    assert changed.all()  # every copy distorted
    # local, not global: on average the ink keeps its centre of mass within a pixel (a shift of 10% moves it ~3)
    drifts = [np.abs(centre(copy) - centre(images[row])) for copy, row in zip(one["x"], one["source"], strict=True)]
    assert np.mean(drifts) < 1.0
    assert np.array_equal(one["x"], make_copies(images, elastic, seed=4, workers=2)["x"])
    half = make_copies(images, replace(still, elastic_prob=0.5), seed=4)
    untouched = (half["x"] == np.repeat(images, 3, axis=0)).all(axis=(1, 2))
    assert 0.2 < untouched.mean() < 0.8


def test_copies_of_validation_rows_never_reach_training(digits):
    images, labels = digits
    out = make_copies(images, CFG, seed=1)
    folds = np.arange(60) % 3
    train_rows = np.flatnonzero(folds != 0)
    sampler = EpochSampler(images, labels, train_rows, out["x"], out["source"], seed=3)
    index, _ = sampler.sample_indices(0, aug_prob=1.0)  # every training row replaced by one of its copies
    assert index.min() >= len(images)
    assert set(out["source"][index - len(images)].tolist()) == set(train_rows.tolist())
    val_copies = {out["x"][i].tobytes() for i in np.flatnonzero(folds[out["source"]] == 0)}
    train_images = {images[i].tobytes() for i in train_rows}
    for epoch in range(4):
        x, y = sampler.sample(epoch, aug_prob=0.9)
        assert len(x) == len(train_rows)
        assert not any(img.tobytes() in val_copies for img in x)
        assert sorted(y.tolist()) == sorted(labels[train_rows].tolist())
        assert any(img.tobytes() not in train_images for img in x)  # copies are drawn


def test_augment_main_writes_copies_and_preview(project):
    from pipeline import ingest

    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    assert paths.AUGMENTED_NPZ.is_file()
    assert paths.AUGMENTATIONS_PNG.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
