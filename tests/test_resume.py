"""Interruptions: SIGKILL the train stage in the middle of a fold and the predict stage during TTA,
as real processes in a tiny project, and check what a rerun finds and does.

One scenario (module fixture) runs: ingest and augment once; an uninterrupted reference train in a
copy of the project; in the other copy a train killed after fold 1's second epoch, then resumed;
then predict in the reference copy, once to the end and once killed during TTA.

Measured on the 2-core CPU (TensorFlow, float32, fixed seeds), repeated runs: the resumed OOF
probabilities equal the uninterrupted run's exactly (max |difference| 0.0, same OOF accuracy), and
folds trained in two different processes are bit-identical. The tolerances below (1e-5 on
probabilities, 0 on accuracy) therefore only allow for float round-off on other machines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.lib.files import PARTIAL, read_npz
from pipeline.lib.models import load_model
from tests.conftest import REPO, synthetic_digits, test_csv_text, tiny_params, train_csv_text
from tests.dvclive_files import read_history

EPOCHS = 5
KILL_FOLD, KILL_EPOCH = 1, 2
PROB_TOLERANCE = 1e-5  # measured: 0.0 (bit-identical); allows round-off on other CPUs
ACCURACY_TOLERANCE = 0.0  # measured: 0.0
MODEL = tiny_params()["model"]["name"]  # fold files live in models/folds/<model.name>/


def env() -> dict[str, str]:
    """Return the environment of a stage process: the repository importable, CPU only, unbuffered output."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }


def run_stage(module: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m module` in `cwd` to the end; fail the test when it does not exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", module], cwd=cwd, env=env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{module} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


# Runs a stage in a child process that stops for good at a chosen point and says so; the test then kills it
# there. Killing on a progress line instead raced the child: on 20 rows it could finish first.
TRAIN_STOPS = """
import sys, threading
from pipeline import train
from pipeline.lib import fitting
save = fitting.save_checkpoint
def save_then_stop(folder, model, history, fingerprint):
    save(folder, model, history, fingerprint)
    if folder.name == "fold{fold}" and len(history) == {epoch}:
        print("STOPPED: fold {fold} checkpointed after epoch {epoch}", flush=True)
        threading.Event().wait()
fitting.save_checkpoint = save_then_stop
sys.exit(train.main([]))
"""
PREDICT_STOPS = """
import sys, threading
from pipeline import predict
load, loads = predict.load_model, []
def load_or_stop(path):
    loads.append(path)
    if len(loads) == {load}:
        print(f"STOPPED: before loading {{path}}", flush=True)
        threading.Event().wait()
    return load(path)
predict.load_model = load_or_stop
sys.exit(predict.main([]))
"""


def run_and_kill(script: str, cwd: Path) -> list[str]:
    """Run the Python `script` in `cwd`, SIGKILL it once it prints its STOPPED line (it then waits for the kill);
    return the lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("STOPPED:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"the child ended before its stop point:\n{''.join(lines)}"
    return lines


def snapshot(root: Path, folders: tuple[str, ...]) -> dict[str, bytes]:
    """Return the bytes of every file under `folders` of `root`."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def partials(root: Path) -> list[Path]:
    """Return the temporary files of unfinished atomic writes anywhere in the project."""
    return sorted(root.rglob(f".*.{PARTIAL}*"))


def sentinel_submission(produced: bytes) -> bytes:
    """Return a valid submission with the rows of `produced` but every label changed."""
    lines = produced.decode().splitlines()
    rows = [f"{i},{(int(label) + 1) % 10}" for i, label in (line.split(",") for line in lines[1:])]
    return ("\n".join([lines[0], *rows]) + "\n").encode()


def make_project(root: Path) -> Path:
    """Create a tiny project at `root`: synthetic raw CSVs and params with 3 folds x EPOCHS epochs."""
    images, labels = synthetic_digits(60)
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/train.csv").write_text(train_csv_text(images, labels))
    (root / "data/raw/test.csv").write_text(test_csv_text(synthetic_digits(20, seed=1)[0]))
    doc = tiny_params()
    # weight averaging on: the checkpoint carries the trained weights and their average, the fold model the average
    doc["train"].update(epochs=EPOCHS, use_tuned=False, ema_momentum=0.9)
    (root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


@dataclass
class Scenario:
    """What the interruption scenario observed."""

    reference: Path
    resumed: Path
    killed_lines: list[str]
    after_kill: dict[str, bytes]
    partials_after_kill: list[Path]
    checkpoint_epochs: int
    resumed_stdout: str
    submission_before: bytes
    predict_killed_lines: list[str]
    submission_after_kill: bytes
    predict_partials: list[Path]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """Run the whole interruption scenario once for the tests of this module."""
    reference = make_project(tmp_path_factory.mktemp("reference"))
    run_stage("pipeline.ingest", reference)
    run_stage("pipeline.augment", reference)
    resumed = tmp_path_factory.mktemp("resumed")
    shutil.copytree(reference, resumed, dirs_exist_ok=True)

    run_stage("pipeline.train", reference)

    killed = run_and_kill(TRAIN_STOPS.format(fold=KILL_FOLD, epoch=KILL_EPOCH), resumed)
    after_kill = snapshot(resumed, ("models", "reports"))
    kill_partials = partials(resumed)
    state = resumed / f"models/checkpoints/{MODEL}/fold{KILL_FOLD}/state.json"
    epochs = len(json.loads(state.read_text())["history"]) if state.is_file() else 0
    resumed_run = run_stage("pipeline.train", resumed)

    run_stage("pipeline.predict", reference)
    produced = (reference / "submissions/latest.csv").read_bytes()
    before = sentinel_submission(produced)  # unlike a rerun's file: a run that rewrote it would be seen
    (reference / "submissions/latest.csv").write_bytes(before)
    predict_lines = run_and_kill(PREDICT_STOPS.format(load=2), reference)  # during TTA, after fold 0
    return Scenario(
        reference=reference,
        resumed=resumed,
        killed_lines=killed,
        after_kill=after_kill,
        partials_after_kill=kill_partials,
        checkpoint_epochs=epochs,
        resumed_stdout=resumed_run.stdout,
        submission_before=before,
        predict_killed_lines=predict_lines,
        submission_after_kill=(reference / "submissions/latest.csv").read_bytes(),
        predict_partials=partials(reference / "submissions") + partials(reference / "models"),
    )


def test_kill_leaves_only_complete_files(scenario: Scenario) -> None:
    """After SIGKILL mid-fold, every output at its final name is complete: fold 0's files load, the checkpoint loads."""
    files = set(scenario.after_kill)
    assert {
        f"models/folds/{MODEL}/fold0.keras",
        f"models/folds/{MODEL}/fold0_oof.npz",
        f"models/folds/{MODEL}/fold0.json",
    } <= files
    assert not any(
        f.startswith(f"models/folds/{MODEL}/fold{KILL_FOLD}") for f in files
    )  # the killed fold wrote nothing
    assert "models/oof.npz" not in files and "reports/metrics.json" not in files
    root = scenario.resumed
    assert load_model(str(root / f"models/folds/{MODEL}/fold0.keras")).output_shape == (None, 10)
    assert read_npz(root / f"models/folds/{MODEL}/fold0_oof.npz")["probs"].shape[1] == 10
    assert json.loads(scenario.after_kill[f"models/folds/{MODEL}/fold0.json"])["epochs"] == EPOCHS
    assert scenario.checkpoint_epochs == KILL_EPOCH, scenario.killed_lines
    for partial in scenario.partials_after_kill:  # a write cut short stays under its temporary name
        assert PARTIAL in partial.name and partial.name.startswith(".")


def test_resume_keeps_finished_folds(scenario: Scenario) -> None:
    """The rerun does not retrain fold 0: it reports it done and its model file is byte-identical."""
    assert "train: fold 0 already trained with these settings" in scenario.resumed_stdout
    assert "  fold 0 epoch" not in scenario.resumed_stdout
    model = (scenario.resumed / f"models/folds/{MODEL}/fold0.keras").read_bytes()
    assert model == scenario.after_kill[f"models/folds/{MODEL}/fold0.keras"]


def test_resume_continues_the_killed_fold_from_its_checkpoint(scenario: Scenario) -> None:
    """The killed fold restarts after its last checkpointed epoch, not from epoch 1."""
    done = scenario.checkpoint_epochs
    out = scenario.resumed_stdout
    assert f"train: fold {KILL_FOLD} resumes after epoch {done}/{EPOCHS}" in out
    epochs = [
        int(line.split("epoch ")[1].split("/")[0]) for line in out.splitlines() if f"fold {KILL_FOLD} epoch" in line
    ]
    assert epochs == list(range(done + 1, EPOCHS + 1))
    meta = json.loads((scenario.resumed / f"models/folds/{MODEL}/fold{KILL_FOLD}.json").read_text())
    assert meta["epochs"] == EPOCHS
    # the per-epoch metrics (DVCLive, reports/live/) hold each epoch once, exactly as trained, killed or not
    logged = read_history(MODEL, KILL_FOLD, scenario.resumed / "reports/live")
    assert [row["epoch"] for row in logged] == list(range(1, EPOCHS + 1))
    assert logged == [{k: row[k] for k in logged[0]} for row in meta["history"]]
    assert read_history(MODEL, 0, scenario.resumed / "reports/live")[-1]["epoch"] == EPOCHS  # the kept fold too


def test_resume_leaves_nothing_behind(scenario: Scenario) -> None:
    """After the resumed run, no temporary file and no checkpoint remain."""
    assert partials(scenario.resumed) == []
    assert not any((scenario.resumed / "models/checkpoints").rglob("*.keras"))


def test_resumed_oof_matches_uninterrupted_run(scenario: Scenario) -> None:
    """The resumed run's OOF probabilities and accuracy equal the uninterrupted run's (same seed)."""
    ref = read_npz(scenario.reference / "models/oof.npz")
    got = read_npz(scenario.resumed / "models/oof.npz")
    np.testing.assert_array_equal(got["fold"], ref["fold"])
    diff = float(np.max(np.abs(got["probs"] - ref["probs"])))
    assert diff <= PROB_TOLERANCE, f"max |OOF probability difference| {diff}"
    ref_acc = json.loads((scenario.reference / "reports/metrics.json").read_text())["oof"]["accuracy"]
    got_acc = json.loads((scenario.resumed / "reports/metrics.json").read_text())["oof"]["accuracy"]
    assert abs(got_acc - ref_acc) <= ACCURACY_TOLERANCE


def test_two_processes_train_identical_folds(scenario: Scenario) -> None:
    """Folds trained from scratch in two different processes (same seed, same CPU) give the same OOF probabilities."""
    for fold in (0, 2):
        ref = read_npz(scenario.reference / f"models/folds/{MODEL}/fold{fold}_oof.npz")
        got = read_npz(scenario.resumed / f"models/folds/{MODEL}/fold{fold}_oof.npz")
        np.testing.assert_array_equal(got["rows"], ref["rows"])
        assert float(np.max(np.abs(got["probs"] - ref["probs"]))) <= PROB_TOLERANCE


def test_predict_killed_during_tta_keeps_previous_submission(scenario: Scenario) -> None:
    """SIGKILL during TTA leaves submissions/latest.csv byte-identical and no temporary file beside it."""
    assert any("predict: fold 1/3 done" in line for line in scenario.predict_killed_lines)
    assert not any("predict: fold 2/3 done" in line for line in scenario.predict_killed_lines)
    assert scenario.submission_after_kill == scenario.submission_before
    assert scenario.submission_before.startswith(b"ImageId,Label\n")
    assert scenario.predict_partials == []
