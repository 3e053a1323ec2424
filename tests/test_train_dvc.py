"""What DVC decides for train, on the real dvc.yaml and `dvc repro` in a tiny git + DVC clone: adding an ensemble
member trains only the new member's units; `kill -9` of `dvc repro` in the middle of a fold keeps the finished units
and the next `dvc repro` resumes the interrupted one from its last epoch."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import paths
from pipeline.lib.files import read_json
from tests.test_experiments import run, tiny_clone

pytestmark = pytest.mark.slow


def dvc_env() -> dict[str, str]:
    """Return the environment dvc runs in: the test interpreter's bin folder first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def repro(root: Path) -> str:
    """Run `dvc repro` in `root` (dvc_env); return its stdout and stderr."""
    done = subprocess.run(["dvc", "repro"], cwd=root, env=dvc_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"dvc repro failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def trained_units(log: str) -> set[str]:
    """Return the train units `dvc repro` ran in `log` (train@<member>-<fold>)."""
    return set(re.findall(r"Running stage '(train@[^']+)'", log))


def unit_files(root: Path, member: str) -> dict[str, str]:
    """Return the SHA-256 of every file of `member`'s fold folders under `root`."""
    found = (root / paths.model_dir(member)).rglob("*")
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(found) if p.is_file()}


def compose(root: Path, *overrides: str) -> None:
    """Compose the quick profile with `overrides` into `root`'s params.yaml, as `make quick SET=...` does."""
    run([sys.executable, "-m", "pipeline.params", "--profile", "quick", *overrides], root)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny clone after a finished `dvc repro` of one member (dropout_cnn), three folds of two epochs."""
    root = tmp_path_factory.mktemp("clone")
    tiny_clone(root)
    compose(root, "train.epochs=2")
    assert trained_units(repro(root)) == {f"train@dropout_cnn-{k}" for k in range(3)}
    return root


def test_adding_a_member_trains_only_the_new_member(clone: Path) -> None:
    before = unit_files(clone, "dropout_cnn")
    compose(clone, "train.epochs=2", "model.ensemble=[dropout_cnn+1]")  # a seed member: its own units
    log = repro(clone)
    assert trained_units(log) == {f"train@dropout_cnn+1-{k}" for k in range(3)}
    assert "Running stage 'predict'" in log  # the blend takes the new member in
    assert unit_files(clone, "dropout_cnn") == before
    assert set(read_json(clone / paths.PREDICT_JSON)["weights"]) == {"dropout_cnn", "dropout_cnn+1"}
    seeds = {**before, **unit_files(clone, "dropout_cnn+1")}
    compose(clone, "train.epochs=2", "model.ensemble=[dropout_cnn+1,bn_lite]")
    assert trained_units(repro(clone)) == {f"train@bn_lite-{k}" for k in range(3)}
    # one member's own settings: only its units (the seed member takes dropout_cnn's overrides, not bn_lite's)
    compose(
        clone, "train.epochs=2", "model.ensemble=[dropout_cnn+1,bn_lite]", "model.overrides.bn_lite.learning_rate=0.002"
    )
    assert trained_units(repro(clone)) == {f"train@bn_lite-{k}" for k in range(3)}
    assert {**unit_files(clone, "dropout_cnn"), **unit_files(clone, "dropout_cnn+1")} == seeds


def checkpoint_epoch(root: Path, fold: int) -> int:
    """Return the epochs unit (dropout_cnn, `fold`)'s checkpoint under `root` holds (0: none yet)."""
    meta = root / paths.fold_checkpoint_dir("dropout_cnn", fold) / "current" / "training_metadata.json"
    try:
        return int(read_json(meta)["epoch"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_kill_9_of_dvc_repro_mid_fold_keeps_finished_folds_and_resumes_the_fold(tmp_path: Path) -> None:
    tiny_clone(tmp_path)
    compose(tmp_path, "train.epochs=8")
    # dvc runs `$SHELL -c <cmd>`; dash (Debian's sh) stays between dvc and the unit
    env = {**dvc_env(), "SHELL": "/bin/sh"}
    dvc = subprocess.Popen(["dvc", "repro"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while checkpoint_epoch(tmp_path, 1) < 3 and dvc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 3 <= checkpoint_epoch(tmp_path, 1) < 8, "fold 1 was not caught mid-run"
        os.kill(dvc.pid, signal.SIGKILL)  # dvc only: its train unit must end by itself
    finally:
        dvc.kill()
        dvc.wait()
    finished = unit_files(tmp_path, "dropout_cnn")
    assert any("fold0/model.keras" in name for name in finished) and not any("fold1/" in n for n in finished)
    time.sleep(5)  # the orphaned unit notices within a fifth of a second that dvc is gone
    killed_at = checkpoint_epoch(tmp_path, 1)
    log = repro(tmp_path)
    assert "Stage 'train@dropout_cnn-0' didn't change, skipping" in log
    assert trained_units(log) == {"train@dropout_cnn-1", "train@dropout_cnn-2"}
    assert f"resumes after epoch {killed_at}/8" in log
    assert log.count("  dropout_cnn fold 1 epoch ") == 8 - killed_at and log.count("  dropout_cnn fold 2 epoch ") == 8
    assert {k: v for k, v in unit_files(tmp_path, "dropout_cnn").items() if "fold0/" in k} == finished
    history = read_json(tmp_path / paths.fold_meta("dropout_cnn", 1))["history"]
    assert [r["epoch"] for r in history] == list(range(1, 9))
