"""Builds, validates and compares Kaggle Digit Recognizer submissions (`ImageId,Label`, ids 1..n).

The comparison of a new submission with an earlier one (rows changed, old and new label counts) lives
here only: predict writes it to reports/submission_diff.json after every run, report quotes it in
summary.md, and submit prints it before uploading. `python -m pipeline.lib.submission_file` validates a file."""

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

HEADER = ["ImageId", "Label"]
STAMPED_GLOB = "submission-*.csv"  # the timestamped copy predict keeps of every submission
N_CLASSES = 10


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
        raise InputError(str(path), "does not exist: run `make run` (or `.venv/bin/dvc repro`) first")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(str(path), f"is not UTF-8 text: {exc}") from exc
    return validate_submission(text, expected_rows, str(path))


def read_labels(path: Path) -> np.ndarray:
    """Return the labels of the submission at `path` in ImageId order 1..n, after validating it (InputError
    naming the file, line and column otherwise)."""
    if not Path(path).is_file():
        raise InputError(str(path), "does not exist")
    text = Path(path).read_text(encoding="utf-8-sig")
    frame = validate_submission(text, max(0, sum(1 for line in text.splitlines() if line.strip()) - 1), str(path))
    labels = np.zeros(len(frame), np.int64)
    labels[frame["ImageId"].astype(np.int64).to_numpy() - 1] = frame["Label"].astype(np.int64).to_numpy()
    return labels


def label_counts(labels: np.ndarray) -> dict[str, int]:
    """Return how many rows carry each digit, keyed "0".."9"."""
    return {str(d): int(c) for d, c in enumerate(np.bincount(labels, minlength=N_CLASSES))}


def compare_submissions(old: Path, new: Path) -> dict:
    """Return how the submission at `new` differs from the one at `old`: the rows changed, their ImageIds, each
    (old -> new) change's count and both label counts; raise InputError naming the file that is invalid, or `old`
    when it holds another number of rows than `new`."""
    new_labels, old_labels = read_labels(new), read_labels(old)
    if len(old_labels) != len(new_labels):
        raise InputError(str(old), f"has {len(old_labels)} rows but {new} has {len(new_labels)}: not the same test set")
    changed = np.flatnonzero(old_labels != new_labels)
    pairs = Counter(f"{a}->{b}" for a, b in zip(old_labels[changed], new_labels[changed], strict=True))
    return {
        "old": str(old),
        "new": str(new),
        "rows": len(new_labels),
        "changed": len(changed),
        "changed_ids": (changed + 1).tolist(),
        "changes": dict(sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))),
        "old_counts": label_counts(old_labels),
        "new_counts": label_counts(new_labels),
    }


def previous_submission(current: Path, folder: Path = paths.SUBMISSIONS_DIR) -> Path | None:
    """Return the newest timestamped submission in `folder` made before `current` (itself a timestamped copy, or
    a file such as latest.csv whose newest identical copy there marks its time); None when there is none."""
    copies = sorted(Path(folder).glob(STAMPED_GLOB))
    current = Path(current)
    if current.parent.resolve() == Path(folder).resolve() and current.match(STAMPED_GLOB):
        cut = current.name
    else:
        data = current.read_bytes()
        own = [c for c in copies if c.read_bytes() == data]
        cut = own[-1].name if own else None
    older = [c for c in copies if cut is None or c.name < cut]
    return older[-1] if older else None


def diff_with_previous(current: Path, folder: Path = paths.SUBMISSIONS_DIR) -> dict:
    """Return the diff of the submission at `current` against the previous one in `folder` (see
    previous_submission), or, when there is none, the record of a first submission."""
    old = previous_submission(current, folder)
    if old is not None:
        return compare_submissions(old, current)
    labels = read_labels(current)
    return {"old": None, "new": str(current), "rows": len(labels), "changed": None, "new_counts": label_counts(labels)}


def describe_diff(diff: dict) -> str:
    """Return one line summing up a submission diff: rows changed and the label counts that moved (or why the
    previous submission could not be compared: predict records that, not fatal)."""
    if diff.get("error"):
        return f"not compared with {diff['old']} ({diff['error']})"
    if diff.get("old") is None:
        return f"first submission: nothing to compare {diff['new']} with"
    head = f"{diff['changed']} of {diff['rows']} labels changed since {diff['old']}"
    if not diff["changed"]:
        return head
    moved = [
        f"{d}: {diff['old_counts'][d]}→{diff['new_counts'][d]}"
        for d in diff["new_counts"]
        if diff["old_counts"][d] != diff["new_counts"][d]
    ]
    top = ", ".join(f"{k.replace('->', '→')} x{v}" for k, v in list(diff["changes"].items())[:3])
    return f"{head} (most frequent {top}" + (f"; label counts {', '.join(moved)})" if moved else ")")


def resolve_earlier(name: Path, folder: Path = paths.SUBMISSIONS_DIR) -> Path:
    """Return the submission `name` (a path, or a file name in `folder`); raise InputError listing the earlier
    submissions when neither exists."""
    for candidate in (Path(name), Path(folder) / Path(name).name):
        if candidate.is_file():
            return candidate
    recent = [p.name for p in sorted(Path(folder).glob(STAMPED_GLOB))[-5:]]
    listing = ", ".join(recent) if recent else f"none in {folder}"
    raise InputError(str(name), f"does not exist; the latest earlier submissions: {listing}")


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
