"""A bad setting never costs a result: it is refused with one line and exit code 2 at every door (composition,
every stage's params load, and under `dvc repro` / `dvc exp run -S` the first stage, `settings`, before DVC removes
any other stage's outputs); broken YAML in conf/ or params.yaml is named by file, line and column; and a stage that
fails for another reason leaves its last good outputs restorable by `dvc checkout` (every output DVC-cached)."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import params, paths
from pipeline.lib import compose
from tests.conftest import REPO, tracked_conf
from tests.test_experiments import run, tiny_clone

# (override, the key the one-line error names): each composes (Hydra accepts it) but the schema refuses it
BAD_OVERRIDES = [
    ("train.epochs=-1", "train.epochs"),
    ("model.name=resnet", "model.name"),
    ("predict.tta_views=-3", "predict.tta_views"),
    ("predict.tta_views=99", "predict.tta_views"),
    ("tune.space.learning_rate=[0.01,0.001]", "tune.space.learning_rate"),
    ("model.ensemble=[bn_lite+0]", "model.ensemble"),
    ("model.ensemble=[bn_lite@1]", "model.ensemble"),  # the old seed mark: DVC's matrix stage names forbid "@"
    ("compare.models=[resnet]", "compare.models"),
    ("+tune.model_space.resnet={dropout_conv:null}", "tune.model_space"),
    ("tune.grace_seconds=1", "tune.grace_seconds"),
]
STAGES = ("settings", "ingest", "augment", "tune", "train", "predict", "audit", "report")


@pytest.fixture
def composed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the cwd) with the tracked conf/ and params.yaml composed from its quick profile."""
    shutil.copytree(tracked_conf(), tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    assert compose.main(["--profile", "quick"]) == 0
    return tmp_path


def files_of(root: Path) -> dict[str, bytes]:
    """Return the bytes of every file under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(err: str, module: str) -> str:
    """Return the single line of `err`, asserting it is one `<module>: error: ...` line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{module}: error: "), err
    return lines[0]


def test_the_schemas_model_names_are_the_zoos() -> None:
    from pipeline.lib import models

    assert tuple(models.MODELS) == params.MODEL_NAMES


@pytest.mark.parametrize(("override", "key"), BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_composition_refuses_a_bad_value_and_leaves_params_yaml(composed: Path, capsys, override: str, key: str):
    # finding: `python -m pipeline.params --profile quick train.epochs=-1` exited 0 and wrote the value
    capsys.readouterr()
    before = files_of(composed)
    assert compose.main(["--profile", "quick", override]) == 2
    line = one_error_line(capsys.readouterr().err, "params")
    assert f"params.yaml {key}" in line and "left as it was" in line
    assert files_of(composed) == before  # params.yaml, its digest and the profile choice: byte-identical


def test_composition_still_writes_a_valid_override(composed: Path) -> None:
    """Control: the check refuses only bad values (a seed member and a valid value pass)."""
    assert compose.main(["--profile", "quick", "predict.tta_views=0", "model.ensemble=[bn_lite+2]"]) == 0
    assert params.load("predict").tta_views == 0 and params.load("model").ensemble == ["bn_lite+2"]


@pytest.mark.parametrize("name", ["config.yaml", "profile/quick.yaml"])
def test_broken_yaml_in_conf_is_one_line_naming_file_line_and_column(composed: Path, capsys, name: str) -> None:
    # finding: `seed: [42` in conf/config.yaml gave exit 1 and a 74-line yaml.parser.ParserError traceback
    path = composed / "conf" / name
    path.write_text(path.read_text() + "seed: [42\n")
    lines = path.read_text().count("\n")
    before = files_of(composed)
    capsys.readouterr()
    assert compose.main(["--profile", "quick"]) == 2
    line = one_error_line(capsys.readouterr().err, "params")
    assert re.match(rf"params: error: conf/{re.escape(name)}, line {lines + 1}, column 1: not valid YAML: ", line), line
    assert files_of(composed) == before


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_names_broken_yaml_in_params_yaml_by_line_and_column(project: Path, capsys, stage: str) -> None:
    text = (project / "params.yaml").read_text().replace("seed: 42\n", "seed: [42\n", 1)
    assert "seed: [42\n" in text
    (project / "params.yaml").write_text(text)
    before = files_of(project)
    assert importlib.import_module(f"pipeline.{stage}").main([]) == 2
    line = one_error_line(capsys.readouterr().err, stage)
    assert re.match(rf"{stage}: error: params\.yaml, line \d+, column \d+: not valid YAML: ", line), line
    assert files_of(project) == before


def test_the_settings_stage_writes_the_same_bytes_for_any_valid_settings(project: Path, capsys) -> None:
    from pipeline import settings

    assert settings.main([]) == 0
    first = paths.SETTINGS_CHECKED.read_bytes()
    doc = yaml.safe_load((project / "params.yaml").read_text())
    doc["predict"]["tta_views"] = 0 if doc["predict"]["tta_views"] else 1
    (project / "params.yaml").write_text(yaml.safe_dump(doc))
    assert settings.main([]) == 0
    assert paths.SETTINGS_CHECKED.read_bytes() == first  # a valid change changes nothing downstream stages see
    doc["train"]["epochs"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(doc))
    paths.SETTINGS_CHECKED.unlink()  # as DVC removes it before it runs the stage
    assert settings.main([]) == 2
    assert one_error_line(capsys.readouterr().err, "settings").endswith(
        "params.yaml train.epochs: got -1, expected a whole number at least 1"
    )
    assert not paths.SETTINGS_CHECKED.exists()


def test_the_settings_stage_refuses_a_hand_edit_that_leaves_derived_stale(project: Path, capsys) -> None:
    """params.yaml's `derived:` (what the train matrix stage iterates and depends on) is written by the composition:
    a hand edit of train: or model: that leaves it as it was is refused, one line and exit 2, before anything runs."""
    from pipeline import settings

    text = (project / "params.yaml").read_text()
    assert "\nmodel:\n  name: dropout_cnn\n  ensemble: []\n" in text
    (project / "params.yaml").write_text(text.replace("  ensemble: []\n", "  ensemble:\n  - bn_lite+1\n", 1))
    assert settings.main([]) == 2 and not paths.SETTINGS_CHECKED.exists()
    assert one_error_line(capsys.readouterr().err, "settings") == (
        "settings: error: params.yaml derived: does not match model/train (params.yaml edited by hand?): compose it "
        "again: python -m pipeline.params"
    )


# ---------------------------------------------------------------- real dvc on a finished tiny run

KEPT = ("submissions/latest.csv", "reports/predict.json", "reports/submission_diff.json", "reports/summary.md")


def attempt(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd` with the test interpreter's bin folder first on PATH; return the finished process."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def outputs(root: Path) -> dict[str, str]:
    """Return the sha256 of every file under data/processed, models, submissions and reports but the settings
    stage's own record (DVC removes it before the stage runs; `dvc checkout` restores it)."""
    found = {}
    for folder in ("data/processed", "models", "submissions", "reports"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path != root / paths.SETTINGS_CHECKED:
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def stages_run(log: str) -> set[str]:
    """Return the stages DVC's output says it ran."""
    return set(re.findall(r"Running stage '(\w+)(?:@[^']*)?'", log))  # a train unit (train@m-k) counts as train


def assert_refused(done: subprocess.CompletedProcess, key: str) -> None:
    """Assert that `done` (a dvc command) failed at stage settings with one line naming `key`, running nothing else."""
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    errors = [line for line in log.splitlines() if line.startswith("settings: error: ")]
    assert len(errors) == 1 and f"params.yaml {key}: " in errors[0], log
    assert "Traceback" not in log and stages_run(log) == {"settings"}, log


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC project after a finished `dvc repro` of the real dvc.yaml on tiny synthetic data."""
    root = tmp_path_factory.mktemp("finished")
    tiny_clone(root)
    assert stages_run(run(["dvc", "repro"], root)) >= set(STAGES) - {"settings"}
    return root


@pytest.mark.slow
def test_a_bad_value_by_any_door_is_refused_before_dvc_deletes_anything(finished: Path) -> None:
    # finding: `dvc repro` after a bad value removed submissions/latest.csv, models/test_probs.npz, reports/predict.json
    # and the submission diff before predict refused the value; `dvc exp run -S train.epochs=-1` removed train.npz
    before, kept = outputs(finished), {name: (finished / name).read_bytes() for name in KEPT}
    composed = (finished / "params.yaml").read_bytes()

    done = attempt([sys.executable, "-m", "pipeline.params", "predict.tta_views=99"], finished)  # composing
    assert done.returncode == 2 and one_error_line(done.stderr, "params").startswith(
        "params: error: params.yaml predict.tta_views: got 99"
    )
    assert (finished / "params.yaml").read_bytes() == composed
    stamp = sys.executable  # make quick with this interpreter, taken as installed (-o: never remade)
    bin_dir = f"BIN={Path(sys.executable).parent}"
    make = ["make", "-f", str(REPO / "Makefile"), "-o", stamp, "quick", "SET=predict.tta_views=-3", bin_dir]
    done = attempt([*make, f"STAMP={stamp}"], finished)
    assert done.returncode != 0 and one_error_line(done.stderr.split("make: ***")[0], "params").startswith(
        "params: error: params.yaml predict.tta_views: got -3"
    )
    assert (finished / "params.yaml").read_bytes() == composed

    doc = yaml.safe_load(composed)  # a hand edit of params.yaml, then dvc repro
    doc["predict"]["tta_views"] = 99
    (finished / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    done = attempt(["dvc", "repro"], finished)
    (finished / "params.yaml").write_bytes(composed)
    assert outputs(finished) == before, done.stdout + done.stderr  # nothing deleted (before: predict's outputs)
    assert_refused(done, "predict.tta_views")

    for override, key in (("train.epochs=-1", "train.epochs"), ("model.name=resnet", "model.name")):
        # refused by DVC's own composition (derived: names the train units): no stage runs, params.yaml is left
        done = attempt(["dvc", "exp", "run", "-S", override], finished)
        assert (finished / "params.yaml").read_bytes() == composed
        assert outputs(finished) == before, done.stdout + done.stderr  # (before: ingest's or train's)
        log = done.stdout + done.stderr
        assert done.returncode != 0 and f"params.yaml {key}: got " in log and stages_run(log) == set(), log

    assert {name: (finished / name).read_bytes() for name in KEPT} == kept


@pytest.mark.slow
def test_a_failed_stage_leaves_its_last_good_outputs_restorable_by_dvc_checkout(finished: Path) -> None:
    # finding: submissions/latest.csv and reports/submission_diff.{json,png} were `cache: false`: gone after a failure
    before = outputs(finished)
    source = finished / "pipeline/predict.py"
    code = source.read_bytes()
    source.write_bytes(b"raise SystemExit('predict: error: the disk is full')\n" + code)  # any failure, after DVC ...
    try:
        done = attempt(["dvc", "repro"], finished)
        assert done.returncode != 0 and stages_run(done.stdout) - {"settings"} == {"predict"}, done.stdout + done.stderr
        assert not (finished / "submissions/latest.csv").exists()  # ... removed the stage's outputs
    finally:
        source.write_bytes(code)
    run(["dvc", "checkout"], finished)
    assert outputs(finished) == before
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], finished)


@pytest.mark.slow
def test_a_valid_change_reruns_only_the_stages_it_touches(finished: Path) -> None:
    log = run(["dvc", "exp", "run", "-S", "predict.tta_views=0"], finished)
    assert stages_run(log) == {"settings", "predict", "audit", "report"}, log
    assert yaml.safe_load((finished / "reports/predict.json").read_text())["tta_views"] == 0
