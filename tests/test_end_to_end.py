"""End to end: `dvc repro` of the real dvc.yaml on a subset of the real competition zip (DIGIT_ZIP)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.submission import validate_submission_file
from tests.conftest import REPO

ZIP = os.environ.get("DIGIT_ZIP")


def run(cmd: list[str], cwd: Path) -> str:
    """Run `cmd` in `cwd` with the test interpreter's bin folder first on PATH; return its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def tiny_real_params() -> dict:
    """Return the repository's params.yaml shrunk to a subset of the real data and a few epochs."""
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["profile"] = "quick"
    doc["ingest"].update(max_train_rows=3000, max_test_rows=1000)
    doc["profiles"]["quick"] = {
        "augment": {"copies": 1},
        "train": {"folds": 2, "epochs": 3},
        "tune": {"trials": 2, "epochs": 1, "max_train_rows": 600, "study_name": "e2e"},
        "predict": {"tta_views": 2},
    }
    return doc


@pytest.mark.slow
@pytest.mark.skipif(
    not ZIP and not os.environ.get("DIGIT_REQUIRE_ZIP"),
    reason="set DIGIT_ZIP=/path/to/digit-recognizer.zip to run the end-to-end test",
)
def test_dvc_repro_from_the_competition_zip_to_a_submission(tmp_path):
    assert ZIP and Path(ZIP).is_file(), f"DIGIT_ZIP={ZIP!r} is not a file (CI requires it)"
    for name in ("pipeline", "tests"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_real_params(), sort_keys=False))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    shutil.copy(ZIP, tmp_path / "data" / "raw" / "digit-recognizer.zip")
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "config", "core.analytics", "false"], tmp_path)

    log = run(["dvc", "repro"], tmp_path)
    for stage in ("ingest", "augment", "tune", "train", "predict", "report"):
        assert f"Running stage '{stage}'" in log
    frame = validate_submission_file(tmp_path / "submissions" / "latest.csv", expected_rows=1000)
    assert frame["Label"].astype(int).between(0, 9).all()
    assert "Out-of-fold accuracy" in (tmp_path / "reports" / "summary.md").read_text()

    assert "Data and pipelines are up to date" in run(["dvc", "repro"], tmp_path)
    metrics = run(["dvc", "metrics", "show", "--json"], tmp_path)
    assert "oof_tta_accuracy" in metrics and '"accuracy"' in metrics
    import json

    oof = json.loads((tmp_path / "reports" / "metrics.json").read_text())["oof"]["accuracy"]
    assert oof > 0.5  # 3 epochs on 1,500 rows per fold: far above chance (0.1); the quick profile reaches 0.99
