"""DVC-native experiments on a fresh clone (finding 1 end to end): `dvc exp run -S profile=quick -S
predict.tta_views=0` composes params.yaml from conf/ through Hydra, the stages run with exactly that (0 views in
reports/predict.json), and `dvc exp show` lists the run beside the previous one with its params and metrics (OOF
accuracy and loss, TTA gain, stage times). Runs the real dvc.yaml on tiny synthetic data (about a minute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.lib import compose
from pipeline.lib.exclusions import header_text
from tests.conftest import REPO, synthetic_digits, test_csv_text, tiny_params, tracked_conf, train_csv_text


def run(cmd: list[str], cwd: Path) -> str:
    """Run `cmd` in `cwd` with the test interpreter's bin folder first on PATH; return its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def tiny_clone(root: Path) -> None:
    """Make `root` a git + DVC project like a fresh clone: the repository's code, dvc.yaml and Hydra setup, with
    conf/ shrunk to tiny settings (a quick profile of 1 epoch and 2 views) and synthetic CSVs in data/raw/."""
    for package in ("pipeline", "hydra_plugins"):  # hydra_plugins/: the resolver DVC's composition writes derived: with
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tracked_conf(), root / "conf")
    (root / ".dvc").mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, root / name)
    (root / "data").mkdir()
    (root / "data/exclude_rows.csv").write_text(header_text())  # none excluded (not the user's list)
    base = tiny_params()
    base.update(profile="???", derived=yaml.safe_load((REPO / "conf/config.yaml").read_text())["derived"])
    base["tune"]["trials"] = 1
    defaults = ["_self_", {"profile": "full"}, {"optional local": "profile"}]  # as conf/config.yaml's
    (root / "conf/config.yaml").write_text(yaml.safe_dump({"defaults": defaults, **base}))
    quick = "# @package _global_\nprofile: quick\ntrain:\n  epochs: 1\npredict:\n  tta_views: 2\n"
    (root / "conf/profile/quick.yaml").write_text(quick)
    images, labels = synthetic_digits(60)
    (root / "data/raw").mkdir()
    (root / "data/raw/train.csv").write_text(train_csv_text(images, labels))
    (root / "data/raw/test.csv").write_text(test_csv_text(synthetic_digits(20, seed=1)[0]))
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "pipeline.params", "--profile", "quick"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "fresh clone"], root)


def leaves(doc: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Return every (dotted key, value) at the leaves of the nested mapping `doc`."""
    found = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        found += leaves(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return found


def experiments(root: Path) -> dict[str, dict]:
    """Return `dvc exp show --json`'s experiments of the baseline commit: name -> {"params": ..., "metrics": ...}."""
    found = {}
    for row in json.loads(run(["dvc", "exp", "show", "--json"], root)):
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                found[rev.get("name") or rev["rev"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": {path: m["data"] for path, m in data["metrics"].items()},
                }
    return found


@pytest.mark.slow
def test_dvc_exp_run_composes_the_profile_and_the_users_override_and_lists_both_runs(tmp_path):
    tiny_clone(tmp_path)
    run(["dvc", "exp", "run", "-n", "quick-2-views", "-S", "profile=quick"], tmp_path)
    assert json.loads((tmp_path / "reports/predict.json").read_text())["tta_views"] == 2
    log = run(["dvc", "exp", "run", "-n", "no-tta", "-S", "profile=quick", "-S", "predict.tta_views=0"], tmp_path)
    assert "Running stage 'predict'" in log and "Running stage 'train@" not in log  # only what the change touches
    shown = yaml.safe_load((tmp_path / "params.yaml").read_text())  # params.yaml shows what ran
    assert shown["profile"] == "quick" and shown["predict"]["tta_views"] == 0 and shown["train"]["epochs"] == 1
    assert (tmp_path / "params.yaml").read_text() == compose.compose(
        ["profile=quick", "predict.tta_views=0"], tmp_path / "conf"
    )
    assert json.loads((tmp_path / "reports/predict.json").read_text())["tta_views"] == 0
    runs = experiments(tmp_path)
    assert {"quick-2-views", "no-tta"} <= set(runs)
    for name, views in (("quick-2-views", 2), ("no-tta", 0)):
        exp = runs[name]
        assert exp["params"]["predict"]["tta_views"] == views and exp["params"]["profile"] == "quick"
        predicted = exp["metrics"]["reports/predict.json"]
        assert predicted["tta_views"] == views and "tta_gain" in predicted
        assert {"oof_accuracy", "oof_loss", "oof_tta_accuracy"} <= set(predicted)
        for stage in ("ingest", "augment", "tune", "predict"):
            assert exp["metrics"][f"reports/timings/{stage}.json"]["seconds"] > 0
        member = yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]["name"]
        assert exp["metrics"][f"reports/live/{member}/fold0/metrics.json"]["step"] == 0  # DVCLive: the only epoch
        text = {f"{path}:{key}": v for path, m in exp["metrics"].items() for key, v in leaves(m) if isinstance(v, str)}
        assert text == {}, f"text among the metrics makes dvc exp show unreadable: {text}"
    assert not subprocess.run(
        ["git", "status", "--porcelain", "--", "conf/"], cwd=tmp_path, capture_output=True, text=True
    ).stdout  # choosing and composing profiles changed no tracked file
