"""Makes sure the competition data is in data/raw/: keeps what is there, else copies the CSVs of a Kaggle
notebook's input (/kaggle/input/digit-recognizer/, or under $DIGIT_KAGGLE_ROOT), else downloads the zip with
the kaggle package when credentials are configured, else exits 2 naming every way to get it.
`--zip PATH` copies a zip you already have into place.
Exit status: 0 the data is there, 2 no data and no way to get it (or a file could not be copied or written),
3 Kaggle refused the download or could not be reached (one line says why and what to do)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline import paths
from pipeline.lib.cli import fail, stage_parser
from pipeline.lib.competition_csv import locate_raw, missing_data_message
from pipeline.lib.files import OutputError, write_with
from pipeline.lib.kaggle_auth import (
    COMPETITION,
    KaggleFailure,
    authenticated_api,
    explain_failure,
    exposure_warnings,
    find_credentials,
)


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


OFFLINE_ADVICE = (
    "turn the notebook's internet on (Kaggle: Settings > Internet), or add the Digit Recognizer competition as the "
    "notebook's input, or copy a zip you have: .venv/bin/python -m pipeline.tools.download --zip PATH"
)


def download(source: str) -> None:
    """Download the competition zip into data/raw/ with the kaggle package and the credentials from `source`
    (into a temporary folder there, then renamed into place); raise KaggleFailure saying why it failed."""
    api = authenticated_api(source, COMPETITION, OFFLINE_ADVICE)
    paths.RAW_DIR.mkdir(parents=True, exist_ok=True)
    print(f"getdata: kaggle competitions download -c {COMPETITION} -p {paths.RAW_DIR}", flush=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=paths.RAW_DIR) as folder:
        try:
            api.competition_download_files(COMPETITION, path=folder, quiet=False)
        except (Exception, SystemExit) as exc:  # requests' ConnectionError, HTTPError, ...
            raise KaggleFailure(explain_failure(exc, source, COMPETITION, OFFLINE_ADVICE)) from None
        got = Path(folder) / paths.RAW_ZIP.name
        if not got.is_file():
            raise KaggleFailure(f"the kaggle download wrote no {got.name}: {OFFLINE_ADVICE}")
        os.replace(got, paths.RAW_ZIP)


def main(argv: list[str] | None = None) -> int:
    """Ensure the raw data is present; exit 2 with instructions when it cannot be had."""
    parser = stage_parser("getdata", __doc__)
    parser.add_argument("--zip", type=Path, help="copy this competition zip to data/raw/")
    args = parser.parse_args(argv)
    for warning in exposure_warnings(os.environ, Path.home()):
        print(f"getdata: warning: {warning}", file=sys.stderr, flush=True)
    try:
        if args.zip:
            copy_zip(args.zip)
    except (FileNotFoundError, OutputError) as exc:
        return fail("getdata", exc)
    if have_data():
        print(f"getdata: using {locate_raw().zip_path or paths.RAW_DIR}", flush=True)
        return 0
    try:
        if copy_kaggle_input(paths.kaggle_input()):
            print(
                f"getdata: copied train.csv and test.csv from the Kaggle notebook input {paths.kaggle_input()}",
                flush=True,
            )
            return 0
    except OutputError as exc:
        return fail("getdata", exc)
    source = find_credentials(os.environ, Path.home())
    if source is None:
        return fail("getdata", missing_data_message())
    print(f"getdata: downloading with the Kaggle credentials from {source}", flush=True)
    try:
        download(source)
    except KaggleFailure as exc:
        return fail("getdata", exc, 3)
    except OSError as exc:
        return fail("getdata", f"cannot write {paths.RAW_ZIP}: {exc.strerror or exc}")
    print(f"getdata: using {paths.RAW_ZIP}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
