"""Builds and validates Kaggle Digit Recognizer submissions (`ImageId,Label`, ids 1..n)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import params, paths
from pipeline.cli import fail, stage_parser
from pipeline.dataio import InputError

HEADER = ["ImageId", "Label"]


def submission_csv(labels: np.ndarray) -> str:
    """Return the submission CSV text for predicted `labels` of test rows 1..n."""
    ids = np.arange(1, len(labels) + 1)
    body = "\n".join(f"{i},{int(label)}" for i, label in zip(ids, labels, strict=True))
    return "ImageId,Label\n" + body + "\n"


def validate_submission(text: str, expected_rows: int, name: str = "submission") -> pd.DataFrame:
    """Parse submission CSV `text` and raise InputError (with line and column) unless it is valid."""
    if not text.strip():
        raise InputError(name, "is empty")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise InputError(name, f"is not a well-formed CSV: {str(exc).strip()}") from exc
    if not isinstance(frame.index, pd.RangeIndex):  # every row has more fields than the header
        raise InputError(name, f"data rows have more fields than the {len(frame.columns)} header columns", line=2)
    if list(frame.columns) != HEADER:
        raise InputError(name, f"header is {','.join(map(str, frame.columns))!r}, expected 'ImageId,Label'", line=1)
    numbers = {}
    for column, low, high in (("ImageId", 1, expected_rows), ("Label", 0, 9)):
        text_values = frame[column].str.strip()
        is_int = text_values.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
        values = text_values.where(is_int, "0").astype(float).to_numpy()
        bad = ~is_int | (values < low) | (values > high)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                name,
                f"{column} {frame[column].iloc[row]!r} is not an integer {low}-{high}",
                line=row + 2,
                column=column,
            )
        numbers[column] = values.astype(np.int64)
    ids = numbers["ImageId"]
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise InputError(name, f"ImageId {ids[row]} appears twice", line=row + 2, column="ImageId")
    if len(frame) != expected_rows:
        missing = sorted(set(range(1, expected_rows + 1)) - set(ids.tolist()))[:5]
        raise InputError(
            name, f"has {len(frame)} rows, expected {expected_rows}; missing ImageId {missing}", column="ImageId"
        )
    return frame


def validate_submission_file(path: Path, expected_rows: int) -> pd.DataFrame:
    """Read the submission at `path` and validate it (see validate_submission)."""
    if not Path(path).is_file():
        raise InputError(str(path), "does not exist: run `dvc repro` (or `make run`) first")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"is not UTF-8 text: {exc}") from exc
    return validate_submission(text, expected_rows, str(path))


def main(argv: list[str] | None = None) -> int:
    """Validate a submission file before uploading it; exit 2 naming the line and column of the first problem."""
    parser = stage_parser("submission", main.__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=paths.LATEST_SUBMISSION, help="submission CSV")
    parser.add_argument("--rows", type=int, help="expected rows (default: ingest.expected_test_rows in params.yaml)")
    args = parser.parse_args(argv)
    rows = args.rows if args.rows is not None else params.load("ingest").expected_test_rows
    try:
        frame = validate_submission_file(args.path, rows)
    except InputError as exc:
        return fail("submission", exc)
    print(f"submission: {args.path} is valid ({len(frame)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
