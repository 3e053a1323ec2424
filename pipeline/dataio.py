"""Reads the competition CSVs (from data/raw/ or straight from the Kaggle zip), validates them
strictly, and converts them to compact uint8 image arrays."""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths

N_PIXELS = 784
SIDE = 28
PIXEL_COLUMNS = [f"pixel{i}" for i in range(N_PIXELS)]
TRAIN_COLUMNS = ["label", *PIXEL_COLUMNS]
KAGGLE_TEST_ROWS = 28000


class InputError(ValueError):
    """A raw input file is unusable; the message names the file, and the line and column where known."""

    def __init__(self, source: str, problem: str, line: int | None = None, column: str | None = None) -> None:
        where = source
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")
        self.source, self.line, self.column = source, line, column


@dataclass(frozen=True)
class RawSource:
    """Where the raw CSVs come from: a competition zip or a folder holding train.csv and test.csv."""

    zip_path: Path | None
    train_csv: Path | None
    test_csv: Path | None

    def describe(self, name: str) -> str:
        """Return a human-readable location of member `name` (train.csv or test.csv)."""
        if self.zip_path is not None:
            return f"{self.zip_path}:{name}"
        return str(self.train_csv if name == "train.csv" else self.test_csv)


def missing_data_message() -> str:
    """Return the message telling the user both ways to get the competition data."""
    return (
        f"no competition data: expected {paths.RAW_ZIP} or both {paths.RAW_TRAIN_CSV} and {paths.RAW_TEST_CSV}.\n"
        "Get it one of two ways:\n"
        "  1. with Kaggle credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY), after accepting the\n"
        "     competition rules on kaggle.com:\n"
        f"       kaggle competitions download -c digit-recognizer -p {paths.RAW_DIR}\n"
        "     (`make run` does this for you when credentials are configured)\n"
        "  2. copy a zip you already have:\n"
        f"       cp /path/to/digit-recognizer.zip {paths.RAW_ZIP}"
    )


def locate_raw(raw_dir: Path = paths.RAW_DIR) -> RawSource:
    """Return the raw data source in `raw_dir`: the CSV pair if present, else the zip."""
    train, test, zipped = raw_dir / "train.csv", raw_dir / "test.csv", raw_dir / paths.RAW_ZIP.name
    if train.is_file() and test.is_file():
        return RawSource(None, train, test)
    if zipped.is_file():
        return RawSource(zipped, None, None)
    raise FileNotFoundError(missing_data_message())


def read_member(source: RawSource, name: str) -> bytes:
    """Return the raw bytes of `name` (train.csv or test.csv) from `source`."""
    if source.zip_path is None:
        path = source.train_csv if name == "train.csv" else source.test_csv
        return Path(path).read_bytes()
    try:
        with zipfile.ZipFile(source.zip_path) as zf:
            members = {Path(m).name: m for m in zf.namelist()}
            if name not in members:
                raise InputError(str(source.zip_path), f"no {name} in the zip (it holds {sorted(members)})")
            return zf.read(members[name])
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, OSError) as exc:
        raise InputError(str(source.zip_path), f"not a readable zip archive ({exc}); download it again") from exc
    except ValueError as exc:  # CRC mismatch in a damaged member
        raise InputError(str(source.zip_path), f"corrupt member {name}: {exc}; download it again") from exc


def check_header(columns: list[str], expected: list[str], name: str) -> None:
    """Raise InputError unless the CSV header `columns` equals `expected` exactly."""
    if columns == expected:
        return
    if name == "train.csv" and columns == PIXEL_COLUMNS:
        raise InputError(name, "has no 'label' column: this looks like test.csv (are train and test swapped?)", line=1)
    if name == "test.csv" and columns == TRAIN_COLUMNS:
        raise InputError(name, "has a 'label' column: this looks like train.csv (are train and test swapped?)", line=1)
    if not any(c.startswith("pixel") for c in columns):
        raise InputError(
            name,
            f"is not Digit Recognizer data: header starts {','.join(columns[:5])!r}, "
            f"expected {','.join(expected[:3])},...",
            line=1,
        )
    if len(columns) != len(expected):
        raise InputError(name, f"header has {len(columns)} columns, expected {len(expected)}", line=1)
    first = next(i for i, (got, want) in enumerate(zip(columns, expected, strict=True)) if got != want)
    raise InputError(
        name, f"header column {first + 1} is {columns[first]!r}, expected {expected[first]!r} (wrong order?)", line=1
    )


def first_bad_cell(frame: pd.DataFrame) -> tuple[int, str, object]:
    """Return (row index, column, value) of the first cell of `frame` that is not an integer."""
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_integer_dtype(values):
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        bad = numeric.isna() | (numeric != np.floor(numeric))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            return row, column, values.iloc[row]
    raise AssertionError("no bad cell found")


def parse_csv(data: bytes, name: str, expected: list[str]) -> pd.DataFrame:
    """Parse CSV bytes into a frame, checking the header; `name` is used in error messages."""
    if not data.strip():
        raise InputError(name, "is empty (0 bytes or only whitespace)")
    try:
        frame = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", skip_blank_lines=True)
    except pd.errors.ParserError as exc:
        raise InputError(name, f"is not a well-formed CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(name, f"is not UTF-8 text: {exc}") from exc
    check_header([str(c).strip() for c in frame.columns], expected, name)
    if frame.empty:
        raise InputError(name, "has a header but no data rows", line=2)
    return frame


def to_uint8(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Return `frame` as a uint8 matrix after checking every cell is an integer in 0..255."""
    if not all(pd.api.types.is_integer_dtype(t) for t in frame.dtypes):
        row, column, value = first_bad_cell(frame)
        kind = "an empty cell" if pd.isna(value) else f"non-integer value {value!r}"
        if str(value).strip() == column:
            kind = f"a repeated header line ({value!r})"
        raise InputError(name, f"{kind}; every pixel must be an integer 0-255", line=row + 2, column=column)
    values = frame.to_numpy()
    bad = (values < 0) | (values > 255)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise InputError(
            name, f"value {values[row, col]} out of range 0-255", line=row + 2, column=str(frame.columns[col])
        )
    return values.astype(np.uint8)


def parse_train(data: bytes, name: str = "train.csv") -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate train.csv bytes; return images (N, 28, 28) uint8 and labels (N,) uint8."""
    frame = parse_csv(data, name, TRAIN_COLUMNS)
    frame.columns = TRAIN_COLUMNS
    labels = frame["label"]
    if pd.api.types.is_integer_dtype(labels):
        bad = (labels < 0) | (labels > 9)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(name, f"label {labels.iloc[row]} is not a digit 0-9", line=row + 2, column="label")
    matrix = to_uint8(frame, name)
    return matrix[:, 1:].reshape(-1, SIDE, SIDE), matrix[:, 0]


def parse_test(data: bytes, name: str = "test.csv", expected_rows: int = KAGGLE_TEST_ROWS) -> np.ndarray:
    """Parse and validate test.csv bytes; return images (N, 28, 28) uint8, warning on an unexpected count."""
    frame = parse_csv(data, name, PIXEL_COLUMNS)
    frame.columns = PIXEL_COLUMNS
    images = to_uint8(frame, name).reshape(-1, SIDE, SIDE)
    if len(images) != expected_rows:
        warnings.warn(
            f"{name}: {len(images)} rows, but Kaggle scores exactly {expected_rows}; "
            "a submission built from it will be rejected",
            stacklevel=2,
        )
    return images
