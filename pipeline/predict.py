"""Stage `predict`: test-time augmentation through every fold model, probabilities averaged.

Reads data/processed/{train,test}.npz and models/folds/. Writes submissions/latest.csv (validated
before it replaces the previous one) and a timestamped copy beside it, models/test_probs.npz, and
reports/predict.json with OOF accuracy with and without TTA (the TTA gain, measured).

`--image digit.png` instead prints the digit in one image file (any size, dark-on-light or
light-on-dark) and its class probabilities from the same fold models and TTA views."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline import params, paths, progress
from pipeline.dataio import InputError
from pipeline.device import configure
from pipeline.files import OutputError, read_npz, write_json, write_npz, write_text
from pipeline.image import ImageError, load_digit
from pipeline.models import load_model
from pipeline.params import PredictParams
from pipeline.submission import submission_csv, validate_submission
from pipeline.training import accuracy, log_loss
from pipeline.tta import predict_views


def predict_batches(model, images: np.ndarray, cfg: PredictParams, bar) -> np.ndarray:
    """Return probabilities (views, n, 10) of `images`, one batch at a time, advancing progress `bar`."""
    parts = [np.zeros((cfg.tta_views + 1, 0, 10), np.float32)]
    for start in range(0, len(images), cfg.batch_size):
        parts.append(predict_views(model, images[start : start + cfg.batch_size], cfg.tta_views, cfg.batch_size))
        bar.update(len(parts[-1][0]))
    return np.concatenate(parts, axis=1)


def predict_folds(data: dict, x_test: np.ndarray, n_folds: int, cfg: PredictParams) -> dict[str, np.ndarray]:
    """Return per-view OOF probabilities (views, n_train, 10) and fold-averaged test probabilities."""
    views = cfg.tta_views + 1
    oof = np.zeros((views, len(data["y"]), 10), np.float32)
    test = np.zeros((views, len(x_test), 10), np.float32)
    with progress.progress(len(data["y"]) + n_folds * len(x_test), "predict", unit="img") as bar:
        for fold in range(n_folds):
            model = load_model(str(paths.fold_model(fold)))
            rows = np.flatnonzero(data["fold"] == fold)
            oof[:, rows] = predict_batches(model, data["x"][rows], cfg, bar)
            test += predict_batches(model, x_test, cfg, bar) / n_folds
            progress.note(f"predict: fold {fold + 1}/{n_folds} done ({views} views)")
    return {"oof_views": oof, "test_views": test}


def image_probs(image: np.ndarray, n_folds: int, cfg: PredictParams) -> np.ndarray:
    """Return the class probabilities (10,) of one 28x28 uint8 `image`, averaged over every fold model
    and TTA view exactly as the test CSV's rows are."""
    total = np.zeros(10, np.float64)
    for fold in range(n_folds):
        model = load_model(str(paths.fold_model(fold)))
        total += predict_views(model, image[None], cfg.tta_views, cfg.batch_size).mean(axis=0)[0]
    return (total / n_folds).astype(np.float32)


def describe_probs(name: str, probs: np.ndarray) -> str:
    """Return the predicted digit and one line per class with its probability and a bar."""
    digit = int(np.argmax(probs))
    lines = [f"{name}: digit {digit} (probability {probs[digit]:.3f})"]
    lines += [f"  {k}: {p:.4f} {'#' * round(40 * p)}" for k, p in enumerate(probs)]
    return "\n".join(lines)


def predict_image(path: Path, n_folds: int, cfg: PredictParams) -> int:
    """Print the digit in the image file at `path` and its class probabilities; return the exit status."""
    missing = [str(paths.fold_model(k)) for k in range(n_folds) if not paths.fold_model(k).is_file()]
    if missing:
        print(f"predict: error: no trained model {missing[0]}: run `dvc repro train` first", file=sys.stderr)
        return 2
    try:
        image = load_digit(path)
    except ImageError as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    print(describe_probs(str(path), image_probs(image, n_folds, cfg)))
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


def write_submission(labels: np.ndarray, stamp: str) -> str:
    """Validate the submission for `labels`, then write latest.csv and a timestamped copy; return the copy's path."""
    text = submission_csv(labels)
    validate_submission(text, len(labels), str(paths.LATEST_SUBMISSION))
    stamped = paths.SUBMISSIONS_DIR / f"submission-{stamp}.csv"
    write_text(stamped, text)
    write_text(paths.LATEST_SUBMISSION, text)
    return str(stamped)


def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, run TTA through every fold model, and write the submission and TTA report."""
    cfg = params.load("predict")
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tta-views", type=int, default=cfg.tta_views, help="views besides the original (default: %(default)s)"
    )
    parser.add_argument(
        "--image", type=Path, metavar="PATH", help="print the digit in this PNG/JPG instead of predicting the test CSV"
    )
    args = parser.parse_args(argv)
    cfg = PredictParams(tta_views=args.tta_views, batch_size=cfg.batch_size)
    n_folds = params.load("train").folds
    if args.image is not None:
        return predict_image(args.image, n_folds, cfg)
    device = configure()
    start = time.perf_counter()
    data, x_test = read_npz(paths.TRAIN_NPZ), read_npz(paths.TEST_NPZ)["x"]
    try:
        out = predict_folds(data, x_test, n_folds, cfg)
        report = tta_report(out["oof_views"], data["y"])
        probs = out["test_views"].mean(axis=0)
        write_npz(paths.TEST_PROBS_NPZ, probs=probs, views=out["test_views"])
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        stamped = write_submission(np.argmax(probs, axis=1), stamp)
        write_json(paths.PREDICT_JSON, {**report, "tta_views": cfg.tta_views, "test_rows": len(x_test)})
    except (OutputError, InputError, FileNotFoundError, ValueError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    progress.finish(
        "predict",
        start,
        device.describe(),
        f"OOF accuracy {report['oof_accuracy']:.5f} without TTA, {report['oof_tta_accuracy']:.5f} with "
        f"{cfg.tta_views} views (gain {report['tta_gain']:+.5f}) -> {paths.LATEST_SUBMISSION} (copy {stamped})",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
