"""`dvc repro` as `make run` and `make quick` run it (dvc repro's arguments and exit status), less DVC's reminder to
`git add dvc.lock` (never committed here: README, "Settings"); in a Kaggle notebook it then copies
submissions/latest.csv to <root>/working/submission.csv (the Submit file), also when all was cached."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from pipeline import paths
from pipeline.lib.cli import fail
from pipeline.lib.files import OutputError, write_with


def keep_record(record: logging.LogRecord) -> bool:
    """Return False for DVC's "To track the changes with git, run: git add dvc.lock" and its autostage hint."""
    return not ("To track the changes with git" in str(record.msg) or "core.autostage" in str(record.msg))


def publish_submission(source: Path = paths.LATEST_SUBMISSION) -> Path | None:
    """Copy `source` atomically into a Kaggle notebook's working folder; return the copy (None: no folder or source)."""
    target = paths.kaggle_submission()
    if not target.parent.is_dir() or not source.is_file():
        return None
    write_with(target, lambda tmp: shutil.copyfile(source, tmp), suffix=".csv")
    return target


def main(argv: list[str] | None = None) -> int:
    """Run dvc repro with `argv` without the git-add reminder, publish the submission to a notebook; return its code."""
    from dvc.cli import main as dvc_main
    from dvc.repo import scm_context

    scm_context.logger.addFilter(keep_record)
    code = dvc_main(["repro", *(sys.argv[1:] if argv is None else argv)])
    if code != 0:
        return code
    try:
        published = publish_submission()
    except OutputError as exc:
        return fail("repro", exc)
    if published is not None:
        print(f"repro: {paths.LATEST_SUBMISSION} -> {published} (Kaggle notebook)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
