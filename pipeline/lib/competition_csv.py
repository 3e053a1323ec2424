"""Reads the competition CSVs (from data/raw/ or straight from the Kaggle zip), validates them
strictly, and converts them to compact uint8 image arrays."""

from __future__ import annotations

import io
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyarrow import csv as pa_csv

from pipeline import paths

N_PIXELS = 784
SIDE = 28
PIXEL_COLUMNS = [f"pixel{i}" for i in range(N_PIXELS)]
TRAIN_COLUMNS = ["label", *PIXEL_COLUMNS]
KAGGLE_TEST_ROWS = 28000
ARROW_BLOCK_BYTES = 4 << 20  # bigger blocks than Arrow's 1 MiB default parse a 785-column CSV ~30% faster
INTEGER_TEXT = re.compile(r"[+-]?\d+")
CHECK_CHUNK_ROWS = 2048


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
        "Get it one of these ways:\n"
        "  1. in a Kaggle notebook, add the Digit Recognizer competition as the notebook's input (Add Input):\n"
        "     `make run` copies its CSVs\n"
        "  2. with Kaggle credentials, after accepting the competition rules on kaggle.com: an API token in\n"
        "     KAGGLE_API_TOKEN (in a notebook: %env KAGGLE_API_TOKEN=<token>, or Colab's secret of that name) or\n"
        "     ~/.kaggle/access_token, or ~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY; then `make run`\n"
        f"     downloads it, or: .venv/bin/kaggle competitions download -c digit-recognizer -p {paths.RAW_DIR}\n"
        "  3. a zip you already have (e.g. uploaded to the notebook):\n"
        "       .venv/bin/python -m pipeline.tools.download --zip PATH"
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
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InputError(str(path), f"cannot be read: {exc.strerror or exc}") from exc
    try:
        with zipfile.ZipFile(source.zip_path) as zf:
            members = {Path(m).name: m for m in zf.namelist()}
            if name not in members:
                raise InputError(str(source.zip_path), f"no {name} in the zip (it holds {sorted(members)})")
            return zf.read(members[name])
    except InputError:  # a member missing: said as it is (an InputError is a ValueError, not a corrupt member)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, zipfile.LargeZipFile, OSError) as exc:
        raise InputError(str(source.zip_path), f"not a readable zip archive ({exc}); download it again") from exc
    except ValueError as exc:  # CRC mismatch in a damaged member
        raise InputError(str(source.zip_path), f"corrupt member {name}: {exc}; download it again") from exc


def check_header(columns: list[str], expected: list[str], name: str) -> None:
    """Raise InputError unless the CSV header `columns` equals `expected` exactly."""
    if columns == expected:
        return
    if expected == TRAIN_COLUMNS and columns == PIXEL_COLUMNS:
        raise InputError(name, "has no 'label' column: this looks like test.csv (are train and test swapped?)", line=1)
    if expected == PIXEL_COLUMNS and columns == TRAIN_COLUMNS:
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


def parse_csv(data: bytes, name: str, expected: list[str]) -> pd.DataFrame:
    """Parse CSV bytes into a frame, checking the header; `name` is used in error messages."""
    if not data.strip():
        raise InputError(name, "is empty (0 bytes or only whitespace)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", skip_blank_lines=True, index_col=False)
    except pd.errors.ParserWarning as exc:  # every data row has more fields than the header
        raise InputError(name, f"data rows have more fields than the header columns ({exc})", line=2) from exc
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise InputError(
            name, f"is not a well-formed CSV: {str(exc).strip()}", line=int(line.group(1)) if line else None
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputError(name, f"is not UTF-8 text: {exc}") from exc
    check_header([str(c).strip() for c in frame.columns], expected, name)
    if frame.empty:
        raise InputError(name, "has a header but no data rows", line=2)
    return frame


def line_number(data: bytes, row: int) -> int:
    """Return the 1-based line in CSV `data` of data row `row` (0-based), skipping blank lines as the parser does."""
    seen = -1
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            seen += 1
            if seen == row + 1:
                return number
    return row + 2


def cell_problem(text: str, column: str) -> str | None:
    """Return what is wrong with cell `text` of `column` (a label 0-9 or a pixel 0-255), or None when it is valid."""
    value = text.strip()
    if not value:
        return "an empty cell; every cell must hold an integer"
    if value == column:
        return f"a repeated header line ({value!r}) among the data rows"
    if not INTEGER_TEXT.fullmatch(value):
        return f"non-integer value {value!r}; every cell must hold an integer"
    if column == "label" and not 0 <= int(value) <= 9:
        return f"label {value} is not a digit 0-9"
    if not 0 <= int(value) <= 255:
        return f"value {value} out of range 0-255"
    return None


def out_of_range(values: np.ndarray, columns: list[str]) -> np.ndarray:
    """Return a mask of the integer `values` outside 0-9 (label column) or 0-255 (pixel columns)."""
    high = np.array([9 if c == "label" else 255 for c in columns])
    return (values < 0) | (values > high)


def text_mask(chunk: pd.DataFrame) -> np.ndarray:
    """Return a mask of the cells of text `chunk` that are not integers in range for their column."""
    stripped = chunk.apply(lambda col: col.str.strip())
    is_int = stripped.apply(lambda col: col.str.fullmatch(INTEGER_TEXT.pattern)).to_numpy(dtype=bool)
    numbers = stripped.where(is_int, "0").apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return ~is_int | out_of_range(numbers, list(chunk.columns))


def first_bad_cell(frame: pd.DataFrame, data: bytes, name: str) -> InputError | None:
    """Return an InputError for the first bad cell (in reading order) of `frame`, re-reading from CSV `data`
    as text the columns pandas could not type as integers; None when every cell is valid."""
    columns = list(frame.columns)
    text_pos = [i for i, t in enumerate(frame.dtypes) if not pd.api.types.is_integer_dtype(t)]
    int_pos = [i for i in range(len(columns)) if i not in set(text_pos)]
    reader = pd.read_csv(
        io.BytesIO(data),
        encoding="utf-8-sig",
        dtype=str,
        keep_default_na=False,
        index_col=False,
        usecols=text_pos,
        chunksize=CHECK_CHUNK_ROWS,
    )
    start = 0
    for chunk in reader:
        chunk.columns = [columns[i] for i in text_pos]
        ints = frame.iloc[start : start + len(chunk), int_pos]
        mask = np.zeros((len(chunk), len(columns)), dtype=bool)
        mask[:, text_pos] = text_mask(chunk)
        mask[:, int_pos] = out_of_range(ints.to_numpy(), list(ints.columns))
        bad = np.argwhere(mask)
        if len(bad):
            row, col = (int(i) for i in bad[0])
            text = chunk[columns[col]].iat[row] if col in text_pos else str(frame.iat[start + row, col])
            problem = cell_problem(str(text), columns[col]) or "invalid value"
            return InputError(name, problem, line=line_number(data, start + row), column=columns[col])
        start += len(chunk)
    return None


def to_uint8(frame: pd.DataFrame, name: str, data: bytes) -> np.ndarray:
    """Return `frame` (parsed from CSV `data`) as a uint8 matrix after checking every cell is a valid label or pixel."""
    columns = list(frame.columns)
    if all(pd.api.types.is_integer_dtype(t) for t in frame.dtypes):
        values = frame.to_numpy()
        bad = np.argwhere(out_of_range(values, columns))
        if not len(bad):
            return values.astype(np.uint8)
        row, col = (int(i) for i in bad[0])
        problem = cell_problem(str(values[row, col]), columns[col]) or "invalid value"
        raise InputError(name, problem, line=line_number(data, row), column=columns[col])
    error = first_bad_cell(frame, data, name)
    if error is None:
        raise InputError(name, "holds values that cannot be read as integers")
    raise error


def fast_matrix(data: bytes, expected: list[str]) -> np.ndarray | None:
    """Return CSV `data` as a uint8 matrix when it is a clean table (header `expected`, integers in range, no
    gaps), parsed by Arrow's multi-threaded reader; None for anything else, which the strict path then explains."""
    read = pa_csv.ReadOptions(block_size=ARROW_BLOCK_BYTES)
    convert = pa_csv.ConvertOptions(column_types=dict.fromkeys(expected, pa.uint8()))  # 256 or -1 fail here
    try:
        table = pa_csv.read_csv(io.BytesIO(data), read_options=read, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError, ValueError):
        return None
    if table.column_names != expected or table.num_rows == 0 or any(c.null_count for c in table.columns):
        return None
    matrix = np.empty((table.num_rows, table.num_columns), np.uint8)
    for j, column in enumerate(table.columns):
        matrix[:, j] = column.to_numpy()
    return None if out_of_range(matrix, expected).any() else matrix


def strict_matrix(data: bytes, name: str, expected: list[str]) -> np.ndarray:
    """Return CSV `data` as a validated uint8 matrix: the fast Arrow path when clean, else pandas with exact errors."""
    matrix = fast_matrix(data, expected)
    if matrix is not None:
        return matrix
    frame = parse_csv(data, name, expected)
    frame.columns = expected
    return to_uint8(frame, name, data)


def parse_train(data: bytes, name: str = "train.csv") -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate train.csv bytes; return images (N, 28, 28) uint8 and labels (N,) uint8."""
    matrix = strict_matrix(data, name, TRAIN_COLUMNS)
    return matrix[:, 1:].reshape(-1, SIDE, SIDE), matrix[:, 0]


def parse_test(data: bytes, name: str = "test.csv", expected_rows: int = KAGGLE_TEST_ROWS) -> np.ndarray:
    """Parse and validate test.csv bytes; return images (N, 28, 28) uint8, warning on an unexpected count."""
    images = strict_matrix(data, name, PIXEL_COLUMNS).reshape(-1, SIDE, SIDE)
    if len(images) != expected_rows:
        warnings.warn(
            f"{name}: {len(images)} rows, but Kaggle scores exactly {expected_rows}; "
            "a submission built from it will be rejected",
            stacklevel=2,
        )
    return images
