"""The model comparison: same folds and budget for every model, one report row each, an OOF blend."""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace

import numpy as np
import pytest

from pipeline import ingest, paths
from pipeline.lib.cli import StageError
from pipeline.lib.ensemble import blend, choose_weights
from pipeline.lib.members import FitSettings
from pipeline.lib.metrics import log_loss
from pipeline.lib.models import MODELS, PUBLISHED, build_model, multiply_adds
from pipeline.lib.training_data import Augmented, TrainingData, no_copies
from pipeline.params import AugmentParams, CompareParams, FitParams, ModelParams, TrainParams
from pipeline.tools import compare as cmp

BASE = FitSettings(
    model="dropout_cnn", epochs=9, batch_size=16, learning_rate=0.002, warmup_epochs=0.0,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip
TRAIN = TrainParams(
    **{f.name: getattr(BASE, f.name) for f in fields(FitParams)}, folds=3, use_tuned=False, monitor_rows=None
)
MODEL = ModelParams(name="dropout_cnn")


@pytest.fixture
def data(digits) -> TrainingData:
    """Sixty synthetic digits in three stratified folds, without augmented copies."""
    x, y = digits
    return TrainingData(x, y, ingest.assign_folds(y, 3, seed=0), no_copies(x))


def test_compare_trains_each_model_on_the_same_rows_and_budget(data, monkeypatch):
    data = replace(data, aug=Augmented(data.x[::-1].copy(), np.arange(60)[::-1].copy()))  # one copy of each
    cfg = CompareParams(models=["mlp", "cnn_basic"], folds=[0, 2], epochs=1, max_train_rows=30)
    logs, oofs, compare_model = [], [], cmp.compare_model

    def keeping_the_oof(*args, **kwargs):
        row, oof = compare_model(*args, **kwargs)
        oofs.append(oof)
        return row, oof

    monkeypatch.setattr(cmp, "compare_model", keeping_the_oof)  # the real one: its probabilities kept to check
    model = replace(MODEL, overrides={"cnn_basic": {"dropout_conv": 0.4, "batch_size": 8}})
    result = cmp.compare(TRAIN, model, data, cfg, seed=1, log=logs.append)
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["mlp", "cnn_basic"]
    # each model's settings are a member's: `train:` with its own model.overrides
    assert [(r["settings"]["dropout_conv"], r["settings"]["batch_size"]) for r in rows] == [(0.25, 16), (0.4, 8)]
    held_out = int(np.sum(np.isin(data.fold, [0, 2])))
    labels = np.concatenate([data.y[data.fold == 0], data.y[data.fold == 2]])  # the held-out rows, fold by fold
    assert [oof.shape for oof in oofs] == [(held_out, 10)] * 2
    for r in rows:
        assert r["params"] == build_model(r["model"]).count_params()
        assert r["train_rows"] == [30, 30]
        assert r["val_rows"] == held_out
        assert r["epochs"] == 1
        assert r["oof_accuracy"] == float(np.mean(oofs[rows.index(r)].argmax(1) == labels))
        assert r["oof_loss"] > 0
        assert r["seconds_per_epoch"] > 0
        assert r["published"]
    assert sum(result["blend"]["weights"]) == pytest.approx(1.0)
    # two folds: fold 0's rows blended with the weights chosen on fold 2's rows, and fold 2's with fold 0's
    first = np.arange(len(labels)) < int(np.sum(data.fold == 0))
    honest = np.empty_like(oofs[0])
    for rows_in, chosen_on in ((first, ~first), (~first, first)):
        weights = choose_weights([oof[chosen_on] for oof in oofs], labels[chosen_on], "log_loss")
        honest[rows_in] = blend([oof[rows_in] for oof in oofs], weights)
    assert result["blend"]["cross_fitted"]["accuracy"] == float(np.mean(honest.argmax(1) == labels))
    assert result["blend"]["cross_fitted"]["loss"] == pytest.approx(log_loss(honest, labels), rel=1e-5)
    for r in rows:
        assert r["multiply_adds"] == multiply_adds(build_model(r["model"]))
        assert len(r["held_out_by_epoch"]) == 1
        assert r["held_out_by_epoch"][-1] == pytest.approx(r["oof_accuracy"], abs=1e-6)  # the last epoch's model
    assert len(logs) == 2
    text = cmp.markdown(result, "CPU")
    assert "| mlp |" in text and "| cnn_basic |" in text and "blend" in text


def test_the_cross_fitted_blend_scores_each_fold_with_the_other_folds_weights(data):
    """Model a is right on fold 0's rows only, b on fold 2's only: each fold's rows blended with the weights the
    other fold chooses (all on the model that is wrong there) are all wrong."""
    labels = np.concatenate([data.y[data.fold == 0], data.y[data.fold == 2]])  # in compare's order: fold by fold
    first = np.arange(len(labels)) < int(np.sum(data.fold == 0))
    right, wrong = np.eye(10)[labels], np.eye(10)[(labels + 1) % 10]
    a = np.where(first[:, None], 0.9 * right, 0.9 * wrong) + 0.01
    b = np.where(first[:, None], 0.9 * wrong, 0.9 * right) + 0.01
    report = cmp.blend_report([a.astype(np.float32), b.astype(np.float32)], data, [0, 2])
    assert report["cross_fitted"]["accuracy"] == 0.0
    assert report["cross_fitted"]["loss"] == pytest.approx(-np.log(0.01), rel=1e-5)


def test_split_rows_subsamples_training_rows_stratified_and_keeps_the_whole_fold(data):
    train, val = cmp.split_rows(data.fold, data.y, 1, 20, seed=0)
    assert len(train) == 20
    assert set(np.bincount(data.y[train], minlength=10)) == {2}
    assert np.array_equal(val, np.flatnonzero(data.fold == 1))
    assert not set(train) & set(val)


def test_bad_compare_settings_are_clear_errors():
    with pytest.raises(StageError, match=r"folds \[3\]: expected folds of train.npz \(it holds 0-2\)"):
        cmp.check_compare(CompareParams(["mlp"], [3], 1, None), n_folds=3)
    for name in ("vgg", "bn_lite+1"):  # not a model, and a seed member: compare runs each model once
        with pytest.raises(StageError, match=re.escape(f"compare.models: [{name!r}]: expected models of the zoo")):
            cmp.check_compare(CompareParams(["mlp", name], [0], 1, None), n_folds=3)


def test_main_refuses_an_unknown_model_in_one_line(project, capsys):
    assert ingest.main([]) == 0
    assert cmp.main(["--models", "vgg", "--epochs", "1"]) == 2
    assert capsys.readouterr().err.startswith("compare: error: compare.models: ['vgg']")


def test_main_writes_both_reports_without_augmented_copies(project):
    assert ingest.main([]) == 0
    assert cmp.main(["--models", "mlp", "--epochs", "1"]) == 0
    report = json.loads(paths.MODELS_JSON.read_text())
    assert [r["model"] for r in report["rows"]] == ["mlp"]
    assert report["blend"] is None
    assert "| mlp |" in paths.MODELS_MD.read_text()


AUGMENT = AugmentParams(copies=1, rotate_deg=0.0, scale=0.0, shift=0.0, chunk_rows=16, workers=1, preview_rows=1)


def test_every_model_has_a_published_recipe_that_train_can_run():
    assert set(cmp.RECIPES) == set(MODELS) == set(PUBLISHED)
    for name, recipe in cmp.RECIPES.items():
        settings = cmp.recipe_settings(replace(BASE, model=name), recipe)
        assert (settings.epochs, settings.batch_size, settings.learning_rate) == (
            recipe.epochs,
            recipe.batch_size,
            recipe.learning_rate,
        )
        assert settings.aug_prob == (1.0 if recipe.augments() else 0.0)
        assert all(1 <= epoch <= recipe.epochs and 0.9 < figure < 1 for epoch, figure in recipe.published_at)
    an_et_al = cmp.recipe_settings(replace(BASE, model="bn_plain5"), cmp.RECIPES["bn_plain5"])
    assert (an_et_al.schedule, an_et_al.lr_decay, an_et_al.ema_momentum, an_et_al.epochs) == (
        "exponential",
        0.98,
        0.999,
        150,
    )
    plateau = cmp.recipe_settings(replace(BASE, model="dropout_cnn"), cmp.RECIPES["dropout_cnn"], 4)
    assert (plateau.optimizer, plateau.schedule, plateau.epochs, plateau.dropout_conv) == (
        "rmsprop",
        "plateau",
        4,
        BASE.dropout_conv,
    )


def test_recipe_copies_use_the_recipes_transform(data):
    recipe = cmp.RECIPES["bn_plain3"]  # rotation 20, shift 0.2
    copies = cmp.recipe_copies(data.x, recipe, AUGMENT, 3, seed=0)
    assert copies.x.shape == (180, 28, 28) and np.array_equal(copies.source, np.repeat(np.arange(60), 3))
    assert not np.array_equal(copies.x[::3], data.x)
    none = cmp.recipe_copies(data.x, cmp.RECIPES["mlp"], AUGMENT, 3, seed=0)
    assert len(none.x) == 0 and len(none.source) == 0


def test_published_figures_compare_ours_after_the_same_epoch():
    recipe = cmp.RECIPES["cnn_basic"]  # 98.57% after 3 epochs, 99% after 10
    figures = cmp.published_figures(recipe, [0.97, 0.98, 0.984, 0.99])
    assert figures[0] == {
        "epoch": 3, "published": 0.9857, "ours": 0.984, "gap": pytest.approx(-0.0017), "reproduced": True
    }  # fmt: skip
    assert figures[1] == {"epoch": 10, "published": 0.99, "ours": None, "gap": None, "reproduced": None}
    assert cmp.published_figures(recipe, [0.9, 0.95, 0.97])[0]["reproduced"] is False  # 1.57 points short


def test_published_recipes_train_on_every_row_of_the_other_folds(data):
    cfg = CompareParams(models=["dropout_cnn", "bn_plain7"], folds=[0, 1], epochs=9, max_train_rows=10)
    logs = []
    result = cmp.compare(TRAIN, MODEL, data, cfg, 1, published=AUGMENT, max_epochs=1, log=logs.append)
    assert result["mode"] == "published" and len(logs) == 2
    for r in result["rows"]:
        recipe = cmp.RECIPES[r["model"]]
        assert r["epochs"] == 1 and r["train_rows"] == [40, 40]  # every row: max_train_rows and epochs ignored
        assert r["settings"]["optimizer"] == recipe.optimizer and r["settings"]["batch_size"] == recipe.batch_size
        assert r["settings"]["ema_momentum"] == recipe.ema_momentum
        assert r["recipe"]["source"] == recipe.source
        assert [f["epoch"] for f in r["figures"]] == [e for e, _ in recipe.published_at]
        assert all(f["ours"] is None for f in r["figures"])  # one epoch trained: no published epoch reached
    text = cmp.markdown(result, "CPU")
    assert "| dropout_cnn | RMSprop" in text and "| bn_plain7 | An et al." in text and "cross-fitted" in text


def test_main_published_writes_the_reports(project):
    assert ingest.main([]) == 0
    assert cmp.main(["--published", "--models", "cnn_basic", "--max-epochs", "3"]) == 0
    report = json.loads(paths.MODELS_JSON.read_text())
    (row,) = report["rows"]
    assert report["mode"] == "published" and row["epochs"] == 3
    assert row["figures"][0]["epoch"] == 3 and row["figures"][0]["ours"] == pytest.approx(row["held_out_by_epoch"][2])
    assert "98.57%" in paths.MODELS_MD.read_text()
