"""Reads back what a train unit logged through DVCLive (a test helper: the pipeline only writes it)."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline import paths

SERIES = {"loss": "train/loss", "accuracy": "train/accuracy", "lr": "train/lr", "val_loss": "eval/loss"}
SERIES |= {"val_accuracy": "eval/accuracy"}  # Keras' names -> DVCLive's Keras naming


def read_history(model: str, fold: int) -> list[dict]:
    """Return the logged epochs of `model`'s fold `fold` as rows {epoch (from 1), metric: value}; ValueError if an
    epoch repeats or the epochs are out of order in any file."""
    rows: dict[int, dict] = {}
    for name, series in SERIES.items():
        path = paths.fold_live_dir(model, fold) / "plots" / "metrics" / f"{series}.tsv"
        with path.open(newline="", encoding="utf-8") as fh:
            steps = [(int(r["step"]), float(r[Path(series).name])) for r in csv.DictReader(fh, delimiter="\t")]
        if [s for s, _ in steps] != list(range(len(steps))):
            raise ValueError(f"{path}: epochs out of order or logged twice: {[s for s, _ in steps]}")
        for step, value in steps:
            rows.setdefault(step, {"epoch": step + 1})[name] = value
    return [rows[step] for step in sorted(rows)]
