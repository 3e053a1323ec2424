"""Submitting as the mission writes it: `kaggle competitions submit -f submissions/latest.csv -m "..."` names no
competition; the kaggle CLI then takes its default, set once as the README shows (`kaggle config set -n competition
-v digit-recognizer`, or KAGGLE_COMPETITION). pipeline.tools.submit keeps naming the competition itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.tools import submit

DEFAULT = (
    "from kaggle.api.kaggle_api_extended import KaggleApi\n"
    "api = KaggleApi(); api.authenticate(); print(api.get_config_value(api.CONFIG_NAME_COMPETITION))\n"
)


def kaggle(args: list[str], home: Path, **env: str) -> str:
    """Run the kaggle package's Python (`-m kaggle.cli ARGS`, or `-c` code) offline with fake credentials."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle")}
    base |= {"KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "0123456789abcdef", **env}
    done = subprocess.run([sys.executable, *args], env=base, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_readmes_one_time_step_sets_the_default_competition(tmp_path):
    assert kaggle(["-c", DEFAULT], tmp_path).strip() == "None"  # without it, submit needs -c
    kaggle(["-m", "kaggle.cli", "config", "set", "-n", "competition", "-v", "digit-recognizer"], tmp_path)
    assert kaggle(["-c", DEFAULT], tmp_path).strip() == "digit-recognizer"


def test_the_environment_variable_sets_it_too(tmp_path):
    assert kaggle(["-c", DEFAULT], tmp_path, KAGGLE_COMPETITION="digit-recognizer").strip() == "digit-recognizer"


def test_pipeline_submit_names_the_competition_itself():
    assert " -c digit-recognizer " in submit.cli_command(Path("submissions/latest.csv"), "m")
