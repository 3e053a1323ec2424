"""Ensembles in the pipeline: train fits model.name and each model.ensemble member on the same folds,
predict blends them with weights chosen on OOF predictions only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline import augment, ingest, paths, predict, train
from pipeline import report as summary
from pipeline.lib.files import read_json, read_npz, write_npz
from pipeline.lib.members import derived, member_seed, member_settings, members
from pipeline.lib.submission_file import validate_submission
from pipeline.params import ModelParams, ParamsError, check_model, load
from tests.conftest import dump_params
from tests.dvclive_files import read_history


def views_of(rng: np.random.Generator, views: int, rows: int) -> np.ndarray:
    """Return random probabilities (views, rows, 10)."""
    return rng.dirichlet(np.ones(10), size=(views, rows)).astype(np.float32)


def test_members_put_model_name_first_and_reject_repeats():
    assert members(ModelParams("cnn_basic", ["mlp"])) == ["cnn_basic", "mlp"]
    assert members(ModelParams("cnn_basic")) == ["cnn_basic"]
    with pytest.raises(ParamsError, match="repeat"):
        check_model(ModelParams("mlp", ["mlp"]))


def test_tuned_values_go_to_model_name_only_and_overrides_to_each_member(project):
    model = ModelParams("dropout_cnn", ["bn_cnn"], {"bn_cnn": {"dropout_conv": 0.4}})
    primary, member = (member_settings(load("train"), model, m, {"learning_rate": 0.01}) for m in members(model))
    assert (primary.model, primary.learning_rate) == ("dropout_cnn", 0.01)
    assert (member.model, member.learning_rate, member.dropout_conv) == ("bn_cnn", load("train").learning_rate, 0.4)


def test_one_model_blend_leaves_its_probabilities_unchanged():
    rng = np.random.default_rng(0)
    outputs = {"cnn_basic": {"oof_views": views_of(rng, 3, 40), "test_views": views_of(rng, 3, 7)}}
    views, oof, report = predict.blend_models(outputs, rng.integers(0, 10, 40), np.arange(40) % 3, "log_loss")
    assert report["weights"] == {"cnn_basic": 1.0}
    assert report["fold_weights"] == {f"fold{k}": {"cnn_basic": 1.0} for k in range(3)}
    np.testing.assert_array_equal(views, outputs["cnn_basic"]["test_views"])
    np.testing.assert_allclose(oof, outputs["cnn_basic"]["oof_views"].mean(axis=0), rtol=1e-6)
    assert report["oof_blend_accuracy_in_sample"] == pytest.approx(report["oof_tta_accuracy"])
    assert report["oof_blend_accuracy"] == pytest.approx(report["oof_tta_accuracy"])


def test_blended_oof_accuracy_is_cross_fitted_and_the_test_blend_uses_every_row():
    rng = np.random.default_rng(1)
    labels, folds = rng.integers(0, 10, 90), np.arange(90) % 3
    right = np.eye(10, dtype=np.float32)[labels]
    wrong = np.eye(10, dtype=np.float32)[(labels + 1) % 10]
    uniform = np.full((90, 10), 0.1, np.float32)
    # `lucky` is right on fold 0 only (wrong elsewhere); `guess` knows nothing: fold 0's cross-fitted weights,
    # chosen on folds 1 and 2, go to `guess`, so fold 0 is scored at chance, not at `lucky`'s 100%
    lucky = np.where((folds == 0)[:, None], right, wrong)
    outputs = {
        "lucky": {"oof_views": np.stack([lucky, lucky]), "test_views": np.stack([right[:5], right[:5]])},
        "guess": {"oof_views": np.stack([uniform, uniform]), "test_views": np.stack([uniform[:5], uniform[:5]])},
    }
    views, _, report = predict.blend_models(outputs, labels, folds, "log_loss")
    assert report["fold_weights"]["fold0"]["lucky"] == pytest.approx(0.0, abs=1e-3)
    assert report["folds"]["fold0"]["oof_blend_accuracy"] < 0.5
    assert report["oof_blend_accuracy"] < report["oof_blend_accuracy_in_sample"]
    assert report["models"]["lucky"]["oof_tta_accuracy"] == pytest.approx(1 / 3)
    test_weights = np.array([report["weights"]["lucky"], report["weights"]["guess"]])
    np.testing.assert_allclose(views[0], test_weights[0] * right[:5] + test_weights[1] * uniform[:5], rtol=1e-5)
    assert report["kept_rows"]["oof_blend_accuracy"] == report["oof_blend_accuracy"]  # nothing excluded


def test_each_member_is_scored_by_leaving_it_out_of_the_cross_fitted_blend():
    rng = np.random.default_rng(2)
    labels, folds = rng.integers(0, 10, 120), np.arange(120) % 3
    right = np.eye(10, dtype=np.float32)[labels] * 0.6 + 0.04  # right everywhere
    half = np.where((np.arange(120) % 2 == 0)[:, None], right, views_of(rng, 1, 120)[0])  # right on half the rows
    noise = views_of(rng, 1, 120)[0]
    outputs = {name: {"oof_views": np.stack([p, p]), "test_views": np.stack([p[:5], p[:5]])}
               for name, p in (("right", right), ("half", half), ("noise", noise))}  # fmt: skip
    _, _, report = predict.blend_models(outputs, labels, folds, "log_loss")
    without = report["without"]
    assert list(without) == ["right", "half", "noise"]
    assert without["right"]["oof_blend_accuracy"] < 0.8 < without["noise"]["oof_blend_accuracy"]
    assert without["right"]["member_gain"] > 0.2 and abs(without["noise"]["member_gain"]) < 0.05
    for left in without.values():
        assert left["member_gain"] == pytest.approx(report["oof_blend_accuracy"] - left["oof_blend_accuracy"])
    assert "without" not in predict.blend_models({"right": outputs["right"]}, labels, folds, "log_loss")[2]
    assert "right +" in predict.blend_note(report)


def train_ensemble(name: str, ensemble: list[str]) -> None:
    """Set model.name and model.ensemble in the project's params.yaml (and its derived section), then run ingest,
    augment and train (every member's every fold)."""
    doc = yaml.safe_load(paths.PARAMS.read_text())
    doc["model"].update(name=name, ensemble=ensemble)
    doc["derived"] = derived(load("train"), ModelParams(**doc["model"]))
    dump_params(doc, paths.PARAMS)  # derived: as the composition writes it
    assert ingest.main([]) == 0 and augment.main([]) == 0
    assert train.main([]) == 0


def test_two_model_ensemble_trains_both_and_blends_on_oof_only(project):
    train_ensemble("cnn_basic", ["mlp"])
    for name in ("cnn_basic", "mlp"):
        assert all(paths.fold_model(name, k).is_file() and read_history(name, k) for k in range(3))
    assert predict.main([]) == 0
    assert len(validate_submission(paths.LATEST_SUBMISSION.read_text(), 20)) == 20
    report = json.loads(paths.PREDICT_JSON.read_text())
    assert list(report["weights"]) == ["cnn_basic", "mlp"]
    assert sum(report["weights"].values()) == pytest.approx(1.0) and min(report["weights"].values()) >= 0
    assert set(report["models"]) == {"cnn_basic", "mlp"}
    assert summary.main([]) == 0
    minutes = sum(read_json(paths.fold_meta("mlp", k))["seconds"] for k in range(3)) / 60
    assert f"| mlp | {report['models']['mlp']['oof_tta_accuracy']:.5f} | " in paths.SUMMARY_MD.read_text()
    assert f" | {minutes:.1f} | " in paths.SUMMARY_MD.read_text()  # its folds' training time, from their meta.json
    headline = f"submission's predictions **{report['oof_blend_accuracy']:.5f}** (the ensemble's cross-fitted blend"
    assert (
        headline in paths.SUMMARY_MD.read_text() and "(weights chosen by OOF log_loss)" in paths.SUMMARY_MD.read_text()
    )

    test = read_npz(paths.TEST_NPZ)
    noise = np.random.default_rng(5).integers(0, 256, size=test["x"].shape).astype(np.uint8)
    write_npz(paths.TEST_NPZ, **{**test, "x": noise})
    assert predict.main([]) == 0
    again = json.loads(paths.PREDICT_JSON.read_text())
    assert again["weights"] == report["weights"]  # the test images play no part in the weights
    assert again["oof_blend_accuracy_in_sample"] == report["oof_blend_accuracy_in_sample"]
    assert again["oof_blend_accuracy"] == report["oof_blend_accuracy"]
    assert set(report["fold_weights"]) == {"fold0", "fold1", "fold2"}


def test_a_seed_member_is_its_model_with_its_overrides_and_other_seeds(project):
    model = ModelParams("dropout_cnn", ["dropout_cnn+1", "dropout_cnn+2"], {"dropout_cnn+2": {"dropout_conv": 0.1}})
    primary, again, own = (member_settings(load("train"), model, m, None) for m in members(model))
    assert (again.model, again.dropout_conv) == ("dropout_cnn+1", primary.dropout_conv)  # no overrides of its own
    assert (own.model, own.dropout_conv) == ("dropout_cnn+2", 0.1)
    seeds = {member_seed(42, name) + offset for name in members(model) for offset in (0, 1, 2, 1000, 2000)}
    assert len(seeds) == 15  # no fold of one member draws another member's seeds


def test_seed_members_train_apart_and_blend(project):
    train_ensemble("mlp", ["mlp+1"])
    first, second = (read_npz(paths.fold_oof(name, 0))["probs"] for name in ("mlp", "mlp+1"))
    assert first.shape == second.shape and not np.allclose(first, second)  # other initial weights and batches
    assert predict.main([]) == 0
    report = json.loads(paths.PREDICT_JSON.read_text())
    assert list(report["weights"]) == ["mlp", "mlp+1"] and set(report["models"]) == {"mlp", "mlp+1"}
