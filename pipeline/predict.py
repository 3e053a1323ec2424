"""Stage `predict`: test-time augmentation through every fold model, probabilities averaged.

Reads data/processed/{train,test}.npz and models/folds/. Writes submissions/latest.csv (validated
before it replaces the previous one) and a timestamped copy beside it, models/test_probs.npz, and
reports/predict.json with OOF accuracy with and without TTA (the TTA gain, measured)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone

import numpy as np

from pipeline import params, paths
from pipeline.dataio import InputError
from pipeline.device import configure
from pipeline.files import OutputError, read_npz, write_json, write_npz, write_text
from pipeline.models import load_model
from pipeline.params import PredictParams
from pipeline.submission import submission_csv, validate_submission
from pipeline.training import accuracy, log_loss
from pipeline.tta import predict_views


def predict_folds(data: dict, x_test: np.ndarray, n_folds: int, cfg: PredictParams) -> dict[str, np.ndarray]:
    """Return per-view OOF probabilities (views, n_train, 10) and fold-averaged test probabilities."""
    views = cfg.tta_views + 1
    oof = np.zeros((views, len(data["y"]), 10), np.float32)
    test = np.zeros((views, len(x_test), 10), np.float32)
    for fold in range(n_folds):
        model = load_model(str(paths.fold_model(fold)))
        rows = np.flatnonzero(data["fold"] == fold)
        oof[:, rows] = predict_views(model, data["x"][rows], cfg.tta_views, cfg.batch_size)
        test += predict_views(model, x_test, cfg.tta_views, cfg.batch_size) / n_folds
        print(f"predict: fold {fold + 1}/{n_folds} done ({views} views)", flush=True)
    return {"oof_views": oof, "test_views": test}


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
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__)
    parser.add_argument("--tta-views", type=int, default=cfg.tta_views, help="views besides the original")
    args = parser.parse_args(argv)
    cfg = PredictParams(tta_views=args.tta_views, batch_size=cfg.batch_size)
    n_folds = params.load("train").folds
    device = configure()
    start = time.perf_counter()
    data, x_test = read_npz(paths.TRAIN_NPZ), read_npz(paths.TEST_NPZ)["x"]
    try:
        out = predict_folds(data, x_test, n_folds, cfg)
        report = tta_report(out["oof_views"], data["y"])
        probs = out["test_views"].mean(axis=0)
        write_npz(paths.TEST_PROBS_NPZ, probs=probs, views=out["test_views"])
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        stamped = write_submission(np.argmax(probs, axis=1), stamp)
        write_json(paths.PREDICT_JSON, {**report, "tta_views": cfg.tta_views, "test_rows": len(x_test)})
    except (OutputError, InputError, FileNotFoundError, ValueError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"predict: OOF accuracy {report['oof_accuracy']:.5f} without TTA, {report['oof_tta_accuracy']:.5f} with "
        f"{cfg.tta_views} views (gain {report['tta_gain']:+.5f}); {time.perf_counter() - start:.0f}s on "
        f"{device.describe()} -> {paths.LATEST_SUBMISSION} (copy {stamped})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
