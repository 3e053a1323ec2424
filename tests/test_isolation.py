"""The tests run the same whatever the user has exported: a tuning storage (DIGIT_TUNE_STORAGE), a Keras
backend (KERAS_BACKEND), verbose logs or real Kaggle credentials never reach them (tests/conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import LEAKY_ENV, REPO, TEST_PROFILE, WORLD, leaky_names, tiny_params, tracked_conf

EXPORTED = {
    "DIGIT_TUNE_STORAGE": "postgresql://someone:pw@db.invalid/optuna",
    "KERAS_BACKEND": "numpy",  # cannot train: every training test would fail under it
    "DIGIT_VERBOSE": "1",
    "KAGGLE_USERNAME": "someone",
    "KAGGLE_KEY": "a-real-key",
}


def test_the_users_settings_do_not_reach_the_tests() -> None:
    """Checked inside the suite: no leaky variable is set and Keras runs the configured backend, not the exported
    one (run with them exported by the test below)."""
    import keras

    from pipeline import paths

    assert leaky_names() == []
    assert paths.TUNE_STORAGE_ENV in LEAKY_ENV and os.environ.get(paths.TUNE_STORAGE_ENV) is None
    assert keras.backend.backend() != EXPORTED["KERAS_BACKEND"]


def test_exported_settings_are_cleared_before_the_tests_run() -> None:
    env = {**os.environ, **EXPORTED}
    target = f"{__file__}::test_the_users_settings_do_not_reach_the_tests"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout


def test_the_tests_settings_are_the_test_profile_not_the_users_params_yaml() -> None:
    """A user's `make quick` rewrote params.yaml and the tests read it (17 failures after make quick): the tests
    compose the tracked conf/ with the test profile instead, whatever params.yaml and conf/local/ hold."""
    from pipeline.lib import compose

    assert tiny_params()["profile"] == TEST_PROFILE
    assert tiny_params() == yaml.safe_load(compose.compose([f"profile={TEST_PROFILE}"], tracked_conf()))
    assert not (tracked_conf() / "local").exists()  # this machine's profile choice is not in the tests' conf/


def test_a_storage_in_conf_never_reaches_a_test_project(tmp_path: Path) -> None:
    """The test profile pins the tuning storage: a study URL in conf/config.yaml is not carried into test projects."""
    from pipeline.lib import compose

    conf = tmp_path / "conf"
    shutil.copytree(tracked_conf(), conf)
    config = conf / "config.yaml"
    text = config.read_text()
    assert "  storage: null" in text
    config.write_text(text.replace("  storage: null", "  storage: postgresql://user:pw@db.invalid/optuna", 1))
    assert yaml.safe_load(compose.compose(["profile=full"], conf))["tune"]["storage"].startswith("postgresql://")
    assert yaml.safe_load(compose.compose([f"profile={TEST_PROFILE}"], conf))["tune"]["storage"] is None


def test_home_keras_config_and_kaggle_root_are_the_tests_own() -> None:
    """No test reads ~/.keras/keras.json (the backend) or ~/.kaggle, or writes a notebook's /kaggle/working."""
    from pipeline import paths

    assert Path.home().is_relative_to(WORLD) and Path(os.environ["KERAS_HOME"]).is_relative_to(WORLD)
    assert paths.kaggle_root().is_relative_to(WORLD) and not paths.kaggle_submission().parent.exists()


def test_no_test_reads_the_users_workspace_files() -> None:
    """The workspace's params.yaml, data/ (exclude_rows.csv, which audit --accept appends to) and conf/local/ belong to
    the user; tests read git's copy (git show) or build their own."""
    pattern = re.compile(r'REPO / "(params\.yaml|data)"|REPO / "conf" / "local"')
    hits = [
        f"{path.name}:{n}"
        for path in sorted((REPO / "tests").glob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line) and path.name != "test_isolation.py"
    ]
    assert hits == []
