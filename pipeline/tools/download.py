"""Makes sure the competition data is in data/raw/: keeps what is there, else copies the CSVs of a Kaggle
notebook's input (/kaggle/input/digit-recognizer/, or under $DIGIT_KAGGLE_ROOT), else downloads the zip with
the kaggle CLI when credentials are configured, else exits 2 naming both ways to get it.
`--zip PATH` copies a zip you already have into place."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import paths
from pipeline.lib.cli import fail, stage_parser
from pipeline.lib.competition_csv import locate_raw, missing_data_message
from pipeline.lib.files import OutputError, write_with
from pipeline.lib.kaggle_auth import exposure_warnings, find_credentials

COMPETITION = "digit-recognizer"


def have_data(raw_dir: Path = paths.RAW_DIR) -> bool:
    """Return True when `raw_dir` holds the competition zip or both CSVs."""
    try:
        locate_raw(raw_dir)
    except FileNotFoundError:
        return False
    return True


def copy_zip(source: Path) -> None:
    """Copy the competition zip at `source` to data/raw/ atomically."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    write_with(paths.RAW_ZIP, lambda tmp: shutil.copyfile(source, tmp), suffix=".zip")


def copy_kaggle_input(folder: Path) -> bool:
    """Copy train.csv and test.csv from a Kaggle notebook's input `folder` to data/raw/; return whether it had both."""
    sources = [folder / paths.RAW_TRAIN_CSV.name, folder / paths.RAW_TEST_CSV.name]
    if not all(source.is_file() for source in sources):
        return False
    for source, target in zip(sources, (paths.RAW_TRAIN_CSV, paths.RAW_TEST_CSV), strict=True):
        write_with(target, lambda tmp, source=source: shutil.copyfile(source, tmp), suffix=".csv")
    return True


def download() -> int:
    """Download the competition zip into data/raw/ with the kaggle CLI; return its exit code."""
    paths.RAW_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "kaggle.cli", "competitions", "download", "-c", COMPETITION, "-p", str(paths.RAW_DIR)]
    print(f"getdata: {' '.join(['kaggle', *cmd[3:]])}", flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    """Ensure the raw data is present; exit 2 with instructions when it cannot be had."""
    parser = stage_parser("getdata", __doc__)
    parser.add_argument("--zip", type=Path, help="copy this competition zip to data/raw/")
    args = parser.parse_args(argv)
    for warning in exposure_warnings(os.environ, Path.home()):
        print(f"getdata: warning: {warning}", file=sys.stderr)
    try:
        if args.zip:
            copy_zip(args.zip)
    except (FileNotFoundError, OutputError) as exc:
        return fail("getdata", exc)
    if have_data():
        print(f"getdata: using {locate_raw().zip_path or paths.RAW_DIR}")
        return 0
    try:
        if copy_kaggle_input(paths.kaggle_input()):
            print(f"getdata: copied train.csv and test.csv from the Kaggle notebook input {paths.kaggle_input()}")
            return 0
    except OutputError as exc:
        return fail("getdata", exc)
    source = find_credentials(os.environ, Path.home())
    if source is not None:
        print(f"getdata: downloading with the Kaggle credentials from {source}", flush=True)
        code = download()
        if code == 0 and have_data():
            return 0
        print(
            f"getdata: the kaggle download failed (exit {code}); have you accepted the competition rules?",
            file=sys.stderr,
        )
    return fail("getdata", missing_data_message())


if __name__ == "__main__":
    sys.exit(main())
