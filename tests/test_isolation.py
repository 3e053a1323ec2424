"""The tests run the same whatever the user has exported: a tuning storage (DIGIT_TUNE_STORAGE), a Keras
backend (KERAS_BACKEND), verbose logs or real Kaggle credentials never reach them (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import LEAKY_ENV, REPO, leaky_names

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

    from pipeline import tune

    assert leaky_names() == []
    assert tune.STORAGE_ENV in LEAKY_ENV and os.environ.get(tune.STORAGE_ENV) is None
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
