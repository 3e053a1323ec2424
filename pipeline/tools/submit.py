"""Submit submissions/latest.csv to Kaggle's Digit Recognizer.

Validates the file first (header ImageId,Label, ids 1..N once each, labels 0-9, N rows) and shows how
it differs from the previous submission in submissions/ (or from --compare FILE, any earlier one), then
uploads it with the kaggle package's Python API (the same as `kaggle competitions submit`).
Exit status: 0 submitted, 1 the file (or the --compare file) is invalid, 2 no Kaggle credentials, 3 Kaggle
refused or could not be reached."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import params, paths
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.competition_csv import InputError
from pipeline.lib.kaggle_auth import find_credentials
from pipeline.lib.submission_file import (
    compare_submissions,
    describe_diff,
    diff_with_previous,
    resolve_earlier,
    validate_submission_file,
)

COMPETITION = "digit-recognizer"
UPLOAD_FAILED = "Could not submit to competition"  # KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE


class SubmitError(RuntimeError):
    """Kaggle did not accept the submission; the message says why."""


def shell_quote(text: str) -> str:
    """Return `text` in double quotes, escaped for a POSIX shell."""
    return '"' + "".join("\\" + c if c in '\\"$`' else c for c in text) + '"'


def cli_command(path: Path, message: str, competition: str = COMPETITION) -> str:
    """Return the kaggle CLI command that submits `path` with `message`."""
    return f"kaggle competitions submit -c {competition} -f {path} -m {shell_quote(message)}"


def setup_help(home: Path) -> str:
    """Return the instructions for configuring Kaggle credentials."""
    folder = home / ".kaggle"
    return (
        "no Kaggle credentials found. Set them up one of these ways, then run this command again:\n"
        "  1. on https://www.kaggle.com/settings open 'API' and click 'Create New Token'; it downloads\n"
        "     kaggle.json. Install it readable only by you:\n"
        f"       mkdir -p {folder} && mv ~/Downloads/kaggle.json {folder}/ && chmod 600 {folder}/kaggle.json\n"
        "  2. or export the two values from that file (e.g. in CI secrets):\n"
        "       export KAGGLE_USERNAME=your-kaggle-username KAGGLE_KEY=your-api-key\n"
        "  3. or, with a new-style API token, export KAGGLE_API_TOKEN=... (or save it to ~/.kaggle/access_token)\n"
        "Also accept the competition rules once at https://www.kaggle.com/c/digit-recognizer/rules."
    )


def make_api(source: str = "the configured credentials") -> Any:
    """Return an authenticated kaggle KaggleApi (imported here: importing kaggle reads credentials); `source`
    names where the credentials come from in the error."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit as exc:  # the kaggle package exits when no credentials work
        raise SubmitError(
            f"Kaggle did not accept the credentials from {source} (an expired or revoked token?): "
            "create a new one on https://www.kaggle.com/settings (see --help)"
        ) from exc
    return api


def refusal(exc: Exception, source: str, competition: str) -> str:
    """Return why Kaggle refused a request: its 401 and 403 replies name the credentials' `source` and the fix."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return (
            f"Kaggle answered 401 Unauthorized: the credentials from {source} were not accepted; "
            "create a new API token on https://www.kaggle.com/settings and replace them"
        )
    if status == 403:
        return (
            f"Kaggle answered 403 Forbidden to the credentials from {source}: accept the competition rules once "
            f"at https://www.kaggle.com/c/{competition}/rules, and check that the token may submit"
        )
    return f"Kaggle refused the submission: {exc}"


def submit_file(
    api: Any, path: Path, message: str, competition: str = COMPETITION, source: str = "the configured credentials"
) -> str:
    """Submit `path` with `message` through the kaggle `api` (credentials from `source`); return Kaggle's reply or
    raise SubmitError."""
    try:
        response = api.competition_submit(str(path), message, competition, quiet=False)
    except Exception as exc:  # the kaggle package raises requests' HTTPError, ValueError, ...
        raise SubmitError(refusal(exc, source, competition)) from exc
    reply = str(getattr(response, "message", "") or "")
    if reply == UPLOAD_FAILED:
        raise SubmitError(f"the upload of {path} failed ({reply}): check your connection and try again")
    return reply or "submitted"


def diff_summary(path: Path, compare: Path | None) -> str:
    """Return how the submission at `path` differs from `compare` (a path or a name in submissions/), or from the
    previous submission when `compare` is None; raise InputError naming a file that cannot be compared."""
    if compare is None:
        return describe_diff(diff_with_previous(path))
    return describe_diff(compare_submissions(resolve_earlier(compare), path))


@reports_errors("submit")
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None, home: Path | None = None) -> int:
    """Parse the CLI, validate the submission, and submit it to Kaggle."""
    rows = params.load("ingest").expected_test_rows
    parser = stage_parser("submit", __doc__)
    parser.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    parser.add_argument(
        "-f", "--file", type=Path, default=paths.LATEST_SUBMISSION, help="submission CSV (default: %(default)s)"
    )
    parser.add_argument(
        "--rows", type=int, default=rows, help="expected rows (default: ingest.expected_test_rows = %(default)s)"
    )
    parser.add_argument("-c", "--competition", default=COMPETITION, help="competition (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the command, do not submit")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="FILE",
        help="compare with this earlier submission (a path, or a file name in submissions/) instead of the previous",
    )
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    try:
        frame = validate_submission_file(args.file, args.rows)
    except InputError as exc:
        return fail("submit", f"{exc}\nsubmit: fix the file (or rerun `dvc repro predict`) and try again", 1)
    print(f"submit: {args.file} is valid ({len(frame)} rows)")
    try:
        print(f"submit: {diff_summary(args.file, args.compare)}")
    except InputError as exc:
        return fail("submit", f"cannot compare: {exc}", 1)
    print(f"submit: equivalent command: {cli_command(args.file, args.message, args.competition)}")
    if args.dry_run:
        return 0
    source = find_credentials(env, home)
    if source is None:
        return fail("submit", setup_help(home))
    print(f"submit: using Kaggle credentials from {source}")
    try:
        reply = submit_file(make_api(source), args.file, args.message, args.competition, source)
    except SubmitError as exc:
        return fail("submit", exc, 3)
    print(f"submit: {reply}\nsubmit: see https://www.kaggle.com/competitions/{args.competition}/submissions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
