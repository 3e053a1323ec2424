"""Predict: deterministic TTA views, the submission format, and the stage's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import augment, ingest, paths, predict, train
from pipeline.lib.competition_csv import InputError
from pipeline.lib.files import read_json, read_npz, write_json, write_npz
from pipeline.lib.metrics import accuracy
from pipeline.lib.submission_file import submission_csv, validate_submission
from pipeline.lib.tta import affine_view, apply_view, is_shift, predict_views, views_for
from tests.conftest import collect_oof


def test_identity_and_shift_views_are_exact(digits):
    images, _ = digits
    assert np.array_equal(apply_view(images, (0.0, 1.0, 0.0, 0.0))[..., 0], images.astype(np.float32))
    shifted = apply_view(images, (0.0, 1.0, 1.0, 0.0))[..., 0]
    assert np.allclose(shifted[:, :, 1:], images[:, :, :-1], atol=1e-3)  # one pixel to the right
    assert np.allclose(shifted[:, :, 0], 0.0)
    down = apply_view(images, (0.0, 1.0, 0.0, 1.0))[..., 0]
    assert np.allclose(down[:, 1:, :], images[:, :-1, :], atol=1e-3)


def test_rotation_view_keeps_the_centre_and_moves_the_rest(digits):
    images, _ = digits
    rotated = apply_view(images, (8.0, 1.0, 0.0, 0.0))[..., 0]
    assert not np.allclose(rotated, images)
    assert np.allclose(rotated[:, 13:15, 13:15], images[:, 13:15, 13:15], atol=40)
    assert len(views_for(3)) == 4


def test_a_tta_view_count_the_schema_refuses_is_one_line(project, capsys):
    assert predict.main(["--tta-views", "99"]) == 2
    assert capsys.readouterr().err == (
        "predict: error: --tta-views predict.tta_views: got 99, expected a whole number from 0 to 8\n"
    )


def test_submission_round_trip_and_validation():
    labels = np.array([3, 1, 4, 1, 5])
    text = submission_csv(labels)
    assert text.splitlines()[:2] == ["ImageId,Label", "1,3"]
    frame = validate_submission(text, 5)
    assert frame["Label"].astype(int).tolist() == labels.tolist()
    with pytest.raises(InputError, match="expected 6"):
        validate_submission(text, 6)


def test_predict_main_writes_a_valid_submission_and_tta_report(predicted):
    text = paths.LATEST_SUBMISSION.read_text()
    assert len(validate_submission(text, 20)) == 20
    copies = list(paths.SUBMISSIONS_DIR.glob("submission-*.csv"))
    assert len(copies) == 1 and copies[0].read_text() == text
    report = json.loads(paths.PREDICT_JSON.read_text())
    oof_tta = read_npz(paths.OOF_TTA_NPZ)  # predict's (one model, TTA) and train's fold files (no TTA)
    plain = accuracy(collect_oof("dropout_cnn", len(oof_tta["y"]), 3), oof_tta["y"])
    with_tta = accuracy(oof_tta["probs"], oof_tta["y"])
    assert report["oof_accuracy"] == pytest.approx(plain, abs=1e-6)
    assert report["oof_tta_accuracy"] == pytest.approx(with_tta, abs=1e-6)
    assert report["tta_gain"] == pytest.approx(with_tta - plain, abs=1e-6)
    assert report["tta_views"] == 2 and report["test_rows"] == 20


def sure_of(classes: list[int], sure: list[float]) -> np.ndarray:
    """Return probabilities (n, 10) putting `sure[i]` on `classes[i]` and the rest evenly on the other nine."""
    probs = np.repeat((1 - np.asarray(sure))[:, None] / 9, 10, axis=1)
    probs[np.arange(len(classes)), classes] = sure
    return probs


def test_tta_report_measures_what_the_views_add():
    labels = np.array([0, 1, 2, 3])
    original = sure_of([0, 1, 5, 5], [0.6, 0.6, 0.6, 0.99])  # rows 2 and 3 wrong; row 3 so sure it stays wrong
    view = sure_of([0, 1, 2, 3], [0.6, 0.6, 0.6, 0.4])  # both views: every row right
    report = predict.tta_report(np.stack([original, view, view]), labels)
    assert (report["oof_accuracy"], report["oof_tta_accuracy"]) == (0.5, 0.75)
    assert report["tta_gain"] == 0.25
    assert report["oof_loss"] == pytest.approx(-np.log([0.6, 0.6, 0.4 / 9, 0.01 / 9]).mean())
    tta = [0.6, 0.6, (0.4 / 9 + 1.2) / 3, (0.01 / 9 + 0.8) / 3]
    assert report["oof_tta_loss"] == pytest.approx(-np.log(tta).mean())


@pytest.fixture
def predicted(project):
    """The tiny project after ingest, augment, train and predict: a first submission."""
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    assert train.main([]) == 0
    assert predict.main([]) == 0
    return project


def other_data(data: dict[str, np.ndarray], change: str) -> dict[str, np.ndarray]:
    """Return train.npz's arrays with one `change`: the rows in other folds, other labels, or another image."""
    data = {k: v.copy() for k, v in data.items()}
    if change == "fold assignment":
        data["fold"] = (data["fold"] + 1) % 3
    elif change == "labels":
        data["y"][:2] = data["y"][1::-1]
    else:
        data["x"][0, 0, 0] ^= 1
    return data


@pytest.mark.parametrize("change", ["fold assignment", "labels", "images"])
def test_predict_refuses_fold_models_trained_on_other_data(predicted, capsys, change) -> None:
    data, before = read_npz(paths.TRAIN_NPZ), paths.LATEST_SUBMISSION.read_bytes()
    outputs = {path: path.read_bytes() for path in (paths.OOF_TTA_NPZ, paths.TEST_PROBS_NPZ, paths.PREDICT_JSON)}
    write_npz(paths.TRAIN_NPZ, **other_data(data, change))
    capsys.readouterr()
    assert predict.main([]) == 2
    err = capsys.readouterr().err
    assert err == (
        "predict: error: models/folds/dropout_cnn/fold0/model.keras was not trained on the current "
        "data/processed/train.npz and its fold assignment (models/folds/dropout_cnn/fold0/meta.json records other "
        "data): run `dvc repro train` first\n"
    )
    assert paths.LATEST_SUBMISSION.read_bytes() == before  # nothing produced is lost or replaced
    assert {path: path.read_bytes() for path in outputs} == outputs
    write_npz(paths.TRAIN_NPZ, **data)  # the data the models were trained on: accepted again
    assert predict.main([]) == 0


def test_predict_refuses_a_fold_model_without_a_record_of_its_data(predicted, capsys) -> None:
    meta = read_json(paths.fold_meta("dropout_cnn", 2))
    write_json(paths.fold_meta("dropout_cnn", 2), {k: v for k, v in meta.items() if k != "train_data"})
    assert predict.main([]) == 2
    err = capsys.readouterr().err
    assert "predict: error: models/folds/dropout_cnn/fold2/model.keras was not trained on the current " in err
    assert "(models/folds/dropout_cnn/fold2/meta.json does not record its data)" in err and err.count("\n") == 1
    paths.fold_meta("dropout_cnn", 2).unlink()
    assert predict.main([]) == 2


def test_shift_views_match_the_affine_transform_bit_for_bit(digits):
    images, _ = digits
    for view in [*views_for(4), (0.0, 1.0, 2.0, -3.0), (0.0, 1.0, 30.0, 0.0)]:
        assert is_shift(view)
        assert np.array_equal(apply_view(images, view), affine_view(images, view)), view
    assert not any(is_shift(v) for v in views_for(8)[5:])  # rotations and zooms go through keras.ops


def test_predict_views_equals_model_predict_on_each_view(digits):
    from pipeline.lib.models import build_model

    images, _ = digits
    model = build_model("dropout_cnn")
    got = predict_views(model, images, 8, batch_size=16)  # 60 rows: a last batch of 12
    want = np.stack([model.predict(affine_view(images, v), batch_size=16, verbose=0) for v in views_for(8)])
    assert got.shape == (9, 60, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert predict_views(model, images[:0], 2, batch_size=16).shape == (3, 0, 10)
