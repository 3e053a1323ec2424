"""No surprise multi-hour runs: `make run` first measures this machine and prints how long the profile will take,
with the quick profile as the alternative, and records the estimate."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from pipeline import params, paths
from pipeline.tools import estimate
from pipeline.train import member_settings
from tests.conftest import REPO, tracked_conf


def test_the_workload_counts_the_images_each_stage_trains_on_and_infers():
    doc = yaml.safe_load(params.compose(["profile=full"], tracked_conf()))
    doc["ingest"].update(max_train_rows=1000, max_test_rows=500)
    doc["train"].update(folds=4, epochs=3, monitor_rows=None)
    doc["tune"].update(trials=5, epochs=2, max_train_rows=300, max_val_rows=None)
    doc["predict"]["tta_views"] = 2
    doc["model"]["ensemble"] = []
    work = estimate.workload(doc)
    assert work["train"] == (4 * 3 * 750, 4 * (3 * 250 + 250))  # 4 folds x 3 epochs of 750 rows; 250 held out
    assert work["tune"] == (5 * 2 * 300, 5 * 2 * 250)
    assert work["predict"] == (0.0, 4 * 3 * (250 + 500))  # every fold model, 3 views, its OOF rows and the test
    seconds = estimate.estimate(doc, estimate.Rates(train=0.002, infer=0.001))
    assert seconds["train"] == pytest.approx(4 * 3 * 750 * 0.002 + 4 * 1000 * 0.001)
    started = estimate.estimate(doc, estimate.Rates(train=0.002, infer=0.001, startup=5.0))
    assert started["train"] == pytest.approx(seconds["train"] + 4 * 5.0)  # one model built per fold
    assert started["tune"] == pytest.approx(seconds["tune"] + 5 * 5.0)  # and per trial
    assert seconds["total"] == pytest.approx(seconds["tune"] + seconds["train"] + seconds["predict"])
    named = estimate.Rates(train=0.004, infer=0.003)  # tune trains only model.name: priced at its own rates
    own = estimate.estimate(doc, estimate.Rates(train=0.002, infer=0.001, tune=named))
    assert own["tune"] == pytest.approx(2 * seconds["tune"] + 5 * 2 * 250 * 0.001)
    assert (own["train"], own["predict"]) == (seconds["train"], seconds["predict"])
    # predict infers in batches of predict.batch_size, cheaper per image than training's validation batches
    batched = estimate.estimate(doc, estimate.Rates(train=0.002, infer=0.001, predict=0.0004))
    assert batched["predict"] == pytest.approx(4 * 3 * (250 + 500) * 0.0004)
    assert (batched["train"], batched["tune"]) == (seconds["train"], seconds["tune"])
    doc["model"]["ensemble"] = ["bn_cnn"]
    assert estimate.workload(doc)["train"] == (2 * 4 * 3 * 750, 2 * 4 * 1000)
    doc["train"]["pseudo_rounds"] = 2  # per round: the test set labelled, then a student on 750 + up to 500 rows
    student = 3 * (750 + 500)
    assert estimate.workload(doc)["train"] == (2 * 4 * (3 * 750 + 2 * student), 2 * 4 * (3 * 1000 + 2 * 500))


def test_each_member_is_calibrated_at_its_own_model_and_batch_size():
    # the estimate priced every ensemble member at model.name's cost per image (issue 23)
    doc = yaml.safe_load(params.compose(["profile=full"], tracked_conf()))
    settings = params.validate(doc)
    members = member_settings(settings.sections["train"], settings.sections["model"], None)
    kinds = estimate.calibration_kinds(members)
    train, bn_lite = doc["train"], doc["model"]["overrides"]["bn_lite"]
    assert [m.model for m in members] == [doc["model"]["name"], *doc["model"]["ensemble"]]
    assert {m.model for m in members} > {"dropout_cnn", "bn_lite", "bn_lite@1"}
    assert {key: s.batch_size for key, s in kinds.items()} == {
        ("dropout_cnn", train["batch_size"]): train["batch_size"],
        ("bn_lite", bn_lite["batch_size"]): bn_lite["batch_size"],
    }
    assert kinds[("bn_lite", bn_lite["batch_size"])].learning_rate == bn_lite["learning_rate"]


def test_the_full_profile_is_estimated_far_longer_than_the_quick_one():
    rates = estimate.Rates(train=0.001, infer=0.0002)
    full, quick = (yaml.safe_load(params.compose([f"profile={p}"], tracked_conf())) for p in ("full", "quick"))
    assert estimate.estimate(full, rates)["total"] > 5 * estimate.estimate(quick, rates)["total"]


def test_estimate_measures_this_machine_prints_the_quick_alternative_and_records_it(project, capsys):
    # finding 5: make run started the full profile on a CPU without a word about its length or `make quick`
    assert estimate.main(["--seconds", "0.3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("estimate: profile test on this machine (no GPU): about ")  # the tests' profile
    assert "ms per training image" in out and "`make quick`" in out
    record = json.loads(paths.ESTIMATE_JSON.read_text())
    assert record["profile"] == "test" and record["train_seconds_per_image"] > 0
    assert record["predict_seconds_per_image"] > 0  # inference timed at predict.batch_size too
    assert record["seconds"]["total"] == pytest.approx(sum(v for k, v in record["seconds"].items() if k != "total"))


def test_make_run_estimates_before_the_pipeline_starts():
    recipe = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = recipe.splitlines()
    composed = next(i for i, line in enumerate(lines) if "pipeline.params --profile full" in line)
    measured = next(i for i, line in enumerate(lines) if "pipeline.tools.estimate" in line)
    started = next(i for i, line in enumerate(lines) if "dvc repro" in line)
    assert composed < measured < started


def test_a_budget_keeps_the_most_epochs_that_fit():
    doc = yaml.safe_load(params.compose(["profile=full"], tracked_conf()))
    rates = estimate.Rates(train=0.001, infer=0.0002)
    by_epochs = {}
    for epochs in (doc["train"]["epochs"], 12, 13):
        trial = {**doc, "train": {**doc["train"], "epochs": epochs}}
        by_epochs[epochs] = estimate.estimate(trial, rates)["total"]
    full = doc["train"]["epochs"]
    assert estimate.epochs_within(doc, rates, by_epochs[full] + 1) == full  # the profile fits: unchanged
    between = (by_epochs[12] + by_epochs[13]) / 2
    assert estimate.epochs_within(doc, rates, between) == 12
    assert estimate.epochs_within(doc, rates, by_epochs[12]) == 12  # an estimate equal to the budget fits
    assert estimate.epochs_within(doc, rates, 1.0) == 0  # not even one epoch
    assert doc["train"]["epochs"] == full  # the settings given are not changed


def test_a_budget_recomposes_params_yaml_with_the_epochs_that_fit(project, monkeypatch):
    shutil.copytree(tracked_conf(), project / "conf")
    params.write_params(params.compose(["profile=test", "train.batch_size=8"]), force=True)
    doc = params.read_raw()
    doc["train"]["epochs"] = 9
    rates = estimate.Rates(train=0.001, infer=0.0002)
    fits = estimate.epochs_within(doc, rates, 1e9)
    assert estimate.fit_budget(doc, rates, 1e9 / 60, ["train.batch_size=8"]) == fits == 9
    budget = estimate.estimate({**doc, "train": {**doc["train"], "epochs": 4}}, rates)["total"]
    assert estimate.fit_budget(doc, rates, budget / 60, ["train.batch_size=8"]) == 4
    written = params.read_raw()
    assert (written["profile"], written["train"]["epochs"], written["train"]["batch_size"]) == ("test", 4, 8)
    before = paths.PARAMS.read_text()
    with pytest.raises(params.ParamsError, match="not even one epoch"):
        estimate.fit_budget(doc, rates, 1e-6, [])
    assert paths.PARAMS.read_text() == before


def test_make_run_passes_the_budget_and_the_overrides_to_the_estimate():
    cmd = ["make", "-n", "run", "BUDGET=150", "SET=train.epochs=40"]
    recipe = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "pipeline.tools.estimate --budget 150 train.epochs=40" in recipe
