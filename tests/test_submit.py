"""pipeline.tools.submit: validation before upload, set-up help without credentials, and a real
kaggle-package submission against a local fake Kaggle API (never the real service)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.lib.submission_file import submission_csv
from pipeline.tools import submit
from tests.kaggle_fake import basic, serve

ROWS = 28000
KAGGLE_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "KAGGLE_API_ENVIRONMENT")


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Kaggle credentials anywhere: a fresh HOME and no KAGGLE_* variables; returns HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in KAGGLE_VARS:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def valid_csv(project: Path) -> Path:
    """A valid 28,000-row submission at submissions/latest.csv of the test project."""
    path = project / "submissions" / "latest.csv"
    path.parent.mkdir()
    path.write_text(submission_csv(np.arange(ROWS) % 10))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture, home: Path, env: dict | None = None) -> tuple[int, str, str]:
    """Run submit.main with `argv` and return (exit status, stdout, stderr)."""
    code = submit.main(argv, env=env or {}, home=home)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_command_quotes_the_message() -> None:
    message = 'tta "4" $HOME `id` it\'s'
    cmd = submit.cli_command(Path("submissions/latest.csv"), message)
    assert cmd.startswith("kaggle competitions submit -c digit-recognizer -f submissions/latest.csv -m ")
    echoed = cmd.replace("kaggle competitions submit", "printf '%s\\n'", 1)  # a real shell prints each argument
    done = subprocess.run(["sh", "-c", echoed], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-2:] == ["-m", message]  # as given: nothing expanded, nothing run


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda t: t.replace("ImageId,Label", "Id,Label", 1), "header"),
        (lambda t: t.rsplit("\n", 2)[0] + "\n", "rows, expected 28000"),
        (lambda t: t.replace("\n5,4\n", "\n5,12\n", 1), "Label '12'"),
        (lambda t: t.replace("\n5,4\n", "\n4,4\n", 1), "ImageId 4 appears twice"),
        (lambda t: t.replace("\n5,4\n", "\n5,x\n", 1), "Label 'x'"),
        (lambda t: "", "is empty"),
    ],
    ids=["header", "too-few-rows", "label-range", "duplicate-id", "label-not-int", "empty"],
)
def test_invalid_submissions_are_refused_before_any_upload(
    valid_csv: Path, clean_env: Path, capsys: pytest.CaptureFixture, mutate, expected: str
) -> None:
    valid_csv.write_text(mutate(valid_csv.read_text()))
    code, out, err = run(["-m", "x", "-f", str(valid_csv), "--rows", str(ROWS)], capsys, clean_env)
    assert code == 1
    assert expected in err
    assert "equivalent command" not in out


def test_missing_file_says_how_to_make_it(project: Path, clean_env: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(["-m", "x"], capsys, clean_env)
    assert code == 1
    assert "submissions/latest.csv" in err and "make run" in err
    assert "dvc repro" not in err.replace(".venv/bin/dvc repro", "")  # in a notebook only .venv/bin/dvc exists


def test_rows_default_comes_from_params(valid_csv: Path, clean_env: Path, capsys: pytest.CaptureFixture) -> None:
    # the test project's params.yaml expects 20 test rows
    code, _, err = run(["-m", "x", "-f", str(valid_csv), "--dry-run"], capsys, clean_env)
    assert code == 1 and "not an integer 1-20" in err
    code, out, _ = run(["-m", "x", "-f", str(valid_csv), "--rows", str(ROWS), "--dry-run"], capsys, clean_env)
    assert code == 0
    assert f"kaggle competitions submit -c digit-recognizer -f {valid_csv} -m x" in out


def test_without_credentials_explains_setup_and_exits_2(
    valid_csv: Path, clean_env: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = run(["-m", "first try", "-f", str(valid_csv), "--rows", str(ROWS)], capsys, clean_env)
    assert code == 2
    assert "kaggle competitions submit -c digit-recognizer" in out
    assert "chmod 600" in err and "kaggle.json" in err and "KAGGLE_USERNAME" in err and "KAGGLE_KEY" in err
    # advice that works in a notebook's `!` cell too, where each line runs in a shell of its own
    assert "%env KAGGLE_API_TOKEN=" in err
    assert "export" not in err and "mv ~/Downloads" not in err


class FakeApi:
    """Stands in for KaggleApi: records the call and answers like the kaggle package."""

    def __init__(self, message: str = "Successfully submitted to Digit Recognizer", error: Exception | None = None):
        self.calls, self.message, self.error = [], message, error

    def competition_submit(self, file_name: str, message: str, competition: str, quiet: bool = False):
        self.calls.append((file_name, message, competition))
        if self.error:
            raise self.error
        return type("Response", (), {"message": self.message})()


def test_submit_file_reports_failures() -> None:
    api = FakeApi()
    assert submit.submit_file(api, Path("a.csv"), "m") == "Successfully submitted to Digit Recognizer"
    assert api.calls == [("a.csv", "m", "digit-recognizer")]
    with pytest.raises(submit.KaggleFailure, match=r"upload of a\.csv failed"):
        submit.submit_file(FakeApi(message=submit.UPLOAD_FAILED), Path("a.csv"), "m")
    with pytest.raises(submit.KaggleFailure, match="403 Forbidden"):
        submit.submit_file(FakeApi(error=RuntimeError("403 Forbidden")), Path("a.csv"), "m")


@pytest.fixture
def fake_kaggle(clean_env: Path, monkeypatch: pytest.MonkeyPatch):
    """A local HTTP server standing in for api.kaggle.com, with fake legacy credentials in the env."""
    from kagglesdk import kaggle_env

    with serve(keys=frozenset({("fake-user", "fake-key-123")})) as (url, log):
        monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, url)
        monkeypatch.setenv("KAGGLE_USERNAME", "fake-user")
        monkeypatch.setenv("KAGGLE_KEY", "fake-key-123")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        yield log


def test_submission_reaches_the_kaggle_api_with_the_file(
    valid_csv: Path, fake_kaggle: list[dict], clean_env: Path, capsys: pytest.CaptureFixture
) -> None:
    import os

    code, out, err = run(["-m", "fold ensemble + TTA", "--rows", str(ROWS)], capsys, clean_env, dict(os.environ))
    assert code == 0, err
    assert "Successfully submitted" in out
    assert "fake-key-123" not in out + err
    start, upload, create = fake_kaggle
    assert start["path"] == "/v1/competitions.CompetitionApiService/StartSubmissionUpload"
    assert start["json"]["competitionName"] == "digit-recognizer"
    assert start["json"]["fileName"] == "latest.csv"
    assert int(start["json"]["contentLength"]) == valid_csv.stat().st_size
    assert start["auth"] == basic("fake-user", "fake-key-123")
    assert upload["method"] == "PUT" and upload["path"] == "/upload/blob-token-1"
    assert upload["data"] == valid_csv.read_bytes()
    assert create["path"] == "/v1/competitions.CompetitionApiService/CreateSubmission"
    assert create["json"] == {
        "competitionName": "digit-recognizer",
        "blobFileTokens": "blob-token-1",
        "submissionDescription": "fold ensemble + TTA",
    }
