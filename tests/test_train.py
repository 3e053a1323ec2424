"""Train: k-fold training writes every fold's model, OOF probabilities, history and the metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from pipeline import augment, ingest, paths, train
from pipeline.device import DevicePlan, Gpu, Hardware, configure, plan_devices
from pipeline.lib.files import read_json, read_npz, write_json
from pipeline.lib.fitting import FitSettings, checkpoint_history, fit, schedule
from pipeline.lib.models import load_model
from pipeline.lib.training_data import read_training_data
from pipeline.params import load
from tests.dvclive_files import read_history

SETTINGS = FitSettings(
    model="dropout_cnn", epochs=4, batch_size=32, learning_rate=0.01, warmup_epochs=1.0,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip


def profile_device() -> DevicePlan:
    """Return the device plan under the test profile's precision (float32: the same arithmetic on every CPU)."""
    return configure(load("device").precision)


@pytest.fixture
def prepared(project):
    """The tiny project after ingest and augment."""
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    return project


def test_train_all_writes_folds_oof_history_and_metrics(prepared):
    cfg = train.fit_settings(load("train"), "dropout_cnn", None)
    metrics = train.train_all([cfg], 3, seed=1, device=profile_device())
    data = read_npz(paths.TRAIN_NPZ)
    oof = read_npz(paths.OOF_NPZ)
    assert oof["probs"].shape == (60, 10)
    assert np.allclose(oof["probs"].sum(axis=1), 1.0, atol=1e-4)
    assert metrics["oof"]["accuracy"] == pytest.approx(float(np.mean(oof["probs"].argmax(1) == data["y"])))
    assert set(metrics["folds"]) == {"fold0", "fold1", "fold2"}
    assert metrics["models"] == {"dropout_cnn": metrics["oof"]}
    assert metrics["oof_untuned_rows"] == {**metrics["oof"], "rows": 60}  # no fold chose any setting
    assert json.loads(paths.METRICS_JSON.read_text()) == metrics
    for fold in range(3):
        part = read_npz(paths.fold_oof("dropout_cnn", fold))
        assert np.array_equal(np.sort(part["rows"]), np.flatnonzero(data["fold"] == fold))
        rows = read_history("dropout_cnn", fold)  # logged through DVCLive, epoch by epoch
        assert [r["epoch"] for r in rows] == [1, 2]
        assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}
        recorded = json.loads(paths.fold_meta("dropout_cnn", fold).read_text())["history"]
        assert rows == [{k: r[k] for k in rows[0]} for r in recorded]
        model = load_model(str(paths.fold_model("dropout_cnn", fold)))
        assert model.output_shape == (None, 10)
    assert not any(paths.CHECKPOINT_DIR.rglob("last.keras"))  # checkpoints are removed once a fold is done


def test_metrics_leave_out_the_fold_that_scored_tuning(prepared, capsys):
    write_json(paths.BEST_PARAMS, {"params": {"dropout_dense": 0.3}, "value": 0.9, "scored_fold": 1})
    assert train.main(["--epochs", "1"]) == 0
    metrics = json.loads(paths.METRICS_JSON.read_text())
    oof, data = read_npz(paths.OOF_NPZ), read_npz(paths.TRAIN_NPZ)
    keep = data["fold"] != 1
    right = oof["probs"][keep].argmax(1) == data["y"][keep]
    untuned = metrics["oof_untuned_rows"]
    assert untuned["rows"] == int(keep.sum()) == 40
    assert untuned["accuracy"] == pytest.approx(float(right.mean()))
    assert untuned["loss"] == pytest.approx(float(-np.log(oof["probs"][keep, data["y"][keep]]).mean()), rel=1e-4)
    assert f"{untuned['accuracy']:.5f} on the 40 rows outside fold 1" in capsys.readouterr().out


def test_tuned_parameters_override_train_settings(prepared):
    base = train.fit_settings(load("train"), "dropout_cnn", None)
    tuned = train.fit_settings(load("train"), "dropout_cnn", {"learning_rate": 0.01, "batch_size": 32, "other": 1})
    assert (tuned.learning_rate, tuned.batch_size) == (0.01, 32)
    assert tuned.dropout_conv == base.dropout_conv
    assert isinstance(tuned.batch_size, int)


def test_schedule_warms_up_then_decays():
    lr = schedule(SETTINGS, steps_per_epoch=10)
    values = [float(lr(step)) for step in (0, 5, 10, 20, 39)]
    assert values[0] == pytest.approx(0.001)
    assert values[0] < values[1] < values[2] == pytest.approx(0.01)
    assert values[2] > values[3] > values[4]


def test_fit_learns_the_synthetic_digits(digits):
    from pipeline.lib.fitting import EpochSampler

    images, labels = digits
    rows = np.arange(60)
    sampler = EpochSampler(images, labels, rows, images[:0], np.zeros(0, np.int32), seed=0)
    cfg = replace(
        SETTINGS, model="cnn_basic", epochs=6, batch_size=16, learning_rate=0.003, warmup_epochs=0.5, aug_prob=0.0
    )
    _, history = fit(cfg, sampler, (images, labels))
    assert len(history) == 6
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_accuracy"] > 0.5  # ten classes: chance is 0.1


def test_monitor_subset_is_stratified_seeded_and_bounded(digits):
    from pipeline.lib.fitting import monitor_subset

    _, labels = digits
    rows = np.arange(60)
    subset = monitor_subset(rows, labels, 30, seed=4)
    assert len(subset) == 30 and np.all(np.diff(subset) > 0)
    assert np.bincount(labels[subset], minlength=10).tolist() == [3] * 10
    assert np.array_equal(subset, monitor_subset(rows, labels, 30, seed=4))
    assert np.array_equal(monitor_subset(rows, labels, None, seed=4), rows)
    assert np.array_equal(monitor_subset(rows, labels, 100, seed=4), rows)


def fold_outputs(models: list[FitSettings]) -> dict[tuple[str, int], tuple]:
    """Return each model's fold files as trained: OOF rows and probabilities, fingerprint, per-epoch losses, device."""
    out = {}
    for model, fold in ((m.model, k) for m in models for k in range(3)):
        oof, meta = read_npz(paths.fold_oof(model, fold)), read_json(paths.fold_meta(model, fold))
        losses = [(r["loss"], r["val_loss"], r["val_accuracy"]) for r in meta["history"]]
        out[model, fold] = (oof["rows"].tolist(), oof["probs"].tolist(), meta["fingerprint"], losses, meta["device"])
    return out


def test_two_processes_train_exactly_the_folds_of_one(prepared, capfd):
    """Folds trained two at a time in worker processes (standing in for two GPUs) are those one process trains one
    after another: the same OOF probabilities, fingerprints, losses and metrics; a finished fold is kept; DVCLive
    holds each fold's epochs; a rerun in two processes keeps every fold and starts no worker."""
    models = [replace(train.fit_settings(load("train"), "mlp", None), epochs=2)]
    one = train.train_all(models, 3, seed=1, device=profile_device())
    alone = fold_outputs(models)
    for fold in (1, 2):  # fold 0 stays finished
        for path in (paths.fold_model, paths.fold_oof, paths.fold_meta):
            path("mlp", fold).unlink()
    capfd.readouterr()
    two = train.train_all(models, 3, seed=1, device=profile_device(), options=train.Options(envs=({}, {})))
    out = capfd.readouterr().out
    assert "train: fold 0 already trained with these settings" in out
    started = re.findall(r"\[worker (\d)\] train: mlp fold (\d)/3 on", out)  # folds 1 and 2, one per worker
    assert sorted(w for w, _ in started) == ["1", "2"] and sorted(f for _, f in started) == ["2", "3"]
    assert fold_outputs(models) == alone
    assert two == {**one, "seconds_per_epoch": two["seconds_per_epoch"]}
    for model, fold in alone:
        logged = read_history(model, fold)
        recorded = read_json(paths.fold_meta(model, fold))["history"]
        assert logged == [{k: r[k] for k in logged[0]} for r in recorded]
    train.train_all(models, 3, seed=1, device=profile_device(), options=train.Options(envs=({}, {})))
    out = capfd.readouterr().out
    assert out.count("already trained with these settings") == 3 and "[worker" not in out


def test_a_failed_worker_stops_train_and_names_its_fold(prepared, monkeypatch, capfd):
    monkeypatch.setattr(sys, "executable", shutil.which("false"))  # every worker process exits 1 at once
    assert train.main(["--epochs", "1", "--processes", "2"]) == 2
    err = capfd.readouterr().err
    assert re.search(r"train: error: the worker process training \S+ fold [01] exited 1\n$", err)
    assert not paths.METRICS_JSON.exists() and not any(paths.FOLDS_DIR.rglob("*.json"))


def test_a_worker_that_ends_before_reading_its_job_is_a_failed_fold(prepared, monkeypatch, tmp_path, capfd):
    # CI: a worker that had already exited when its job was written broke train with a BrokenPipeError
    worker = tmp_path / "worker"
    worker.write_text("#!/bin/sh\nexec 0<&-\nsleep 1\nexit 3\n")  # closes its stdin unread, then fails
    worker.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(worker))
    assert train.main(["--epochs", "1", "--processes", "2"]) == 2
    err = capfd.readouterr().err
    assert re.search(r"train: error: the worker process training \S+ fold [01] exited 3\n$", err)


def test_a_worker_stops_when_its_parent_is_gone(prepared):
    """A worker process whose parent ended (its stdin closes) stops training rather than go on beside a rerun; the
    checkpoint of its last epoch stays for the rerun to resume."""
    cfg = replace(train.fit_settings(load("train"), "mlp", None), epochs=10_000)
    run = train.Run(1, profile_device(), ("data",), np.zeros(0, np.int64))
    job = train.fold_job(cfg, 0, read_training_data(), run)
    cmd = [sys.executable, "-m", "pipeline.train", "--worker"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(train.worker_spec(job, run) + "\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("train: mlp fold 1/3 on ")
        assert proc.stdout.readline().startswith("  fold 0 epoch 1/10000: ")
        proc.stdin.close()
        assert proc.wait(timeout=300) == 1  # a bound, not a race: it ends within seconds unless it ignores EOF
    finally:
        proc.kill()
        proc.wait()
    assert not paths.fold_meta("mlp", 0).exists()
    assert len(checkpoint_history(paths.fold_checkpoint_dir("mlp", 0), job.fingerprint) or []) >= 1


def test_training_processes_come_from_the_device_plan():
    cpu = plan_devices(Hardware("tensorflow", ()))
    assert train.process_envs(cpu, None) == ({},)  # no GPU: this process
    assert train.process_envs(cpu, 2) == ({}, {})
    t4 = Gpu("Tesla T4", (7, 5), 15.0)
    two_gpus = plan_devices(Hardware("tensorflow", (t4, t4)))  # Kaggle's two T4s: one training process on each
    assert train.process_envs(two_gpus, None) == ({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in train.process_envs(two_gpus, 3)] == ["0", "1", "0"]
