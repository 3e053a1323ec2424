"""Shared fixtures: tiny synthetic digit data and a throw-away project folder to run stages in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
# Settings a user may have exported that would change what the tests exercise: another tuning storage, another
# Keras backend (chosen when keras is first imported, so cleared here, before any test module imports it),
# verbose native logs, a Kaggle notebook root, and real Kaggle credentials (never used by tests). Cleared again
# around every test.
LEAKY_ENV = ("DIGIT_TUNE_STORAGE", "KERAS_BACKEND", "DIGIT_VERBOSE", "DIGIT_KAGGLE_ROOT")


def leaky_names() -> list[str]:
    """Return the names of the user's environment variables that tests must not see."""
    return [name for name in os.environ if name in LEAKY_ENV or name.startswith("KAGGLE_")]


for _name in leaky_names():
    del os.environ[_name]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the user's leaky settings (LEAKY_ENV, KAGGLE_*) for the test; a test may set its own."""
    for name in leaky_names():
        monkeypatch.delenv(name)


def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return `n` 28x28 uint8 images whose bright bar position encodes the label (0-9, balanced)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row = 3 + 2 * int(label)
        images[i, row : row + 2, 6:22] = 255
    return images, labels


def train_csv_text(images: np.ndarray, labels: np.ndarray) -> str:
    """Return train.csv text (label,pixel0..783) for `images` and `labels`."""
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    rows = [f"{int(y)}," + ",".join(map(str, x.reshape(-1))) for x, y in zip(images, labels, strict=True)]
    return header + "\n" + "\n".join(rows) + "\n"


def test_csv_text(images: np.ndarray) -> str:
    """Return test.csv text (pixel0..783) for `images`."""
    header = ",".join(f"pixel{i}" for i in range(784))
    return header + "\n" + "\n".join(",".join(map(str, x.reshape(-1))) for x in images) + "\n"


test_csv_text.__test__ = False  # a helper, not a test


def tiny_params() -> dict:
    """Return the repository's params.yaml shrunk to a configuration that runs in seconds."""
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["profile"] = "full"
    doc["model"]["ensemble"] = []  # one model; the ensemble tests name their members
    doc["ingest"].update(max_train_rows=None, max_test_rows=None, expected_test_rows=20)
    doc["augment"].update(copies=2, chunk_rows=16, workers=1, preview_rows=3)
    doc["train"].update(folds=3, epochs=2, batch_size=16)
    doc["tune"].update(trials=2, epochs=2, max_train_rows=None, study_name="test")
    doc["predict"].update(tta_views=2, batch_size=64)
    return doc


@pytest.fixture
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Sixty synthetic labelled digits, six of each class."""
    return synthetic_digits(60)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits) -> Path:
    """A project folder (the cwd) with tiny params.yaml and synthetic data/raw/{train,test}.csv."""
    images, labels = digits
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "train.csv").write_text(train_csv_text(images, labels))
    (raw / "test.csv").write_text(test_csv_text(synthetic_digits(20, seed=1)[0]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path
