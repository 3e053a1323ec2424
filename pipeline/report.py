"""Stage `report`: what a Kaggler reads after every `dvc repro`.

Reads data/processed/{train,test}.npz and best_params.json, models/oof_tta.npz (the submission's OOF
predictions: TTA views averaged and, for an ensemble, the cross-fitted blend), models/test_probs.npz,
models/folds/<model.name>/fold{k}.json, reports/metrics.json, reports/predict.json, reports/audit.json,
reports/submission_diff.json and reports/timings/*.json.
Writes reports/summary.md (the submission's OOF accuracy, class counts, chosen parameters, fold table,
model.name's OOF accuracy with and without TTA, each ensemble member's worth, the most frequent
confusions, the label audit, wall time per stage, the submission and how it differs from the previous
one), reports/confusion.csv (one `actual,predicted` row per OOF prediction of the submission's model, for
DVC's confusion template), reports/wrong.png (its most confidently wrong OOF images) and
reports/test_grid.png (test images with their predicted labels)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from pipeline import params, paths
from pipeline.lib import plots
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.files import MissingInput, OutputError, read_json, read_npz, require, write_text
from pipeline.lib.progress import format_seconds
from pipeline.lib.submission_file import describe_diff
from pipeline.params import AuditParams, ReportParams

STAGES = ("ingest", "augment", "tune", "train", "predict", "audit")
N_CLASSES = 10


def confusion_pairs(matrix: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """Return the `k` most frequent mistakes as (actual, predicted, count), most frequent first."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = [(int(i // N_CLASSES), int(i % N_CLASSES), int(off.flat[i])) for i in order]
    return [p for p in pairs if p[2] > 0]


def confusion_csv(actual: np.ndarray, predicted: np.ndarray) -> str:
    """Return `actual,predicted` CSV text with one row per prediction (DVC's confusion template)."""
    body = "\n".join(f"{int(a)},{int(p)}" for a, p in zip(actual, predicted, strict=True))
    return "actual,predicted\n" + body + ("\n" if body else "")


def most_confident_wrong(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Return the row indices of the `k` wrong predictions with the highest predicted probability."""
    predicted = np.argmax(probs, axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:k]]


def read_timings(folder: Path = paths.TIMINGS_DIR, runs: Path = paths.RUNS_DIR) -> dict[str, dict]:
    """Return every stage timing recorded in `folder`, with its run's device and finish time from `runs`, pipeline
    stages first, keyed by stage."""
    found = {p.stem: read_json(p) for p in sorted(Path(folder).glob("*.json"))} if Path(folder).is_dir() else {}
    for stage, timing in found.items():
        run = Path(runs) / f"{stage}.json"
        timing.update(read_json(run) if run.is_file() else {})
    order = [s for s in STAGES if s in found] + sorted(s for s in found if s not in STAGES)
    return {s: found[s] for s in order}


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """Return a Markdown table of `rows` under `header`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def counts_section(train_labels: np.ndarray, test_rows: int) -> str:
    """Return the data section: training rows per class and the test row count."""
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=N_CLASSES)
    table = md_table(["", *map(str, range(N_CLASSES)), "total"], [["train rows", *counts.tolist(), int(counts.sum())]])
    return f"## Data\n\n{table}\n\nTest rows: {test_rows}."


def params_section(settings: dict | None, tuned: dict | None, tta_views: int | None) -> str:
    """Return the parameters section: what train used, and where tune's values came from."""
    lines = ["## Chosen parameters", ""]
    if settings:
        values = [[k, f"`{v:.4g}`" if isinstance(v, float) else f"`{v}`"] for k, v in settings.items()]
        lines += [md_table(["parameter", "value"], values), ""]
    else:
        lines += ["Training settings not found (models/folds/<model>/fold0.json).", ""]
    if tuned and tuned.get("params"):
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned["params"].items())
        lines.append(
            f"Tuned by Optuna study `{tuned.get('study')}`: best trial {tuned.get('trial')} of "
            f"{tuned.get('finished_trials')} finished, validation accuracy {tuned.get('value', float('nan')):.5f}; "
            f"tuned: {values}."
        )
    else:
        lines.append("No tuned parameters (best_params.json missing or empty): train used params.yaml.")
    if tta_views is not None:
        lines.append(f"Test-time augmentation: the original plus {tta_views} views.")
    return "\n".join(lines)


def fold_rows(metrics: dict, metas: dict[int, dict], folds: np.ndarray) -> list[list[Any]]:
    """Return one table row per fold: validation rows, accuracy, loss, epochs and training time."""
    rows = []
    for name, m in sorted(metrics.get("folds", {}).items(), key=lambda kv: int(kv[0].removeprefix("fold"))):
        k = int(name.removeprefix("fold"))
        meta = metas.get(k, {})
        rows.append(
            [
                k,
                int(np.sum(folds == k)),
                f"{m['accuracy']:.5f}",
                f"{m['loss']:.4f}",
                meta.get("epochs", "-"),
                format_seconds(meta.get("seconds")),
            ]
        )
    return rows


def folds_section(metrics: dict, metas: dict[int, dict], folds: np.ndarray) -> str:
    """Return the fold table with the overall out-of-fold line."""
    rows = fold_rows(metrics, metas, folds)
    oof = metrics.get("oof", {})
    if oof:
        rows.append(["**all (OOF)**", len(folds), f"**{oof['accuracy']:.5f}**", f"{oof['loss']:.4f}", "", ""])
    untuned = metrics.get("oof_untuned_rows", {})
    if untuned and untuned["rows"] < len(folds):
        label = "OOF without the fold that scored tuning"
        rows.append([label, untuned["rows"], f"{untuned['accuracy']:.5f}", f"{untuned['loss']:.4f}", "", ""])
    kept = metrics.get("oof_kept_rows", {})
    if kept and kept["excluded"]:
        label = f"OOF without the {kept['excluded']} excluded rows"
        rows.append([label, kept["rows"], f"{kept['accuracy']:.5f}", f"{kept['loss']:.4f}", "", ""])
    header = ["fold", "validation rows", "accuracy", "loss", "epochs", "training time"]
    return "## Folds\n\n" + md_table(header, rows)


def accuracy_section(predict: dict, blend_by: str, minutes: dict[str, float] | None = None) -> str:
    """Return OOF accuracy and loss without and with test-time augmentation, and an ensemble's blend (weights chosen by
    OOF `blend_by`)."""
    if not predict:
        return "## Out-of-fold accuracy\n\nreports/predict.json not found: run the predict stage."
    rows = [
        ["without TTA", f"{predict['oof_accuracy']:.5f}", f"{predict['oof_loss']:.4f}"],
        [
            f"with TTA ({predict.get('tta_views', '?')} views)",
            f"{predict['oof_tta_accuracy']:.5f}",
            f"{predict['oof_tta_loss']:.4f}",
        ],
    ]
    return (
        "## Out-of-fold accuracy\n\n"
        + md_table(["", "accuracy", "loss"], rows)
        + f"\n\nTTA gain: {predict['tta_gain']:+.5f} ({predict['tta_gain'] * 100:+.3f} points)."
        + blend_line(predict, blend_by, minutes)
    )


def blend_line(predict: dict, blend_by: str, minutes: dict[str, float] | None = None) -> str:
    """Return the ensemble's weights (chosen by OOF `blend_by`) and OOF accuracy (cross-fitted, then in-sample), with
    each member's worth per training minute (`minutes`: its folds' training time), or "" for a single model."""
    weights = predict.get("weights") or {}
    if len(weights) < 2:
        return ""
    parts = ", ".join(f"{m} {w:.3f}" for m, w in weights.items())
    return (
        f"\n\nThe submission blends {parts} (weights chosen by OOF {blend_by}); blend OOF accuracy "
        f"{predict['oof_blend_accuracy']:.5f} with TTA, each fold's rows blended with weights chosen on the other "
        f"folds' rows only ({predict['oof_blend_accuracy_in_sample']:.5f} in-sample, with the submission's weights "
        "fitted on these rows). The table above is model.name alone." + members_table(predict, minutes or {})
    )


def members_table(predict: dict, minutes: dict[str, float]) -> str:
    """Return a table of each ensemble member's OOF TTA accuracy, the cross-fitted blend without it, what it adds, its
    folds' training minutes (`minutes`) and what it adds per training hour, or ""."""
    without = predict.get("without") or {}
    if not without:
        return ""
    rows = [
        [
            m,
            f"{predict['models'][m]['oof_tta_accuracy']:.5f}",
            f"{w['oof_blend_accuracy']:.5f}",
            f"{w['member_gain']:+.5f}",
            f"{minutes[m]:.1f}" if minutes.get(m) else "?",
            f"{w['member_gain'] * 60 / minutes[m]:+.5f}" if minutes.get(m) else "?",
        ]
        for m, w in without.items()
    ]
    head = ["member", "alone (OOF, TTA)", "blend without it", "what it adds", "training minutes", "adds per hour"]
    return "\n\n" + md_table(head, rows)


def training_minutes(models: list[str], folds: list[int]) -> dict[str, float]:
    """Return each of `models`' training minutes, summed over its fold files' metadata (folds without one: skipped)."""
    metas = {m: [paths.fold_meta(m, k) for k in folds] for m in models}
    return {m: sum(read_json(p)["seconds"] for p in files if p.is_file()) / 60 for m, files in metas.items()}


def confusion_section(pairs: list[tuple[int, int, int]], wrong: int, total: int) -> str:
    """Return the most frequent (actual, predicted) confusions of the OOF predictions."""
    head = f"## Confusions\n\n{wrong} of {total} out-of-fold predictions are wrong"
    if not pairs:
        return head + "."
    table = md_table(["actual", "predicted as", "count"], [list(p) for p in pairs])
    return (
        f"{head}; the most frequent mistakes (full matrix: `dvc plots show reports/confusion.csv`, "
        f"the worst images: reports/wrong.png):\n\n{table}"
    )


def audit_section(audit: dict, cfg: AuditParams) -> str:
    """Return the label audit (reports/audit.json, run with `cfg`): cleanlab's issue count, the exclusion list and,
    with rows excluded, the OOF TTA accuracy on the rows not excluded in the run without exclusions (before) and now
    (after)."""
    if not audit:
        return "## Label audit\n\nreports/audit.json not found: run the audit stage."
    text = (
        f"## Label audit\n\ncleanlab finds **{audit['issues']}** likely label issues among the {audit['rows']} "
        f"training rows (filter {cfg.filter_by}, ranked by {cfg.rank_by}): "
        "[label_issues.csv](label_issues.csv), the top ones drawn in [label_issues.png](label_issues.png)."
    )
    accept = (
        "Exclude the top N from training: `python -m pipeline.audit --accept N`, review "
        "`git diff data/exclude_rows.csv`, then `dvc repro`."
    )
    if not audit["excluded"]:
        return f"{text}\n\nNo row is excluded (data/exclude_rows.csv). {accept}"
    kept, before = audit["kept_rows"], audit["baseline_kept_rows"]
    rows = [["after (this run)", f"{kept['accuracy']:.5f}", f"{kept['loss']:.4f}"]]
    if before is not None:
        rows.insert(0, ["before (the run without exclusions)", f"{before['accuracy']:.5f}", f"{before['loss']:.4f}"])
    missing = "" if before is not None else "\n\nNo run without exclusions with these settings to compare with."
    return (
        f"{text}\n\n{audit['excluded']} rows are excluded from training (data/exclude_rows.csv; "
        f"{audit['issues_excluded']} of them among the issues above). OOF TTA accuracy on the other "
        f"{kept['rows']} rows, the same rows before and after:\n\n" + md_table(["", "accuracy", "loss"], rows) + missing
    )


def timings_section(timings: dict[str, dict]) -> str:
    """Return the wall time of every stage that recorded one, with the device it ran on."""
    if not timings:
        return "## Wall time per stage\n\nNo timings recorded in reports/timings/."
    rows = [
        [s, format_seconds(t.get("seconds")), t.get("device") or "-", t.get("finished_at", "-")]
        for s, t in timings.items()
    ]
    missing = [s for s in STAGES if s not in timings]
    total = sum(float(t.get("seconds") or 0) for t in timings.values())
    rows.append(["**total**", f"**{format_seconds(total)}**", "", ""])
    note = f"\n\nNo timing recorded for: {', '.join(missing)}." if missing else ""
    return "## Wall time per stage\n\n" + md_table(["stage", "wall time", "device", "finished (UTC)"], rows) + note


def diff_line(diff: dict) -> str:
    """Return the sentence on how the submission differs from the previous one (reports/submission_diff.json)."""
    if not diff:
        return "reports/submission_diff.json not found: run the predict stage."
    if diff.get("error"):
        return f"Not compared with the previous submission {diff['old']}: {diff['error']}"
    return f"Against the previous submission: {describe_diff(diff)} ([submission_diff.png](submission_diff.png))."


def submission_section(path: Path, rows: int | None, diff: dict | None = None) -> str:
    """Return where the submission is, how it differs from the previous one and how to send it."""
    if rows is None:
        return f"## Submission\n\n{path} not found: run the predict stage."
    return (
        f"## Submission\n\n`{path}` ({rows} rows). {diff_line(diff or {})}\n\nSend it with\n\n"
        f'    python -m pipeline.tools.submit -m "your message"\n\n'
        f'(the same as `kaggle competitions submit -c digit-recognizer -f {path} -m "your message"`).'
    )


def summary_markdown(facts: dict[str, Any], cfg: ReportParams) -> str:
    """Return reports/summary.md for the gathered `facts` (see gather)."""
    oof_probs, labels = facts["oof"]["probs"], facts["oof"]["y"]
    predicted = np.argmax(oof_probs, axis=1)
    matrix = confusion_matrix(labels, predicted, labels=range(N_CLASSES))
    predict = facts["predict"]
    blended = len(predict.get("weights") or {}) > 1
    what = "the ensemble's cross-fitted blend" if blended else "model.name"
    sections = [
        f"# Digit Recognizer: run summary\n\nOut-of-fold accuracy of the submission's predictions "
        f"**{float(np.mean(predicted == labels)):.5f}** ({what}, TTA views averaged; {len(labels)} training rows, "
        f"{len(facts['metrics'].get('folds', {}))} folds).",
        counts_section(facts["train"]["y"], facts["test_rows"]),
        params_section(facts["settings"], facts["tuned"], predict.get("tta_views")),
        folds_section(facts["metrics"], facts["metas"], facts["train"]["fold"]),
        accuracy_section(predict, facts["blend_by"], facts.get("minutes")),
        confusion_section(confusion_pairs(matrix, cfg.confusion_pairs), int((predicted != labels).sum()), len(labels)),
        audit_section(facts.get("audit", {}), facts["audit_settings"]),
        timings_section(facts["timings"]),
        submission_section(paths.LATEST_SUBMISSION, facts["submission_rows"], facts.get("submission_diff", {})),
        "Plots: `dvc plots show` (loss and accuracy per fold, learning rate, confusion matrix); "
        "images: reports/wrong.png, reports/test_grid.png, reports/label_issues.png, reports/submission_diff.png, "
        "reports/augmentations.png, reports/tuning/.",
    ]
    return "\n\n".join(sections) + "\n"


def optional_json(path: Path) -> dict:
    """Return the JSON document at `path`, or {} when it does not exist."""
    return read_json(path) if Path(path).is_file() else {}


def submission_rows(path: Path = paths.LATEST_SUBMISSION) -> int | None:
    """Return the number of data rows of the submission at `path`, or None when there is none."""
    if not Path(path).is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        return max(0, sum(1 for line in fh if line.strip()) - 1)


def gather() -> dict[str, Any]:
    """Read every input of the report from the project folder and return them as one dict."""
    train = read_npz(require(paths.TRAIN_NPZ, "ingest"))
    folds = sorted(int(k) for k in np.unique(train["fold"]))
    model = params.load("model").name
    metas = {k: read_json(paths.fold_meta(model, k)) for k in folds if paths.fold_meta(model, k).is_file()}
    test_x = read_npz(require(paths.TEST_NPZ, "ingest"))["x"]
    predict = optional_json(paths.PREDICT_JSON)
    return {
        "train": train,
        "test_x": test_x,
        "test_rows": len(test_x),
        "oof": read_npz(require(paths.OOF_TTA_NPZ, "predict")),
        "metrics": read_json(require(paths.METRICS_JSON, "train")),
        "predict": predict,
        "blend_by": params.load("predict").blend_by,
        "audit": optional_json(paths.AUDIT_JSON),
        "audit_settings": params.load("audit"),
        "submission_diff": optional_json(paths.SUBMISSION_DIFF_JSON),
        "test_probs": read_npz(require(paths.TEST_PROBS_NPZ, "predict"))["probs"],
        "tuned": optional_json(paths.BEST_PARAMS),
        "settings": metas[min(metas)].get("settings") if metas else None,
        "metas": metas,
        "minutes": training_minutes(list(predict.get("models") or []), folds),
        "timings": read_timings(),
        "submission_rows": submission_rows(),
    }


def write_reports(facts: dict[str, Any], cfg: ReportParams) -> list[Path]:
    """Write summary.md, confusion.csv, wrong.png and test_grid.png from `facts`; return their paths."""
    probs, labels = facts["oof"]["probs"], facts["oof"]["y"]
    predicted = np.argmax(probs, axis=1)
    write_text(paths.CONFUSION_CSV, confusion_csv(labels, predicted))
    rows = most_confident_wrong(probs, labels, cfg.wrong_images)
    images = facts["train"]["x"][rows]
    plots.wrong_grid(images, labels[rows], predicted[rows], probs[rows, predicted[rows]], paths.WRONG_PNG)
    test_probs = facts["test_probs"][: cfg.test_images]
    test_pred = np.argmax(test_probs, axis=1)
    ids = np.arange(1, len(test_probs) + 1)
    conf = test_probs[np.arange(len(test_pred)), test_pred]
    plots.prediction_grid(facts["test_x"][: len(test_probs)], ids, test_pred, conf, paths.TEST_GRID_PNG)
    write_text(paths.SUMMARY_MD, summary_markdown(facts, cfg))
    return [paths.SUMMARY_MD, paths.CONFUSION_CSV, paths.WRONG_PNG, paths.TEST_GRID_PNG]


@reports_errors("report")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, gather the pipeline's outputs, and write the summary and report images."""
    cfg = params.load("report")
    parser = stage_parser("report", __doc__)
    parser.add_argument(
        "--wrong-images", type=int, default=cfg.wrong_images, help="images in reports/wrong.png (default: %(default)s)"
    )
    parser.add_argument(
        "--test-images",
        type=int,
        default=cfg.test_images,
        help="images in reports/test_grid.png (default: %(default)s)",
    )
    parser.add_argument(
        "--confusion-pairs",
        type=int,
        default=cfg.confusion_pairs,
        help="mistakes listed in summary.md (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = ReportParams(
        wrong_images=args.wrong_images, test_images=args.test_images, confusion_pairs=args.confusion_pairs
    )
    try:
        written = write_reports(gather(), cfg)
    except (MissingInput, OutputError, ValueError) as exc:
        return fail("report", exc)
    except KeyError as exc:
        return fail("report", f"an input lacks the entry {exc}: it is from an older version, rerun `dvc repro`")
    print(f"report: wrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
