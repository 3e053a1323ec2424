"""Ingest: parsing, shapes, and the stratified fold assignment saved once for every later stage."""

from __future__ import annotations

import zipfile

import numpy as np

from pipeline import ingest, paths
from pipeline.lib.competition_csv import RawSource, locate_raw
from pipeline.lib.files import read_npz
from pipeline.params import IngestParams
from tests.conftest import test_csv_text, train_csv_text


def test_assign_folds_is_stratified_disjoint_and_seeded(digits):
    _, labels = digits
    folds = ingest.assign_folds(labels, 3, seed=7)
    assert sorted(np.unique(folds)) == [0, 1, 2]
    for fold in range(3):
        counts = np.bincount(labels[folds == fold], minlength=10)
        assert counts.tolist() == [2] * 10  # six of each digit split evenly over three folds
    assert np.array_equal(folds, ingest.assign_folds(labels, 3, seed=7))
    assert not np.array_equal(folds, ingest.assign_folds(labels, 3, seed=8))


def test_ingest_main_writes_arrays_and_folds(project, digits):
    assert ingest.main([]) == 0
    train, test = read_npz(paths.TRAIN_NPZ), read_npz(paths.TEST_NPZ)
    images, labels = digits
    assert train["x"].shape == (60, 28, 28) and train["x"].dtype == np.uint8
    assert np.array_equal(train["x"], images) and np.array_equal(train["y"], labels)
    assert train["fold"].shape == (60,) and set(train["fold"].tolist()) == {0, 1, 2}
    assert test["x"].shape == (20, 28, 28)


def test_ingest_reads_straight_from_the_competition_zip(tmp_path, digits):
    images, labels = digits
    with zipfile.ZipFile(tmp_path / "digit-recognizer.zip", "w") as zf:
        zf.writestr("train.csv", train_csv_text(images, labels).replace("\n", "\r\n"))
        zf.writestr("test.csv", test_csv_text(images[:20]))
        zf.writestr("sample_submission.csv", "ImageId,Label\n")
    source = locate_raw(tmp_path)
    assert source == RawSource(tmp_path / "digit-recognizer.zip", None, None)
    cfg = IngestParams(max_train_rows=None, max_test_rows=10, expected_test_rows=20)
    train, test = ingest.ingest(source, cfg, n_folds=3, seed=0)
    assert np.array_equal(train["x"], images) and np.array_equal(train["y"], labels)
    assert np.array_equal(test["x"], images[:10])  # max_test_rows keeps the first rows
