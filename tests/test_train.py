"""Train: one unit (member, fold) writes its model, OOF probabilities with the record of its training rows, meta and
DVCLive series; a unit killed by SIGKILL resumes from its last epoch to exactly the uninterrupted result; a second
trainer of the same unit is refused; a trainer dvc ran ends with that dvc, one run by hand trains on."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import augment, ingest, paths, train
from pipeline.lib.files import OutputError, read_json, read_npz, write_json
from pipeline.lib.fitting import EpochSampler, fit, monitor_subset, schedule
from pipeline.lib.members import FitSettings, member_settings
from pipeline.lib.models import load_model
from pipeline.params import load
from tests.conftest import REPO
from tests.dvclive_files import read_history

SETTINGS = FitSettings(
    model="dropout_cnn", epochs=4, batch_size=32, learning_rate=0.01, warmup_epochs=1.0,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip


@pytest.fixture
def prepared(project):
    """The tiny project after ingest and augment."""
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    return project


def set_epochs(root: Path, epochs: int) -> None:
    """Give every member `epochs` epochs in `root`'s params.yaml (train: and its derived settings)."""
    doc = yaml.safe_load((root / "params.yaml").read_text())
    doc["train"]["epochs"] = epochs
    for settings in doc["derived"]["settings"].values():
        settings["epochs"] = epochs
    (root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def stage_env() -> dict[str, str]:
    """Return the environment of a stage process: the repository importable, CPU only, unbuffered output."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_a_unit_writes_its_model_oof_record_meta_and_series(prepared):
    assert train.main(["--member", "dropout_cnn", "--fold", "1"]) == 0
    data = read_npz(paths.TRAIN_NPZ)
    part, meta = read_npz(paths.fold_oof("dropout_cnn", 1)), read_json(paths.fold_meta("dropout_cnn", 1))
    held_out = np.flatnonzero(data["fold"] == 1)
    assert np.array_equal(part["rows"], held_out) and part["probs"].shape == (len(held_out), 10)
    assert np.allclose(part["probs"].sum(axis=1), 1.0, atol=1e-4)
    assert meta["accuracy"] == pytest.approx(float(np.mean(part["probs"].argmax(1) == data["y"][held_out])))
    trained = np.union1d(part["trained_rows"], part["copied_rows"])
    assert len(trained) and not np.isin(trained, held_out).any()  # the record: only other folds' rows trained it
    assert [r["epoch"] for r in meta["history"]] == [1, 2] == [r["epoch"] for r in read_history("dropout_cnn", 1)]
    logged = read_history("dropout_cnn", 1)
    assert logged == [{k: r[k] for k in logged[0]} for r in meta["history"]]
    assert load_model(str(paths.fold_model("dropout_cnn", 1))).output_shape == (None, 10)
    assert not paths.fold_dir("dropout_cnn", 0).exists()  # one unit only
    assert not paths.fold_checkpoint_dir("dropout_cnn", 1).exists()  # removed once the unit is done


def test_without_a_unit_named_every_unit_trains(prepared, capsys):
    assert train.main([]) == 0
    assert all(paths.fold_meta("dropout_cnn", k).is_file() for k in range(3))
    assert capsys.readouterr().out.count("OOF accuracy") == 3


@pytest.mark.parametrize(("argv", "message"), [(["--member", "bn_cnn"], "not a member"), (["--fold", "3"], "0 to 2")])
def test_a_unit_outside_the_ensemble_is_refused(prepared, capsys, argv, message):
    assert train.main(argv) == 2
    assert message in capsys.readouterr().err


def test_tuned_values_reach_model_name_only(prepared):
    write_json(paths.BEST_PARAMS, {"params": {"dropout_dense": 0.3, "batch_size": 32, "other": 1}, "value": 0.9})
    cfg, model = load("train"), replace(load("model"), ensemble=["bn_lite"], overrides={})
    tuned = train.read_tuned()
    own, other = member_settings(cfg, model, "dropout_cnn", tuned), member_settings(cfg, model, "bn_lite", tuned)
    assert (own.dropout_dense, own.batch_size) == (0.3, 32) and isinstance(own.batch_size, int)
    assert (other.dropout_dense, other.batch_size) == (cfg.dropout_dense, cfg.batch_size)
    assert (
        member_settings(replace(cfg, use_tuned=False), model, "dropout_cnn", tuned).dropout_dense == cfg.dropout_dense
    )


def test_a_seed_member_takes_its_models_overrides_and_other_seeds(prepared):
    cfg = load("train")
    model = replace(load("model"), ensemble=["bn_lite", "bn_lite+1"], overrides={"bn_lite": {"learning_rate": 0.002}})
    one, two = member_settings(cfg, model, "bn_lite", None), member_settings(cfg, model, "bn_lite+1", None)
    assert one.learning_rate == two.learning_rate == 0.002 and two.model == "bn_lite+1"
    from pipeline.lib.members import member_seed

    assert member_seed(42, "bn_lite") == 42 != member_seed(42, "bn_lite+1")


def test_schedule_warms_up_then_decays():
    lr = schedule(SETTINGS, steps=10)
    values = [float(lr(step)) for step in (0, 5, 10, 20, 39)]
    assert values[0] == pytest.approx(0.001)
    assert values[0] < values[1] < values[2] == pytest.approx(0.01)
    assert values[2] > values[3] > values[4]


def test_fit_learns_the_synthetic_digits(digits):
    images, labels = digits
    sampler = EpochSampler(images, labels, np.arange(60), images[:0], np.zeros(0, np.int32), seed=0)
    cfg = replace(SETTINGS, model="cnn_basic", epochs=6, batch_size=16, learning_rate=0.003, warmup_epochs=0.5)
    _, history = fit(replace(cfg, aug_prob=0.0), sampler, (images, labels))
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_accuracy"] > 0.5  # ten classes: chance is 0.1


def test_monitor_subset_is_stratified_seeded_and_bounded(digits):
    _, labels = digits
    rows = np.arange(60)
    subset = monitor_subset(rows, labels, 30, seed=4)
    assert len(subset) == 30 and np.all(np.diff(subset) > 0)
    assert np.bincount(labels[subset], minlength=10).tolist() == [3] * 10
    assert np.array_equal(subset, monitor_subset(rows, labels, 30, seed=4))
    assert np.array_equal(monitor_subset(rows, labels, None, seed=4), rows)


def test_a_second_trainer_of_the_same_unit_is_refused(prepared):
    held = train.claim(paths.fold_checkpoint_dir("dropout_cnn", 0))
    try:
        with pytest.raises(OutputError, match="another trainer is training"):
            train.claim(paths.fold_checkpoint_dir("dropout_cnn", 0))
        train.claim(paths.fold_checkpoint_dir("dropout_cnn", 1)).close()  # another unit: free
    finally:
        held.close()


def unit_command(fold: int) -> list[str]:
    """Return the command line of the train unit (dropout_cnn, `fold`)."""
    return [sys.executable, "-m", "pipeline.train", "--member", "dropout_cnn", "--fold", str(fold)]


def checkpoint_epoch(fold: int) -> int:
    """Return the epochs unit (dropout_cnn, `fold`)'s checkpoint holds (0: none yet)."""
    meta = paths.fold_checkpoint_dir("dropout_cnn", fold) / "current" / "training_metadata.json"
    try:
        return int(read_json(meta)["epoch"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_a_killed_unit_resumes_from_its_last_epoch_to_the_uninterrupted_result(prepared, tmp_path_factory):
    """SIGKILL after the third of six epochs: the rerun trains epochs 4-6 only and ends with the OOF probabilities,
    history and series of a run never interrupted (measured: identical, max |difference| 0.0)."""
    set_epochs(prepared, 6)
    reference = tmp_path_factory.mktemp("reference")
    subprocess.run(["cp", "-rT", str(prepared), str(reference)], check=True)
    done = subprocess.run(unit_command(1), cwd=reference, env=stage_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(unit_command(1), env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while checkpoint_epoch(1) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 3 <= checkpoint_epoch(1) < 6, "the unit ended before it could be killed mid-run"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    resumed_after = checkpoint_epoch(1)
    done = subprocess.run(unit_command(1), env=stage_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumes after epoch {resumed_after}/6" in done.stdout
    assert done.stdout.count("  dropout_cnn fold 1 epoch ") == 6 - resumed_after
    ours, theirs = read_npz(paths.fold_oof("dropout_cnn", 1)), read_npz(reference / paths.fold_oof("dropout_cnn", 1))
    assert np.abs(ours["probs"] - theirs["probs"]).max() <= 1e-5  # measured 0.0; round-off allowance elsewhere
    history = [
        {k: v for k, v in r.items() if k != "seconds"} for r in read_json(paths.fold_meta("dropout_cnn", 1))["history"]
    ]
    os.chdir(reference)
    reference_history = [
        {k: v for k, v in r.items() if k != "seconds"} for r in read_json(paths.fold_meta("dropout_cnn", 1))["history"]
    ]
    reference_series = read_history("dropout_cnn", 1)
    os.chdir(prepared)
    assert history == reference_history and read_history("dropout_cnn", 1) == reference_series
    assert not paths.fold_checkpoint_dir("dropout_cnn", 1).exists()


def running(pid: int) -> bool:
    """Return whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def orphan_unit(by_dvc: bool) -> int:
    """Start unit (dropout_cnn, 0) of many epochs through `/bin/sh -c` (as dvc runs a stage with SHELL=/bin/sh: dash
    stays between them) from a parent that stands in for dvc (DVC_STAGE set when `by_dvc`) and dies once the unit
    trains; return the orphaned unit's pid (its output goes to a file: no broken pipe ends it)."""
    env = {k: v for k, v in stage_env().items() if k != "DVC_STAGE"}
    if by_dvc:
        env["DVC_STAGE"] = "train@dropout_cnn-0"
    starter = (
        "import psutil, subprocess, time\n"
        f"p = subprocess.Popen(['/bin/sh', '-c', {shlex.join(unit_command(0))!r}], stdout=open('unit.log', 'w'),"
        " stderr=subprocess.STDOUT)\n"
        "while ' epoch 1/' not in open('unit.log').read(): time.sleep(0.1)\n"
        "print(psutil.Process(p.pid).children()[0].pid if p.poll() is None else p.pid, flush=True)\n"
    )
    parent = subprocess.run([sys.executable, "-c", starter], env=env, capture_output=True, text=True, timeout=300)
    return int(parent.stdout)


@pytest.mark.parametrize("by_dvc", [True, False], ids=["run-by-dvc", "run-by-hand"])
def test_a_trainer_dvc_ran_ends_with_that_dvc_and_one_run_by_hand_trains_on(prepared, by_dvc):
    """Killed dvc: its unit stops within a second rather than train on beside a rerun, a shell between them or not.
    Started by hand (`nohup python -m pipeline.train &`, then log out): the unit trains on."""
    set_epochs(prepared, 10_000)
    pid = orphan_unit(by_dvc)
    try:
        deadline = time.monotonic() + (60 if by_dvc else 5)
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert running(pid) != by_dvc, "the orphaned trainer is still running" if by_dvc else "the trainer ended"
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    assert not paths.fold_meta("dropout_cnn", 0).exists()
