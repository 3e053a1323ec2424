"""Where the kaggle CLI (kaggle 2.2, kagglesdk) finds Kaggle credentials, so that getdata and submit name the source,
never its value, before using it; and the one line saying why a request to Kaggle failed. The order: a Kaggle notebook's
KAGGLE_API_V1_TOKEN file; KAGGLE_API_TOKEN (a token or a file); ~/.kaggle/access_token(.txt); the username and key of
kaggle.json in the config folder (KAGGLE_CONFIG_DIR, else ~/.kaggle when it exists, else $XDG_CONFIG_HOME/kaggle on
Linux), each overridden by KAGGLE_USERNAME / KAGGLE_KEY; ~/.kaggle/credentials.json (`kaggle auth login`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import requests

COMPETITION = "digit-recognizer"
NOTEBOOK_VARS = ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL")  # both set: a Kaggle notebook (kagglesdk)
RENEW = "create a new API token on https://www.kaggle.com/settings and replace them"


class KaggleFailure(RuntimeError):
    """A request to Kaggle failed; the message is one line naming the cause and what to do."""


def config_dir(env: Mapping[str, str], home: Path) -> Path:
    """Return the folder the kaggle CLI reads kaggle.json from (KAGGLE_CONFIG_DIR, ~/.kaggle, the XDG folder)."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    if not sys.platform.startswith("linux") or (home / ".kaggle").exists():
        return home / ".kaggle"
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def token_in(path: Path) -> bool:
    """Return True when the file at `path` exists and holds a non-blank token."""
    try:
        return bool(path.read_text(encoding="utf-8", errors="replace").strip())
    except OSError:
        return False


def token_source(env: Mapping[str, str], home: Path) -> str | None:
    """Return where the kaggle package reads an access token from (never the token), or None."""
    notebook = env.get("KAGGLE_API_V1_TOKEN") if all(env.get(name) is not None for name in NOTEBOOK_VARS) else None
    if notebook and token_in(Path(notebook)):
        return f"the Kaggle notebook token file {notebook} (KAGGLE_API_V1_TOKEN)"
    if value := env.get("KAGGLE_API_TOKEN"):
        if os.path.exists(
            value
        ):  # a path (a long token is none): its content is the token (kagglesdk stops here even when it is empty)
            return f"the file {value} named by KAGGLE_API_TOKEN" if token_in(Path(value)) else None
        return "the KAGGLE_API_TOKEN environment variable"
    files = [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"]
    return next((str(path) for path in files if token_in(path)), None)


def read_kaggle_json(path: Path) -> dict:
    """Return the settings in kaggle.json at `path` ({} when it is missing or not a JSON object, as the CLI)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def api_key_source(env: Mapping[str, str], home: Path) -> str | None:
    """Return where the kaggle package reads the username and key from (never their values), or None."""
    path = config_dir(env, home) / "kaggle.json"
    settings = read_kaggle_json(path)
    user, key = (  # every KAGGLE_* variable overrides the file's setting
        f"the {variable} environment variable" if variable in env else str(path) if name in settings else None
        for name, variable in (("username", "KAGGLE_USERNAME"), ("key", "KAGGLE_KEY"))
    )
    if user is None or key is None:
        return None
    if user.endswith("variable") and key.endswith("variable"):
        return "the KAGGLE_USERNAME and KAGGLE_KEY environment variables"
    return key if user == key else f"{user} (username) and {key} (key)"


def find_credentials(env: Mapping[str, str], home: Path) -> str | None:
    """Return where the kaggle CLI will take its credentials from, in its order (never their values), or None."""
    oauth = home / ".kaggle" / "credentials.json"
    oauth_source = f"{oauth} (kaggle auth login)" if read_kaggle_json(oauth).get("refresh_token") else None
    return token_source(env, home) or api_key_source(env, home) or oauth_source


def exposure_warnings(env: Mapping[str, str], home: Path) -> list[str]:
    """Return a warning for each file the kaggle CLI may read a secret from that other users can read."""
    named = [Path(v) for v in (env.get("KAGGLE_API_V1_TOKEN"), env.get("KAGGLE_API_TOKEN")) if v and os.path.exists(v)]
    files = [*named, home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"]
    files += [config_dir(env, home) / "kaggle.json", home / ".kaggle" / "credentials.json"]
    modes = {path: path.stat().st_mode & 0o777 for path in files if path.is_file()}
    return [f"{p} is readable by other users (mode {m:03o}); run: chmod 600 {p}" for p, m in modes.items() if m & 0o044]


def exception_chain(exc: object, depth: int = 0) -> Iterator[BaseException]:
    """Yield `exc` and every exception inside it (causes, contexts, args, urllib3's `reason`), 8 levels deep."""
    if isinstance(exc, BaseException) and depth < 8:
        yield exc
        for inner in (exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args):
            yield from exception_chain(inner, depth + 1)


def explain_failure(exc: BaseException, source: str, competition: str, offline_advice: str) -> str:
    """Return one line saying why a request to Kaggle with the credentials from `source` failed and what to do."""
    host = urlsplit(str(getattr(getattr(exc, "request", None), "url", "") or "")).hostname or "Kaggle's API"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, SystemExit):  # the kaggle package exits when no credentials work (an expired token)
        return f"Kaggle did not accept the credentials from {source} (an expired or revoked token?): {RENEW}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        lookup = {type(e).__name__ for e in exception_chain(exc)} & {"gaierror", "NameResolutionError"}
        what = f"the name lookup of {host}" if lookup else f"the connection to {host}"
        return f"could not reach Kaggle: {what} failed (no network?): {offline_advice}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"could not reach Kaggle: {host} did not answer in time: {offline_advice}"
    if status == 401:
        return f"Kaggle answered 401 Unauthorized: the credentials from {source} were not accepted; {RENEW}"
    if status == 403:
        rules = f"accept the competition rules once at https://www.kaggle.com/c/{competition}/rules, and check"
        return f"Kaggle answered 403 Forbidden to the credentials from {source}: {rules} that the token may do this"
    if status is not None:
        return f"Kaggle answered {status}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"the request to Kaggle failed: {type(exc).__name__}: {' '.join(str(exc).split())}"


@contextlib.contextmanager
def explained(source: str, competition: str, offline_advice: str) -> Iterator[None]:
    """Turn a failure of the block (a request to Kaggle) into a KaggleFailure whose one line says why and what to do."""
    try:
        yield
    except (Exception, SystemExit) as exc:  # the kaggle package exits when no credentials work
        raise KaggleFailure(explain_failure(exc, source, competition, offline_advice)) from None


def authenticated_api(source: str, competition: str, offline_advice: str):
    """Return a KaggleApi authenticated with the credentials from `source`; raise KaggleFailure saying why not."""
    # the kaggle package prints its own help when the credentials fail: the one line of KaggleFailure says it
    with explained(source, competition, offline_advice), contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi  # imported here: importing kaggle reads credentials

        api = KaggleApi()
        api.authenticate()
    return api
