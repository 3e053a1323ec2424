"""Ensembles in the pipeline: train fits model.name and each model.ensemble member on the same folds,
predict blends them with weights chosen on OOF predictions only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline import augment, ingest, live, paths, predict, train
from pipeline.files import read_npz, write_npz
from pipeline.params import ModelParams, ParamsError, load
from pipeline.submission import validate_submission


def views_of(rng: np.random.Generator, views: int, rows: int) -> np.ndarray:
    """Return random probabilities (views, rows, 10)."""
    return rng.dirichlet(np.ones(10), size=(views, rows)).astype(np.float32)


def test_members_put_model_name_first_and_reject_repeats():
    assert ModelParams("cnn_basic", ["mlp"]).members() == ["cnn_basic", "mlp"]
    assert ModelParams("cnn_basic").members() == ["cnn_basic"]
    with pytest.raises(ParamsError, match="repeat"):
        ModelParams("mlp", ["mlp"]).members()


def test_tuned_values_go_to_model_name_only_and_overrides_to_each_member(project):
    model = ModelParams("dropout_cnn", ["bn_cnn"], {"bn_cnn": {"dropout_conv": 0.4}})
    primary, member = train.member_settings(load("train"), model, {"learning_rate": 0.01})
    assert (primary.model, primary.learning_rate) == ("dropout_cnn", 0.01)
    assert (member.model, member.learning_rate, member.dropout_conv) == ("bn_cnn", load("train").learning_rate, 0.4)


def test_one_model_blend_leaves_its_probabilities_unchanged():
    rng = np.random.default_rng(0)
    outputs = {"cnn_basic": {"oof_views": views_of(rng, 3, 40), "test_views": views_of(rng, 3, 7)}}
    views, report = predict.blend_models(outputs, rng.integers(0, 10, 40), "log_loss")
    assert report["weights"] == {"cnn_basic": 1.0}
    np.testing.assert_array_equal(views, outputs["cnn_basic"]["test_views"])
    assert report["oof_blend_accuracy_in_sample"] == pytest.approx(report["oof_tta_accuracy"])


def test_two_model_ensemble_trains_both_and_blends_on_oof_only(project):
    doc = yaml.safe_load(paths.PARAMS.read_text())
    doc["model"].update(name="cnn_basic", ensemble=["mlp"])
    paths.PARAMS.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert ingest.main([]) == 0 and augment.main([]) == 0
    assert train.main([]) == 0
    for name in ("cnn_basic", "mlp"):
        assert all(paths.fold_model(name, k).is_file() and live.read_history(name, k) for k in range(3))
    metrics = json.loads(paths.METRICS_JSON.read_text())
    assert set(metrics["models"]) == {"cnn_basic", "mlp"} and metrics["models"]["cnn_basic"] == metrics["oof"]

    assert predict.main([]) == 0
    assert len(validate_submission(paths.LATEST_SUBMISSION.read_text(), 20)) == 20
    report = json.loads(paths.PREDICT_JSON.read_text())
    assert list(report["weights"]) == ["cnn_basic", "mlp"]
    assert sum(report["weights"].values()) == pytest.approx(1.0) and min(report["weights"].values()) >= 0
    assert report["blend_by"] == "log_loss" and set(report["models"]) == {"cnn_basic", "mlp"}

    test = read_npz(paths.TEST_NPZ)
    noise = np.random.default_rng(5).integers(0, 256, size=test["x"].shape).astype(np.uint8)
    write_npz(paths.TEST_NPZ, **{**test, "x": noise})
    assert predict.main([]) == 0
    again = json.loads(paths.PREDICT_JSON.read_text())
    assert again["weights"] == report["weights"]  # the test images play no part in the weights
    assert again["oof_blend_accuracy_in_sample"] == report["oof_blend_accuracy_in_sample"]
