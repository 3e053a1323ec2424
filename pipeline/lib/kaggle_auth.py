"""Where the kaggle CLI finds Kaggle credentials, in its own order (kaggle 2.2 and kagglesdk: an access
token first, then the legacy username and key, then `kaggle auth login`'s OAuth file), so getdata and
submit can say which source will be used before running it, never its value; and, when a request to Kaggle fails,
the one line that says why (no network, a failed name lookup, 401, 403) and what to do. Not a stage.

The order, as KaggleApi.authenticate and kagglesdk.kaggle_env.get_access_token_from_env read them:
1. in a Kaggle notebook, the token file named by KAGGLE_API_V1_TOKEN;
2. KAGGLE_API_TOKEN: the token, or the path of a file holding it (an empty file means no token);
3. ~/.kaggle/access_token, then ~/.kaggle/access_token.txt (not empty);
4. the username and key: kaggle.json in the config folder (KAGGLE_CONFIG_DIR, else ~/.kaggle when it
   exists, else $XDG_CONFIG_HOME/kaggle on Linux), each overridden by KAGGLE_USERNAME / KAGGLE_KEY;
5. ~/.kaggle/credentials.json holding an OAuth refresh token (`kaggle auth login`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

COMPETITION = "digit-recognizer"
NOTEBOOK_VARS = ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL")  # both set: a Kaggle notebook (kagglesdk)


def config_dir(env: Mapping[str, str], home: Path) -> Path:
    """Return the folder the kaggle CLI reads kaggle.json from: KAGGLE_CONFIG_DIR, ~/.kaggle when it exists,
    else the XDG folder on Linux."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    legacy = home / ".kaggle"
    if not sys.platform.startswith("linux") or legacy.exists():
        return legacy
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def names_file(value: str) -> bool:
    """Return True when `value` (a token, or the path of a file holding one) names an existing path."""
    try:
        return Path(value).exists()
    except OSError:  # a long token is no path name
        return False


def token_in(path: Path) -> bool:
    """Return True when the file at `path` exists and holds a non-blank token."""
    try:
        return bool(path.read_text(encoding="utf-8", errors="replace").strip())
    except OSError:
        return False


def token_source(env: Mapping[str, str], home: Path) -> str | None:
    """Return where the kaggle package reads an access token from (never the token), or None."""
    if all(env.get(name) is not None for name in NOTEBOOK_VARS) and env.get("KAGGLE_API_V1_TOKEN"):
        path = Path(env["KAGGLE_API_V1_TOKEN"])
        if token_in(path):
            return f"the Kaggle notebook token file {path} (KAGGLE_API_V1_TOKEN)"
    value = env.get("KAGGLE_API_TOKEN")
    if value:
        if names_file(value):  # a path: its content is the token (kagglesdk stops here even when it is empty)
            return f"the file {value} named by KAGGLE_API_TOKEN" if token_in(Path(value)) else None
        return "the KAGGLE_API_TOKEN environment variable"
    for name in ("access_token", "access_token.txt"):
        path = home / ".kaggle" / name
        if token_in(path):
            return str(path)
    return None


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
    where = {}
    for name in ("username", "key"):
        variable = f"KAGGLE_{name.upper()}"
        if variable in env:  # the CLI lets every KAGGLE_* variable override the file's setting
            where[name] = f"the {variable} environment variable"
        elif name in settings:
            where[name] = str(path)
    if len(where) < 2:
        return None
    if where["username"] == where["key"]:
        return where["key"]
    if all(w.endswith("environment variable") for w in where.values()):
        return "the KAGGLE_USERNAME and KAGGLE_KEY environment variables"
    return f"{where['username']} (username) and {where['key']} (key)"


def oauth_source(home: Path) -> str | None:
    """Return the `kaggle auth login` credentials file when it holds a refresh token, else None."""
    path = home / ".kaggle" / "credentials.json"
    return f"{path} (kaggle auth login)" if read_kaggle_json(path).get("refresh_token") else None


def find_credentials(env: Mapping[str, str], home: Path) -> str | None:
    """Return where the kaggle CLI will take its credentials from, in its order (never their values), or None."""
    return token_source(env, home) or api_key_source(env, home) or oauth_source(home)


def credential_files(env: Mapping[str, str], home: Path) -> list[Path]:
    """Return every file the kaggle CLI may read a secret from (whether or not it exists), in its order."""
    files = [Path(env["KAGGLE_API_V1_TOKEN"])] if env.get("KAGGLE_API_V1_TOKEN") else []
    files += (
        [Path(env["KAGGLE_API_TOKEN"])]
        if env.get("KAGGLE_API_TOKEN") and Path(env["KAGGLE_API_TOKEN"]).is_file()
        else []
    )
    files += [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"]
    return [*files, config_dir(env, home) / "kaggle.json", home / ".kaggle" / "credentials.json"]


def exposure_warnings(env: Mapping[str, str], home: Path) -> list[str]:
    """Return a warning for each credential file that users other than its owner can read (never its contents)."""
    return [
        f"{path} is readable by other users (mode {path.stat().st_mode & 0o777:03o}); run: chmod 600 {path}"
        for path in credential_files(env, home)
        if path.is_file() and path.stat().st_mode & 0o044
    ]


class KaggleFailure(RuntimeError):
    """A request to Kaggle failed; the message is one line naming the cause and what to do."""


def exception_chain(exc: BaseException) -> list[object]:
    """Return `exc` and every exception inside it: causes, contexts, args, and urllib3's `reason`."""
    seen: list[object] = []
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen) or len(seen) > 50:
            continue
        seen.append(item)
        if isinstance(item, BaseException):
            todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return seen


def failed_host(exc: BaseException) -> str:
    """Return the host the failed request was for, or "Kaggle's API" when unknown."""
    from urllib.parse import urlsplit

    request = getattr(exc, "request", None)
    host = urlsplit(str(getattr(request, "url", "") or "")).hostname
    return host or "Kaggle's API"


def explain_failure(exc: BaseException, source: str, competition: str, offline_advice: str) -> str:
    """Return one line saying why a request to Kaggle with the credentials from `source` failed (no network, a failed
    name lookup, 401, 403, ...) and what to do; `offline_advice` is what to do without network."""
    import socket

    import requests

    chain = exception_chain(exc)
    if isinstance(exc, SystemExit):  # the kaggle package exits when no credentials work (an expired token)
        return (
            f"Kaggle did not accept the credentials from {source} (an expired or revoked token?): "
            "create a new API token on https://www.kaggle.com/settings and replace them"
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        host = failed_host(exc)
        if any(isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError" for e in chain):
            return f"could not reach Kaggle: the name lookup of {host} failed (no network?): {offline_advice}"
        return f"could not reach Kaggle: the connection to {host} failed (no network?): {offline_advice}"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"could not reach Kaggle: {failed_host(exc)} did not answer in time: {offline_advice}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return (
            f"Kaggle answered 401 Unauthorized: the credentials from {source} were not accepted; "
            "create a new API token on https://www.kaggle.com/settings and replace them"
        )
    if status == 403:
        return (
            f"Kaggle answered 403 Forbidden to the credentials from {source}: accept the competition rules once "
            f"at https://www.kaggle.com/c/{competition}/rules, and check that the token may do this"
        )
    if status is not None:
        return f"Kaggle answered {status}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return f"the request to Kaggle failed: {type(exc).__name__}: {' '.join(str(exc).split())}"


def authenticated_api(source: str, competition: str, offline_advice: str):
    """Return an authenticated kaggle KaggleApi (imported here: importing kaggle reads credentials) for the
    credentials from `source`; raise KaggleFailure saying why not."""
    import contextlib
    import io

    try:  # the kaggle package prints its own help when the credentials fail: the one line below says it
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except (Exception, SystemExit) as exc:
        raise KaggleFailure(explain_failure(exc, source, competition, offline_advice)) from None
    return api
