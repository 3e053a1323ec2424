"""The model comparison: same folds and budget for every model, one report row each, an OOF blend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import compare as cmp
from pipeline import ingest, paths
from pipeline.models import build_model
from pipeline.params import CompareParams
from pipeline.training import FitSettings

BASE = FitSettings(
    model="dropout_cnn", epochs=9, batch_size=16, learning_rate=0.002, warmup_epochs=0.0,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip


@pytest.fixture
def data(digits) -> dict:
    """Sixty synthetic digits in three stratified folds, with one augmented copy each."""
    x, y = digits
    return {"x": x, "y": y, "fold": ingest.assign_folds(y, 3, seed=0)}


def test_compare_trains_each_model_on_the_same_rows_and_budget(data):
    aug = {"x": data["x"][::-1].copy(), "source": np.arange(60)[::-1].copy()}
    cfg = CompareParams(models=["mlp", "cnn_basic"], folds=[0, 2], epochs=1, max_train_rows=30)
    logs = []
    result = cmp.compare(BASE, data, aug, cfg, {}, seed=1, log=logs.append)
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["mlp", "cnn_basic"]
    held_out = int(np.sum(np.isin(data["fold"], [0, 2])))
    for r in rows:
        assert r["params"] == build_model(r["model"]).count_params()
        assert r["train_rows"] == [30, 30]
        assert r["val_rows"] == held_out
        assert r["epochs"] == 1
        assert r["settings"]["batch_size"] == 16
        assert 0.0 <= r["oof_accuracy"] <= 1.0
        assert r["oof_loss"] > 0
        assert r["seconds_per_epoch"] > 0
        assert r["published"]
    assert sum(result["blend"]["weights"]) == pytest.approx(1.0)
    assert len(logs) == 2
    text = cmp.markdown(result, "CPU")
    assert "| mlp |" in text and "| cnn_basic |" in text and "blend" in text


def test_split_rows_subsamples_training_rows_stratified_and_keeps_the_whole_fold(data):
    train, val = cmp.split_rows(data["fold"], data["y"], 1, 20, seed=0)
    assert len(train) == 20
    assert set(np.bincount(data["y"][train], minlength=10)) == {2}
    assert np.array_equal(val, np.flatnonzero(data["fold"] == 1))
    assert not set(train) & set(val)


def test_per_model_overrides_apply_only_to_their_model():
    overrides = {"bn_cnn": {"dropout_conv": 0.4, "dropout_dense": 0.4}}
    bn = cmp.settings_for(BASE, "bn_cnn", overrides)
    assert (bn.model, bn.dropout_conv, bn.dropout_dense) == ("bn_cnn", 0.4, 0.4)
    assert cmp.settings_for(BASE, "mlp", overrides).dropout_conv == 0.25
    with pytest.raises(ValueError, match=r"unknown settings \[.dropout.\]"):
        cmp.settings_for(BASE, "bn_cnn", {"bn_cnn": {"dropout": 0.4}})


def test_bad_compare_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"folds \[3\]"):
        cmp.check_compare(CompareParams(["mlp"], [3], 1, None), n_folds=3)
    with pytest.raises(ValueError, match=r"unknown model\.name"):
        cmp.check_compare(CompareParams(["vgg"], [0], 1, None), n_folds=3)


def test_main_writes_both_reports_without_augmented_copies(project):
    assert ingest.main([]) == 0
    assert cmp.main(["--models", "mlp", "--epochs", "1"]) == 0
    report = json.loads(paths.MODELS_JSON.read_text())
    assert [r["model"] for r in report["rows"]] == ["mlp"]
    assert report["blend"] is None
    assert "| mlp |" in paths.MODELS_MD.read_text()
