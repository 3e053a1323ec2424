"""Builds, validates and compares Kaggle Digit Recognizer submissions (`ImageId,Label`, ids 1..n). The comparison of a
new submission with an earlier one lives here only: predict writes it to reports/submission_diff.json, report quotes
it in summary.md, submit prints it before uploading. `python -m pipeline.lib.submission_file` validates a file."""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import params, paths
from pipeline.lib.cli import fail, stage_parser
from pipeline.lib.competition_csv import InputError

STAMPED_GLOB = "submission-*.csv"  # the timestamped copy predict keeps of every submission


def submission_csv(labels: np.ndarray) -> str:
    """Return the submission CSV text for predicted `labels` of test rows 1..n."""
    return "ImageId,Label\n" + "".join(f"{i},{int(label)}\n" for i, label in enumerate(labels, start=1))


def validate_submission(text: str, expected_rows: int | None, name: str = "submission") -> pd.DataFrame:
    """Return submission CSV `text` parsed; InputError (line, column) unless valid with `expected_rows` (None: any)."""
    if not text.strip():
        raise InputError(name, "is empty")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        raise InputError(name, f"is not a well-formed CSV: {str(exc).strip()}") from exc
    if not isinstance(frame.index, pd.RangeIndex):  # every row has more fields than the header
        raise InputError(name, f"data rows have more fields than the {len(frame.columns)} header columns", line=2)
    if list(frame.columns) != ["ImageId", "Label"]:
        raise InputError(name, f"header is {','.join(map(str, frame.columns))!r}, expected 'ImageId,Label'", line=1)
    expected_rows = len(frame) if expected_rows is None else expected_rows
    for column, low, high in (("ImageId", 1, expected_rows), ("Label", 0, 9)):
        text = frame[column].str.strip()
        numbers = pd.to_numeric(text.where(text.str.fullmatch(r"[+-]?\d+")), errors="coerce")  # NaN: not a whole number
        if (bad := np.flatnonzero(~numbers.between(low, high).to_numpy())).size:
            message = f"{column} {frame[column].iloc[bad[0]]!r} is not an integer {low}-{high}"
            raise InputError(name, message, line=int(bad[0]) + 2, column=column)
    ids = frame["ImageId"].str.strip().astype(np.int64)
    if (twice := np.flatnonzero(ids.duplicated().to_numpy())).size:
        raise InputError(name, f"ImageId {ids[twice[0]]} appears twice", line=int(twice[0]) + 2, column="ImageId")
    if len(frame) != expected_rows:
        missing = sorted(set(range(1, expected_rows + 1)) - set(ids.tolist()))[:5]
        message = f"has {len(frame)} rows, expected {expected_rows}; missing ImageId {missing}"
        raise InputError(name, message, column="ImageId")
    return frame


def validate_submission_file(path: Path, expected_rows: int | None = None) -> pd.DataFrame:
    """Read the submission at `path` and validate it (see validate_submission)."""
    if not Path(path).is_file():
        raise InputError(str(path), "does not exist: run `make run` (or `.venv/bin/dvc repro`) first")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"is not UTF-8 text: {exc}") from exc
    return validate_submission(text, expected_rows, str(path))


def read_labels(path: Path) -> np.ndarray:
    """Return the labels of the valid submission at `path` in ImageId order 1..n (else InputError)."""
    frame = validate_submission_file(path)
    labels = np.zeros(len(frame), np.int64)
    labels[frame["ImageId"].str.strip().astype(np.int64).to_numpy() - 1] = frame["Label"].str.strip().astype(np.int64)
    return labels


def label_counts(labels: np.ndarray) -> dict[str, int]:
    """Return how many rows carry each digit, keyed "0".."9"."""
    return {str(d): int(c) for d, c in enumerate(np.bincount(labels, minlength=10))}


def compare_submissions(old: Path, new: Path) -> dict:
    """Return how the submission at `new` differs from the one at `old`; InputError names an invalid or shorter file."""
    new_labels, old_labels = read_labels(new), read_labels(old)
    if len(old_labels) != len(new_labels):
        raise InputError(str(old), f"has {len(old_labels)} rows but {new} has {len(new_labels)}: not the same test set")
    changed = np.flatnonzero(old_labels != new_labels)
    pairs = Counter(f"{a}->{b}" for a, b in zip(old_labels[changed], new_labels[changed], strict=True))
    changes = dict(sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])))  # most frequent first
    return {"old": str(old), "new": str(new), "rows": len(new_labels), "changed": len(changed),
            "changed_ids": (changed + 1).tolist(), "changes": changes,
            "old_counts": label_counts(old_labels), "new_counts": label_counts(new_labels)}  # fmt: skip


def previous_submission(current: Path, folder: Path = paths.SUBMISSIONS_DIR) -> Path | None:
    """Return the newest timestamped submission in `folder` older than `current`, or None."""
    copies, current = sorted(Path(folder).glob(STAMPED_GLOB)), Path(current)
    if current.parent.resolve() != Path(folder).resolve() or not current.match(STAMPED_GLOB):
        data = current.read_bytes()  # a file such as latest.csv: dated by its newest identical copy
        current = next((c for c in reversed(copies) if c.read_bytes() == data), None)
    older = [c for c in copies if current is None or c.name < current.name]
    return older[-1] if older else None


def diff_with_previous(current: Path, folder: Path = paths.SUBMISSIONS_DIR) -> dict:
    """Return the diff of the submission at `current` against the previous one in `folder`, or a first submission's."""
    if (old := previous_submission(current, folder)) is not None:
        return compare_submissions(old, current)
    labels = read_labels(current)
    return {"old": None, "new": str(current), "rows": len(labels), "changed": None, "new_counts": label_counts(labels)}


def describe_diff(diff: dict) -> str:
    """Return one line on a submission diff: rows changed and the label counts that moved (or why not compared)."""
    if diff.get("error"):
        return f"not compared with {diff['old']} ({diff['error']})"
    if diff.get("old") is None:
        return f"first submission: nothing to compare {diff['new']} with"
    head = f"{diff['changed']} of {diff['rows']} labels changed since {diff['old']}"
    if not diff["changed"]:
        return head
    moved = [f"{d}: {diff['old_counts'][d]}→{n}" for d, n in diff["new_counts"].items() if diff["old_counts"][d] != n]
    top = ", ".join(f"{k.replace('->', '→')} x{v}" for k, v in list(diff["changes"].items())[:3])
    return f"{head} (most frequent {top}" + (f"; label counts {', '.join(moved)})" if moved else ")")


def resolve_earlier(name: Path, folder: Path = paths.SUBMISSIONS_DIR) -> Path:
    """Return the submission `name` (a path, or a file in `folder`); InputError listing the latest ones otherwise."""
    for candidate in (Path(name), Path(folder) / Path(name).name):
        if candidate.is_file():
            return candidate
    recent = ", ".join(p.name for p in sorted(Path(folder).glob(STAMPED_GLOB))[-5:]) or f"none in {folder}"
    raise InputError(str(name), f"does not exist; the latest earlier submissions: {recent}")


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
