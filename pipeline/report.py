"""Stage `report`: reports/summary.md, what a Kaggler reads after every `dvc repro`, from every stage's outputs
(train.npz, test.npz, best_params.json, models/oof_tta.npz and test_probs.npz, the fold meta.json files,
reports/{predict,tune,audit,submission_diff}.json, reports/timings/); also reports/confusion.csv (DVC's confusion
template), reports/wrong.png (the most confidently wrong OOF images) and reports/test_grid.png (test predictions)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from pipeline import params, paths
from pipeline.lib import plots
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.files import OutputError, read_json, read_npz, require, write_text
from pipeline.lib.members import members
from pipeline.lib.metrics import accuracy
from pipeline.lib.progress import format_seconds
from pipeline.lib.submission_file import describe_diff, read_labels
from pipeline.lib.training_data import read_fold_metas
from pipeline.params import AuditParams, ReportParams

STAGES = ("ingest", "augment", "tune", "train", "predict", "audit")


def confusion_pairs(matrix: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """Return the `k` most frequent mistakes as (actual, predicted, count), most frequent first."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    return [(int(i // len(off)), int(i % len(off)), int(off.flat[i])) for i in order if off.flat[i] > 0]


def confusion_csv(actual: np.ndarray, predicted: np.ndarray) -> str:
    """Return `actual,predicted` CSV text with one row per prediction (DVC's confusion template)."""
    return "actual,predicted\n" + "".join(f"{int(a)},{int(p)}\n" for a, p in zip(actual, predicted, strict=True))


def most_confident_wrong(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Return the row indices of the `k` wrong predictions with the highest predicted probability."""
    predicted = np.argmax(probs, axis=1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")[:k]]


def read_timings(folder: Path = paths.TIMINGS_DIR, runs: Path = paths.RUNS_DIR, units: list | None = None) -> dict:
    """Return the stage timings in `folder` with device and finish time from `runs`; train's, if none, sums `units`."""
    found = {p.stem: read_json(p) | optional_json(Path(runs) / p.name) for p in sorted(Path(folder).glob("*.json"))}
    if units and "train" not in found:  # train's units record no stage timing: their fold meta.json do
        found["train"] = {"seconds": sum(u["seconds"] for u in units), "device": units[-1].get("device")}
    return {s: found[s] for s in sorted(found, key=lambda s: (STAGES.index(s) if s in STAGES else len(STAGES), s))}


def md_table(header: list[str], rows: list[list]) -> str:
    """Return a Markdown table of `rows` (padded to the header's width) under `header`."""
    lines = ["| " + " | ".join(map(str, [*row, *[""] * (len(header) - len(row))])) + " |" for row in [header, *rows]]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])


def figures(scores: dict, key: str = "") -> list[str]:
    """Return the table cells of the accuracy and loss in `scores` (keys `key`accuracy and `key`loss)."""
    return [f"{scores[key + 'accuracy']:.5f}", f"{scores[key + 'loss']:.4f}"]


def value(v: object) -> str:
    """Return a setting's value as the summary shows it (floats to 4 significant digits)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def params_section(settings: dict, tuned: dict, tta_views: int) -> str:
    """Return the parameters section: what train used for model.name, and where tune's values came from."""
    table = md_table(["parameter", "value"], [[k, f"`{value(v)}`"] for k, v in settings.items()])
    tuning = "No tuned parameters (best_params.json missing or empty): train used params.yaml."
    if tuned.get("params"):
        tuning = (
            f"Tuned by Optuna study `{tuned.get('study')}`: best trial {tuned.get('trial')} of "
            f"{tuned.get('finished_trials')} finished, validation accuracy {tuned.get('value', float('nan')):.5f}; "
            f"tuned: {', '.join(f'{k}={value(v)}' for k, v in tuned['params'].items())}."
        )
    return f"## Chosen parameters\n\n{table}\n\n{tuning}\nTest-time augmentation: the original plus {tta_views} views."


def folds_section(metas: dict[int, dict], folds: np.ndarray, predict: dict, scored_fold: int | None) -> str:
    """Return model.name's fold table (`metas`, predict.json), also without tuning's `scored_fold` and excluded rows."""
    size = {k: int(np.sum(folds == k)) for k in metas}
    rows = [[k, size[k], *figures(m), m["epochs"], format_seconds(m["seconds"])] for k, m in sorted(metas.items())]
    rows.append(["**all (OOF)**", len(folds), f"**{predict['oof_accuracy']:.5f}**", f"{predict['oof_loss']:.4f}"])
    untuned = [k for k in metas if k != scored_fold]
    if scored_fold in metas and untuned:
        n = sum(size[k] for k in untuned)
        mean = {key: sum(metas[k][key] * size[k] for k in untuned) / n for key in ("accuracy", "loss")}
        rows.append(["OOF without the fold that scored tuning", n, *figures(mean)])
    if (kept := predict.get("kept_rows") or {}).get("excluded"):
        rows.append([f"OOF without the {kept['excluded']} excluded rows", kept["rows"], *figures(kept, "oof_")])
    header = ["fold", "validation rows", "accuracy", "loss", "epochs", "training time"]
    return "## Folds (model.name, without TTA)\n\n" + md_table(header, rows)


def blend_line(predict: dict, blend_by: str, minutes: dict[str, float] | None = None) -> str:
    """Return an ensemble's weights, OOF accuracy and what each member adds (per training hour: `minutes`), else ""."""
    weights, minutes = predict.get("weights") or {}, minutes or {}
    if len(weights) < 2:
        return ""
    rows = []
    for m, w in predict["without"].items():
        gain, alone, spent = w["member_gain"], predict["models"][m]["oof_tta_accuracy"], minutes.get(m)
        hours = [f"{spent:.1f}", f"{gain * 60 / spent:+.5f}"] if spent else ["?", "?"]
        rows.append([m, f"{alone:.5f}", f"{w['oof_blend_accuracy']:.5f}", f"{gain:+.5f}", *hours])
    head = ["member", "alone (OOF, TTA)", "blend without it", "what it adds", "training minutes", "adds per hour"]
    return (
        f"\n\nThe submission blends {', '.join(f'{m} {w:.3f}' for m, w in weights.items())} (weights chosen by OOF "
        f"{blend_by}): OOF accuracy {predict['oof_blend_accuracy']:.5f} with TTA, each fold's rows blended with "
        f"weights chosen on the other folds only ({predict['oof_blend_accuracy_in_sample']:.5f} in-sample). The table "
        f"above is model.name alone.\n\n{md_table(head, rows)}"
    )


def audit_section(audit: dict, cfg: AuditParams) -> str:
    """Return the label audit (reports/audit.json, run with `cfg`): issues, the exclusion list, accuracy on the rest."""
    if not audit:
        return "## Label audit\n\nreports/audit.json not found: run the audit stage."
    kept, excluded = audit["kept_rows"], "No row is excluded"
    if audit["excluded"]:
        excluded = (
            f"{audit['excluded']} rows are excluded from training ({audit['issues_excluded']} of the issues above); "
            f"OOF TTA accuracy and loss on the other {kept['rows']} rows {', '.join(figures(kept))}; against the run "
            "before: `dvc metrics diff` (reports/predict.json: every row, excluded or not)"
        )
    return (
        f"## Label audit\n\ncleanlab finds **{audit['issues']}** likely label issues among the {audit['rows']} "
        f"training rows (filter {cfg.filter_by}, ranked by {cfg.rank_by}): [label_issues.csv](label_issues.csv), the "
        f"top ones drawn in [label_issues.png](label_issues.png).\n\n{excluded} (data/exclude_rows.csv). Exclude "
        "the top N from training: `python -m pipeline.audit --accept N`, review `git diff`, then `dvc repro`."
    )


def timings_section(timings: dict[str, dict]) -> str:
    """Return the wall time of every stage that recorded one, with the device it ran on, and the missing stages."""
    rows = [[s, format_seconds(t.get("seconds")), t.get("device") or "-", t.get("finished_at", "-")]
            for s, t in timings.items()]  # fmt: skip
    rows.append(["**total**", f"**{format_seconds(sum(float(t.get('seconds') or 0) for t in timings.values()))}**"])
    missing = ", ".join(s for s in STAGES if s not in timings)
    table = md_table(["stage", "wall time", "device", "finished (UTC)"], rows)
    return f"## Wall time per stage\n\n{table}" + (f"\n\nNo timing recorded for: {missing}." if missing else "")


def submission_section(path: Path, rows: int, diff: dict) -> str:
    """Return where the submission is, how it differs from the previous one and how to send it."""
    return (
        f"## Submission\n\n`{path}` ({rows} rows). Against the previous submission: {describe_diff(diff)} "
        "([submission_diff.png](submission_diff.png)).\n\nSend it with\n\n"
        f'    python -m pipeline.tools.submit -m "your message"\n\n'
        f'(the same as `kaggle competitions submit -c digit-recognizer -f {path} -m "your message"`).'
    )


def summary_markdown(facts: dict, cfg: ReportParams) -> str:
    """Return reports/summary.md for the gathered `facts` (see gather)."""
    probs, labels, predict, train = facts["oof"]["probs"], facts["oof"]["y"], facts["predict"], facts["train"]
    predicted, counts = np.argmax(probs, axis=1), np.bincount(train["y"], minlength=10).tolist()
    pairs = confusion_pairs(confusion_matrix(labels, predicted, labels=range(10)), cfg.confusion_pairs)
    plain = ["without TTA", *figures(predict, "oof_")]  # the first entry an older predict.json lacks: oof_loss
    tta = [plain, [f"with TTA ({predict['tta_views']} views)", *figures(predict, "oof_tta_")]]
    what = "the ensemble's cross-fitted blend" if len(predict.get("weights") or {}) > 1 else "model.name"
    confusions = f"{int((predicted != labels).sum())} of {len(labels)} out-of-fold predictions are wrong"
    if pairs:
        confusions += "; the most frequent mistakes (full matrix: `dvc plots show reports/confusion.csv`, the worst "
        confusions += f"images: reports/wrong.png):\n\n{md_table(['actual', 'predicted as', 'count'], pairs)}"
    sections = [
        f"# Digit Recognizer: run summary\n\nOut-of-fold accuracy of the submission's predictions "
        f"**{accuracy(probs, labels):.5f}** ({what}, TTA views averaged; {len(labels)} training rows, "
        f"{len(np.unique(train['fold']))} folds).",
        "## Data\n\n" + md_table(["", *map(str, range(10)), "total"], [["train rows", *counts, sum(counts)]]),
        f"Test rows: {len(facts['test_x'])}.",
        params_section(facts["metas"][0]["settings"], facts["tuned"], predict["tta_views"]),
        folds_section(facts["metas"], train["fold"], predict, facts["tuned"].get("scored_fold")),
        f"## Out-of-fold accuracy\n\n{md_table(['', 'accuracy', 'loss'], tta)}\n\nTTA gain: "
        f"{predict['tta_gain']:+.5f} ({predict['tta_gain'] * 100:+.3f} points)."
        + blend_line(predict, facts["blend_by"], facts["minutes"]),
        f"## Confusions\n\n{confusions}" + ("" if pairs else "."),
        audit_section(facts["audit"], facts["audit_settings"]),
        timings_section(facts["timings"]),
        submission_section(paths.LATEST_SUBMISSION, facts["submission_rows"], facts["submission_diff"]),
        "Plots: `dvc plots show` (loss and accuracy per fold, learning rate, confusion matrix); images: reports/"
        "{wrong,test_grid,label_issues,submission_diff,augmentations}.png and reports/tuning/.",
    ]
    return "\n\n".join(sections) + "\n"


def optional_json(path: Path) -> dict:
    """Return the JSON document at `path`, or {} when it does not exist."""
    return read_json(path) if Path(path).is_file() else {}


def gather() -> dict:
    """Read every input of the report from the project folder and return them as one dict."""
    train = read_npz(require(paths.TRAIN_NPZ, "ingest"))
    oof = read_npz(require(paths.OOF_TTA_NPZ, "predict"))
    n_folds = len(np.unique(train["fold"]))
    metas = {m: dict(enumerate(read_fold_metas(m, n_folds))) for m in members(params.load("model"))}
    return {
        "train": train,
        "test_x": read_npz(require(paths.TEST_NPZ, "ingest"))["x"],
        "oof": oof,
        "predict": read_json(require(paths.PREDICT_JSON, "predict")),
        "blend_by": params.load("predict").blend_by,
        "audit": optional_json(paths.AUDIT_JSON),
        "audit_settings": params.load("audit"),
        "submission_diff": read_json(require(paths.SUBMISSION_DIFF_JSON, "predict")),
        "test_probs": read_npz(require(paths.TEST_PROBS_NPZ, "predict"))["probs"],
        "tuned": {**optional_json(paths.BEST_PARAMS), **optional_json(paths.TUNE_JSON)},
        "metas": next(iter(metas.values())),
        "minutes": {m: sum(meta["seconds"] for meta in by_fold.values()) / 60 for m, by_fold in metas.items()},
        "timings": read_timings(units=[meta for by_fold in metas.values() for meta in by_fold.values()]),
        "submission_rows": len(read_labels(require(paths.LATEST_SUBMISSION, "predict"))),
    }


def write_reports(facts: dict, cfg: ReportParams) -> list[Path]:
    """Write summary.md, confusion.csv, wrong.png and test_grid.png from `facts`; return their paths."""
    probs, labels = facts["oof"]["probs"], facts["oof"]["y"]
    predicted = np.argmax(probs, axis=1)
    write_text(paths.CONFUSION_CSV, confusion_csv(labels, predicted))
    rows = most_confident_wrong(probs, labels, cfg.wrong_images)
    plots.wrong_grid(facts["train"]["x"][rows], labels[rows], predicted[rows], probs[rows].max(axis=1), paths.WRONG_PNG)
    test = facts["test_probs"][: cfg.test_images]
    ids = np.arange(1, len(test) + 1)
    plots.prediction_grid(facts["test_x"][: len(test)], ids, test.argmax(axis=1), test.max(axis=1), paths.TEST_GRID_PNG)
    write_text(paths.SUMMARY_MD, summary_markdown(facts, cfg))
    return [paths.SUMMARY_MD, paths.CONFUSION_CSV, paths.WRONG_PNG, paths.TEST_GRID_PNG]


@reports_errors("report")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI (settings: params.yaml's `report:`), gather the pipeline's outputs, and write the reports."""
    stage_parser("report", __doc__).parse_args(argv)
    cfg = params.load("report")  # the settings first: a bad one is named before any input is read
    try:
        written = write_reports(gather(), cfg)
    except (OutputError, ValueError) as exc:
        return fail("report", exc)
    except KeyError as exc:
        return fail("report", f"an input lacks the entry {exc}: it is from an older version, rerun `dvc repro`")
    print(f"report: wrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
