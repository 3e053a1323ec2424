"""Submit submissions/latest.csv to Kaggle's Digit Recognizer.

Validates the file first (header ImageId,Label, ids 1..N once each, labels 0-9, N rows) and shows how it differs from
the previous submission in submissions/ (or from --compare FILE, any earlier one), then uploads it with the kaggle
package's Python API (the same as `kaggle competitions submit`). Exit status: 0 submitted, 1 the file (or the --compare
file) is invalid, 2 no Kaggle credentials, 3 Kaggle refused or could not be reached."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline import params, paths
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.competition_csv import InputError
from pipeline.lib.kaggle_auth import COMPETITION, KaggleFailure, authenticated_api, explained, find_credentials
from pipeline.lib.submission_file import (
    compare_submissions,
    describe_diff,
    diff_with_previous,
    resolve_earlier,
    validate_submission_file,
)

UPLOAD_FAILED = "Could not submit to competition"  # KaggleApi.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE
OFFLINE_ADVICE = "check the connection (in a notebook: its internet setting is on) and run this command again"
FIX = "fix the file (or rerun `make run`, or `.venv/bin/dvc repro predict`) and try again"


def cli_command(path: Path, message: str, competition: str = COMPETITION) -> str:
    """Return the kaggle CLI command that submits `path` with `message`, quoted for a POSIX shell."""
    return shlex.join(["kaggle", "competitions", "submit", "-c", competition, "-f", str(path), "-m", message])


def setup_help(home: Path) -> str:
    """Return how to set up Kaggle credentials, in a shell and in a notebook's `!` cells (each its own shell: %env)."""
    folder = home / ".kaggle"
    return (
        "no Kaggle credentials found. Set them up one of these ways, then run this command again:\n"
        "  1. on https://www.kaggle.com/settings open 'API' and create a new token; set it as the variable\n"
        "     KAGGLE_API_TOKEN (a notebook: %env KAGGLE_API_TOKEN=<token>, or Colab's secret of that name;\n"
        f"     a shell: KAGGLE_API_TOKEN=<token> before the command), or save it to {folder / 'access_token'}\n"
        f"  2. or a legacy kaggle.json ('Create Legacy API Key'): save it as {folder / 'kaggle.json'}, then\n"
        f"       chmod 600 {folder / 'kaggle.json'}\n"
        "     (or set its two values as the variables KAGGLE_USERNAME and KAGGLE_KEY, e.g. CI secrets)\n"
        "Also accept the competition rules once at https://www.kaggle.com/c/digit-recognizer/rules."
    )


def submit_file(
    api: Any, path: Path, message: str, competition: str = COMPETITION, source: str = "the configured credentials"
) -> str:
    """Submit `path` with `message` through the kaggle `api`; return Kaggle's reply, or raise KaggleFailure."""
    with explained(source, competition, OFFLINE_ADVICE):  # requests' HTTPError, ConnectionError, ValueError, ...
        response = api.competition_submit(str(path), message, competition, quiet=False)
    reply = str(getattr(response, "message", "") or "")
    if reply == UPLOAD_FAILED:
        raise KaggleFailure(f"the upload of {path} failed ({reply}): check your connection and try again")
    return reply or "submitted"


@reports_errors("submit")
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None, home: Path | None = None) -> int:
    """Parse the CLI, validate the submission, and submit it to Kaggle."""
    rows = params.load("ingest").expected_test_rows
    parser = stage_parser("submit", __doc__)
    parser.add_argument("-m", "--message", required=True, help="submission description shown on Kaggle")
    parser.add_argument("-f", "--file", type=Path, default=paths.LATEST_SUBMISSION, help="default: %(default)s")
    parser.add_argument("--rows", type=int, default=rows, help="expected rows (default: ingest.expected_test_rows)")
    parser.add_argument("-c", "--competition", default=COMPETITION, help="competition (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the command, do not submit")
    parser.add_argument("--compare", type=Path, metavar="FILE", help="an earlier submission, or its submissions/ name")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    try:
        frame = validate_submission_file(args.file, args.rows)
    except InputError as exc:
        return fail("submit", f"{exc}\nsubmit: {FIX}", 1)
    print(f"submit: {args.file} is valid ({len(frame)} rows)", flush=True)
    try:
        earlier = None if args.compare is None else resolve_earlier(args.compare)
        diff = diff_with_previous(args.file) if earlier is None else compare_submissions(earlier, args.file)
        print(f"submit: {describe_diff(diff)}", flush=True)
    except InputError as exc:
        return fail("submit", f"cannot compare: {exc}", 1)
    print(f"submit: equivalent command: {cli_command(args.file, args.message, args.competition)}", flush=True)
    if args.dry_run:
        return 0
    if (source := find_credentials(env, home)) is None:
        return fail("submit", setup_help(home))
    print(f"submit: using Kaggle credentials from {source}", flush=True)
    try:
        api = authenticated_api(source, args.competition, OFFLINE_ADVICE)
        reply = submit_file(api, args.file, args.message, args.competition, source)
    except KaggleFailure as exc:
        return fail("submit", exc, 3)
    print(f"submit: {reply}", flush=True)
    print(f"submit: see https://www.kaggle.com/competitions/{args.competition}/submissions", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
