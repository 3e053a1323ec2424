"""The reviewed list of training rows left out of training: data/exclude_rows.csv, tracked by git (the user's choice,
visible and reproducible); train, predict and audit read it, `python -m pipeline.audit --accept N` appends to it.
Format: the header `row,note`, then per excluded row its 0-based index among train.csv's data rows (line row + 2) and
an optional note. Blank lines are ignored; any other line that is not such a row stops the stage with file and line."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.lib.competition_csv import InputError
from pipeline.lib.files import write_text

HEADER = ("row", "note")
ROW_TEXT = re.compile(r"\d+")


def header_text() -> str:
    """Return the first line of an exclusion list (with its newline)."""
    return ",".join(HEADER) + "\n"


def parse_exclusions(text: str, n_rows: int, name: str = str(paths.EXCLUDE_ROWS)) -> np.ndarray:
    """Return the sorted rows listed in exclusion-list `text`; InputError names the file `name` and the line of a wrong
    header, a malformed line, a row not among the `n_rows` training rows, or a duplicate."""
    lines = text.removeprefix("\ufeff").splitlines()
    if not lines or [f.strip() for f in next(csv.reader(lines[:1]), [])] != list(HEADER):
        raise InputError(name, f"the header must be {','.join(HEADER)!r}, got {(lines or [''])[0]!r}", line=1)
    seen: dict[int, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise InputError(name, f"is not a well-formed CSV line ({exc}): {line!r}", line=number) from exc
        if not 1 <= len(fields) <= len(HEADER):
            raise InputError(name, f"expected 'row' or 'row,note', got {len(fields)} fields: {line!r}", line=number)
        if not ROW_TEXT.fullmatch(value := fields[0].strip()):
            raise InputError(name, f"row {value!r} is not a row index (a whole number 0 or more)", line=number)
        if (row := int(value)) >= n_rows:
            why = f"there are {n_rows} training rows (0-{n_rows - 1}) in {paths.TRAIN_NPZ}"
            raise InputError(name, f"row {row} does not exist: {why}", line=number)
        if row in seen:
            raise InputError(name, f"row {row} is listed twice (first on line {seen[row]})", line=number)
        seen[row] = number
    return np.array(sorted(seen), dtype=np.int64)


def read_exclusions(n_rows: int, path: Path = paths.EXCLUDE_ROWS) -> np.ndarray:
    """Return the sorted training rows the list at `path` excludes (none without the file), checked against `n_rows`."""
    if not Path(path).is_file():
        return np.zeros(0, np.int64)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"is not UTF-8 text: {exc}") from exc
    return parse_exclusions(text, n_rows, str(path))


def kept_mask(n_rows: int, excluded: np.ndarray) -> np.ndarray:
    """Return a boolean mask of the `n_rows` training rows that are not in `excluded`."""
    return ~np.isin(np.arange(n_rows), excluded)


def append_exclusions(entries: list[tuple[int, str]], n_rows: int, path: Path = paths.EXCLUDE_ROWS) -> list[int]:
    """Append the (row, note) `entries` the valid list at `path` (created if missing) lacks; return the rows added."""
    listed = set(read_exclusions(n_rows, path).tolist())
    text = Path(path).read_text(encoding="utf-8") if Path(path).is_file() else header_text()
    added, out = [], io.StringIO()
    for row, note in entries:
        if int(row) not in listed:
            listed.add(int(row))
            added.append(int(row))
            csv.writer(out, lineterminator="\n").writerow([int(row), note])
    if added:
        write_text(Path(path), text + ("" if text.endswith("\n") else "\n") + out.getvalue())
    return added
