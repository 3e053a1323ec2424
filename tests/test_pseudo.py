"""Pseudo-labelling in train (train.pseudo_rounds), kept honest: fold k's teacher is the model fold k would have
without it (trained on the other folds only), it labels the test images, and the confident ones with their
augmented copies join only the training rows of fold k's student; nothing appended is ever scored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline import augment, ingest, paths, train
from pipeline.device import DevicePlan, configure
from pipeline.lib import transforms
from pipeline.lib.files import read_json, read_npz
from pipeline.lib.fitting import EpochSampler, FitSettings
from pipeline.lib.training_data import Augmented, read_training_data
from pipeline.params import load

SETTINGS = FitSettings(
    model="mlp", epochs=2, batch_size=16, learning_rate=0.003, warmup_epochs=0.5,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip
FOLDS = 3


def profile_device() -> DevicePlan:
    """Return the device plan under the test profile's precision (float32: the same arithmetic on every CPU)."""
    return configure(load("device").precision)


@pytest.fixture
def prepared(project):
    """The tiny project (60 training rows in 3 folds, 20 test rows) after ingest and augment."""
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    return project


def test_confident_labels_keep_the_rows_at_or_over_the_threshold():
    probs = np.array([[0.95, 0.05] + [0] * 8, [0.2, 0.8] + [0] * 8, [0.5, 0.5] + [0] * 8, [0] * 9 + [1.0]])
    rows, labels = train.confident_labels(probs, 0.8)
    assert rows.tolist() == [0, 1, 3]
    assert labels.tolist() == [0, 1, 9]
    assert train.confident_labels(probs, 1.0)[0].tolist() == [3]


def test_pseudo_rows_train_every_fold_and_are_never_scored(prepared):
    data = read_training_data()
    n = len(data.y)
    images = read_npz(paths.TEST_NPZ)["x"][:5]
    copies = Augmented(np.repeat(images, 2, axis=0), np.repeat(np.arange(5), 2))
    both = train.with_pseudo_rows(data, images, np.array([3, 1, 4, 1, 5]), copies)
    assert both.n_folds == data.n_folds  # the appended rows are in no fold
    assert np.array_equal(both.x[n:], images) and both.y[n:].tolist() == [3, 1, 4, 1, 5]
    for fold in range(FOLDS):
        scored = np.flatnonzero(both.fold == fold)
        assert np.array_equal(scored, np.flatnonzero(data.fold == fold))  # the same scored rows, none appended
        rows = np.flatnonzero(both.fold != fold)
        assert set(range(n, n + 5)) <= set(rows.tolist())
    # a copy drawn for an appended row is one of that row's own copies
    sampler = EpochSampler(both.x, both.y, np.arange(n, n + 5), both.aug.x, both.aug.source, 0)
    index, labels = sampler.sample_indices(0, aug_prob=1.0)
    drawn = index - len(both.x)  # every row shows a copy: indices into the copies
    assert (drawn >= len(data.aug.x)).all()  # the appended ones
    assert (both.aug.source[drawn] >= n).all()  # copies of appended rows only, each labelled as its own row
    assert np.array_equal(labels, both.y[both.aug.source[drawn]])


def test_a_folds_teacher_is_the_model_it_has_without_pseudo_labels(prepared):
    plain = train.train_all([SETTINGS], FOLDS, seed=1, device=profile_device())
    plain_folds = [read_json(paths.fold_meta("mlp", k)) for k in range(FOLDS)]
    student = replace(SETTINGS, pseudo_rounds=1, pseudo_threshold=0.0)  # every test image is pseudo-labelled
    metrics = train.train_all([student], FOLDS, seed=1, device=profile_device())
    test_rows = len(read_npz(paths.TEST_NPZ)["x"])
    for fold, before in enumerate(plain_folds):
        meta = read_json(paths.fold_meta("mlp", fold))
        assert meta["fingerprint"] != before["fingerprint"]
        (only,) = meta["pseudo_rounds"]
        assert only["pseudo_rows"] == test_rows
        assert only["teacher"]["accuracy"] == before["accuracy"]  # trained on the other folds only, as before
        assert only["teacher"]["loss"] == pytest.approx(before["loss"], rel=1e-6)
        assert len(meta["history"]) == SETTINGS.epochs  # the student's own epochs
    assert metrics["oof"] != plain["oof"]  # the students, not the teachers, are the folds' models
    assert not any(paths.CHECKPOINT_DIR.rglob("last.keras"))  # every round's checkpoint is removed with the fold


def test_pseudo_labelling_reads_the_test_images_and_augment_settings(prepared):
    student = replace(SETTINGS, pseudo_rounds=1)
    assert train.unlabelled_for([SETTINGS], None, 1) is None  # not read when no model pseudo-labels
    unlabelled = train.unlabelled_for([SETTINGS, student], None, 1)
    assert np.array_equal(unlabelled.x, read_npz(paths.TEST_NPZ)["x"])
    assert unlabelled.augment == load("augment")
    copies = unlabelled.augment.copies
    assert len(unlabelled.copies.x) == copies * len(unlabelled.x)
    rows = np.array([2, 5, 11])
    some = unlabelled.copies_of(rows)  # the copies of three images, renumbered 0, 1, 2
    assert some.source.tolist() == [0] * copies + [1] * copies + [2] * copies
    for i, row in enumerate(rows):
        assert np.array_equal(some.x[some.source == i], unlabelled.copies.x[unlabelled.copies.source == row])
    plain, pseudo = train.data_identity(None), train.data_identity(unlabelled)
    assert pseudo[: len(plain)] == plain  # and what makes the copies: test.npz, the augment settings and code
    for made_by in (paths.TEST_NPZ, Path(augment.__file__), Path(transforms.__file__)):
        assert train.file_digest(made_by) in pseudo
    paths.TEST_NPZ.unlink()
    with pytest.raises(FileNotFoundError, match="ingest"):
        train.unlabelled_for([student], None, 1)


def test_a_worker_process_pseudo_labels_as_this_process_does(prepared, capfd):
    """A fold trained in a worker process (train's --processes, one per GPU) gets the test images and their augment
    settings from its job, and writes exactly the fold this process writes."""
    student = replace(SETTINGS, epochs=1, pseudo_rounds=1, pseudo_threshold=0.5)
    train.train_all([student], FOLDS, seed=1, device=profile_device())
    alone = {k: (read_json(paths.fold_meta("mlp", k)), read_npz(paths.fold_oof("mlp", k))) for k in (1, 2)}
    for fold in (1, 2):
        for path in (paths.fold_model, paths.fold_oof, paths.fold_meta):
            path("mlp", fold).unlink()
    capfd.readouterr()
    train.train_all([student], FOLDS, seed=1, device=profile_device(), options=train.Options(envs=({}, {})))
    assert capfd.readouterr().out.count("round 1: teacher") == 2  # folds 1 and 2, in the workers
    for fold, (meta, oof) in alone.items():
        again = read_json(paths.fold_meta("mlp", fold))
        assert (again["fingerprint"], again["pseudo_rounds"]) == (meta["fingerprint"], meta["pseudo_rounds"])
        assert np.array_equal(read_npz(paths.fold_oof("mlp", fold))["probs"], oof["probs"])
