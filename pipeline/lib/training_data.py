"""The training data every fold is cut from, as one typed object: data/processed/train.npz's images, labels and
folds (ingest) with data/processed/augmented.npz's copies of the images (augment). Not a stage: train, tune and
compare read it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import paths
from pipeline.lib.files import arrays_digest, read_json, read_npz, require


@dataclass(frozen=True)
class Augmented:
    """Augmented copies of training images (uint8 (m, 28, 28)) and the training row each was made from."""

    x: np.ndarray
    source: np.ndarray


@dataclass(frozen=True)
class TrainingData:
    """The training images (uint8 (n, 28, 28)), their labels and folds, and the augmented copies of them."""

    x: np.ndarray
    y: np.ndarray
    fold: np.ndarray
    aug: Augmented

    @property
    def n_folds(self) -> int:
        """The number of folds the rows are assigned to."""
        return int(self.fold.max()) + 1


def no_copies(images: np.ndarray) -> Augmented:
    """Return an empty set of augmented copies of `images`."""
    return Augmented(images[:0], np.empty(0, np.int64))


def read_training_data(copies_required: bool = True) -> TrainingData:
    """Return train.npz with augmented.npz's copies; each is required (a missing one names the stage that writes
    it), except augmented.npz without `copies_required`, whose absence means no copies."""
    train = read_npz(require(paths.TRAIN_NPZ, "ingest"))
    if copies_required or paths.AUGMENTED_NPZ.is_file():
        aug = read_npz(require(paths.AUGMENTED_NPZ, "augment"))
        copies = Augmented(aug["x"], aug["source"])
    else:
        copies = no_copies(train["x"])
    return TrainingData(train["x"], train["y"], train["fold"], copies)


def training_digest(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> str:
    """Return the digest of train.npz's images `x`, labels `y` and fold assignment `fold`: what a fold model learns
    from, recorded by train and checked by predict."""
    return arrays_digest({"x": x, "y": y, "fold": fold})


def read_fold_metas(member: str, n_folds: int) -> list[dict]:
    """Return the meta.json of each of `member`'s folds (scores, seconds, epochs, history, settings, train_data)."""
    return [read_json(require(paths.fold_meta(member, fold), "train")) for fold in range(n_folds)]
