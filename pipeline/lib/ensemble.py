"""Blending several models' class probabilities: non-negative weights summing to 1, chosen on
out-of-fold (OOF) predictions only (by OOF log loss or OOF accuracy), then applied to test probabilities.
Cross-fitted weights blend fold k's OOF rows with weights chosen on the other folds' rows only, so the
blend's OOF accuracy is an honest estimate of the test blend's, not an in-sample one."""

from __future__ import annotations

import itertools
import math

import numpy as np

MAX_GRID_POINTS = 20_000


def stack_probs(probs: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Return the models' probabilities as one float64 array (models, n, classes), checking shapes agree."""
    arrays = [np.asarray(p, dtype=np.float64) for p in probs]
    if not arrays:
        raise ValueError("an ensemble needs at least one model's probabilities")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(f"every model's probabilities must share one (n, classes) shape, got {sorted(shapes)}")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("probabilities hold NaN or infinite values (missing OOF rows?)")
    return np.stack(arrays)


def check_weights(weights: np.ndarray, models: int) -> np.ndarray:
    """Return `weights` as float64 after checking there is one per model, none negative, summing to 1."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (models,):
        raise ValueError(f"expected {models} weights, got shape {w.shape}")
    if (w < 0).any() or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"weights must be non-negative and sum to 1, got {w.tolist()}")
    return w


def blend(probs: list[np.ndarray] | np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the weighted average (n, classes) of the models' probabilities as float32."""
    stacked = stack_probs(probs)
    w = check_weights(weights, len(stacked))
    return np.tensordot(w, stacked, axes=1).astype(np.float32)


def blend_log_loss(stacked: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Return the mean cross-entropy of the blend of `stacked` (models, n, classes) with `weights`."""
    true = stacked[:, np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(weights @ true, 1e-15, None))))


def blend_accuracy(stacked: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Return the accuracy of the blend of `stacked` (models, n, classes) with `weights`."""
    return float(np.mean(np.argmax(np.tensordot(weights, stacked, axes=1), axis=1) == labels))


def simplex_grid(models: int, steps: int) -> np.ndarray:
    """Return every weight vector of `models` non-negative multiples of 1/`steps` summing to 1."""
    count = math.comb(steps + models - 1, models - 1)
    if count > MAX_GRID_POINTS:
        raise ValueError(f"a {steps}-step grid over {models} models has {count} points; use fewer steps")
    points = [
        np.diff([-1, *bars, steps + models - 1]) - 1
        for bars in itertools.combinations(range(steps + models - 1), models - 1)
    ]
    return np.asarray(points, dtype=np.float64).reshape(-1, models) / steps


def weights_by_log_loss(stacked: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the weights minimising OOF log loss (a convex problem, solved by SLSQP on the simplex)."""
    from scipy.optimize import minimize

    m = len(stacked)
    true = stacked[:, np.arange(len(labels)), labels]

    def loss(w: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(w @ true, 1e-15, None))))

    def grad(w: np.ndarray) -> np.ndarray:
        return -np.mean(true / np.clip(w @ true, 1e-15, None), axis=1)

    result = minimize(
        loss, np.full(m, 1.0 / m), jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}], options={"ftol": 1e-12, "maxiter": 500},
    )  # fmt: skip
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


def weights_by_accuracy(stacked: np.ndarray, labels: np.ndarray, steps: int) -> np.ndarray:
    """Return the simplex-grid weights with the best OOF accuracy; ties go to the lower OOF log loss."""
    grid = simplex_grid(len(stacked), steps)
    scores = [(blend_accuracy(stacked, labels, w), -blend_log_loss(stacked, labels, w)) for w in grid]
    return grid[max(range(len(grid)), key=scores.__getitem__)]


def choose_weights(
    oof_probs: list[np.ndarray] | np.ndarray, labels: np.ndarray, objective: str = "log_loss", steps: int = 20
) -> np.ndarray:
    """Return one non-negative weight per model, summing to 1, chosen on OOF probabilities and labels only."""
    stacked = stack_probs(oof_probs)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (stacked.shape[1],):
        raise ValueError(f"{stacked.shape[1]} OOF rows but {labels.shape} labels")
    if objective == "equal" or len(stacked) == 1:
        return np.full(len(stacked), 1.0 / len(stacked))
    if objective == "log_loss":
        return weights_by_log_loss(stacked, labels)
    if objective == "accuracy":
        return weights_by_accuracy(stacked, labels, steps)
    raise ValueError(f"unknown ensemble objective {objective!r} (params.BlendObjective)")


def ensemble_report(oof_probs: list[np.ndarray] | np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict:
    """Return each model's and the blend's OOF accuracy and log loss with the weights used."""
    stacked = stack_probs(oof_probs)
    w = check_weights(weights, len(stacked))
    labels = np.asarray(labels, dtype=np.int64)
    single = [np.eye(len(stacked))[i] for i in range(len(stacked))]
    return {
        "weights": w.tolist(),
        "models": [
            {"accuracy": blend_accuracy(stacked, labels, s), "loss": blend_log_loss(stacked, labels, s)} for s in single
        ],
        "blend": {"accuracy": blend_accuracy(stacked, labels, w), "loss": blend_log_loss(stacked, labels, w)},
    }


def cross_fitted_weights(
    oof_probs: list[np.ndarray] | np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    objective: str = "log_loss",
    steps: int = 20,
    keep: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Return, for every fold k in `folds`, the weights chosen (`choose_weights`) on the OOF rows of the other
    folds only, among the rows in mask `keep` (all rows when None): weights that never saw fold k's rows."""
    stacked = stack_probs(oof_probs)
    folds = np.asarray(folds)
    keep = np.ones(len(folds), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if folds.shape != (stacked.shape[1],) or keep.shape != folds.shape:
        raise ValueError(f"{stacked.shape[1]} OOF rows but {folds.shape} fold ids and {keep.shape} kept flags")
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError(f"cross-fitted weights need OOF rows of at least two folds, got folds {ids.tolist()}")
    weights = {}
    for fold in ids:
        fit_rows = (folds != fold) & keep
        if not fit_rows.any():
            raise ValueError(f"no kept OOF rows outside fold {fold} to choose its blend weights on")
        weights[int(fold)] = choose_weights(stacked[:, fit_rows], np.asarray(labels)[fit_rows], objective, steps)
    return weights


def cross_fitted_blend(
    oof_probs: list[np.ndarray] | np.ndarray, folds: np.ndarray, fold_weights: dict[int, np.ndarray]
) -> np.ndarray:
    """Return the OOF probabilities (n, classes) with each fold's rows blended by that fold's weights in
    `fold_weights` (`cross_fitted_weights`), so no row's blend was chosen on its own label."""
    stacked = stack_probs(oof_probs)
    folds = np.asarray(folds)
    out = np.full(stacked.shape[1:], np.nan, dtype=np.float32)
    for fold, weights in fold_weights.items():
        rows = folds == fold
        out[rows] = blend(stacked[:, rows], weights)
    if np.isnan(out).any():
        raise ValueError(f"folds {sorted(set(np.unique(folds).tolist()) - set(fold_weights))} have no blend weights")
    return out


def left_out_blends(
    oof_probs: list[np.ndarray] | np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    objective: str = "log_loss",
    keep: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Return, for each model in `oof_probs`, the cross-fitted blend (n, classes) of the other models, with
    weights chosen on the kept rows of the other folds as for the whole blend: the ensemble without it."""
    stacked = stack_probs(oof_probs)
    if len(stacked) < 2:
        raise ValueError("leaving a model out needs a blend of at least two")
    out = []
    for left_out in range(len(stacked)):
        rest = np.delete(stacked, left_out, axis=0)
        out.append(cross_fitted_blend(rest, folds, cross_fitted_weights(rest, labels, folds, objective, keep=keep)))
    return out
