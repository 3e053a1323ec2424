"""Blending models' class probabilities: non-negative weights summing to 1, chosen on out-of-fold (OOF) predictions
only (by OOF log loss or accuracy), then applied to test probabilities. Cross-fitted weights blend fold k's OOF rows
with weights chosen on the other folds' rows only: its OOF accuracy is an honest estimate of the test blend's."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.optimize import minimize

from pipeline.lib.metrics import accuracy, log_loss, scores

MAX_GRID_POINTS = 20_000
Probs = list[np.ndarray] | np.ndarray  # one (n, classes) array per model


def stack_probs(probs: Probs) -> np.ndarray:
    """Return the models' probabilities as one float64 array (models, n, classes); ValueError on other shapes or NaN."""
    shapes = {np.shape(p) for p in probs}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every model's probabilities must share one (n, classes) shape, got {sorted(shapes)}")
    stacked = np.asarray(probs, np.float64)
    if not np.isfinite(stacked).all():
        raise ValueError("probabilities hold NaN or infinite values (missing OOF rows?)")
    return stacked


def blend(probs: Probs, weights: np.ndarray) -> np.ndarray:
    """Return the weighted average (n, classes) of the models' probabilities as float32."""
    stacked, w = stack_probs(probs), np.asarray(weights, np.float64)
    if w.shape != (len(stacked),) or (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"expected {len(stacked)} non-negative weights summing to 1, got {w.tolist()}")
    return np.tensordot(w, stacked, axes=1).astype(np.float32)


def simplex_grid(models: int, steps: int) -> np.ndarray:
    """Return every weight vector of `models` non-negative multiples of 1/`steps` summing to 1."""
    count = math.comb(steps + models - 1, models - 1)
    if count > MAX_GRID_POINTS:
        raise ValueError(f"a {steps}-step grid over {models} models has {count} points; use fewer steps")
    bars = itertools.combinations(range(steps + models - 1), models - 1)
    points = [np.diff([-1, *b, steps + models - 1]) - 1 for b in bars]
    return np.asarray(points, dtype=np.float64).reshape(-1, models) / steps


def weights_by_log_loss(stacked: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the weights minimising OOF log loss (convex; SLSQP on the simplex), from each row's label column alone."""
    m = len(stacked)
    true = stacked[:, np.arange(len(labels)), labels]
    result = minimize(
        lambda w: -np.mean(np.log(np.clip(w @ true, 1e-15, None))), np.full(m, 1.0 / m),
        jac=lambda w: -np.mean(true / np.clip(w @ true, 1e-15, None), axis=1), method="SLSQP",
        bounds=[(0.0, 1.0)] * m, constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
        options={"ftol": 1e-12, "maxiter": 500},
    )  # fmt: skip
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


def weights_by_accuracy(stacked: np.ndarray, labels: np.ndarray, steps: int) -> np.ndarray:
    """Return the simplex-grid weights with the best OOF accuracy; ties go to the lower OOF log loss."""
    grid = simplex_grid(len(stacked), steps)
    scored = np.array([accuracy(np.tensordot(w, stacked, axes=1), labels) for w in grid])
    tied = np.flatnonzero(scored == scored.max())
    return grid[min(tied, key=lambda i: log_loss(np.tensordot(grid[i], stacked, axes=1), labels))]


def choose_weights(oof_probs: Probs, labels: np.ndarray, objective: str = "log_loss", steps: int = 20) -> np.ndarray:
    """Return one weight per model (>= 0, summing to 1) chosen on OOF probabilities and labels by `objective`."""
    stacked, labels = stack_probs(oof_probs), np.asarray(labels, np.int64)
    if labels.shape != (stacked.shape[1],):
        raise ValueError(f"{stacked.shape[1]} OOF rows but {labels.shape} labels")
    if objective == "equal" or len(stacked) == 1:
        return np.full(len(stacked), 1.0 / len(stacked))
    return (
        weights_by_log_loss(stacked, labels) if objective == "log_loss" else weights_by_accuracy(stacked, labels, steps)
    )


def ensemble_report(oof_probs: Probs, y: np.ndarray, weights: np.ndarray) -> dict:
    """Return each model's and the blend's OOF accuracy and log loss against labels `y` with the `weights` used."""
    probs, w = stack_probs(oof_probs), np.asarray(weights, np.float64)
    return {"weights": w.tolist(), "models": [scores(p, y) for p in probs], "blend": scores(blend(probs, w), y)}


def cross_fitted_weights(
    oof_probs: Probs,
    labels: np.ndarray,
    folds: np.ndarray,
    objective: str = "log_loss",
    steps: int = 20,
    keep: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Return, for every fold k in `folds`, the weights chosen on the OOF rows of the other folds in mask `keep`."""
    stacked, folds, labels = stack_probs(oof_probs), np.asarray(folds), np.asarray(labels)
    keep = np.ones(len(folds), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if folds.shape != (stacked.shape[1],) or keep.shape != folds.shape:
        raise ValueError(f"{stacked.shape[1]} OOF rows but {folds.shape} fold ids and {keep.shape} kept flags")
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError(f"cross-fitted weights need OOF rows of at least two folds, got folds {ids.tolist()}")
    fit_rows = {int(k): (folds != k) & keep for k in ids}
    return {k: choose_weights(stacked[:, rows], labels[rows], objective, steps) for k, rows in fit_rows.items()}


def cross_fitted_blend(oof_probs: Probs, folds: np.ndarray, fold_weights: dict[int, np.ndarray]) -> np.ndarray:
    """Return the OOF probabilities (n, classes), each fold's rows blended by its weights in `fold_weights`."""
    stacked, folds = stack_probs(oof_probs), np.asarray(folds)
    out = np.zeros(stacked.shape[1:], dtype=np.float32)
    for fold, weights in fold_weights.items():
        out[folds == fold] = blend(stacked[:, folds == fold], weights)
    return out


def left_out_blends(
    oof_probs: Probs, labels: np.ndarray, folds: np.ndarray, objective: str = "log_loss", keep: np.ndarray | None = None
) -> list[np.ndarray]:
    """Return, for each model in `oof_probs`, the cross-fitted blend of the others: the ensemble without it."""
    stacked = stack_probs(oof_probs)
    rests = [np.delete(stacked, i, axis=0) for i in range(len(stacked))]
    return [cross_fitted_blend(r, folds, cross_fitted_weights(r, labels, folds, objective, keep=keep)) for r in rests]
