"""Per-epoch training metrics through DVCLive, in each train unit's folder reports/live/<member>/fold<k>/:
plots/metrics/{train,eval}/<metric>.tsv (one row per epoch, for `dvc plots show`) and metrics.json (the epoch just
finished, live in `dvc exp show`), named as DVCLive's own Keras callback names them. That callback imports TensorFlow
(tf.keras), so the pipeline logs through DVCLive's Live API with a Keras 3 callback of its own: the same on every
backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras


class LiveEpochs(keras.callbacks.Callback):
    """Logs every epoch's metrics to a DVCLive folder, after the epochs a killed run had already logged there."""

    def __init__(self, folder: Path, history: list[dict]) -> None:
        super().__init__()
        from dvclive import Live

        self.live = Live(dir=str(folder), resume=False, save_dvc_exp=False, dvcyaml=None)
        for row in history:
            self.log({k: v for k, v in row.items() if k not in ("epoch", "seconds")})

    def log(self, logs: dict[str, Any]) -> None:
        """Log one epoch's metrics (Keras' names: loss, val_accuracy, ...) and move to the next step."""
        from dvclive.utils import standardize_metric_name

        for name, value in logs.items():
            self.live.log_metric(standardize_metric_name(name, "dvclive.keras"), float(value))
        self.live.next_step()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Log the epoch just finished (its `learning_rate`, which lib/fitting puts in the logs, as `lr`)."""
        self.log({"lr" if k == "learning_rate" else k: v for k, v in (logs or {}).items()})

    def on_train_end(self, logs: dict | None = None) -> None:
        """Close the DVCLive run."""
        self.live.end()
