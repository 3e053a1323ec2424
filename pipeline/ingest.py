"""Stage `ingest`: reads train.csv and test.csv (data/raw/ or the competition zip there), validates
them, assigns stratified folds once, and writes data/processed/train.npz (x, y, fold) and
data/processed/test.npz (x)."""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.model_selection import StratifiedKFold

from pipeline import params, paths
from pipeline.lib import progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.competition_csv import InputError, RawSource, locate_raw, parse_test, parse_train, read_member
from pipeline.lib.files import OutputError, write_npz_set
from pipeline.params import IngestParams


def assign_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Return a stratified fold id (0..n_folds-1) for every label, seeded."""
    counts = np.bincount(labels, minlength=10)
    if counts.min() < n_folds:
        raise ValueError(f"every digit needs at least {n_folds} training rows for {n_folds} folds; counts {counts}")
    folds = np.empty(len(labels), dtype=np.int8)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[val_idx] = fold
    return folds


def ingest(
    source: RawSource, cfg: IngestParams, n_folds: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read and validate `source`; return the train arrays (x, y, fold) and test arrays (x)."""
    x, y = parse_train(read_member(source, "train.csv"), source.describe("train.csv"))
    x_test = parse_test(read_member(source, "test.csv"), source.describe("test.csv"), cfg.expected_test_rows)
    if cfg.max_train_rows:
        x, y = x[: cfg.max_train_rows], y[: cfg.max_train_rows]
        short = np.flatnonzero(np.bincount(y, minlength=10) < n_folds).tolist()
        if short:
            raise ValueError(
                f"params.yaml ingest.max_train_rows: {cfg.max_train_rows} keeps fewer than train.folds = {n_folds} "
                f"rows of digit(s) {short}: raise it (null keeps every row)"
            )
    if cfg.max_test_rows:
        x_test = x_test[: cfg.max_test_rows]
    folds = assign_folds(y, n_folds, seed)
    return {"x": x, "y": y, "fold": folds}, {"x": x_test}


@reports_errors("ingest")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, ingest the raw data, and write the processed arrays."""
    parser = stage_parser("ingest", __doc__)
    parser.parse_args(argv)
    start = time.perf_counter()
    try:
        cfg, n_folds = params.load("ingest"), params.load("train").folds
        train, test = ingest(locate_raw(), cfg, n_folds, params.seed())
        write_npz_set({paths.TRAIN_NPZ: train, paths.TEST_NPZ: test})  # both replaced, or neither
    except (FileNotFoundError, InputError, OutputError, ValueError) as exc:
        return fail("ingest", exc)
    counts = np.bincount(train["y"], minlength=10)
    progress.finish(
        "ingest",
        start,
        "CPU",
        f"{len(train['y'])} training rows ({n_folds} stratified folds), {len(test['x'])} test rows; "
        f"class counts {counts.tolist()} -> {paths.TRAIN_NPZ}, {paths.TEST_NPZ}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
