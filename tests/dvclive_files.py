"""Reads back what pipeline/lib/live.py logged through DVCLive (a test helper: the pipeline only writes it)."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline import paths
from pipeline.lib import live


def fold_series(model: str, fold: int, folder: Path = paths.LIVE_DIR) -> Path:
    """Return the folder of `model`'s fold `fold` per-epoch series (<metric>.tsv, DVCLive's layout)."""
    return Path(folder) / "plots" / "metrics" / model / f"fold{fold}"


def read_history(model: str, fold: int, folder: Path = paths.LIVE_DIR) -> list[dict]:
    """Return the logged epochs of `model`'s fold `fold` as rows {epoch, metric: value, ...}; ValueError if an epoch
    repeats or the epochs are out of order in any file."""
    rows: dict[int, dict] = {}
    for name in live.LOGGED:
        path = fold_series(model, fold, folder) / f"{name}.tsv"
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as fh:
            steps = [(int(r["step"]), float(r[name])) for r in csv.DictReader(fh, delimiter="\t")]
        if [s for s, _ in steps] != sorted({s for s, _ in steps}):
            raise ValueError(f"{path}: epochs out of order or logged twice: {[s for s, _ in steps]}")
        for step, value in steps:
            rows.setdefault(step, {"epoch": step})[name] = value
    return [rows[step] for step in sorted(rows)]
