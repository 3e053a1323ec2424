"""Every stage run without one of its inputs stops with one line naming the missing file and the command
that makes it (`dvc repro <stage>`), exit code 2, no traceback, and leaves the project as it was."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from pipeline import audit, augment, ingest, paths, predict, report, train, tune
from pipeline.lib.files import write_npz
from pipeline.tools import compare
from tests.conftest import REPO, synthetic_digits
from tests.test_bad_input import snapshot


def ingested(root: Path) -> None:
    """Run ingest: train.npz and test.npz exist."""
    assert ingest.main([]) == 0


def only_train_npz(root: Path) -> None:
    """Write train.npz alone (as ingest would, without test.npz)."""
    x, y = synthetic_digits(60)
    write_npz(paths.TRAIN_NPZ, x=x, y=y, fold=np.arange(60) % 3)


def augmented(root: Path) -> None:
    """Run ingest and augment."""
    ingested(root)
    assert augment.main([]) == 0


# (case id, the stage's main and argv, what exists before it runs, the missing file, the stage that makes it)
CASES: list[tuple[str, Callable[[list[str]], int], list[str], Callable[[Path], None], str, str]] = [
    ("augment without train.npz", augment.main, [], lambda root: None, "data/processed/train.npz", "ingest"),
    ("tune without train.npz", tune.main, [], lambda root: None, "data/processed/train.npz", "ingest"),
    ("tune without augmented.npz", tune.main, [], ingested, "data/processed/augmented.npz", "augment"),
    ("train without train.npz", train.main, [], lambda root: None, "data/processed/train.npz", "ingest"),
    ("train without augmented.npz", train.main, [], ingested, "data/processed/augmented.npz", "augment"),
    ("predict without train.npz", predict.main, [], lambda root: None, "data/processed/train.npz", "ingest"),
    ("predict without test.npz", predict.main, [], only_train_npz, "data/processed/test.npz", "ingest"),
    ("predict without models", predict.main, [], augmented, "models/folds/dropout_cnn/fold0/model.keras", "train"),
    (
        "predict --image without models",
        predict.main,
        ["--image", "x.png"],
        lambda root: None,
        "models/folds/dropout_cnn/fold0/model.keras",
        "train",
    ),
    ("audit without OOF TTA probabilities", audit.main, [], augmented, "models/oof_tta.npz", "predict"),
    ("report without train.npz", report.main, [], lambda root: None, "data/processed/train.npz", "ingest"),
    ("report without the OOF TTA probabilities", report.main, [], ingested, "models/oof_tta.npz", "predict"),
    ("compare without train.npz", compare.main, [], lambda root: None, "data/processed/train.npz", "ingest"),
]


@pytest.mark.parametrize(
    ("main", "argv", "setup", "missing", "maker"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_missing_input_is_one_line_naming_it_and_its_stage(
    project: Path, main, argv: list[str], setup, missing: str, maker: str
) -> None:
    setup(project)
    before = snapshot(project)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    stage = main.__module__.rsplit(".", 1)[1]
    assert code == 2, out.getvalue() + err.getvalue()
    assert err.getvalue() == f"{stage}: error: {missing} not found: run `dvc repro {maker}` (or `dvc repro`) first\n"
    assert snapshot(project) == before


def test_a_stage_process_without_its_input_prints_no_traceback(project: Path) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.augment"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    message = "augment: error: data/processed/train.npz not found: run `dvc repro ingest` (or `dvc repro`) first\n"
    assert done.stderr == message
