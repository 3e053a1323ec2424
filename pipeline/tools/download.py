"""Makes sure the competition data is in data/raw/: keeps what is there, else copies the CSVs of a Kaggle notebook's
input (/kaggle/input/digit-recognizer/, or under $DIGIT_KAGGLE_ROOT), else downloads the zip with the kaggle package
when credentials are configured, else exits 2 naming every way to get it. `--zip PATH` copies a zip you have.
Exit status: 0 the data is there, 2 no data and no way to get it (or a file could not be copied or written), 3 Kaggle
refused the download or could not be reached (one line says why and what to do)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline import paths
from pipeline.lib import kaggle_auth
from pipeline.lib.cli import fail, stage_parser
from pipeline.lib.competition_csv import locate_raw, missing_data_message
from pipeline.lib.files import OutputError, write_with
from pipeline.lib.kaggle_auth import COMPETITION, KaggleFailure, exposure_warnings, find_credentials

OFFLINE_ADVICE = (
    "turn the notebook's internet on (Kaggle: Settings > Internet), or add the Digit Recognizer competition as the "
    "notebook's input, or copy a zip you have: .venv/bin/python -m pipeline.tools.download --zip PATH"
)


def have_data(raw_dir: Path = paths.RAW_DIR) -> bool:
    """Return True when `raw_dir` holds the competition zip or both CSVs."""
    try:
        locate_raw(raw_dir)
    except FileNotFoundError:
        return False
    return True


def copy(source: Path, target: Path) -> None:
    """Copy the file at `source` to `target` atomically; raise FileNotFoundError when there is none."""
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    write_with(target, lambda tmp: shutil.copyfile(source, tmp), suffix=target.suffix)


def download(source: str) -> None:
    """Download the competition zip into data/raw/ with the credentials from `source`; raise KaggleFailure if not."""
    api = kaggle_auth.authenticated_api(source, COMPETITION, OFFLINE_ADVICE)
    paths.RAW_DIR.mkdir(parents=True, exist_ok=True)
    print(f"getdata: kaggle competitions download -c {COMPETITION} -p {paths.RAW_DIR}", flush=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=paths.RAW_DIR) as folder:
        with kaggle_auth.explained(source, COMPETITION, OFFLINE_ADVICE):
            api.competition_download_files(COMPETITION, path=folder, quiet=False)
        if not (Path(folder) / paths.RAW_ZIP.name).is_file():
            raise KaggleFailure(f"the kaggle download wrote no {paths.RAW_ZIP.name}: {OFFLINE_ADVICE}")
        os.replace(Path(folder) / paths.RAW_ZIP.name, paths.RAW_ZIP)


def main(argv: list[str] | None = None) -> int:
    """Ensure the raw data is present; exit 2 with instructions when it cannot be had."""
    parser = stage_parser("getdata", __doc__)
    parser.add_argument("--zip", type=Path, help="copy this competition zip to data/raw/")
    args = parser.parse_args(argv)
    for warning in exposure_warnings(os.environ, Path.home()):
        print(f"getdata: warning: {warning}", file=sys.stderr, flush=True)
    notebook = [(paths.kaggle_input() / csv.name, csv) for csv in (paths.RAW_TRAIN_CSV, paths.RAW_TEST_CSV)]
    try:
        if args.zip:
            copy(args.zip, paths.RAW_ZIP)
        if have_data():
            print(f"getdata: using {locate_raw().zip_path or paths.RAW_DIR}", flush=True)
            return 0
        if all(source.is_file() for source, _ in notebook):  # a Kaggle notebook's input
            for source, target in notebook:
                copy(source, target)
            print(f"getdata: copied train.csv and test.csv from the Kaggle notebook input {paths.kaggle_input()}")
            return 0
    except (FileNotFoundError, OutputError) as exc:
        return fail("getdata", exc)
    if (source := find_credentials(os.environ, Path.home())) is None:
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
