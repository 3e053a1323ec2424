"""Safety: untrusted files are never executed (Keras safe_mode, numpy without pickle), Kaggle
credentials are found the way the kaggle CLI finds them and never printed, read-only and full
disks give a clear error, and storage URLs are shown without their password."""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, unquote

import keras
import numpy as np
import pathspec
import pytest

from pipeline import ingest
from pipeline.lib.cli import fail
from pipeline.lib.files import PARTIAL, OutputError, read_npz, write_bytes, write_text, write_with
from pipeline.lib.kaggle_auth import exposure_warnings
from pipeline.lib.models import load_model
from pipeline.lib.secrets import mask_url, scrub
from pipeline.tools import download
from tests.conftest import REPO

SECRET = "s3cr3t-Kaggle-KEY-0123456789abcdef"


# ---------------------------------------------------------------- untrusted model and array files


def lambda_model(marker: Path) -> keras.Model:
    """Return a model whose Lambda layer creates `marker` whenever its code runs."""
    code = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # the attacker's code
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Lambda(code)(inputs))


@pytest.fixture
def crafted_keras(tmp_path: Path) -> tuple[Path, Path]:
    """A .keras file with a Lambda layer whose code touches a marker file; returns (model, marker)."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.keras"
    lambda_model(marker).save(path)
    marker.unlink()
    return path, marker


def test_lambda_layer_model_is_refused(crafted_keras: tuple[Path, Path]) -> None:
    """pipeline.lib.models.load_model refuses a .keras file with a Lambda layer and runs none of its code."""
    path, marker = crafted_keras
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(str(path))
    assert not marker.exists()


def test_crafted_model_would_run_code_without_safe_mode(crafted_keras: tuple[Path, Path]) -> None:
    """Control: the same file loaded with safe_mode off does run the embedded code (what the refusal prevents)."""
    path, marker = crafted_keras
    keras.saving.load_model(path, safe_mode=False, compile=False)
    assert marker.exists()


class Payload:
    """An object whose unpickling would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    """read_npz refuses object arrays (pickles) and never unpickles them."""
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        read_npz(path)
    assert not marker.exists()


UNSAFE = [
    r"\bimport pickle\b",
    r"\bpickle\.load",
    r"\bdill\b",
    r"\bjoblib\.load",
    r"(?<![\w.])eval\(",
    r"(?<![\w.])exec\(",
    r"allow_pickle\s*=\s*True",
    r"safe_mode\s*=\s*False",
    r"yaml\.load\(",
    r"yaml\.unsafe_load",
    r"torch\.load\(",
    r"shell\s*=\s*True",
]


@pytest.mark.parametrize("pattern", UNSAFE)
def test_pipeline_code_has_no_unsafe_loading(pattern: str) -> None:
    """No pipeline module unpickles, evals or shells out with anything a user downloads."""
    hits = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted((REPO / "pipeline").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(pattern, line.split("#")[0])
    ]
    assert hits == []


# ---------------------------------------------------------------- Kaggle credentials


@pytest.fixture
def kaggle_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home folder (outside the project) with every Kaggle credential variable unset."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


def write_kaggle_json(folder: Path, mode: int) -> Path:
    """Write a kaggle.json holding SECRET into `folder` with permission bits `mode`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kaggle.json"
    path.write_text(json.dumps({"username": "someone", "key": SECRET}))
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "warns"), [(0o644, True), (0o640, True), (0o604, True), (0o600, False), (0o400, False)]
)
def test_kaggle_json_readable_by_others_warns(kaggle_home: Path, mode: int, warns: bool) -> None:
    """A kaggle.json that group or others can read gets a warning naming the file and the fix, never the key."""
    path = write_kaggle_json(kaggle_home / ".kaggle", mode)
    warnings = exposure_warnings(os.environ, kaggle_home)
    if not warns:
        assert warnings == []
        return
    assert warnings == [f"{path} is readable by other users (mode {mode:03o}); run: chmod 600 {path}"]
    assert SECRET not in warnings[0]


def test_getdata_never_prints_credentials(
    project: Path, kaggle_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """getdata warns about an exposed kaggle.json but prints neither the key from the file nor from the environment."""
    write_kaggle_json(kaggle_home / ".kaggle", 0o644)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    assert download.main([]) == 0
    out = capsys.readouterr()
    assert "kaggle.json is readable by other users" in out.err
    assert SECRET not in out.out + out.err
    written = [p for p in project.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert written == []


def ignore_spec(name: str) -> pathspec.PathSpec:
    """Return the repository's ignore file `name` as a gitignore spec (the syntax git and DVC share)."""
    return pathspec.PathSpec.from_lines("gitignore", (REPO / name).read_text().splitlines())


@pytest.mark.parametrize("ignore_file", [".gitignore", ".dvcignore"])
@pytest.mark.parametrize(
    "path",
    ["kaggle.json", ".kaggle/kaggle.json", "data/raw/kaggle.json", "access_token", ".kaggle/access_token", ".env"],
)
def test_credentials_are_ignored_by_git_and_dvc(ignore_file: str, path: str) -> None:
    """Credential files anywhere in the project are ignored by git and by DVC."""
    assert ignore_spec(ignore_file).match_file(path)


def test_tracked_settings_hold_no_credentials() -> None:
    """params.yaml, dvc.yaml and dvc.lock name no Kaggle credential variable or key."""
    for name in ("params.yaml", "dvc.yaml", "dvc.lock"):
        path = REPO / name
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"KAGGLE_KEY|KAGGLE_API_TOKEN|\"key\"\s*:", text), name


# ---------------------------------------------------------------- read-only and full disks


def without_file_permission_override() -> None:
    """preexec_fn: drop root's capabilities to ignore file permissions (a no-op for other users)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, from the bounding set: gone after exec
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP


def tiny_file_limit() -> None:
    """preexec_fn: let the process write no file larger than 4 KiB (a full disk, as far as it can tell)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))


def run_ingest(cwd: Path, preexec) -> subprocess.CompletedProcess:
    """Run `python -m pipeline.ingest` in `cwd` with `preexec` applied to the child first."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.ingest"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
    )


def test_read_only_output_folder_gives_a_clear_error(project: Path) -> None:
    """With data/processed read-only, ingest exits 2 naming the file and the fix; the old output is kept."""
    processed = project / "data/processed"
    processed.mkdir(parents=True)
    (processed / "train.npz").write_bytes(b"previous")
    processed.chmod(0o555)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(processed / 'probe')!r}, 'w')"],
            preexec_fn=without_file_permission_override,
            capture_output=True,
        )
        if probe.returncode == 0:
            pytest.skip("this process can write into read-only folders (no way to drop the override here)")
        done = run_ingest(project, without_file_permission_override)
    finally:
        processed.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert "ingest: error: cannot write data/processed/train.npz: Permission denied" in done.stderr
    assert "make the folder writable" in done.stderr
    assert "Traceback" not in done.stderr
    assert (processed / "train.npz").read_bytes() == b"previous"


def test_full_disk_gives_a_clear_error(project: Path) -> None:
    """When the disk takes no more data, ingest exits 2 naming the file; the old output is kept, no partial left."""
    processed = project / "data/processed"
    processed.mkdir(parents=True)
    (processed / "train.npz").write_bytes(b"previous")
    done = run_ingest(project, tiny_file_limit)
    assert done.returncode == 2, done.stderr
    assert re.search(r"ingest: error: cannot write data/processed/train\.npz: File too large", done.stderr)
    assert "Traceback" not in done.stderr
    assert (processed / "train.npz").read_bytes() == b"previous"
    assert list(processed.glob(f".*{PARTIAL}*")) == []


def test_ingest_replaces_both_arrays_or_neither(project: Path, capsys: pytest.CaptureFixture) -> None:
    """When test.npz cannot be replaced, train.npz is not replaced either: the previous pair stays consistent."""
    processed = project / "data/processed"
    (processed / "test.npz").mkdir(parents=True)  # a folder in the way of the second output
    (processed / "train.npz").write_bytes(b"previous")
    assert ingest.main([]) == 2
    assert "ingest: error: cannot write data/processed/test.npz: Is a directory" in capsys.readouterr().err
    assert (processed / "train.npz").read_bytes() == b"previous"
    assert sorted(p.name for p in processed.iterdir()) == ["test.npz", "train.npz"]


def test_atomic_write_into_a_file_instead_of_a_folder(tmp_path: Path) -> None:
    """An output whose folder is a file raises OutputError naming the output, not an OSError from deep inside."""
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(OutputError, match=r"cannot write .*models/oof\.npz: "):
        write_bytes(tmp_path / "models" / "oof.npz", b"data")


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    """A write that fails half-way leaves the previous file byte-identical and no temporary file."""
    path = tmp_path / "latest.csv"
    write_text(path, "ImageId,Label\n1,7\n")

    class Boom(Exception):
        """Raised by the failing writer."""

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ImageId,La")
        raise Boom

    with pytest.raises(Boom):
        write_with(path, half_then_fail, suffix=".csv")
    assert path.read_text() == "ImageId,Label\n1,7\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.csv"]


# ---------------------------------------------------------------- storage URLs

URLS = [
    (
        "postgresql://alice:hunter2@db.example.com:5432/optuna",
        "postgresql://alice:***@db.example.com:5432/optuna",
        "hunter2",
    ),
    (
        "postgresql+psycopg2://alice:p%40ss%2Fw0rd@db:5432/study",
        "postgresql+psycopg2://alice:***@db:5432/study",
        "p%40ss%2Fw0rd",
    ),
    ("mysql://bob:p@ss@host/db", "mysql://bob:***@host/db", "p@ss"),
    ("postgresql://u:pa/ss#x@host/db", "postgresql://u:***@host/db", "pa/ss#x"),
    ("postgresql://u:pa/ss#x@host/db?password=z9z", "postgresql://u:***@host/db?password=***", "z9z"),
    ("redis://:tok3n@localhost:6379/0", "redis://:***@localhost:6379/0", "tok3n"),
    ("postgresql://host/db?user=u&password=hunter2", "postgresql://host/db?user=u&password=***", "hunter2"),
    (
        "postgresql://host/db?PASSWORD=hunter2&sslmode=require",
        "postgresql://host/db?PASSWORD=***&sslmode=require",
        "hunter2",
    ),
    (
        "sqlite:///data/processed/optuna.db?password=hunter2",
        "sqlite:///data/processed/optuna.db?password=***",
        "hunter2",
    ),
    (
        "postgresql://u:p%40ss@h/db?password=x%26y1&sslmode=require",
        "postgresql://u:***@h/db?password=***&sslmode=require",
        "x%26y1",
    ),
    ("https://h/api?token=abc123&page=2", "https://h/api?token=***&page=2", "abc123"),
    ("postgresql://u:hunter2@[::1/db", "<URL withheld: it may hold a password>", "hunter2"),  # unparsable host
    ("postgresql://u:hunter2@host:99999/db", "<URL withheld: it may hold a password>", "hunter2"),  # bad port
    ("sqlite:///data/processed/optuna.db", "sqlite:///data/processed/optuna.db", None),
    ("postgresql://alice@host/db", "postgresql://alice@host/db", None),
]


@pytest.mark.parametrize(("url", "shown", "secret"), URLS)
def test_storage_url_is_never_shown_with_its_password(url: str, shown: str, secret: str | None) -> None:
    """mask_url replaces the password (and password query values) by ***, leaving the rest readable."""
    assert mask_url(url) == shown
    if secret is not None:
        assert secret not in mask_url(url)


@pytest.mark.parametrize(("url", "shown", "secret"), URLS)
def test_error_messages_are_scrubbed_of_urls_and_their_secrets(url: str, shown: str, secret: str | None) -> None:
    """scrub masks a URL quoted in an error message, and the URL's secrets wherever the message repeats them
    (plain or percent-encoded), as a driver's error may."""
    message = f"cannot open '{url}': server said: auth failed for {secret} ({quote(unquote(secret or ''), safe='')})"
    cleaned = scrub(message, url)
    assert f"'{shown}'" in cleaned or shown == "<URL withheld: it may hold a password>"
    if secret is not None:
        for form in (secret, unquote(secret), quote(unquote(secret), safe="")):
            assert form not in cleaned, cleaned
    assert cleaned.startswith("cannot open '") and "server said: auth failed for" in cleaned


def test_every_stage_error_goes_through_the_masker(capsys: pytest.CaptureFixture) -> None:
    """cli.fail, which prints every stage's error line, masks any URL in the message it is given."""
    assert fail("tune", "cannot reach postgresql://u:hunter2@db/x?token=t0k3n: refused") == 2
    err = capsys.readouterr().err
    assert err == "tune: error: cannot reach postgresql://u:***@db/x?token=***: refused\n"


def test_one_url_masker() -> None:
    """No module masks URLs its own way (SQLAlchemy's hide_password leaves ?password= in clear)."""
    hits = [
        path.name
        for path in sorted((REPO / "pipeline").rglob("*.py"))
        if path.name != "secrets.py"  # the masker, which says why it is not SQLAlchemy's
        and re.search(r"hide_password|render_as_string", path.read_text(encoding="utf-8"))
    ]
    assert hits == []


def test_tune_prints_its_storage_without_the_query_password(project: Path, capsys: pytest.CaptureFixture) -> None:
    """tune's log line naming the study's storage masks a password passed as a query parameter."""
    from pipeline import augment, tune

    assert ingest.main([]) == 0 and augment.main([]) == 0
    url = "sqlite:///data/processed/optuna.db?password=hunter2"
    assert tune.main(["--storage", url, "--trials", "0"]) == 2  # no completed trial: nothing to write, exit 2
    out = capsys.readouterr()
    assert "data/processed/optuna.db?password=***: 0 finished trials" in out.out
    assert "hunter2" not in out.out + out.err


def test_mask_url_of_nothing() -> None:
    """No URL gives an empty string (the default SQLite storage is chosen elsewhere)."""
    assert mask_url(None) == ""
