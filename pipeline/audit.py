"""Stage `audit`: likely label errors among the training rows, found by cleanlab (confident learning:
cleanlab.filter.find_label_issues, ranked by cleanlab's label quality score audit.rank_by).

It audits models/oof_tta.npz, the out-of-fold (OOF) probabilities the submission is made of: predict's
TTA views averaged and the models blended. Every row's probabilities come from fold models that never
saw the row or its augmented copies, as cleanlab requires, and averaging views and models makes them
better calibrated than one model's single view (models/oof.npz), so fewer clean rows look doubtful.

Reads models/oof_tta.npz, data/processed/train.npz, data/exclude_rows.csv and the fold metadata in
models/folds/. Writes reports/label_issues.csv (rank, row, given label, suggested label, self-confidence
of the given label, fold, whether the row is already excluded), reports/label_issues.png (the top
audit.grid_images issues), reports/audit.json (issue count; OOF accuracy on the rows not excluded, now
and in the baseline) and models/oof_baseline.npz: the OOF probabilities of the last run with an empty
exclusion list, kept while rows are excluded so the effect is measured on the same rows.

`python -m pipeline.audit --accept N` instead appends the top N issues of reports/label_issues.csv (or
of --issues FILE) that are not yet listed to data/exclude_rows.csv, for review in git; the next
`dvc repro` trains without them. The `row` of both files is the 0-based index of the training row
(line row + 2 of train.csv)."""

from __future__ import annotations

import io
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
from pipeline.lib.files import OutputError, read_json, read_npz, require, write_json, write_npz, write_text
from pipeline.lib.fitting import fingerprint_of, scores
from pipeline.params import AuditParams

COLUMNS = ["rank", "row", "given_label", "suggested_label", "self_confidence", "fold", "excluded"]


def find_issues(probs: np.ndarray, labels: np.ndarray, cfg: AuditParams) -> np.ndarray:
    """Return the rows cleanlab flags as likely label issues given OOF `probs` (n, 10) and the given `labels`,
    most severe first (lowest audit.rank_by label quality score)."""
    from cleanlab.filter import find_label_issues

    return np.asarray(
        find_label_issues(
            np.asarray(labels, np.int64),
            np.asarray(probs, np.float64),
            filter_by=cfg.filter_by,
            return_indices_ranked_by=cfg.rank_by,
            n_jobs=1,
        ),
        dtype=np.int64,
    )


def issue_table(
    issues: np.ndarray, probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, excluded: np.ndarray
) -> pd.DataFrame:
    """Return one row per issue (in `issues` order): rank, row, given and suggested label, the self-confidence
    of the given label (cleanlab.rank), fold and whether the row is in the exclusion list."""
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    confidence = (
        get_label_quality_scores(labels[issues], np.asarray(probs[issues], np.float64)) if len(issues) else []
    )  # cleanlab refuses an empty set
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(issues) + 1),
            "row": issues,
            "given_label": labels[issues],
            "suggested_label": np.argmax(probs[issues], axis=1),
            "self_confidence": np.asarray(confidence, np.float64),
            "fold": np.asarray(folds)[issues].astype(np.int64),
            "excluded": np.isin(issues, excluded),
        },
        columns=COLUMNS,
    )


def setup_key(models: list[str], predict: params.PredictParams) -> str:
    """Return what identifies the run's settings and data whatever rows are excluded: every fold's base
    fingerprint of each model (models/folds/<model>/fold{k}.json) and predict's TTA and blend settings."""
    bases = {}
    for model in models:
        metas = [read_json(path) for path in sorted(paths.model_dir(model).glob("fold*.json"))]
        bases[model] = [meta.get("base_fingerprint") or meta.get("fingerprint") for meta in metas]
    return fingerprint_of(bases, predict.tta_views, predict.blend_by)


def baseline_probs(
    oof: dict, excluded: np.ndarray, setup: str, path: Path = paths.OOF_BASELINE_NPZ
) -> np.ndarray | None:
    """Update the baseline at `path` and return its OOF probabilities when they can be compared with `oof`'s.
    With no row excluded, `oof` itself becomes the baseline; otherwise the stored one is used if it comes from
    the same settings (`setup`) and rows, else None (it is kept as it is, or written empty when missing)."""
    if not len(excluded):
        write_npz(path, probs=oof["probs"], y=oof["y"], fold=oof["fold"], setup=np.array(setup))
        return oof["probs"]
    stored = read_npz(path) if Path(path).is_file() else None
    if stored is None:
        empty = np.zeros((0, oof["probs"].shape[1]), np.float32)
        write_npz(path, probs=empty, y=oof["y"][:0], fold=oof["fold"][:0], setup=np.array(""))
        return None
    same = str(stored["setup"]) == setup and np.array_equal(stored["y"], oof["y"])
    return stored["probs"] if same and np.array_equal(stored["fold"], oof["fold"]) else None


def audit_summary(table: pd.DataFrame, oof: dict, excluded: np.ndarray, baseline: np.ndarray | None) -> dict:
    """Return reports/audit.json: the issue count and the OOF accuracy and loss on the rows not excluded, now and
    in the baseline run (None when there is no comparable one)."""
    keep = kept_mask(len(oof["y"]), excluded)
    before = scores(baseline[keep], oof["y"][keep]) if baseline is not None else None
    return {
        "issues": len(table),
        "issues_excluded": int(table["excluded"].sum()),
        "rows": len(oof["y"]),
        "excluded": len(excluded),
        "kept_rows": {"rows": int(keep.sum()), **scores(oof["probs"][keep], oof["y"][keep])},
        "baseline_kept_rows": before,
    }


def run_audit(cfg: AuditParams) -> dict:
    """Audit models/oof_tta.npz and write the issue table and grid, the baseline and reports/audit.json; return
    the summary."""
    oof = read_npz(require(paths.OOF_TTA_NPZ, "predict"))
    images = read_npz(require(paths.TRAIN_NPZ, "ingest"))["x"]
    if len(images) != len(oof["y"]):
        raise ValueError(f"{paths.OOF_TTA_NPZ} has {len(oof['y'])} rows but {paths.TRAIN_NPZ} {len(images)}: rerun")
    excluded = read_exclusions(len(oof["y"]))
    table = issue_table(find_issues(oof["probs"], oof["y"], cfg), oof["probs"], oof["y"], oof["fold"], excluded)
    write_text(paths.LABEL_ISSUES_CSV, table.to_csv(index=False, lineterminator="\n", float_format="%.4g"))
    top = table.head(cfg.grid_images)
    rows = top["row"].to_numpy()
    plots.label_issue_grid(
        images[rows],
        rows,
        top["given_label"].to_numpy(),
        top["suggested_label"].to_numpy(),
        top["self_confidence"].to_numpy(),
        paths.LABEL_ISSUES_PNG,
    )
    setup = setup_key(params.load("model").members(), params.load("predict"))
    summary = audit_summary(table, oof, excluded, baseline_probs(oof, excluded, setup))
    write_json(paths.AUDIT_JSON, summary)
    return summary


def describe_audit(summary: dict) -> str:
    """Return one line on the audit: issues found and, with rows excluded, the accuracy before and after."""
    text = f"{summary['issues']} likely label issues ({summary['issues_excluded']} of them excluded)"
    if not summary["excluded"]:
        return text + "; no row excluded"
    kept, before = summary["kept_rows"], summary["baseline_kept_rows"]
    text += (
        f"; {summary['excluded']} rows excluded: OOF TTA accuracy on the other {kept['rows']} {kept['accuracy']:.5f}"
    )
    if before is None:
        return text + " (no run without exclusions with these settings to compare with)"
    return text + f", {before['accuracy']:.5f} in the run without exclusions"


def read_issue_table(path: Path) -> pd.DataFrame:
    """Return the label issue table at `path` (reports/label_issues.csv or a saved copy), checking its columns."""
    if not Path(path).is_file():
        raise InputError(str(path), "does not exist: run `dvc repro audit` (or `dvc repro`) first")
    table = pd.read_csv(io.StringIO(Path(path).read_text(encoding="utf-8")))
    missing = [c for c in ("row", "given_label", "suggested_label", "self_confidence") if c not in table.columns]
    if missing:
        raise InputError(str(path), f"is not a label issue table: no column {missing[0]!r}", line=1)
    return table


def accept(count: int, issues: Path, n_rows: int, exclude: Path = paths.EXCLUDE_ROWS) -> list[int]:
    """Append the top `count` issues of the table at `issues` that the list at `exclude` lacks; return them."""
    top = read_issue_table(issues).head(count)
    entries = [
        (
            int(r.row),
            f"cleanlab: given {int(r.given_label)} -> suggested {int(r.suggested_label)} "
            f"(self-confidence {float(r.self_confidence):.2g})",
        )
        for r in top.itertuples()
    ]
    return append_exclusions(entries, n_rows, exclude)


@reports_errors("audit")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI; audit the OOF probabilities, or with --accept N add the top N issues to the exclusion list."""
    cfg = params.load("audit")
    parser = stage_parser("audit", __doc__)
    parser.add_argument("--accept", type=int, metavar="N", help=f"append the top N issues to {paths.EXCLUDE_ROWS}")
    parser.add_argument(
        "--issues",
        type=Path,
        default=paths.LABEL_ISSUES_CSV,
        help="with --accept: the issue table to take them from (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.accept is not None:
        if args.accept < 0:
            return fail("audit", f"--accept takes a count of 0 or more, got {args.accept}")
        try:
            added = accept(args.accept, args.issues, len(read_npz(paths.TRAIN_NPZ)["y"]))
        except (InputError, OutputError, FileNotFoundError) as exc:
            return fail("audit", exc)
        print(
            f"audit: appended {len(added)} rows to {paths.EXCLUDE_ROWS} (the top {args.accept} issues of "
            f"{args.issues} not yet listed): review them (git diff), then `dvc repro` trains without them"
        )
        return 0
    start = time.perf_counter()
    try:
        summary = run_audit(cfg)
    except (InputError, OutputError, FileNotFoundError, ValueError) as exc:
        return fail("audit", exc)
    progress.finish(
        "audit", start, None, f"{describe_audit(summary)} -> {paths.LABEL_ISSUES_CSV}, {paths.LABEL_ISSUES_PNG}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
