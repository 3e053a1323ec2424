"""Stage `predict`: test-time augmentation (TTA) through every fold model, averaged per member; an ensemble's members
(model.ensemble) blended with weights chosen on out-of-fold (OOF) TTA probabilities only (predict.blend_by).

Reads data/processed/{train,test}.npz, models/folds/ (refusing fold models not trained on the current train.npz) and
data/exclude_rows.csv (rows the weights are not chosen on). Writes submissions/latest.csv (validated), a timestamped
copy (in a Kaggle notebook also <root>/working/submission.csv), models/test_probs.npz, models/oof_tta.npz (each fold's
rows blended with weights chosen on the other folds), reports/predict.json (OOF figures without and with TTA, weights,
each member's figures and what it adds, the blend's cross-fitted and in-sample accuracy, per fold and on the rows not
excluded) and reports/submission_diff.{json,png} (the labels changed since the previous submission).

`--image digit.png` instead prints the digit in one image file (any size, dark-on-light or light-on-dark) and its
class probabilities from the same fold models, TTA views and blend weights."""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline import params, paths
from pipeline.lib import plots, progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.competition_csv import InputError
from pipeline.lib.device import configure
from pipeline.lib.ensemble import blend, choose_weights, cross_fitted_blend, cross_fitted_weights, left_out_blends
from pipeline.lib.exclusions import kept_mask, read_exclusions
from pipeline.lib.files import OutputError, read_json, read_npz, require, write_json, write_npz, write_text
from pipeline.lib.image import ImageError, load_digit
from pipeline.lib.members import members
from pipeline.lib.metrics import accuracy, scores
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


def check_fold_models(models: list[str], n_folds: int, data: dict[str, np.ndarray] | None = None) -> None:
    """Raise MissingInput for a fold model train has not written, or ValueError for one not trained on `data`."""
    digest = training_digest(data["x"], data["y"], data["fold"]) if data is not None else None
    for model, fold in itertools.product(models, range(n_folds)):
        path, meta = require(paths.fold_model(model, fold), "train"), paths.fold_meta(model, fold)
        recorded = read_json(meta).get("train_data") if meta.is_file() else None
        if digest is not None and recorded != digest:
            why = f"{meta} records other data" if recorded else f"{meta} does not record its data"
            why = f"{path} was not trained on the current {paths.TRAIN_NPZ} and its fold assignment ({why})"
            raise ValueError(f"{why}: run `dvc repro train` first")


def predict_folds(data: dict, x_test: np.ndarray, model: str, n_folds: int, cfg: PredictParams) -> dict:
    """Return `model`'s per-view OOF probabilities (views, n_train, 10) and fold-averaged test probabilities."""
    oof, test = (np.zeros((cfg.tta_views + 1, n, 10), np.float32) for n in (len(data["y"]), len(x_test)))
    with progress.progress(len(data["y"]) + n_folds * len(x_test), f"predict {model}", unit="img") as bar:
        for fold in range(n_folds):
            net = load_model(str(paths.fold_model(model, fold)))
            rows = np.flatnonzero(data["fold"] == fold)
            oof[:, rows] = predict_views(net, data["x"][rows], cfg.tta_views, cfg.batch_size, bar)
            test += predict_views(net, x_test, cfg.tta_views, cfg.batch_size, bar) / n_folds
            progress.note(f"predict: fold {fold + 1}/{n_folds} done ({model}, {cfg.tta_views + 1} views)")
    return {"oof_views": oof, "test_views": test}


def tta_report(oof_views: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Return OOF accuracy and loss without TTA (view 0) and with all views averaged."""
    plain, tta = scores(oof_views[0], labels), scores(oof_views.mean(axis=0), labels)
    report = {f"oof_{k}": v for k, v in plain.items()} | {f"oof_tta_{k}": v for k, v in tta.items()}
    return report | {"tta_gain": tta["accuracy"] - plain["accuracy"]}


def blend_figures(first: np.ndarray, oof: list[np.ndarray], honest: np.ndarray, labels: np.ndarray, weights) -> dict:
    """Return model.name's TTA figures (OOF views `first`) and the blend's: `honest` and `oof` blended by `weights`."""
    in_sample = {f"oof_blend_{k}_in_sample": v for k, v in scores(blend(oof, weights), labels).items()}
    return tta_report(first, labels) | {f"oof_blend_{k}": v for k, v in scores(honest, labels).items()} | in_sample


def blend_models(
    outputs: dict[str, dict], labels: np.ndarray, folds: np.ndarray, blend_by: str, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Return the test views (views, n_test, 10) blended with weights chosen on the OOF rows in mask `keep`, the OOF
    TTA blend cross-fitted by fold, and the report; the first member of `outputs` is model.name."""
    names = list(outputs)
    keep = np.ones(len(labels), dtype=bool) if keep is None else keep
    oof = [outputs[name]["oof_views"].mean(axis=0) for name in names]
    weights = choose_weights([o[keep] for o in oof], labels[keep], blend_by)
    fold_weights = cross_fitted_weights(oof, labels, folds, blend_by, keep=keep)
    honest = cross_fitted_blend(oof, folds, fold_weights)
    first, in_fold = outputs[names[0]]["oof_views"], [(k, folds == k) for k in fold_weights]
    test_views = np.stack([outputs[name]["test_views"] for name in names], axis=1)  # (views, members, n_test, 10)
    report = {
        **blend_figures(first, oof, honest, labels, weights),
        "weights": dict(zip(names, weights.tolist(), strict=True)),
        "fold_weights": {f"fold{k}": dict(zip(names, w.tolist(), strict=True)) for k, w in fold_weights.items()},
        "models": {
            n: {f"oof_tta_{k}": v for k, v in scores(o, labels).items()} for n, o in zip(names, oof, strict=True)
        },
        "kept_rows": {
            "rows": int(keep.sum()),
            "excluded": int((~keep).sum()),
            **blend_figures(first[:, keep], [o[keep] for o in oof], honest[keep], labels[keep], weights),
        },
        "folds": {
            f"fold{k}": {"rows": int(m.sum()), "oof_blend_accuracy": accuracy(honest[m], labels[m])} for k, m in in_fold
        },
    }
    if len(names) > 1:  # what each member adds: the same honest blend without it
        full, rest = report["oof_blend_accuracy"], left_out_blends(oof, labels, folds, blend_by, keep)
        report["without"] = {
            n: {"oof_blend_accuracy": (a := accuracy(p, labels)), "member_gain": full - a}
            for n, p in zip(names, rest, strict=True)
        }
    return np.stack([blend(v, weights) for v in test_views]), honest, report


def recorded_weights(models: list[str], path: Path = paths.PREDICT_JSON) -> np.ndarray:
    """Return the blend weights the last predict run recorded for exactly `models`, else equal weights."""
    recorded = read_json(path).get("weights") if Path(path).is_file() else None
    if isinstance(recorded, dict) and list(recorded) == models:
        return np.asarray([recorded[m] for m in models], np.float64)
    if len(models) > 1:
        print(f"predict: no blend weights for {models} in {path}: blending them equally", file=sys.stderr)
    return np.full(len(models), 1.0 / len(models))


def image_probs(image: np.ndarray, model: str, n_folds: int, cfg: PredictParams) -> np.ndarray:
    """Return `model`'s class probabilities (10,) of one 28x28 `image`, averaged over fold models and TTA views."""
    nets = [load_model(str(paths.fold_model(model, fold))) for fold in range(n_folds)]
    return np.mean([predict_views(net, image[None], cfg.tta_views, 1).mean(axis=0)[0] for net in nets], axis=0)


def predict_image(path: Path, models: list[str], n_folds: int, cfg: PredictParams) -> int:
    """Print the digit in the image file at `path` and its class probabilities; return the exit status."""
    check_fold_models(models, n_folds)
    if path.is_dir():
        return fail("predict", f"{path} is a directory, expected an image file: a PNG or JPG holding one digit")
    try:
        image = load_digit(path)
    except ImageError as exc:
        return fail("predict", exc)
    probs = blend([image_probs(image, m, n_folds, cfg)[None] for m in models], recorded_weights(models))[0]
    digit = int(np.argmax(probs))
    print(f"{path}: digit {digit} (probability {probs[digit]:.3f})")
    print("\n".join(f"  {k}: {p:.4f} {'#' * round(40 * p)}" for k, p in enumerate(probs)))
    return 0


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
    """Write reports/submission_diff.{json,png} (at most `limit` images) for `new` against the previous submission;
    return the diff. A previous file that cannot be compared is recorded, not fatal."""
    try:
        diff = diff_with_previous(new)
    except InputError as exc:
        diff = {"old": str(previous_submission(new)), "new": str(new), "changed": None, "error": str(exc)}
        print(f"predict: warning: {exc}", file=sys.stderr)
    write_json(paths.SUBMISSION_DIFF_JSON, diff)
    ids = np.asarray(diff.get("changed_ids") or [], np.int64)[:limit]
    old = read_labels(Path(diff["old"]))[ids - 1] if len(ids) else ids
    shown = probs[ids - 1]
    title = diff_title(diff, len(ids))
    plots.submission_diff_grid(
        x_test[ids - 1], ids, old, shown.argmax(1), shown.max(1), paths.SUBMISSION_DIFF_PNG, title
    )
    return diff


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
    parser.add_argument("--tta-views", type=int, default=cfg.tta_views, help="views besides the original (%(default)s)")
    parser.add_argument("--image", type=Path, metavar="PATH", help="print the digit in this PNG/JPG instead")
    args = parser.parse_args(argv)
    cfg = params.build("predict", {**asdict(cfg), "tta_views": args.tta_views}, Path("--tta-views"))
    n_folds, models = params.load("train").folds, members(params.load("model"))
    device = configure(params.load("device").precision)
    if args.image is not None:
        return predict_image(args.image, models, n_folds, cfg)
    start = time.perf_counter()
    data, x_test = read_npz(require(paths.TRAIN_NPZ, "ingest")), read_npz(require(paths.TEST_NPZ, "ingest"))["x"]
    try:
        keep = kept_mask(len(data["y"]), read_exclusions(len(data["y"])))
        check_fold_models(models, n_folds, data)
        outputs = {m: predict_folds(data, x_test, m, n_folds, cfg) for m in models}
        views, oof_probs, report = blend_models(outputs, data["y"], data["fold"], cfg.blend_by, keep)
        probs = views.mean(axis=0)
        write_npz(paths.TEST_PROBS_NPZ, probs=probs, views=views)
        write_npz(paths.OOF_TTA_NPZ, probs=oof_probs, y=data["y"], fold=data["fold"])
        stamped = write_submission(np.argmax(probs, axis=1), datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
        write_json(paths.PREDICT_JSON, {**report, "tta_views": cfg.tta_views, "test_rows": len(x_test)})
        diff = write_diff(Path(stamped), x_test, probs, cfg.diff_images)
    except (OutputError, InputError, FileNotFoundError, ValueError) as exc:
        return fail("predict", exc)
    done = f"OOF accuracy {report['oof_accuracy']:.5f} without TTA, {report['oof_tta_accuracy']:.5f} with "
    done += f"{cfg.tta_views} views (gain {report['tta_gain']:+.5f}){blend_note(report)} -> {paths.LATEST_SUBMISSION}"
    progress.finish("predict", start, device.describe(), f"{done} (copy {stamped}); {describe_diff(diff)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
