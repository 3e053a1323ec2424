"""Shared fixtures: tiny synthetic digit data and a throw-away project folder to run stages in.

The tests build their own world: settings are composed from the tracked conf/ with the `test` profile (never the
user's params.yaml, profile choice in conf/local/ or overrides), and HOME, the Keras config, the Kaggle notebook root,
the tuning storage and the Keras backend are the tests' own (set here, before any test module imports Keras), and
every test starts from Keras' default global state (`fresh_keras`)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import paths
from pipeline.lib.files import read_npz

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
# Settings a user may have exported that would change what the tests exercise: another tuning storage, another
# Keras backend (chosen when keras is first imported, so cleared here, before any test module imports it),
# verbose native logs, and real Kaggle credentials (never used by tests). Cleared again around every test.
# The variables of an enclosing `make test` (MAKELEVEL, MAKEFLAGS) go too: a test's own `make` is then a top-level
# make, printing "make: ***" and no "Entering directory" lines, as a user's shell would.
LEAKY_ENV = ("DIGIT_TUNE_STORAGE", "KERAS_BACKEND", "DIGIT_VERBOSE", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")
# The tests' own home: no ~/.keras/keras.json (which picks the backend when KERAS_BACKEND is unset), no
# ~/.kaggle, a git identity of its own, and a Kaggle notebook root that does not exist, so that in a notebook
# (/kaggle/working) no test writes the user's submission.csv. Set for the whole run and again around every test.
WORLD = Path(tempfile.mkdtemp(prefix="digit-tests-"))
atexit.register(shutil.rmtree, WORLD, ignore_errors=True)
PINNED_ENV = {
    "HOME": str(WORLD / "home"),
    "KERAS_HOME": str(WORLD / "home" / ".keras"),
    "DIGIT_KAGGLE_ROOT": str(WORLD / "no-kaggle"),
}
TEST_PROFILE = "test"  # conf/profile/test.yaml


def leaky_names() -> list[str]:
    """Return the names of the user's environment variables that tests must not see."""
    return [name for name in os.environ if name in LEAKY_ENV or name.startswith("KAGGLE_")]


for _name in leaky_names():
    del os.environ[_name]
os.environ.update(PINNED_ENV)
(WORLD / "home").mkdir()
# The home's git identity: `dvc exp run` commits (DVC refuses "Git user name and email must be configured" without
# one), and the user's ~/.gitconfig is not the tests' to read.
(WORLD / "home" / ".gitconfig").write_text("[user]\n\tname = digit-pipeline tests\n\temail = tests@example.invalid\n")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the user's leaky settings (LEAKY_ENV, KAGGLE_*) and pin PINNED_ENV for the test; a test may set its
    own."""
    for name in leaky_names():
        monkeypatch.delenv(name)
    for name, value in PINNED_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def fresh_keras() -> None:
    """Start every test from Keras' defaults, whatever a test before it (in any module, in any order) left: the
    float32 dtype policy (configure() and mixed-precision tests set the global one) and a cleared session (layer
    names, the backend's graph state). Nothing to reset before Keras is first imported."""
    keras = sys.modules.get("keras")
    if keras is None:
        return
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.clear_session(free_memory=False)  # the collection of garbage (1.5 s) is left to Python


@functools.cache
def tracked_conf() -> Path:
    """Return a copy of the repository's conf/ without conf/local/ (this machine's profile choice), made once."""
    target = WORLD / "conf"
    shutil.copytree(REPO / "conf", target, ignore=shutil.ignore_patterns("local"))
    return target


@functools.cache
def tiny_params_text() -> str:
    """Return the YAML of the `test` profile composed from the tracked conf/, as `dvc exp run` would write it."""
    from pipeline.lib import compose

    return compose.compose([f"profile={TEST_PROFILE}"], tracked_conf())


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
    """Return the `test` profile's settings (conf/profile/test.yaml over conf/config.yaml): every stage in seconds."""
    return yaml.safe_load(tiny_params_text())


def dump_params(doc: dict, path: Path = Path("params.yaml")) -> None:
    """Write the params document `doc` to `path` as a composition would: `derived:` recomputed from its `train:` and
    `model:` (pipeline/lib/compose.py), so that a test's edit of those is not refused as a hand edit; a bad value,
    which composition refuses, leaves `derived:` as it was (the stages name the bad value first)."""
    from pipeline.lib.compose import derived_of
    from pipeline.params import ParamsError

    with contextlib.suppress(ParamsError):
        doc = {**doc, "derived": derived_of(doc.get("train") or {}, doc.get("model") or {})}
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))


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


def collect_oof(member: str, n_rows: int, n_folds: int) -> np.ndarray:
    """Return `member`'s (n_rows, 10) out-of-fold probabilities assembled from every fold's oof.npz."""
    probs = np.full((n_rows, 10), np.nan, dtype=np.float32)
    for fold in range(n_folds):
        part = read_npz(paths.fold_oof(member, fold))
        probs[part["rows"]] = part["probs"]
    if np.isnan(probs).any():
        raise ValueError(f"some rows have no out-of-fold prediction of {member} in {paths.model_dir(member)}")
    return probs
