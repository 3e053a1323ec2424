"""Stage `train`: one fold of one ensemble member, a unit of dvc.yaml's matrix over params.yaml derived.members x
derived.folds (`python -m pipeline.train --member bn_lite --fold 2`; without them, every unit in turn). The member's
settings are lib/members' (train:, its model.overrides, tune's best values for model.name with train.use_tuned).

Reads data/processed/{train,augmented}.npz, data/processed/best_params.json and data/exclude_rows.csv (rows left out
of every fold's training rows, their augmented copies with them). Trains on the other folds' rows and their copies
in one Keras model.fit, and writes models/folds/<member>/fold<k>/: model.keras, oof.npz (the held-out rows'
probabilities, and the record of what trained it: the rows whose images and whose augmented copies it drew) and
meta.json (scores, settings, seconds, per-epoch history and the digest of the training data, which predict checks);
its per-epoch metrics go through DVCLive's Keras callback to reports/live/<member>/fold<k>/. A killed unit resumes
from its last finished epoch (models/checkpoints/<member>/fold<k>/, Keras' BackupAndRestore), with the result it
would have had; a second trainer of the same unit stops at once, and a trainer that dvc ran ends when that dvc ends."""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
import psutil

from pipeline import params, paths
from pipeline.lib import progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.device import DevicePlan, configure
from pipeline.lib.exclusions import kept_mask, read_exclusions
from pipeline.lib.files import OutputError, read_json, write_json, write_npz, write_with
from pipeline.lib.fitting import EpochSampler, fit, history_row, monitor_subset, predict_probs, resumed_epochs
from pipeline.lib.live import LiveEpochs
from pipeline.lib.members import FitSettings, member_seed, member_settings, members
from pipeline.lib.metrics import scores
from pipeline.lib.training_data import TrainingData, read_training_data, training_digest


def read_tuned(path: Path = paths.BEST_PARAMS) -> dict | None:
    """Return the best parameters tune wrote at `path`, or None when there are none."""
    return (read_json(path).get("params") or None) if path.is_file() else None


def fold_rows(data: TrainingData, fold: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return fold `fold`'s training rows (the other folds' rows minus `excluded`) and its held-out rows."""
    return np.flatnonzero((data.fold != fold) & kept_mask(len(data.y), excluded)), np.flatnonzero(data.fold == fold)


def claim(folder: Path) -> Any:
    """Create the unit's checkpoint `folder` and hold its lock (released when this process ends); raise OutputError
    when another trainer holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder.parent / f"{folder.name}.lock", "w")  # noqa: SIM115 -- held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(f"another trainer is training {folder} (its lock {handle.name} is held)") from None
    return handle


SHELLS = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh"})


def dvc_chain() -> list[psutil.Process]:
    """Return the processes from this one's parent up to the dvc that ran this stage (DVC runs each command in `$SHELL
    -c`, and dash keeps itself between them), or [] when dvc did not start it (no DVC_STAGE in the environment)."""
    if "DVC_STAGE" not in os.environ:
        return []
    chain = []
    for proc in psutil.Process().parents():
        chain.append(proc)
        if proc.name() not in SHELLS:
            break
    return chain


def alive(proc: psutil.Process) -> bool:
    """Return whether `proc` still runs (not ended, not a zombie, its pid not reused)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end_with_dvc() -> None:
    """End this process within a fifth of a second of the dvc that ran it (or a shell between them) ending: killed,
    it would otherwise train on beside the rerun. Started by hand (`nohup python -m pipeline.train`), it trains on."""
    chain = dvc_chain()

    def watch() -> None:
        while all(alive(proc) for proc in chain):
            time.sleep(0.2)
        os._exit(1)

    if chain:
        threading.Thread(target=watch, daemon=True).start()


def train_unit(
    cfg: FitSettings, fold: int, data: TrainingData, seed: int, device: DevicePlan, monitor: int | None
) -> dict:
    """Train member `cfg.model`'s fold `fold` (resuming from its checkpoint) and write its model, OOF probabilities
    with the record of its training rows, and meta.json; return the meta."""
    start, checkpoint = time.perf_counter(), paths.fold_checkpoint_dir(cfg.model, fold)
    lock = claim(checkpoint)
    seed = member_seed(seed, cfg.model)
    keras.utils.set_random_seed(seed + fold)
    train_rows, val_rows = fold_rows(data, fold, read_exclusions(len(data.y)))
    sampler = EpochSampler(data.x, data.y, train_rows, data.aug.x, data.aug.source, seed + 1000 * fold)
    watch = monitor_subset(val_rows, data.y, monitor, seed + fold)
    epochs = resumed_epochs(checkpoint)
    done = read_json(checkpoint / "history.json")["rows"][:epochs] if epochs else []
    if done:
        progress.note(f"train: {cfg.model} fold {fold} resumes after epoch {len(done)}/{cfg.epochs} ({checkpoint})")
    history = HistoryFile(checkpoint, done, f"{cfg.model} fold {fold}")
    callbacks = [history, LiveEpochs(paths.fold_live_dir(cfg.model, fold), done)]
    model, _ = fit(cfg, sampler, (data.x[watch], data.y[watch]), device, callbacks, checkpoint)
    probs = predict_probs(model, data.x[val_rows])
    trained, copied = sampler.drawn_sources(data.aug.source, cfg.epochs, cfg.aug_prob)
    meta = {
        "fold": fold,
        **scores(probs, data.y[val_rows]),
        "epochs": cfg.epochs,
        "settings": asdict(cfg),
        "device": device.describe(),
        "seconds": time.perf_counter() - start,
        "train_rows": len(train_rows),
        "history": history.rows,
        "train_data": training_digest(data.x, data.y, data.fold),
    }
    write_with(paths.fold_model(cfg.model, fold), model.save, suffix=".keras")
    write_npz(paths.fold_oof(cfg.model, fold), rows=val_rows, probs=probs, trained_rows=trained, copied_rows=copied)
    write_json(paths.fold_meta(cfg.model, fold), meta)
    Path(lock.name).unlink(missing_ok=True)
    lock.close()
    return meta


class HistoryFile(keras.callbacks.Callback):
    """Keeps every epoch's row (lib/fitting.history_row) in the checkpoint folder's history.json, written before the
    checkpoint of that epoch, so a resumed unit knows the epochs trained before the kill."""

    def __init__(self, folder: Path, rows: list[dict], unit: str) -> None:
        super().__init__()
        self.folder, self.rows, self.unit, self.start = folder, list(rows), unit, time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Record epoch `epoch`'s metrics and learning rate."""
        row = {**history_row(epoch, logs or {}), "seconds": time.perf_counter() - self.start}
        self.rows = [*self.rows[:epoch], row]
        write_json(self.folder / "history.json", {"rows": self.rows})
        progress.note(
            f"  {self.unit} epoch {epoch + 1}/{self.params['epochs']}: loss {row['loss']:.4f} "
            f"acc {row['accuracy']:.4f} val_acc {row['val_accuracy']:.4f} lr {row['lr']:.2e} ({row['seconds']:.1f}s)"
        )
        self.start = time.perf_counter()


def units(members: list[str], folds: int, member: str | None, fold: int | None) -> list[tuple[str, int]]:
    """Return the (member, fold) units to train: the one named, or every one."""
    if member is not None and member not in members:
        raise ValueError(f"--member {member}: not a member of this ensemble ({', '.join(members)})")
    if fold is not None and not 0 <= fold < folds:
        raise ValueError(f"--fold {fold}: expected 0 to {folds - 1} (train.folds = {folds})")
    return [
        (m, k) for m in members for k in range(folds) if m == (member or m) and k == (fold if fold is not None else k)
    ]


@reports_errors("train")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI and train the unit (or every unit), printing its OOF accuracy."""
    parser = stage_parser("train", __doc__)
    parser.add_argument("--member", help="the member to train (default: every member)")
    parser.add_argument("--fold", type=int, help="the fold to train (default: every fold)")
    parser.add_argument("--verbose", type=int, default=0, help="Keras progress output (0, 1 or 2)")
    args = parser.parse_args(argv)
    cfg, model = params.load("train"), params.load("model")
    try:
        todo = units(members(model), cfg.folds, args.member, args.fold)
        settings = {m: member_settings(cfg, model, m, read_tuned()) for m in dict(todo)}  # checked before any work
        data = read_training_data()
        if data.n_folds != cfg.folds:
            raise ValueError(f"{paths.TRAIN_NPZ} holds {data.n_folds} folds but train.folds is {cfg.folds}")
    except (OutputError, ValueError, FileNotFoundError) as exc:
        return fail("train", exc)
    end_with_dvc()
    device = configure(params.load("device").precision)
    for member, fold in todo:
        print(f"train: {member} fold {fold} of {cfg.folds}, {cfg.epochs} epochs on {device.describe()}")
        try:
            meta = train_unit(settings[member], fold, data, params.seed(), device, cfg.monitor_rows)
        except (OutputError, ValueError, FileNotFoundError) as exc:
            return fail("train", exc)
        print(f"train: {member} fold {fold} OOF accuracy {meta['accuracy']:.5f} in {meta['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
