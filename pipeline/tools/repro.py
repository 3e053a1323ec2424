"""`dvc repro` as `make run` and `make quick` run it: DVC's own command (its arguments are dvc repro's), less DVC's
reminder to `git add dvc.lock` (this machine's record, never committed here: README, "Settings"), then, in a Kaggle
notebook, submissions/latest.csv copied to <root>/working/submission.csv, the file the notebook's Submit takes: also
when DVC found every stage cached and predict did not run (a rerun of the notebook). Exits with dvc repro's status."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from pipeline import paths
from pipeline.lib.cli import fail
from pipeline.lib.files import OutputError, write_with


class DropGitAddReminder(logging.Filter):
    """Drop DVC's "To track the changes with git, run: git add dvc.lock" and its autostage hint."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for the two hint records DVC logs after a run that changed dvc.lock."""
        text = str(record.msg)
        return not ("To track the changes with git" in text or "core.autostage" in text)


def publish_submission(source: Path = paths.LATEST_SUBMISSION) -> Path | None:
    """Copy `source` to a Kaggle notebook's working folder atomically; return the copy, or None when there is no
    such folder (not a notebook) or no submission yet."""
    target = paths.kaggle_submission()
    if not target.parent.is_dir() or not source.is_file():
        return None
    write_with(target, lambda tmp: shutil.copyfile(source, tmp), suffix=".csv")
    return target


def main(argv: list[str] | None = None) -> int:
    """Run dvc repro with `argv` without the git-add reminder; publish the submission to a notebook; return its
    status."""
    from dvc.cli import main as dvc_main
    from dvc.repo import scm_context

    scm_context.logger.addFilter(DropGitAddReminder())
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
