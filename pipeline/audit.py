"""Stage `audit`: likely label errors among the training rows, found by cleanlab (confident learning:
cleanlab.filter.find_label_issues, ranked by the label quality score audit.rank_by) in models/oof_tta.npz, the
out-of-fold TTA probabilities the submission is made of (from fold models that never saw the row, as cleanlab needs).

Reads models/oof_tta.npz, data/processed/train.npz and data/exclude_rows.csv. Writes reports/label_issues.csv (rank,
row, given and suggested label, self-confidence of the given label, fold, whether the row is already excluded),
reports/label_issues.png (the top audit.grid_images issues) and reports/audit.json (issue count; OOF TTA accuracy and
loss on the rows not excluded; `dvc metrics diff` compares runs).

`python -m pipeline.audit --accept N` instead appends the top N issues of reports/label_issues.csv (or of --issues
FILE) not yet listed to data/exclude_rows.csv, for review in git; the next `dvc repro` trains without them. `row` is
the 0-based index of the training row (line row + 2 of train.csv)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import params, paths
from pipeline.lib import plots, progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.competition_csv import InputError
from pipeline.lib.exclusions import append_exclusions, kept_mask, read_exclusions
from pipeline.lib.files import OutputError, read_npz, require, write_json, write_text
from pipeline.lib.metrics import scores
from pipeline.params import AuditParams

COLUMNS = ["rank", "row", "given_label", "suggested_label", "self_confidence", "fold", "excluded"]


def find_issues(probs: np.ndarray, labels: np.ndarray, cfg: AuditParams) -> np.ndarray:
    """Return the rows cleanlab flags as label issues given OOF `probs` (n, 10) and `labels`, most severe first."""
    from cleanlab.filter import find_label_issues

    labels, probs = np.asarray(labels, np.int64), np.asarray(probs, np.float64)
    ranked = find_label_issues(labels, probs, filter_by=cfg.filter_by, return_indices_ranked_by=cfg.rank_by, n_jobs=1)
    return np.asarray(ranked, dtype=np.int64)


def issue_table(
    issues: np.ndarray, probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, excluded: np.ndarray
) -> pd.DataFrame:
    """Return one row per issue (in `issues` order) with the COLUMNS, self-confidence by cleanlab.rank."""
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    quality = get_label_quality_scores(labels[issues], np.asarray(probs[issues], np.float64)) if len(issues) else []
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(issues) + 1),
            "row": issues,
            "given_label": labels[issues],
            "suggested_label": np.argmax(probs[issues], axis=1),
            "self_confidence": np.asarray(quality, np.float64),  # cleanlab refuses an empty set: none then
            "fold": np.asarray(folds)[issues].astype(np.int64),
            "excluded": np.isin(issues, excluded),
        },
        columns=COLUMNS,
    )


def run_audit(cfg: AuditParams) -> dict:
    """Audit models/oof_tta.npz, write the issue table, its grid and reports/audit.json; return the summary."""
    oof = read_npz(require(paths.OOF_TTA_NPZ, "predict"))
    images = read_npz(require(paths.TRAIN_NPZ, "ingest"))["x"]
    if len(images) != len(oof["y"]):
        raise ValueError(f"{paths.OOF_TTA_NPZ} has {len(oof['y'])} rows but {paths.TRAIN_NPZ} {len(images)}: rerun")
    excluded = read_exclusions(len(oof["y"]))
    table = issue_table(find_issues(oof["probs"], oof["y"], cfg), oof["probs"], oof["y"], oof["fold"], excluded)
    write_text(paths.LABEL_ISSUES_CSV, table.to_csv(index=False, lineterminator="\n", float_format="%.4g"))
    top = table.head(cfg.grid_images)
    rows, given, suggested, quality = (top[c].to_numpy() for c in COLUMNS[1:5])
    plots.label_issue_grid(images[rows], rows, given, suggested, quality, paths.LABEL_ISSUES_PNG)
    keep = kept_mask(len(oof["y"]), excluded)
    summary = {
        "issues": len(table),
        "issues_excluded": int(table["excluded"].sum()),
        "rows": len(oof["y"]),
        "excluded": len(excluded),
        "kept_rows": {"rows": int(keep.sum()), **scores(oof["probs"][keep], oof["y"][keep])},
    }
    write_json(paths.AUDIT_JSON, summary)
    return summary


def accept(count: int, issues: Path, n_rows: int, exclude: Path = paths.EXCLUDE_ROWS) -> list[int]:
    """Append the top `count` issues of the table at `issues` that the list at `exclude` lacks; return them."""
    if not Path(issues).is_file():
        raise InputError(str(issues), "does not exist: run `dvc repro audit` (or `dvc repro`) first")
    table = pd.read_csv(issues)
    missing = [c for c in ("row", "given_label", "suggested_label", "self_confidence") if c not in table.columns]
    if missing:
        raise InputError(str(issues), f"is not a label issue table: no column {missing[0]!r}", line=1)
    notes = "cleanlab: given {} -> suggested {} (self-confidence {:.2g})"
    entries = [(int(r.row), notes.format(int(r.given_label), int(r.suggested_label), float(r.self_confidence)))
               for r in table.head(count).itertuples()]  # fmt: skip
    return append_exclusions(entries, n_rows, exclude)


@reports_errors("audit")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI; audit the OOF probabilities, or with --accept N add the top N issues to the exclusion list."""
    cfg = params.load("audit")
    parser = stage_parser("audit", __doc__)
    parser.add_argument("--accept", type=int, metavar="N", help=f"append the top N issues to {paths.EXCLUDE_ROWS}")
    parser.add_argument("--issues", type=Path, default=paths.LABEL_ISSUES_CSV, help="with --accept: the issue table")
    args = parser.parse_args(argv)
    if args.accept is not None and args.accept < 0:
        return fail("audit", f"--accept takes a count of 0 or more, got {args.accept}")
    start = time.perf_counter()
    try:
        if args.accept is not None:
            added = accept(args.accept, args.issues, len(read_npz(paths.TRAIN_NPZ)["y"]))
            print(
                f"audit: appended {len(added)} rows to {paths.EXCLUDE_ROWS} (the top {args.accept} issues of "
                f"{args.issues} not yet listed): review them (git diff), then `dvc repro` trains without them"
            )
            return 0
        summary = run_audit(cfg)
    except (InputError, OutputError, FileNotFoundError, ValueError) as exc:
        return fail("audit", exc)
    kept, excluded = summary["kept_rows"], summary["excluded"]
    done = f"{summary['issues']} likely label issues ({summary['issues_excluded']} of them excluded)"
    done += (
        f"; {excluded} rows excluded, OOF TTA accuracy on the other {kept['rows']} {kept['accuracy']:.5f}"
        if excluded
        else "; no row excluded"
    )
    progress.finish("audit", start, None, f"{done} -> {paths.LABEL_ISSUES_CSV}, {paths.LABEL_ISSUES_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
