"""`python -m pipeline.compare`: trains each model of the zoo on the same folds, rows and budget
(params.yaml `compare:`, with train's batch size, schedule and augmentation mix, and each model's
`model.overrides`), and writes reports/models.md and reports/models.json: OOF accuracy and loss,
parameter count, seconds per epoch on this machine, and the accuracy each model is published with.

Reads data/processed/train.npz (its folds) and data/processed/augmented.npz when present."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import keras
import numpy as np
from sklearn.model_selection import train_test_split

from pipeline import params, paths
from pipeline.cli import fail, reports_errors, stage_parser
from pipeline.device import Device, configure
from pipeline.ensemble import choose_weights, ensemble_report
from pipeline.files import OutputError, read_npz, require, write_json, write_text
from pipeline.models import PUBLISHED, check_name
from pipeline.params import CompareParams
from pipeline.train import fit_settings, settings_for
from pipeline.training import EpochSampler, FitSettings, accuracy, fit, log_loss, predict_probs


def check_compare(cfg: CompareParams, n_folds: int) -> None:
    """Raise ValueError unless every model exists and every fold is one of the `n_folds` in train.npz."""
    for name in cfg.models:
        check_name(name)
    if not cfg.models or not cfg.folds:
        raise ValueError("compare.models and compare.folds must each name at least one entry")
    bad = [f for f in cfg.folds if not 0 <= f < n_folds]
    if bad:
        raise ValueError(f"compare.folds {bad} are not folds of train.npz (it holds folds 0-{n_folds - 1})")
    if cfg.epochs < 1:
        raise ValueError(f"compare.epochs must be at least 1, got {cfg.epochs}")


def split_rows(
    folds: np.ndarray, labels: np.ndarray, fold: int, max_rows: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return (training rows, held-out rows) of `fold`, training rows stratified-subsampled to `max_rows`."""
    val = np.flatnonzero(folds == fold)
    train = np.flatnonzero(folds != fold)
    if max_rows and max_rows < len(train):
        train, _ = train_test_split(train, train_size=max_rows, stratify=labels[train], random_state=seed)
        train = np.sort(train)
    return train, val


def compare_model(
    settings: FitSettings, data: dict, aug: dict, cfg: CompareParams, seed: int, device: Device | None = None
) -> tuple[dict, np.ndarray]:
    """Train `settings.model` on each compared fold; return its report row and OOF probabilities (fold order)."""
    probs, labels, seconds, train_rows = [], [], [], []
    count = 0
    for fold in cfg.folds:
        rows, val_rows = split_rows(data["fold"], data["y"], fold, cfg.max_train_rows, seed + fold)
        keras.utils.set_random_seed(seed + fold)
        sampler = EpochSampler(data["x"], data["y"], rows, aug["x"], aug["source"], seed + 1000 * fold)
        val = (data["x"][val_rows], data["y"][val_rows])
        model, history = fit(settings, sampler, val, device)
        probs.append(predict_probs(model, val[0]))
        labels.append(val[1])
        seconds += [row["seconds"] for row in history]
        train_rows.append(len(rows))
        count = model.count_params()
        keras.backend.clear_session()
    oof, y = np.concatenate(probs), np.concatenate(labels)
    row = {
        "model": settings.model,
        "oof_accuracy": accuracy(oof, y),
        "oof_loss": log_loss(oof, y),
        "params": count,
        "seconds_per_epoch": float(np.median(seconds)),
        "epochs": settings.epochs,
        "folds": list(cfg.folds),
        "train_rows": train_rows,
        "val_rows": len(y),
        "published": PUBLISHED[settings.model],
        "settings": asdict(settings),
    }
    return row, oof


def compare(
    base: FitSettings,
    data: dict,
    aug: dict,
    cfg: CompareParams,
    overrides: dict[str, dict],
    seed: int,
    device: Device | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train every model of `cfg.models` with the same folds, rows and budget; return the rows and an OOF blend."""
    check_compare(cfg, int(data["fold"].max()) + 1)
    rows, oofs = [], []
    for name in cfg.models:
        start = time.perf_counter()
        settings = replace(settings_for(base, name, overrides), epochs=cfg.epochs)
        row, oof = compare_model(settings, data, aug, cfg, seed, device)
        rows.append(row)
        oofs.append(oof)
        log(
            f"compare: {name}: OOF accuracy {row['oof_accuracy']:.4f}, {row['params']:,} parameters, "
            f"{row['seconds_per_epoch']:.1f} s/epoch ({time.perf_counter() - start:.0f}s)"
        )
    labels = np.concatenate([data["y"][data["fold"] == f] for f in cfg.folds])
    blend = ensemble_report(oofs, labels, choose_weights(oofs, labels, "log_loss")) if len(oofs) > 1 else None
    return {"rows": rows, "blend": blend}


def markdown(result: dict, device: str) -> str:
    """Return reports/models.md: one table row per model, then the OOF-weighted blend."""
    rows = result["rows"]
    first = rows[0]
    lines = [
        "# Model zoo comparison",
        "",
        f"Same folds ({', '.join(map(str, first['folds']))}), {first['epochs']} epochs each, "
        f"{'/'.join(map(str, first['train_rows']))} training rows per fold, OOF accuracy over {first['val_rows']} "
        f"held-out rows; {device}. Seconds per epoch include sampling and scoring the held-out fold (median).",
        "",
        "| model | OOF accuracy | OOF log loss | parameters | s/epoch | published |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['model']} | {r['oof_accuracy']:.4f} | {r['oof_loss']:.4f} | {r['params']:,} | "
        f"{r['seconds_per_epoch']:.1f} | {r['published']} |"
        for r in rows
    ]
    if result["blend"]:
        weights = ", ".join(f"{r['model']} {w:.2f}" for r, w in zip(rows, result["blend"]["weights"], strict=True))
        lines += [
            "",
            f"OOF log-loss-weighted blend ({weights}): accuracy {result['blend']['blend']['accuracy']:.4f}, "
            f"log loss {result['blend']['blend']['loss']:.4f} (weights fitted on these same OOF rows, so optimistic).",
        ]
    return "\n".join(lines) + "\n"


@reports_errors("compare")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, train the compared models, and write reports/models.{md,json}."""
    cfg = params.load("compare")
    parser = stage_parser("compare", __doc__)
    parser.add_argument("--models", nargs="+", default=cfg.models, help="models to compare (default from params.yaml)")
    parser.add_argument("--epochs", type=int, default=cfg.epochs, help="epochs per model and fold")
    args = parser.parse_args(argv)
    cfg = replace(cfg, models=args.models, epochs=args.epochs)
    model_cfg = params.load("model")
    base = fit_settings(params.load("train"), model_cfg.name, None)
    device = configure(params.load("device").precision)
    data = read_npz(require(paths.TRAIN_NPZ, "ingest"))
    aug = (
        read_npz(paths.AUGMENTED_NPZ)
        if paths.AUGMENTED_NPZ.is_file()
        else {"x": data["x"][:0], "source": np.empty(0, np.int64)}
    )
    print(f"compare: {', '.join(cfg.models)} on folds {cfg.folds}, {cfg.epochs} epochs, on {device.describe()}")
    try:
        result = compare(base, data, aug, cfg, model_cfg.overrides, params.seed(), device)
        write_json(paths.MODELS_JSON, {**result, "device": device.describe()})
        write_text(paths.MODELS_MD, markdown(result, device.describe()))
    except (OutputError, ValueError) as exc:
        return fail("compare", exc)
    print(f"compare: -> {paths.MODELS_MD}, {paths.MODELS_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
