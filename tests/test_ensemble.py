"""Ensemble weights: chosen on OOF probabilities, non-negative, summing to 1, applied to test probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.lib.ensemble import (
    blend,
    choose_weights,
    cross_fitted_blend,
    cross_fitted_weights,
    ensemble_report,
    simplex_grid,
)
from pipeline.lib.metrics import log_loss


def noisy_probs(labels: np.ndarray, right: np.ndarray, confidence: float, seed: int) -> np.ndarray:
    """Return probabilities putting `confidence` on the label where `right`, else on a wrong class."""
    rng = np.random.default_rng(seed)
    target = np.where(right, labels, (labels + rng.integers(1, 10, len(labels))) % 10)
    probs = np.full((len(labels), 10), (1 - confidence) / 9)
    probs[np.arange(len(labels)), target] = confidence
    return probs


@pytest.fixture
def labels() -> np.ndarray:
    """Two hundred labels 0-9."""
    return np.random.default_rng(0).integers(0, 10, 200)


@pytest.mark.parametrize("objective", ["log_loss", "accuracy", "equal"])
def test_weights_are_non_negative_and_sum_to_one(labels, objective):
    rng = np.random.default_rng(1)
    oof = [noisy_probs(labels, rng.random(200) < p, 0.7, seed) for seed, p in enumerate((0.9, 0.8, 0.6))]
    w = choose_weights(oof, labels, objective, steps=10)
    assert w.shape == (3,)
    assert (w >= 0).all()
    assert w.sum() == pytest.approx(1.0)


def test_log_loss_weights_favour_the_better_model(labels):
    good = noisy_probs(labels, np.ones(200, bool), 0.9, seed=1)
    bad = noisy_probs(labels, np.random.default_rng(2).random(200) < 0.3, 0.9, seed=3)
    w = choose_weights([bad, good], labels, "log_loss")
    assert w[1] > 0.9


def test_log_loss_weights_beat_every_grid_point(labels):
    rng = np.random.default_rng(4)
    oof = [
        noisy_probs(labels, rng.random(200) < p, c, s) for s, (p, c) in enumerate(((0.85, 0.6), (0.8, 0.9), (0.7, 0.5)))
    ]
    best = log_loss(blend(oof, choose_weights(oof, labels, "log_loss")), labels)
    grid_losses = [log_loss(blend(oof, w), labels) for w in simplex_grid(3, 20)]
    assert best <= min(grid_losses) + 1e-9


def test_complementary_models_blend_better_than_either(labels):
    first_half = np.arange(200) < 100
    a = noisy_probs(labels, first_half, 0.9, seed=5)  # confidently right on rows 0-99 only
    b = noisy_probs(labels, ~first_half, 0.9, seed=6)  # confidently right on rows 100-199 only
    a[~first_half] = 0.1  # and undecided elsewhere
    b[first_half] = 0.1
    for objective in ("log_loss", "accuracy"):
        w = choose_weights([a, b], labels, objective, steps=10)
        report = ensemble_report([a, b], labels, w)
        assert report["blend"]["accuracy"] == 1.0
        assert all(m["accuracy"] < 0.7 for m in report["models"])
        assert w == pytest.approx([0.5, 0.5], abs=0.05)


def test_accuracy_ties_go_to_the_lower_log_loss(labels):
    sure = noisy_probs(labels, np.ones(200, bool), 0.95, seed=7)
    unsure = noisy_probs(labels, np.ones(200, bool), 0.3, seed=8)  # same argmax, worse loss
    assert choose_weights([unsure, sure], labels, "accuracy", steps=4) == pytest.approx([0.0, 1.0])


def test_blend_applies_the_weights_to_test_probabilities():
    p1 = np.eye(10)[[1, 2, 3]]
    p2 = np.eye(10)[[4, 5, 6]]
    assert blend([p1, p2], np.array([1.0, 0.0])) == pytest.approx(p1)
    mixed = blend([p1, p2], np.array([0.25, 0.75]))
    assert mixed.dtype == np.float32
    assert mixed[0, 1] == pytest.approx(0.25)
    assert mixed[0, 4] == pytest.approx(0.75)


def test_simplex_grid_counts_every_split():
    grid = simplex_grid(3, 4)
    assert len(grid) == 15  # C(4 + 2, 2)
    assert len({tuple(w) for w in grid}) == 15
    assert np.allclose(grid.sum(axis=1), 1.0)


def test_clear_errors(labels):
    p = noisy_probs(labels, np.ones(200, bool), 0.9, seed=9)
    with pytest.raises(ValueError, match="shape"):
        choose_weights([p, p[:10]], labels)
    with pytest.raises(ValueError, match="NaN"):
        choose_weights([p, np.full_like(p, np.nan)], labels)
    with pytest.raises(ValueError, match="labels"):
        choose_weights([p, p], labels[:10])
    with pytest.raises(ValueError, match="non-negative"):
        blend([p, p], np.array([1.5, -0.5]))
    with pytest.raises(ValueError, match="grid"):
        simplex_grid(8, 50)


def fold_specialist(labels: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (specialist, steady): the first is confidently right on fold 0's rows only and confidently wrong
    elsewhere; the second is right on 80% of all rows, less confidently."""
    specialist = noisy_probs(labels, folds == 0, 0.95, seed=10)
    steady = noisy_probs(labels, np.random.default_rng(11).random(len(labels)) < 0.8, 0.6, seed=12)
    return specialist, steady


@pytest.mark.parametrize("objective", ["log_loss", "accuracy"])
def test_cross_fitted_weights_never_see_the_folds_own_rows(labels, objective):
    folds = np.arange(200) % 4
    specialist, steady = fold_specialist(labels, folds)
    weights = cross_fitted_weights([specialist, steady], labels, folds, objective, steps=10)
    assert sorted(weights) == [0, 1, 2, 3]
    assert weights[0] == pytest.approx([0.0, 1.0], abs=0.05)  # chosen on folds 1-3, where the specialist is wrong
    honest = cross_fitted_blend([specialist, steady], folds, weights)
    rows = folds == 0
    np.testing.assert_allclose(honest[rows], blend([specialist[rows], steady[rows]], weights[0]), rtol=1e-6)

    # fold 0's weights do not depend on fold 0's labels or probabilities at all
    other_labels = np.where(rows, (labels + 3) % 10, labels)
    other_specialist = np.where(rows[:, None], np.roll(specialist, 1, axis=1), specialist)
    again = cross_fitted_weights([other_specialist, steady], other_labels, folds, objective, steps=10)
    np.testing.assert_array_equal(again[0], weights[0])
    assert not np.array_equal(again[1], weights[1])  # fold 1's did see fold 0's rows


def test_cross_fitted_weights_skip_the_rows_not_kept(labels):
    folds = np.arange(200) % 4
    specialist, steady = fold_specialist(labels, folds)
    keep = folds != 0  # fold 0's rows excluded: no fold's weights may see them
    weights = cross_fitted_weights([specialist, steady], labels, folds, keep=keep)
    for fold in (1, 2, 3):
        fit = (folds != fold) & keep
        np.testing.assert_array_equal(weights[fold], choose_weights([specialist[fit], steady[fit]], labels[fit]))


def test_one_model_cross_fits_to_its_own_probabilities(labels):
    folds = np.arange(200) % 3
    probs = noisy_probs(labels, np.random.default_rng(13).random(200) < 0.9, 0.8, seed=14)
    weights = cross_fitted_weights([probs], labels, folds)
    assert all(w.tolist() == [1.0] for w in weights.values())
    np.testing.assert_allclose(cross_fitted_blend([probs], folds, weights), probs, rtol=1e-6)


def test_cross_fitting_needs_two_folds(labels):
    p = noisy_probs(labels, np.ones(200, bool), 0.9, seed=15)
    with pytest.raises(ValueError, match="at least two folds"):
        cross_fitted_weights([p, p], labels, np.zeros(200, int))
    with pytest.raises(ValueError, match="fold ids"):
        cross_fitted_weights([p, p], labels, np.zeros(10, int))
