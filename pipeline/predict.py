"""Stage `predict`: test-time augmentation through every fold model, probabilities averaged per model;
with an ensemble (params.yaml model.ensemble) the models are blended with weights chosen on their
out-of-fold (OOF) TTA probabilities only (predict.blend_by), never on the test set.

Reads data/processed/{train,test}.npz, models/folds/ and data/exclude_rows.csv (rows left out of the
OOF rows that fit the blend weights); refuses fold models that train did not record as trained on the current
train.npz and its fold assignment. Writes submissions/latest.csv (validated before it replaces the
previous one) and a timestamped copy beside it (in a Kaggle notebook also /kaggle/working/submission.csv),
models/test_probs.npz, models/oof_tta.npz (the blended OOF TTA probabilities of every training row, each
fold's rows blended with weights chosen on the other folds' rows only, which the audit stage reads), and
reports/predict.json with model.name's OOF accuracy with and without TTA (the TTA gain, measured), the
blend weights (the test blend's and each fold's cross-fitted ones), each model's OOF TTA accuracy, the
blend's OOF accuracy with cross-fitted weights (`oof_blend_accuracy`, an honest estimate) and with the
test blend's weights (`oof_blend_accuracy_in_sample`: chosen on the same rows, so slightly optimistic),
the cross-fitted blend without each member in turn (`without`: what each model adds), per fold, and the
same figures on the rows not excluded ("kept_rows"). Compares the new submission with the previous one
in submissions/: reports/submission_diff.json (rows changed, old and new label counts) and
reports/submission_diff.png (the changed test images with their old and new labels and the new probability).

`--image digit.png` instead prints the digit in one image file (any size, dark-on-light or
light-on-dark) and its class probabilities from the same fold models and TTA views."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline import params, paths
from pipeline.device import configure
from pipeline.lib import plots, progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.competition_csv import InputError
from pipeline.lib.ensemble import (
    blend,
    choose_weights,
    cross_fitted_blend,
    cross_fitted_weights,
    ensemble_report,
    left_out_blends,
)
from pipeline.lib.exclusions import kept_mask, read_exclusions
from pipeline.lib.files import (
    OutputError,
    read_json,
    read_npz,
    require,
    write_json,
    write_npz,
    write_text,
)
from pipeline.lib.fitting import accuracy, log_loss
from pipeline.lib.image import ImageError, load_digit
from pipeline.lib.models import load_model
from pipeline.lib.submission_file import (
    describe_diff,
    diff_with_previous,
    previous_submission,
    read_labels,
    submission_csv,
    validate_submission,
)
from pipeline.lib.training_data import training_digest
from pipeline.lib.tta import predict_views
from pipeline.params import PredictParams


def predict_batches(model, images: np.ndarray, cfg: PredictParams, bar) -> np.ndarray:
    """Return probabilities (views, n, 10) of `images`, one batch at a time, advancing progress `bar`."""
    parts = [np.zeros((cfg.tta_views + 1, 0, 10), np.float32)]
    for start in range(0, len(images), cfg.batch_size):
        parts.append(predict_views(model, images[start : start + cfg.batch_size], cfg.tta_views, cfg.batch_size))
        bar.update(len(parts[-1][0]))
    return np.concatenate(parts, axis=1)


def predict_folds(
    data: dict, x_test: np.ndarray, model: str, n_folds: int, cfg: PredictParams
) -> dict[str, np.ndarray]:
    """Return `model`'s per-view OOF probabilities (views, n_train, 10) and fold-averaged test probabilities."""
    views = cfg.tta_views + 1
    oof = np.zeros((views, len(data["y"]), 10), np.float32)
    test = np.zeros((views, len(x_test), 10), np.float32)
    with progress.progress(len(data["y"]) + n_folds * len(x_test), f"predict {model}", unit="img") as bar:
        for fold in range(n_folds):
            net = load_model(str(paths.fold_model(model, fold)))
            rows = np.flatnonzero(data["fold"] == fold)
            oof[:, rows] = predict_batches(net, data["x"][rows], cfg, bar)
            test += predict_batches(net, x_test, cfg, bar) / n_folds
            progress.note(f"predict: fold {fold + 1}/{n_folds} done ({model}, {views} views)")
    return {"oof_views": oof, "test_views": test}


def blend_models(
    outputs: dict[str, dict[str, np.ndarray]],
    labels: np.ndarray,
    folds: np.ndarray,
    blend_by: str,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Return the blended test views (views, n_test, 10), the cross-fitted blend of the OOF TTA probabilities
    (n_train, 10) and the report; the first model of `outputs` is model.name.

    The test views are blended with weights chosen on the models' OOF TTA probabilities and `labels` of every
    row in mask `keep` (all rows when None). Fold k's OOF rows are blended with weights chosen on the kept rows
    of the other `folds` only, so "oof_blend_accuracy" is an honest estimate; "oof_blend_accuracy_in_sample"
    scores the test weights on the rows that chose them. The figures cover every row, "kept_rows" those in
    `keep`, "folds" each fold's rows."""
    names = list(outputs)
    keep = np.ones(len(labels), dtype=bool) if keep is None else keep
    oof = [outputs[name]["oof_views"].mean(axis=0) for name in names]
    weights = choose_weights([o[keep] for o in oof], labels[keep], blend_by)
    fold_weights = cross_fitted_weights(oof, labels, folds, blend_by, keep=keep)
    honest = cross_fitted_blend(oof, folds, fold_weights)
    scores = ensemble_report(oof, labels, weights)
    kept = ensemble_report([o[keep] for o in oof], labels[keep], weights)
    n_views = len(outputs[names[0]]["test_views"])
    views = np.stack([blend([outputs[name]["test_views"][v] for name in names], weights) for v in range(n_views)])
    report = {
        **tta_report(outputs[names[0]]["oof_views"], labels),
        "weights": dict(zip(names, scores["weights"], strict=True)),
        "fold_weights": {f"fold{k}": dict(zip(names, w.tolist(), strict=True)) for k, w in fold_weights.items()},
        "models": {
            name: {"oof_tta_accuracy": m["accuracy"], "oof_tta_loss": m["loss"]}
            for name, m in zip(names, scores["models"], strict=True)
        },
        "oof_blend_accuracy": accuracy(honest, labels),
        "oof_blend_loss": log_loss(honest, labels),
        "oof_blend_accuracy_in_sample": scores["blend"]["accuracy"],
        "oof_blend_loss_in_sample": scores["blend"]["loss"],
        **members_left_out(names, oof, labels, folds, blend_by, keep, accuracy(honest, labels)),
        "kept_rows": {
            "rows": int(keep.sum()),
            "excluded": int((~keep).sum()),
            **tta_report(outputs[names[0]]["oof_views"][:, keep], labels[keep]),
            "oof_blend_accuracy": accuracy(honest[keep], labels[keep]),
            "oof_blend_loss": log_loss(honest[keep], labels[keep]),
            "oof_blend_accuracy_in_sample": kept["blend"]["accuracy"],
            "oof_blend_loss_in_sample": kept["blend"]["loss"],
        },
        "folds": {
            f"fold{k}": {
                "rows": int(np.sum(folds == k)),
                "oof_blend_accuracy": accuracy(honest[folds == k], labels[folds == k]),
            }
            for k in fold_weights
        },
    }
    return views, honest, report


def members_left_out(
    names: list[str],
    oof: list[np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    blend_by: str,
    keep: np.ndarray,
    blended: float,
) -> dict:
    """Return {"without": {model: cross-fitted OOF accuracy of the blend of the others, and `blended` minus it}}
    for an ensemble (what each member adds, measured the same honest way), or {} for one model."""
    if len(names) < 2:
        return {}
    rest = [accuracy(probs, labels) for probs in left_out_blends(oof, labels, folds, blend_by, keep)]
    pairs = zip(names, rest, strict=True)
    return {"without": {name: {"oof_blend_accuracy": acc, "member_gain": blended - acc} for name, acc in pairs}}


def image_probs(image: np.ndarray, model: str, n_folds: int, cfg: PredictParams) -> np.ndarray:
    """Return `model`'s class probabilities (10,) of one 28x28 uint8 `image`, averaged over every fold model
    and TTA view exactly as the test CSV's rows are."""
    total = np.zeros(10, np.float64)
    for fold in range(n_folds):
        net = load_model(str(paths.fold_model(model, fold)))
        total += predict_views(net, image[None], cfg.tta_views, cfg.batch_size).mean(axis=0)[0]
    return (total / n_folds).astype(np.float32)


def recorded_weights(models: list[str], path: Path = paths.PREDICT_JSON) -> np.ndarray:
    """Return the blend weights the last predict run recorded for exactly `models`, else equal weights."""
    recorded = read_json(path).get("weights") if Path(path).is_file() else None
    if isinstance(recorded, dict) and list(recorded) == models:
        return np.asarray([recorded[m] for m in models], np.float64)
    if len(models) > 1:
        print(f"predict: no blend weights for {models} in {path}: blending them equally", file=sys.stderr)
    return np.full(len(models), 1.0 / len(models))


def describe_probs(name: str, probs: np.ndarray) -> str:
    """Return the predicted digit and one line per class with its probability and a bar."""
    digit = int(np.argmax(probs))
    lines = [f"{name}: digit {digit} (probability {probs[digit]:.3f})"]
    lines += [f"  {k}: {p:.4f} {'#' * round(40 * p)}" for k, p in enumerate(probs)]
    return "\n".join(lines)


def require_models(models: list[str], n_folds: int) -> None:
    """Raise MissingInput naming the first fold model of `models` that train has not written."""
    for model in models:
        for fold in range(n_folds):
            require(paths.fold_model(model, fold), "train")


def check_trained_on(data: dict[str, np.ndarray], models: list[str], n_folds: int) -> None:
    """Raise ValueError naming the first fold model of `models` that train did not record as trained on `data`
    (train.npz's images, labels and fold assignment: its fold{k}.json `train_data` digest)."""
    digest = training_digest(data["x"], data["y"], data["fold"])
    for model in models:
        for fold in range(n_folds):
            meta = paths.fold_meta(model, fold)
            recorded = read_json(meta).get("train_data") if meta.is_file() else None
            if recorded != digest:
                why = f"{meta} records other data" if recorded else f"{meta} does not record its data"
                raise ValueError(
                    f"{paths.fold_model(model, fold)} was not trained on the current {paths.TRAIN_NPZ} and its fold "
                    f"assignment ({why}): run `dvc repro train` (or `python -m pipeline.train`) first"
                )


def predict_image(path: Path, models: list[str], n_folds: int, cfg: PredictParams) -> int:
    """Print the digit in the image file at `path` and its class probabilities; return the exit status."""
    require_models(models, n_folds)
    if path.is_dir():
        return fail("predict", f"{path} is a directory, expected an image file: a PNG or JPG holding one digit")
    try:
        image = load_digit(path)
    except ImageError as exc:
        return fail("predict", exc)
    probs = blend([image_probs(image, m, n_folds, cfg)[None] for m in models], recorded_weights(models))[0]
    print(describe_probs(str(path), probs))
    return 0


def tta_report(oof_views: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Return OOF accuracy and loss without TTA (view 0) and with all views averaged."""
    plain, tta = oof_views[0], oof_views.mean(axis=0)
    return {
        "oof_accuracy": accuracy(plain, labels),
        "oof_loss": log_loss(plain, labels),
        "oof_tta_accuracy": accuracy(tta, labels),
        "oof_tta_loss": log_loss(tta, labels),
        "tta_gain": accuracy(tta, labels) - accuracy(plain, labels),
    }


def blend_note(report: dict) -> str:
    """Return a note on the blend's weights and OOF accuracy (cross-fitted, then in-sample), or "" for one model."""
    if len(report["weights"]) < 2:
        return ""
    weights = ", ".join(f"{m} {w:.3f}" for m, w in report["weights"].items())
    gains = ", ".join(f"{m} {v['member_gain']:+.5f}" for m, v in report["without"].items())
    return (
        f"; blend ({weights}) OOF accuracy {report['oof_blend_accuracy']:.5f} with cross-fitted weights "
        f"({report['oof_blend_accuracy_in_sample']:.5f} in-sample); each member adds {gains}"
    )


def diff_title(diff: dict, shown: int) -> str:
    """Return the title of reports/submission_diff.png for `diff` showing `shown` images."""
    if diff.get("error"):
        return f"Not compared with {diff['old']}: {diff['error']}"
    if diff.get("old") is None:
        return "First submission: nothing to compare with"
    old = Path(diff["old"]).name
    if not diff["changed"]:
        return f"No test label changed since {old}"
    which = f"The {shown}" if shown == diff["changed"] else f"{shown} of the {diff['changed']}"
    return f"{which} test images whose label changed since {old}: #ImageId old → new label (new probability)"


def write_diff(new: Path, x_test: np.ndarray, probs: np.ndarray, limit: int) -> dict:
    """Compare the submission at `new` with the previous one and write reports/submission_diff.json and
    reports/submission_diff.png (at most `limit` changed images, in ImageId order); return the diff. A
    previous file that cannot be compared (another length, a damaged file) is recorded, not fatal."""
    try:
        diff = diff_with_previous(new)
    except InputError as exc:
        diff = {"old": str(previous_submission(new)), "new": str(new), "changed": None, "error": str(exc)}
        print(f"predict: warning: {exc}", file=sys.stderr)
    write_json(paths.SUBMISSION_DIFF_JSON, diff)
    ids = np.asarray(diff.get("changed_ids") or [], np.int64)[:limit]
    old = read_labels(Path(diff["old"]))[ids - 1] if len(ids) else ids
    new_labels = np.argmax(probs[ids - 1], axis=1) if len(ids) else ids
    confidence = probs[ids - 1, new_labels] if len(ids) else np.zeros(0)
    plots.submission_diff_grid(
        x_test[ids - 1], ids, old, new_labels, confidence, paths.SUBMISSION_DIFF_PNG, diff_title(diff, len(ids))
    )
    return diff


def diff_note(diff: dict) -> str:
    """Return the closing log line's words on the submission diff."""
    if diff.get("error"):
        return f"not compared with {diff['old']} ({diff['error']})"
    return describe_diff(diff)


def write_submission(labels: np.ndarray, stamp: str) -> str:
    """Validate the submission for `labels`, then write latest.csv and a timestamped copy; return the copy's path."""
    text = submission_csv(labels)
    validate_submission(text, len(labels), str(paths.LATEST_SUBMISSION))
    stamped = paths.SUBMISSIONS_DIR / f"submission-{stamp}.csv"
    write_text(stamped, text)
    write_text(paths.LATEST_SUBMISSION, text)
    if paths.kaggle_submission().parent.is_dir():  # a Kaggle notebook: the file its "Submit" picks up
        write_text(paths.kaggle_submission(), text)
        print(f"predict: also wrote {paths.kaggle_submission()} (Kaggle notebook)")
    return str(stamped)


@reports_errors("predict")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, run TTA through every fold model, and write the submission and TTA report."""
    cfg = params.load("predict")
    parser = stage_parser("predict", __doc__)
    parser.add_argument(
        "--tta-views", type=int, default=cfg.tta_views, help="views besides the original (default: %(default)s)"
    )
    parser.add_argument(
        "--image", type=Path, metavar="PATH", help="print the digit in this PNG/JPG instead of predicting the test CSV"
    )
    args = parser.parse_args(argv)
    cfg = replace(cfg, tta_views=args.tta_views)
    n_folds = params.load("train").folds
    try:
        models = params.load("model").members()
    except ValueError as exc:
        return fail("predict", exc)
    device = configure(params.load("device").precision)
    if args.image is not None:
        return predict_image(args.image, models, n_folds, cfg)
    start = time.perf_counter()
    data, x_test = read_npz(require(paths.TRAIN_NPZ, "ingest")), read_npz(require(paths.TEST_NPZ, "ingest"))["x"]
    try:
        keep = kept_mask(len(data["y"]), read_exclusions(len(data["y"])))
        require_models(models, n_folds)
        check_trained_on(data, models, n_folds)
        outputs = {m: predict_folds(data, x_test, m, n_folds, cfg) for m in models}
        views, oof_probs, report = blend_models(outputs, data["y"], data["fold"], cfg.blend_by, keep)
        probs = views.mean(axis=0)
        write_npz(paths.TEST_PROBS_NPZ, probs=probs, views=views)
        write_npz(paths.OOF_TTA_NPZ, probs=oof_probs, y=data["y"], fold=data["fold"])
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        stamped = write_submission(np.argmax(probs, axis=1), stamp)
        write_json(paths.PREDICT_JSON, {**report, "tta_views": cfg.tta_views, "test_rows": len(x_test)})
        diff = write_diff(Path(stamped), x_test, probs, cfg.diff_images)
    except (OutputError, InputError, FileNotFoundError, ValueError) as exc:
        return fail("predict", exc)
    progress.finish(
        "predict",
        start,
        device.describe(),
        f"OOF accuracy {report['oof_accuracy']:.5f} without TTA, {report['oof_tta_accuracy']:.5f} with "
        f"{cfg.tta_views} views (gain {report['tta_gain']:+.5f}){blend_note(report)} -> {paths.LATEST_SUBMISSION} "
        f"(copy {stamped}); {diff_note(diff)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
