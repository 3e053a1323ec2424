"""Determinism: with the same seed on the same machine, ingest assigns the same folds and augment
writes the same arrays, run after run and for any number of worker processes. (Training itself is
checked in test_resume.py: folds trained from scratch in two different processes give bit-identical
OOF probabilities, measured difference 0.0, so OOF accuracy is equal with tolerance 0.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import augment, ingest, paths
from pipeline.lib.files import read_npz
from pipeline.lib.transforms import augment as make_copies
from pipeline.params import load


def outputs(*files: Path) -> dict[str, bytes]:
    """Return the bytes of `files` by name."""
    return {str(f): Path(f).read_bytes() for f in files}


def test_ingest_twice_gives_byte_identical_arrays(project: Path) -> None:
    """Two ingest runs write byte-identical train.npz and test.npz (same folds, same images)."""
    assert ingest.main([]) == 0
    first = outputs(paths.TRAIN_NPZ, paths.TEST_NPZ)
    shutil.rmtree(paths.PROCESSED_DIR)
    assert ingest.main([]) == 0
    assert outputs(paths.TRAIN_NPZ, paths.TEST_NPZ) == first


def test_fold_assignment_depends_on_the_seed_only(project: Path, digits) -> None:
    """The same seed gives the same stratified folds; another seed gives other folds."""
    _, labels = digits
    a, b = ingest.assign_folds(labels, 3, seed=42), ingest.assign_folds(labels, 3, seed=42)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ingest.assign_folds(labels, 3, seed=43))
    for fold in range(3):
        np.testing.assert_array_equal(np.bincount(labels[a == fold], minlength=10), np.full(10, 2))


def test_augment_identical_across_runs_and_worker_counts(project: Path) -> None:
    """augment.npz is byte-identical for two runs with one worker and a run with two worker processes."""
    assert ingest.main([]) == 0
    assert load("augment").chunk_rows < 60  # several chunks, so two workers really split the work
    runs = []
    for workers in ("1", "1", "2"):
        paths.AUGMENTED_NPZ.unlink(missing_ok=True)
        assert augment.main(["--workers", workers]) == 0
        runs.append(paths.AUGMENTED_NPZ.read_bytes())
    assert runs[0] == runs[1] == runs[2]
    out = read_npz(paths.AUGMENTED_NPZ)
    assert out["x"].shape == (60 * load("augment").copies, 28, 28)
    assert not np.array_equal(out["x"][::2], read_npz(paths.TRAIN_NPZ)["x"])  # the copies really differ


def test_augment_depends_on_the_seed(project: Path) -> None:
    """Another global seed gives other augmented copies (the seed really drives them)."""
    assert ingest.main([]) == 0
    images = read_npz(paths.TRAIN_NPZ)["x"]
    cfg = load("augment")
    a = make_copies(images, cfg, seed=1)["x"]
    np.testing.assert_array_equal(a, make_copies(images, cfg, seed=1)["x"])
    assert not np.array_equal(a, make_copies(images, cfg, seed=2)["x"])


def test_ingest_in_another_project_folder_agrees(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same raw data and params in another folder give the same arrays (nothing depends on the path)."""
    other = project / "elsewhere"
    shutil.copytree(project / "data/raw", other / "data/raw")
    shutil.copy(project / "params.yaml", other / "params.yaml")
    assert ingest.main([]) == 0
    monkeypatch.chdir(other)
    assert ingest.main([]) == 0
    assert (other / paths.TRAIN_NPZ).read_bytes() == (project / paths.TRAIN_NPZ).read_bytes()
    assert (other / paths.TEST_NPZ).read_bytes() == (project / paths.TEST_NPZ).read_bytes()
