"""Stage `train`: k-fold training of the chosen model (default: the dropout CNN) on each fold's
training rows plus their augmented copies, with tune's best parameters.

Reads data/processed/{train,augmented}.npz and data/processed/best_params.json. Writes per fold
models/folds/fold{k}.keras, fold{k}_oof.npz and fold{k}.json, and reports/history/fold{k}.csv;
overall models/oof.npz and reports/metrics.json. A killed run resumes: finished folds are kept,
the interrupted fold restarts from its last epoch checkpoint in models/checkpoints/."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import keras
import numpy as np

from pipeline import params, paths, progress
from pipeline.device import Device, configure
from pipeline.files import (
    OutputError,
    read_json,
    read_npz,
    remove_partials,
    write_json,
    write_npz,
    write_text,
    write_with,
)
from pipeline.params import TrainParams
from pipeline.training import EpochSampler, FitSettings, accuracy, fingerprint_of, fit, log_loss, predict_probs

TUNABLE = ("learning_rate", "batch_size", "dropout_conv", "dropout_dense", "aug_prob")


def fit_settings(cfg: TrainParams, model: str, tuned: dict | None) -> FitSettings:
    """Return the fit settings from train params, overridden by `tuned` parameters when given."""
    base = FitSettings(
        model=model,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_epochs=cfg.warmup_epochs,
        dropout_conv=cfg.dropout_conv,
        dropout_dense=cfg.dropout_dense,
        aug_prob=cfg.aug_prob,
        label_smoothing=cfg.label_smoothing,
    )
    if not (cfg.use_tuned and tuned):
        return base
    return replace(base, **{k: type(getattr(base, k))(v) for k, v in tuned.items() if k in TUNABLE})


def read_tuned(path: Path = paths.BEST_PARAMS) -> dict | None:
    """Return the best parameters tune wrote at `path`, or None when there are none."""
    if not path.is_file():
        return None
    return read_json(path).get("params") or None


def file_digest(path: Path) -> str:
    """Return the SHA-256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def history_csv(history: list[dict]) -> str:
    """Return the per-epoch history as CSV text (epoch first)."""
    keys = ["epoch", *sorted(k for k in history[0] if k != "epoch")] if history else ["epoch"]
    lines = [",".join(keys)] + [",".join(f"{row[k]:.6g}" for k in keys) for row in history]
    return "\n".join(lines) + "\n"


def fold_is_done(fold: int, fingerprint: str) -> bool:
    """Return True when fold `fold` already has a finished model with this `fingerprint`."""
    meta = paths.fold_meta(fold)
    return (
        meta.is_file()
        and paths.fold_model(fold).is_file()
        and paths.fold_oof(fold).is_file()
        and read_json(meta).get("fingerprint") == fingerprint
    )


def checkpoint_epochs(fold: int, fingerprint: str) -> int:
    """Return how many epochs fold `fold`'s checkpoint holds for this `fingerprint` (0 when none matches)."""
    state = paths.fold_checkpoint_dir(fold) / "state.json"
    if not state.is_file() or not (paths.fold_checkpoint_dir(fold) / "last.keras").is_file():
        return 0
    doc = read_json(state)
    return len(doc.get("history", [])) if doc.get("fingerprint") == fingerprint else 0


def remove_stale_partials(n_folds: int) -> None:
    """Delete temporary files that a killed run left beside train's outputs."""
    own = [(paths.FOLDS_DIR, "*"), (paths.HISTORY_DIR, "*"), (paths.OOF_NPZ.parent, paths.OOF_NPZ.name)]
    own += [(paths.METRICS_JSON.parent, paths.METRICS_JSON.name)]
    own += [(paths.fold_checkpoint_dir(k), "*") for k in range(n_folds)]
    for folder, name in own:
        for path in remove_partials(folder, name):
            progress.note(f"train: removed {path}, left by an interrupted run")


def train_fold(
    fold: int, data: dict, aug: dict, cfg: FitSettings, seed: int, device: Device, fingerprint: str, verbose: int
) -> dict:
    """Train fold `fold` (resuming from its checkpoint) and write its model, OOF probabilities and history."""
    keras.utils.set_random_seed(seed + fold)
    train_rows = np.flatnonzero(data["fold"] != fold)
    val_rows = np.flatnonzero(data["fold"] == fold)
    sampler = EpochSampler(data["x"], data["y"], train_rows, aug["x"], aug["source"], seed + 1000 * fold)
    start = time.perf_counter()

    bar = progress.progress(cfg.epochs, f"fold {fold}", unit="epoch", lines=False, leave=False)

    def report(epoch: int, row: dict) -> None:
        bar.update(epoch + 1 - bar.n)
        bar.set_postfix_str(f"val_acc {row['val_accuracy']:.4f}")
        progress.note(
            f"  fold {fold} epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
            f"val_acc {row['val_accuracy']:.4f} lr {row['lr']:.2e} ({row['seconds']:.1f}s)"
        )

    done = checkpoint_epochs(fold, fingerprint)
    if done:
        progress.note(f"train: fold {fold} resumes after epoch {done}/{cfg.epochs} ({paths.fold_checkpoint_dir(fold)})")
    with bar:
        model, history = fit(
            cfg,
            sampler,
            (data["x"][val_rows], data["y"][val_rows]),
            device.jit_compile,
            report,
            paths.fold_checkpoint_dir(fold),
            fingerprint,
            verbose,
        )
    probs = predict_probs(model, data["x"][val_rows])
    meta = {
        "fold": fold,
        "fingerprint": fingerprint,
        "accuracy": accuracy(probs, data["y"][val_rows]),
        "loss": log_loss(probs, data["y"][val_rows]),
        "epochs": len(history),
        "settings": asdict(cfg),
        "device": device.describe(),
        "seconds": time.perf_counter() - start,
        "train_rows": len(train_rows),
        "history": history,
    }
    write_with(paths.fold_model(fold), model.save, suffix=".keras")
    write_npz(paths.fold_oof(fold), rows=val_rows, probs=probs)
    write_text(paths.fold_history(fold), history_csv(history))
    write_json(paths.fold_meta(fold), meta)
    shutil.rmtree(paths.fold_checkpoint_dir(fold), ignore_errors=True)
    return meta


def collect_oof(n_rows: int, n_folds: int) -> np.ndarray:
    """Return the (n_rows, 10) out-of-fold probabilities assembled from every fold's file."""
    probs = np.full((n_rows, 10), np.nan, dtype=np.float32)
    for fold in range(n_folds):
        part = read_npz(paths.fold_oof(fold))
        probs[part["rows"]] = part["probs"]
    if np.isnan(probs).any():
        raise RuntimeError("some rows have no out-of-fold prediction: fold files are incomplete")
    return probs


def train_all(cfg: FitSettings, n_folds: int, seed: int, device: Device, verbose: int = 0) -> dict:
    """Train every fold not already done, then write the OOF probabilities and metrics; return them."""
    data, aug = read_npz(paths.TRAIN_NPZ), read_npz(paths.AUGMENTED_NPZ)
    if int(data["fold"].max()) + 1 != n_folds:
        raise ValueError(f"{paths.TRAIN_NPZ} holds {int(data['fold'].max()) + 1} folds but train.folds is {n_folds}")
    data_id = [file_digest(paths.TRAIN_NPZ), file_digest(paths.AUGMENTED_NPZ)]
    folds = {}
    remove_stale_partials(n_folds)
    with progress.progress(n_folds, "train", unit="fold", lines=False) as fold_bar:
        for fold in range(n_folds):
            fingerprint = fingerprint_of(cfg, seed, fold, data_id)
            if fold_is_done(fold, fingerprint):
                folds[fold] = read_json(paths.fold_meta(fold))
                write_text(
                    paths.fold_history(fold), history_csv(folds[fold].get("history", []))
                )  # DVC removed reports/history
                shutil.rmtree(paths.fold_checkpoint_dir(fold), ignore_errors=True)  # left if killed after the fold
                progress.note(
                    f"train: fold {fold} already trained with these settings (accuracy {folds[fold]['accuracy']:.4f})"
                )
                fold_bar.update(1)
                continue
            progress.note(f"train: fold {fold + 1}/{n_folds} on {device.describe()}")
            folds[fold] = train_fold(fold, data, aug, cfg, seed, device, fingerprint, verbose)
            progress.note(
                f"train: fold {fold} OOF accuracy {folds[fold]['accuracy']:.4f} in {folds[fold]['seconds']:.0f}s"
            )
            fold_bar.update(1)
    probs = collect_oof(len(data["y"]), n_folds)
    write_npz(paths.OOF_NPZ, probs=probs, y=data["y"], fold=data["fold"])
    metrics = {
        "oof": {"accuracy": accuracy(probs, data["y"]), "loss": log_loss(probs, data["y"])},
        "folds": {f"fold{k}": {"accuracy": m["accuracy"], "loss": m["loss"]} for k, m in folds.items()},
        "seconds_per_epoch": float(np.mean([m["seconds"] / max(1, m["epochs"]) for m in folds.values()])),
    }
    write_json(paths.METRICS_JSON, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, train every fold, and print the OOF accuracy."""
    cfg = params.load("train")
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__)
    parser.add_argument("--epochs", type=int, default=cfg.epochs, help="epochs per fold (default from params.yaml)")
    parser.add_argument("--verbose", type=int, default=0, help="Keras progress output (0, 1 or 2)")
    args = parser.parse_args(argv)
    settings = replace(fit_settings(cfg, params.load("model").name, read_tuned()), epochs=args.epochs)
    device = configure()
    start = time.perf_counter()
    print(f"train: {settings.model}, {cfg.folds} folds x {settings.epochs} epochs on {device.describe()}")
    print(f"train: settings {asdict(settings)}")
    try:
        metrics = train_all(settings, cfg.folds, params.seed(), device, args.verbose)
    except (OutputError, ValueError, FileNotFoundError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    progress.finish(
        "train",
        start,
        device.describe(),
        f"OOF accuracy {metrics['oof']['accuracy']:.5f}, loss {metrics['oof']['loss']:.4f} -> {paths.METRICS_JSON}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
