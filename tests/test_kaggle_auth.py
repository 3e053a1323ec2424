"""Kaggle credential discovery (pipeline/lib/kaggle_auth.py) against the real kaggle package: for every place
the kaggle CLI takes credentials from, the source the pipeline names is the one whose secret the kaggle
package then sends (to a local fake of Kaggle's API, tests/kaggle_fake.py), and where the pipeline finds
none the kaggle package finds none either. Kaggle's 401 and 403 replies give a clear error naming the
source, never the secret."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from pipeline.lib import kaggle_auth
from pipeline.lib.submission_file import submission_csv
from pipeline.tools import download, submit
from tests.conftest import REPO
from tests.kaggle_fake import basic, serve

ROWS = 20
TOKENS = frozenset({"tok-env", "tok-env-file", "tok-access", "tok-access-txt", "tok-notebook", "tok-oauth"})
KEYS = frozenset(
    {("env-user", "env-key"), ("home-user", "home-key"), ("cfg-user", "cfg-key"), ("xdg-user", "xdg-key")}
    | {("home-user", "env-key")}
)
SECRETS = [*TOKENS, *{key for _, key in KEYS}]

# Runs pipeline.tools.submit in a fresh process (the kaggle package fixes its config folder when imported) against
# the fake API; where the pipeline finds no credentials (exit 2), asks the kaggle package itself.
CHILD = """
import sys
from kagglesdk import kaggle_env
kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.PROD] = sys.argv[1]
from pipeline.tools import submit
code = submit.main(sys.argv[2:])
if code == 2:
    from kaggle.api.kaggle_api_extended import KaggleApi
    KaggleApi().authenticate()  # prints its help and exits 1 when it finds no credentials
    sys.exit(99)
sys.exit(code)
"""

Setup = Callable[[Path], dict[str, str]]  # writes files under the home folder; returns the extra environment


def put(path: Path, text: str) -> Path:
    """Write `text` to `path` (mode 600, folders made); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def kaggle_json(folder: Path, user: str | None, key: str | None) -> Path:
    """Write a kaggle.json with `user` and `key` (each left out when None) into `folder`."""
    return put(folder / "kaggle.json", json.dumps({k: v for k, v in (("username", user), ("key", key)) if v}))


def env_token(home: Path) -> dict[str, str]:
    """KAGGLE_API_TOKEN holds the token."""
    return {"KAGGLE_API_TOKEN": "tok-env"}


def env_token_file(home: Path) -> dict[str, str]:
    """KAGGLE_API_TOKEN names a file holding the token."""
    return {"KAGGLE_API_TOKEN": str(put(home / "secrets" / "kaggle-token", "tok-env-file\n"))}


def access_token(home: Path) -> dict[str, str]:
    """~/.kaggle/access_token."""
    put(home / ".kaggle" / "access_token", "tok-access\n")
    return {}


def access_token_txt(home: Path) -> dict[str, str]:
    """~/.kaggle/access_token.txt (as Windows editors name it)."""
    put(home / ".kaggle" / "access_token.txt", "tok-access-txt")
    return {}


def notebook(home: Path) -> dict[str, str]:
    """A Kaggle notebook: the token file named by KAGGLE_API_V1_TOKEN comes before ~/.kaggle/access_token."""
    put(home / ".kaggle" / "access_token", "tok-access")
    path = put(home / "kaggle-notebook-token", "tok-notebook")
    return {
        "KAGGLE_KERNEL_RUN_TYPE": "Interactive",
        "KAGGLE_DATA_PROXY_URL": "http://127.0.0.1:9",
        "KAGGLE_API_V1_TOKEN": str(path),
    }


def token_before_keys(home: Path) -> dict[str, str]:
    """An access token, kaggle.json and the environment pair all at once."""
    put(home / ".kaggle" / "access_token", "tok-access")
    kaggle_json(home / ".kaggle", "home-user", "home-key")
    return {"KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": "env-key"}


def blank_access_token(home: Path) -> dict[str, str]:
    """A blank ~/.kaggle/access_token beside kaggle.json."""
    put(home / ".kaggle" / "access_token", "  \n")
    kaggle_json(home / ".kaggle", "home-user", "home-key")
    return {}


def empty_token_file(home: Path) -> dict[str, str]:
    """KAGGLE_API_TOKEN names an empty file: kagglesdk stops there, ignoring ~/.kaggle/access_token."""
    put(home / ".kaggle" / "access_token", "tok-access")
    kaggle_json(home / ".kaggle", "home-user", "home-key")
    return {"KAGGLE_API_TOKEN": str(put(home / "empty-token", ""))}


def env_pair(home: Path) -> dict[str, str]:
    """KAGGLE_USERNAME and KAGGLE_KEY."""
    return {"KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": "env-key"}


def home_json(home: Path) -> dict[str, str]:
    """~/.kaggle/kaggle.json."""
    kaggle_json(home / ".kaggle", "home-user", "home-key")
    return {}


def env_pair_over_json(home: Path) -> dict[str, str]:
    """The environment pair beside ~/.kaggle/kaggle.json."""
    kaggle_json(home / ".kaggle", "home-user", "home-key")
    return env_pair(home)


def json_user_env_key(home: Path) -> dict[str, str]:
    """The username in kaggle.json, the key in KAGGLE_KEY."""
    kaggle_json(home / ".kaggle", "home-user", None)
    return {"KAGGLE_KEY": "env-key"}


def config_dir_json(home: Path) -> dict[str, str]:
    """KAGGLE_CONFIG_DIR's kaggle.json beside ~/.kaggle/kaggle.json."""
    kaggle_json(home / ".kaggle", "home-user", "home-key")
    kaggle_json(home / "cfg", "cfg-user", "cfg-key")
    return {"KAGGLE_CONFIG_DIR": str(home / "cfg")}


def xdg_json(home: Path) -> dict[str, str]:
    """$XDG_CONFIG_HOME/kaggle/kaggle.json and no ~/.kaggle."""
    kaggle_json(home / "xdg" / "kaggle", "xdg-user", "xdg-key")
    return {"XDG_CONFIG_HOME": str(home / "xdg")}


def default_xdg_json(home: Path) -> dict[str, str]:
    """~/.config/kaggle/kaggle.json (XDG_CONFIG_HOME unset) and no ~/.kaggle."""
    kaggle_json(home / ".config" / "kaggle", "xdg-user", "xdg-key")
    return {}


def xdg_shadowed(home: Path) -> dict[str, str]:
    """An existing ~/.kaggle (here empty) is the config folder: an XDG kaggle.json is never read."""
    (home / ".kaggle").mkdir()
    return xdg_json(home)


def oauth(home: Path) -> dict[str, str]:
    """`kaggle auth login`'s credentials file with a refresh token and an unexpired access token."""
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    data = {"refresh_token": "r", "access_token": "tok-oauth", "access_token_expiration": expires, "username": "o"}
    put(home / ".kaggle" / "credentials.json", json.dumps(data))
    return {}


def username_only(home: Path) -> dict[str, str]:
    """KAGGLE_USERNAME without a key."""
    return {"KAGGLE_USERNAME": "env-user"}


def json_without_key(home: Path) -> dict[str, str]:
    """A kaggle.json holding only the username."""
    kaggle_json(home / ".kaggle", "home-user", None)
    return {}


def nothing(home: Path) -> dict[str, str]:
    """No credentials anywhere."""
    return {}


# (setup, the source the pipeline must name under home (None: no credentials), the Authorization header the
# kaggle package must send (None: it must find no credentials either)); ids are the setups' docstrings
CASES: list[tuple[Setup, Callable[[Path], str | None], str | None]] = [
    (env_token, lambda home: "the KAGGLE_API_TOKEN environment variable", "Bearer tok-env"),
    (
        env_token_file,
        lambda home: f"the file {home / 'secrets' / 'kaggle-token'} named by KAGGLE_API_TOKEN",
        "Bearer tok-env-file",
    ),
    (access_token, lambda home: str(home / ".kaggle" / "access_token"), "Bearer tok-access"),
    (access_token_txt, lambda home: str(home / ".kaggle" / "access_token.txt"), "Bearer tok-access-txt"),
    (
        notebook,
        lambda home: f"the Kaggle notebook token file {home / 'kaggle-notebook-token'} (KAGGLE_API_V1_TOKEN)",
        "Bearer tok-notebook",
    ),
    (token_before_keys, lambda home: str(home / ".kaggle" / "access_token"), "Bearer tok-access"),
    (blank_access_token, lambda home: str(home / ".kaggle" / "kaggle.json"), basic("home-user", "home-key")),
    (empty_token_file, lambda home: str(home / ".kaggle" / "kaggle.json"), basic("home-user", "home-key")),
    (env_pair, lambda home: "the KAGGLE_USERNAME and KAGGLE_KEY environment variables", basic("env-user", "env-key")),
    (home_json, lambda home: str(home / ".kaggle" / "kaggle.json"), basic("home-user", "home-key")),
    (
        env_pair_over_json,
        lambda home: "the KAGGLE_USERNAME and KAGGLE_KEY environment variables",
        basic("env-user", "env-key"),
    ),
    (
        json_user_env_key,
        lambda home: f"{home / '.kaggle' / 'kaggle.json'} (username) and the KAGGLE_KEY environment variable (key)",
        basic("home-user", "env-key"),
    ),
    (config_dir_json, lambda home: str(home / "cfg" / "kaggle.json"), basic("cfg-user", "cfg-key")),
    (xdg_json, lambda home: str(home / "xdg" / "kaggle" / "kaggle.json"), basic("xdg-user", "xdg-key")),
    (default_xdg_json, lambda home: str(home / ".config" / "kaggle" / "kaggle.json"), basic("xdg-user", "xdg-key")),
    (xdg_shadowed, lambda home: None, None),
    (oauth, lambda home: f"{home / '.kaggle' / 'credentials.json'} (kaggle auth login)", "Bearer tok-oauth"),
    (username_only, lambda home: None, None),
    (json_without_key, lambda home: None, None),
    (nothing, lambda home: None, None),
]


@pytest.fixture
def submission_project(project: Path) -> Path:
    """The tiny project with a valid 20-row submissions/latest.csv."""
    put(project / "submissions" / "latest.csv", submission_csv(np.arange(ROWS) % 10))
    return project


@pytest.mark.parametrize(("setup", "expected", "auth"), CASES, ids=[c[0].__doc__ for c in CASES])
def test_the_source_named_is_the_one_the_kaggle_package_uses(
    submission_project: Path, tmp_path_factory: pytest.TempPathFactory, setup: Setup, expected, auth: str | None
) -> None:
    home = tmp_path_factory.mktemp("home")
    extra = setup(home)
    source = expected(home)
    assert kaggle_auth.find_credentials(extra, home) == source
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO), **extra}
    env.update(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1", TF_CPP_MIN_LOG_LEVEL="2")
    with serve(tokens=TOKENS, keys=KEYS) as (url, log):
        argv = [sys.executable, "-c", CHILD, url, "-m", "auth test", "--rows", str(ROWS)]
        done = subprocess.run(argv, cwd=submission_project, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    sent = [entry["auth"] for entry in log if entry["path"].endswith("/StartSubmissionUpload")]
    if source is None:
        assert done.returncode == 1, output  # pipeline: no credentials (2), and the kaggle package exited 1
        assert "submit: error: no Kaggle credentials found" in done.stderr
        assert "Authentication required" in done.stdout and sent == []
    else:
        assert done.returncode == 0, output
        assert f"submit: using Kaggle credentials from {source}\n" in done.stdout
        assert sent == [auth]
    assert not any(secret in output for secret in SECRETS)


def test_getdata_and_submit_share_the_one_routine() -> None:
    assert download.find_credentials is submit.find_credentials is kaggle_auth.find_credentials
    assert download.exposure_warnings is kaggle_auth.exposure_warnings


@pytest.fixture
def kaggle_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Point the kaggle package of this process at a fake API (started by the test) in an empty home."""
    from kagglesdk import kaggle_env

    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in [n for n in os.environ if n.startswith("KAGGLE_")] + ["XDG_CONFIG_HOME"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    def point(url: str) -> None:
        monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, url)

    return point


def run_submit(capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run pipeline.tools.submit in this process with its real environment; return (exit status, stdout, stderr)."""
    code = submit.main(["-m", "x", "--rows", str(ROWS)], env=dict(os.environ), home=Path(os.environ["HOME"]))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("env", "server", "message"),
    [
        (
            {"KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": "revoked-key"},
            {},
            "Kaggle answered 401 Unauthorized: the credentials from the KAGGLE_USERNAME and KAGGLE_KEY environment "
            "variables were not accepted",
        ),
        (
            {"KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": "env-key"},
            {"forbidden": True},
            "Kaggle answered 403 Forbidden to the credentials from the KAGGLE_USERNAME and KAGGLE_KEY environment "
            "variables: accept the competition rules once at https://www.kaggle.com/c/digit-recognizer/rules",
        ),
        (
            {"KAGGLE_API_TOKEN": "expired-token"},  # introspection answers 403: the kaggle package finds nothing else
            {},
            "Kaggle did not accept the credentials from the KAGGLE_API_TOKEN environment variable",
        ),
        (
            {"KAGGLE_API_TOKEN": "expired-token", "KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": "env-key"},
            {},  # the kaggle package falls back to the key to log in, but still sends the token: 401
            "Kaggle answered 401 Unauthorized: the credentials from the KAGGLE_API_TOKEN environment variable",
        ),
    ],
    ids=["401 revoked key", "403 rules not accepted", "403 expired token alone", "401 expired token before a key"],
)
def test_kaggle_refusals_name_the_source_never_the_secret(
    submission_project: Path,
    kaggle_endpoint,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    env: dict[str, str],
    server: dict,
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with serve(tokens=TOKENS, keys=KEYS, **server) as (url, log):
        kaggle_endpoint(url)
        code, out, err = run_submit(capsys)
    assert code == 3, out + err
    assert err.startswith(f"submit: error: {message}"), err
    assert len(err.strip().splitlines()) == 1
    assert not any(value in out + err for value in ("revoked-key", "env-key", "expired-token"))
    assert not any(entry["path"].endswith("/CreateSubmission") for entry in log)  # nothing was submitted


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network in this process: every name lookup but 127.0.0.1's fails, as without a connection."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host in ("127.0.0.1", "localhost"):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    """Return a port of 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NO_NETWORK = [
    ({"KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": "env-key"}, "the name lookup of api.kaggle.com failed"),
    ({"KAGGLE_API_TOKEN": "tok-env"}, "the name lookup of api.kaggle.com failed"),  # fails in authenticate
]


@pytest.mark.parametrize(("env", "cause"), NO_NETWORK, ids=["key", "token"])
def test_submit_without_network_says_so_in_one_line_and_exits_3(
    submission_project, kaggle_endpoint, offline, monkeypatch, capsys, env, cause
) -> None:
    # it used to end in requests' ConnectionError traceback and exit 1
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_submit(capsys)
    assert code == 3, out + err
    assert err.startswith(f"submit: error: could not reach Kaggle: {cause} (no network?): check the connection"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert "export" not in err


def test_a_refused_connection_is_named_too(submission_project, kaggle_endpoint, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", "env-key")
    kaggle_endpoint(f"http://127.0.0.1:{closed_port()}")
    code, out, err = run_submit(capsys)
    assert code == 3, out + err
    assert err.startswith("submit: error: could not reach Kaggle: the connection to 127.0.0.1 failed (no network?)")
    assert len(err.strip().splitlines()) == 1


# pipeline.tools.submit in a fresh process whose stdout is a pipe (block-buffered, as in a notebook's `!` cell) shared
# with stderr, without network
OFFLINE_CHILD = """
import socket, sys
def getaddrinfo(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
socket.getaddrinfo = getaddrinfo
from pipeline.tools import submit
sys.exit(submit.main(sys.argv[1:]))
"""


def test_submits_own_lines_come_before_its_error_and_no_traceback(submission_project, tmp_path_factory) -> None:
    # stdout was block-buffered when not a terminal: the lines leading up to the failure printed after it
    home = tmp_path_factory.mktemp("home")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO), "KAGGLE_API_TOKEN": "tok-env"}
    argv = [sys.executable, "-c", OFFLINE_CHILD, "-m", "offline", "--rows", str(ROWS)]
    done = subprocess.run(
        argv, cwd=submission_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 3, done.stdout
    assert lines[-1].startswith("submit: error: could not reach Kaggle: the name lookup of api.kaggle.com failed")
    assert [line.split(" ")[1] for line in lines[:-1]] == ["submissions/latest.csv", "first", "equivalent", "using"]
    assert "Traceback" not in done.stdout


def test_getdata_downloads_the_zip_with_the_kaggle_package(project, kaggle_endpoint, monkeypatch, capsys) -> None:
    for name in ("train.csv", "test.csv"):
        (project / "data" / "raw" / name).unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", "env-key")
    with serve(keys=KEYS, zip_bytes=b"PK\x05\x06" + bytes(18)) as (url, log):
        kaggle_endpoint(url)
        code = download.main([])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert (project / "data" / "raw" / "digit-recognizer.zip").read_bytes() == b"PK\x05\x06" + bytes(18)
    assert [e["path"] for e in log if e["method"] == "POST"] == [
        "/v1/competitions.CompetitionApiService/DownloadDataFiles"
    ]
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == ["digit-recognizer.zip"]


@pytest.mark.parametrize(
    ("env", "server", "message"),
    [
        (
            {"KAGGLE_USERNAME": "env-user", "KAGGLE_KEY": "revoked-key"},
            {},
            "Kaggle answered 401 Unauthorized: the credentials from the KAGGLE_USERNAME and KAGGLE_KEY environment "
            "variables were not accepted",
        ),
        (
            {"KAGGLE_API_TOKEN": "tok-env"},
            {"forbidden": True},
            "Kaggle answered 403 Forbidden to the credentials from the KAGGLE_API_TOKEN environment variable: accept "
            "the competition rules once at https://www.kaggle.com/c/digit-recognizer/rules",
        ),
        (
            {"KAGGLE_API_TOKEN": "tok-env"},
            None,  # no server: no network
            "could not reach Kaggle: the name lookup of api.kaggle.com failed (no network?): turn the notebook's "
            "internet on (Kaggle: Settings > Internet), or add the Digit Recognizer competition as the notebook's "
            "input, or copy a zip you have: .venv/bin/python -m pipeline.tools.download --zip PATH",
        ),
    ],
    ids=["401 revoked key", "403 rules not accepted", "no network"],
)
def test_getdata_failures_name_the_cause_in_one_line_and_exit_3(
    project, kaggle_endpoint, offline, monkeypatch, capsys, env, server, message
) -> None:
    # the kaggle CLI's traceback (about 75 lines), then a guess: "have you accepted the competition rules?"
    for name in ("train.csv", "test.csv"):
        (project / "data" / "raw" / name).unlink()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if server is None:
        code = download.main([])
    else:
        with serve(tokens=TOKENS, keys=KEYS, **server) as (url, _):
            kaggle_endpoint(url)
            code = download.main([])
    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert err.startswith(f"getdata: error: {message}") and err.count("\n") == 1, err
    assert "Traceback" not in out and "export" not in err
    assert list((project / "data" / "raw").iterdir()) == []  # nothing half-downloaded left behind
