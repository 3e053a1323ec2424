"""The measures every stage and tool reports, one implementation each (scikit-learn's): accuracy and log loss of
class probabilities against integer labels."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score
from sklearn.metrics import log_loss as sk_log_loss

CLASSES = list(range(10))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Return the fraction of rows whose most probable class in `probs` (n, 10) equals the label."""
    return float(accuracy_score(labels, np.argmax(probs, axis=1)))


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Return the mean cross-entropy of `probs` (n, 10) against integer `labels`, each row first scaled to sum to 1
    (float32 softmax rows miss 1 by more than sklearn's float64 tolerance, which it warns about)."""
    probs = np.asarray(probs, np.float64)
    return float(sk_log_loss(labels, probs / probs.sum(axis=1, keepdims=True), labels=CLASSES))


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Return the accuracy and log loss of class probabilities `probs` against integer `labels`."""
    return {"accuracy": accuracy(probs, labels), "loss": log_loss(probs, labels)}
