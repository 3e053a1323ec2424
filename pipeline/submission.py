"""Builds and validates Kaggle Digit Recognizer submissions (`ImageId,Label`, ids 1..n)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

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
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if list(frame.columns) != HEADER:
        raise InputError(name, f"header is {','.join(map(str, frame.columns))!r}, expected 'ImageId,Label'", line=1)
    for column, low, high in (("ImageId", 1, expected_rows), ("Label", 0, 9)):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values < low) | (values > high) | (values != values.round())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                name, f"{column} {frame[column].iloc[row]!r} is not an integer {low}-{high}", line=row + 2, column=column
            )
    ids = frame["ImageId"].astype(int).to_numpy()
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise InputError(name, f"ImageId {ids[row]} appears twice", line=row + 2, column="ImageId")
    if len(frame) != expected_rows:
        missing = sorted(set(range(1, expected_rows + 1)) - set(ids.tolist()))[:5]
        raise InputError(name, f"has {len(frame)} rows, expected {expected_rows}; missing ImageId {missing}")
    return frame


def validate_submission_file(path: Path, expected_rows: int) -> pd.DataFrame:
    """Read the submission at `path` and validate it (see validate_submission)."""
    if not Path(path).is_file():
        raise InputError(str(path), "does not exist: run `dvc repro` (or `make run`) first")
    return validate_submission(Path(path).read_text(encoding="utf-8-sig"), expected_rows, str(path))
