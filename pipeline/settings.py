"""Stage `settings`, the first one: checks every setting of params.yaml against the schema (pipeline/params.py) and
writes data/processed/settings_checked.json, the same bytes whenever the settings are valid.

Every other stage depends on that file, so `dvc repro` and `dvc exp run` run this stage first whenever params.yaml
changes (any key: dvc.yaml tracks the whole file) and stop at a bad value, with one line and exit code 2, before DVC
removes any other stage's outputs. While the settings are valid the file never changes, so a valid change reruns
only the stages whose own settings changed."""

from __future__ import annotations

import sys

from pipeline import params, paths
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.files import OutputError, write_json

CHECKED = {"params.yaml": "every setting valid"}  # never the settings themselves: a valid change changes nothing here


@reports_errors("settings")
def main(argv: list[str] | None = None) -> int:
    """Check all of params.yaml (one line and exit 2 on the first bad setting), then write the unchanging record."""
    stage_parser("settings", __doc__).parse_args(argv)
    params.read_settings()
    try:
        write_json(paths.SETTINGS_CHECKED, CHECKED)
    except OutputError as exc:
        return fail("settings", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
