"""make dashboard: optuna-dashboard (the pinned extra) serves the study tune wrote, from the storage tune uses."""

from __future__ import annotations

import io
import json
import subprocess
from wsgiref.util import setup_testing_defaults

import optuna

from pipeline import params, paths
from pipeline.tools import dashboard
from tests.conftest import REPO


def get(app, path: str) -> tuple[str, bytes]:
    """Call the WSGI `app` with a GET of `path`; return the status line and the body."""
    environ: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def test_the_dashboard_lists_the_study_in_tunes_storage(project):
    paths.OPTUNA_DB.parent.mkdir(parents=True, exist_ok=True)
    url = paths.tune_storage(params.load("tune").storage)  # what tune and the dashboard open
    assert url == f"sqlite:///{paths.OPTUNA_DB}"  # the test profile's: the SQLite file
    study = optuna.create_study(study_name="digit-test", storage=url, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("learning_rate", 1e-4, 1e-2), n_trials=2)
    status, body = get(dashboard.app(url), "/api/studies")
    assert status.startswith("200")
    (listed,) = json.loads(body)["study_summaries"]
    assert listed["study_name"] == "digit-test"


def test_the_storage_handed_to_tunes_workers_wins(monkeypatch):
    monkeypatch.setenv(paths.TUNE_STORAGE_ENV, "postgresql://tuner:pw@db/optuna")
    assert paths.tune_storage("sqlite:///other.db") == "postgresql://tuner:pw@db/optuna"
    monkeypatch.delenv(paths.TUNE_STORAGE_ENV)
    assert paths.tune_storage("sqlite:///other.db") == "sqlite:///other.db"


def test_without_a_study_it_says_what_to_run(project, capsys):
    assert dashboard.main([]) == 2
    assert "dvc repro tune" in capsys.readouterr().err


def test_make_install_brings_the_pinned_dashboard_extra_and_make_dashboard_serves_it():
    # -W pyproject.toml: as if it had changed, so make prints the .venv recipe even where .venv is up to date
    install = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "install"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    (pip_line,) = [line for line in install.splitlines() if "pip install" in line and " -e " in line]
    extras = pip_line.split(".[", 1)[1].split("]", 1)[0].split(",")
    assert "dashboard" in extras and "dev" in extras
    recipe = subprocess.run(["make", "-n", "dashboard"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "pipeline.tools.dashboard" in recipe
    assert '"optuna-dashboard==' in (REPO / "pyproject.toml").read_text()
