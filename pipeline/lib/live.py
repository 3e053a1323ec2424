"""Per-epoch training metrics through DVCLive, in train's folder reports/live/ (not a stage):
plots/metrics/<model>/fold<k>/<metric>.tsv holds one row per epoch (step = epoch, from 1) of loss, accuracy,
val_loss, val_accuracy and lr, for `dvc plots show`; metrics.json holds the epoch just finished (fold, epoch and
its metrics: numbers only, as every DVC metric here), which `dvc exp show` shows while train runs. Every train run
starts the folder afresh and logs each fold's recorded history first (a finished fold's metadata, a resumed fold's
checkpoint), then the new epochs as they end, so after a kill and resume it holds exactly the epochs the models were
trained for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import paths

LOGGED = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


def open_live(folder: Path = paths.LIVE_DIR) -> Any:
    """Return a DVCLive logger writing to `folder`, emptied first (no experiment saved: dvc exp run does that)."""
    from dvclive import Live

    return Live(dir=str(folder), resume=False, save_dvc_exp=False, dvcyaml=None)


def log_epoch(live: Any, model: str, fold: int, row: dict) -> None:
    """Log the history row `row` (epoch, loss, accuracy, ...) of `model`'s fold `fold` and make it the summary."""
    live.step = int(row["epoch"])
    values = {name: float(row[name]) for name in LOGGED if name in row}
    for name, value in values.items():
        live.log_metric(f"{model}/fold{fold}/{name}", value)
    live.summary = {"fold": fold, "epoch": int(row["epoch"]), **values}  # the model is in the plots' path
    live.make_summary()


def log_history(live: Any, model: str, fold: int, history: list[dict]) -> None:
    """Log every row of a recorded `history` of `model`'s fold `fold`, in epoch order."""
    for row in history:
        log_epoch(live, model, fold, row)
