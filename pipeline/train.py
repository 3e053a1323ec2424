"""Stage `train`: k-fold training of the chosen model (params.yaml model.name, default: the dropout
CNN) with tune's best parameters, then of each model.ensemble member (train settings plus its
model.overrides), all on the same folds: each fold's training rows plus their augmented copies.

Reads data/processed/{train,augmented}.npz, data/processed/best_params.json and data/exclude_rows.csv
(rows left out of every fold's training rows, their augmented copies with them). Writes per model and
fold models/folds/<model>/fold{k}.keras, fold{k}_oof.npz and fold{k}.json, and its per-epoch metrics
through DVCLive in reports/live/ (pipeline/lib/live.py); overall models/oof.npz (model.name's OOF probabilities) and
reports/metrics.json (model.name's OOF and fold metrics, every model's OOF metrics under "models", and
"oof_kept_rows": the OOF figures on the rows not excluded, which stay comparable as the list changes).
A killed run resumes: finished folds are kept, the interrupted fold restarts from its last epoch
checkpoint in models/checkpoints/<model>/."""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import keras
import numpy as np

from pipeline import params, paths
from pipeline.device import DevicePlan, configure
from pipeline.lib import live, progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.exclusions import kept_mask, read_exclusions
from pipeline.lib.files import (
    OutputError,
    read_json,
    read_npz,
    remove_partials,
    require,
    write_json,
    write_npz,
    write_with,
)
from pipeline.lib.fitting import (
    EpochSampler,
    FitSettings,
    checkpoint_history,
    fingerprint_of,
    fit,
    monitor_subset,
    predict_probs,
    scores,
)
from pipeline.lib.models import base_name, check_name, seed_offset
from pipeline.params import OVERRIDABLE, TUNABLE, FitParams, ModelParams, ParamsError, TrainParams, fit_setting

# The code that decides what a fold's model becomes (architecture, sampling, schedule, fit loop, rows and
# seeds): part of every fold's fingerprint, so finished folds are not reused after it changes.
TRAINING_CODE = tuple(
    Path(sys.modules[name].__file__) for name in ("pipeline.lib.models", "pipeline.lib.fitting", __name__)
)


def tuned_values(tuned: dict, where: str = str(paths.BEST_PARAMS)) -> dict:
    """Return tune's best values of the tunable settings in `tuned`, each checked and typed as its setting declares
    (never as the value it replaces: a tuned dropout of 0.25 stays 0.25 over a `dropout_conv: 0`)."""
    return {k: fit_setting(k, v, f"{where}: tuned") for k, v in tuned.items() if k in TUNABLE}


def fit_settings(cfg: TrainParams, model: str, tuned: dict | None) -> FitSettings:
    """Return the fit settings from train params, overridden by `tuned` parameters when given."""
    base = FitSettings(model=model, **{f.name: getattr(cfg, f.name) for f in fields(FitParams)})
    if not (cfg.use_tuned and tuned):
        return base
    return replace(base, **tuned_values(tuned))


def settings_for(base: FitSettings, name: str, overrides: dict[str, dict]) -> FitSettings:
    """Return `base` for model `name` with its per-model overrides (params.yaml model.overrides) applied; a seed
    member (`bn_cnn@2`) takes its model's overrides unless it has its own."""
    check_name(name)
    own = name if name in overrides else base_name(name)
    where = f"params.yaml model.overrides.{own}:"
    extra = dict(overrides.get(own) or {})
    unknown = sorted(set(extra) - set(OVERRIDABLE))
    if unknown:
        raise ParamsError(f"{where} unknown settings {unknown}; choose from {', '.join(OVERRIDABLE)}")
    return replace(base, model=name, **{k: fit_setting(k, v, where) for k, v in extra.items()})


def member_settings(cfg: TrainParams, model: ModelParams, tuned: dict | None) -> list[FitSettings]:
    """Return the fit settings of model.name (overrides, then tune's best values) and of each ensemble member
    (train settings plus its overrides; tuned values belong to model.name only)."""
    out = []
    for name in model.members():
        settings = settings_for(fit_settings(cfg, name, None), name, model.overrides)
        if name == model.name and cfg.use_tuned and tuned:
            settings = replace(settings, **tuned_values(tuned))
        out.append(settings)
    return out


def read_tuned(path: Path = paths.BEST_PARAMS) -> dict | None:
    """Return the best parameters tune wrote at `path`, or None when there are none."""
    if not path.is_file():
        return None
    return read_json(path).get("params") or None


def read_scored_fold(path: Path = paths.BEST_PARAMS) -> int | None:
    """Return the fold whose rows scored tune's trials (best_params.json `scored_fold`), or None when unknown."""
    fold = read_json(path).get("scored_fold") if path.is_file() else None
    return None if fold is None else int(fold)


def score_untuned_rows(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, scored_fold: int | None) -> dict:
    """Return OOF accuracy, loss and row count over the rows outside `scored_fold` (all rows when None):
    rows whose labels never chose the tuned settings."""
    keep = folds != scored_fold if scored_fold is not None else np.ones(len(labels), dtype=bool)
    return {**scores(probs[keep], labels[keep]), "rows": int(keep.sum())}


def score_kept_rows(probs: np.ndarray, labels: np.ndarray, excluded: np.ndarray) -> dict:
    """Return OOF accuracy, loss and row count over the rows not in `excluded`, with the excluded count."""
    keep = kept_mask(len(labels), excluded)
    return {**scores(probs[keep], labels[keep]), "rows": int(keep.sum()), "excluded": len(labels) - int(keep.sum())}


def member_seed(seed: int, name: str) -> int:
    """Return the seed model `name` trains from: `seed` itself, or for seed member `name@N` one far from the seeds
    any fold of the plain model uses (seed + fold, seed + 1000 x fold)."""
    return seed + 100_003 * seed_offset(name)


def fold_exclusions(folds: np.ndarray, excluded: np.ndarray, fold: int) -> list[int]:
    """Return the `excluded` rows that would otherwise train fold `fold` (those of the other folds)."""
    return [int(r) for r in excluded if folds[r] != fold]


def file_digest(path: Path) -> str:
    """Return the SHA-256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_digest() -> str:
    """Return the SHA-256 of the training code's source files (TRAINING_CODE)."""
    digest = hashlib.sha256()
    for path in TRAINING_CODE:
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


def fold_is_done(model: str, fold: int, fingerprint: str) -> bool:
    """Return True when `model`'s fold `fold` already has a finished model with this `fingerprint`."""
    meta = paths.fold_meta(model, fold)
    return (
        meta.is_file()
        and paths.fold_model(model, fold).is_file()
        and paths.fold_oof(model, fold).is_file()
        and read_json(meta).get("fingerprint") == fingerprint
    )


def checkpoint_epochs(model: str, fold: int, fingerprint: str) -> int:
    """Return how many epochs `model`'s fold `fold` checkpoint holds for this `fingerprint` (0 when none matches)."""
    return len(checkpoint_history(paths.fold_checkpoint_dir(model, fold), fingerprint) or [])


def remove_stale_partials(models: list[str], n_folds: int) -> None:
    """Delete temporary files that a killed run left beside train's outputs."""
    own = [(paths.OOF_NPZ.parent, paths.OOF_NPZ.name)]
    own += [(paths.METRICS_JSON.parent, paths.METRICS_JSON.name)]
    own += [(paths.model_dir(m), "*") for m in models]
    own += [(paths.fold_checkpoint_dir(m, k), "*") for m in models for k in range(n_folds)]
    for folder, name in own:
        for path in remove_partials(folder, name):
            progress.note(f"train: removed {path}, left by an interrupted run")


def train_fold(
    fold: int,
    data: dict,
    aug: dict,
    cfg: FitSettings,
    seed: int,
    device: DevicePlan,
    fingerprints: tuple[str, str],
    verbose: int,
    monitor_rows: int | None = None,
    excluded: np.ndarray | None = None,
    logger: object | None = None,
) -> dict:
    """Train fold `fold` on the other folds' rows minus `excluded` (resuming from its checkpoint) and write its
    model, OOF probabilities (every row of the fold, excluded or not) and history, logging each epoch to the
    DVCLive `logger` if given. `fingerprints`: the fold's fingerprint and its base fingerprint (the same
    settings and data, whatever rows are excluded)."""
    fingerprint, base_fingerprint = fingerprints
    keras.utils.set_random_seed(seed + fold)
    keep = kept_mask(len(data["y"]), np.zeros(0, np.int64) if excluded is None else excluded)
    train_rows = np.flatnonzero((data["fold"] != fold) & keep)
    val_rows = np.flatnonzero(data["fold"] == fold)
    sampler = EpochSampler(data["x"], data["y"], train_rows, aug["x"], aug["source"], seed + 1000 * fold)
    start = time.perf_counter()

    bar = progress.progress(cfg.epochs, f"fold {fold}", unit="epoch", lines=False, leave=False)

    def report(epoch: int, row: dict) -> None:
        bar.update(epoch + 1 - bar.n)
        bar.set_postfix_str(f"val_acc {row['val_accuracy']:.4f}")
        if logger is not None:
            live.log_epoch(logger, cfg.model, fold, row)
        progress.note(
            f"  fold {fold} epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
            f"val_acc {row['val_accuracy']:.4f} lr {row['lr']:.2e} ({row['seconds']:.1f}s)"
        )

    checkpoint_dir = paths.fold_checkpoint_dir(cfg.model, fold)
    done = checkpoint_epochs(cfg.model, fold, fingerprint)
    if not done and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
        progress.note(f"train: fold {fold} discarded {checkpoint_dir}: made with other settings, data or code")
    if done:
        progress.note(f"train: fold {fold} resumes after epoch {done}/{cfg.epochs} ({checkpoint_dir})")
        if logger is not None:
            live.log_history(logger, cfg.model, fold, checkpoint_history(checkpoint_dir, fingerprint) or [])
    with bar:
        watch = monitor_subset(val_rows, data["y"], monitor_rows, seed + fold)
        model, history = fit(
            cfg,
            sampler,
            (data["x"][watch], data["y"][watch]),
            device,
            report,
            checkpoint_dir,
            fingerprint,
            verbose,
        )
    probs = predict_probs(model, data["x"][val_rows])
    meta = {
        "fold": fold,
        "fingerprint": fingerprint,
        "base_fingerprint": base_fingerprint,
        **scores(probs, data["y"][val_rows]),
        "epochs": len(history),
        "settings": asdict(cfg),
        "device": device.describe(),
        "seconds": time.perf_counter() - start,
        "train_rows": len(train_rows),
        "history": history,
    }
    write_with(paths.fold_model(cfg.model, fold), model.save, suffix=".keras")
    write_npz(paths.fold_oof(cfg.model, fold), rows=val_rows, probs=probs)
    write_json(paths.fold_meta(cfg.model, fold), meta)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return meta


def collect_oof(model: str, n_rows: int, n_folds: int) -> np.ndarray:
    """Return `model`'s (n_rows, 10) out-of-fold probabilities assembled from every fold's file."""
    probs = np.full((n_rows, 10), np.nan, dtype=np.float32)
    for fold in range(n_folds):
        part = read_npz(paths.fold_oof(model, fold))
        probs[part["rows"]] = part["probs"]
    if np.isnan(probs).any():
        raise ValueError(
            f"some rows have no out-of-fold prediction of {model}: its fold files in {paths.model_dir(model)} are "
            "incomplete or from other data; delete them and rerun `dvc repro train`"
        )
    return probs


def train_model(
    cfg: FitSettings,
    data: dict,
    aug: dict,
    data_id: list[str],
    seed: int,
    device: DevicePlan,
    verbose: int,
    bar,
    monitor_rows: int | None = None,
    excluded: np.ndarray | None = None,
    logger: object | None = None,
) -> dict[int, dict]:
    """Train every fold of model `cfg.model` not already done (advancing progress `bar`), leaving the `excluded`
    rows out of its training rows; return each fold's meta. A fold's fingerprint covers the excluded rows among
    its training rows (nothing when there are none), so only folds whose training rows changed retrain."""
    folds = {}
    n_folds = int(data["fold"].max()) + 1
    excluded = np.zeros(0, np.int64) if excluded is None else excluded
    for fold in range(n_folds):
        left_out = fold_exclusions(data["fold"], excluded, fold)
        # the settings, the precision they computed in and the data, whatever rows are excluded
        base = fingerprint_of(cfg, seed, fold, data_id, device.precision)
        excluding = {"excluded_rows": left_out}
        fingerprint = fingerprint_of(cfg, seed, fold, data_id, device.precision, excluding) if left_out else base
        if fold_is_done(cfg.model, fold, fingerprint):
            folds[fold] = read_json(paths.fold_meta(cfg.model, fold))
            if logger is not None:  # the folder was started afresh: the fold's epochs first
                live.log_history(logger, cfg.model, fold, folds[fold].get("history", []))
            shutil.rmtree(paths.fold_checkpoint_dir(cfg.model, fold), ignore_errors=True)  # left if killed after it
            progress.note(
                f"train: fold {fold} already trained with these settings (accuracy {folds[fold]['accuracy']:.4f})"
            )
            bar.update(1)
            continue
        progress.note(f"train: {cfg.model} fold {fold + 1}/{n_folds} on {device.describe()}")
        folds[fold] = train_fold(
            fold, data, aug, cfg, seed, device, (fingerprint, base), verbose, monitor_rows, excluded, logger
        )
        progress.note(f"train: fold {fold} OOF accuracy {folds[fold]['accuracy']:.4f} in {folds[fold]['seconds']:.0f}s")
        bar.update(1)
    return folds


def train_all(
    models: list[FitSettings],
    n_folds: int,
    seed: int,
    device: DevicePlan,
    verbose: int = 0,
    monitor_rows: int | None = None,
    scored_fold: int | None = None,
) -> dict:
    """Train every model's folds not already done (the first model is model.name), then write model.name's
    OOF probabilities and the metrics (every model's OOF accuracy and loss under "models"; "oof_untuned_rows"
    leaves out `scored_fold`, the rows that chose the tuned settings); return the metrics."""
    data = read_npz(require(paths.TRAIN_NPZ, "ingest"))
    aug = read_npz(require(paths.AUGMENTED_NPZ, "augment"))
    if int(data["fold"].max()) + 1 != n_folds:
        raise ValueError(f"{paths.TRAIN_NPZ} holds {int(data['fold'].max()) + 1} folds but train.folds is {n_folds}")
    data_id = [file_digest(paths.TRAIN_NPZ), file_digest(paths.AUGMENTED_NPZ), code_digest()]  # data and code
    excluded = read_exclusions(len(data["y"]))
    if len(excluded):
        progress.note(f"train: {len(excluded)} rows of {paths.EXCLUDE_ROWS} left out of every fold's training rows")
    remove_stale_partials([m.model for m in models], n_folds)
    metas, oofs = {}, {}
    logger = live.open_live()
    with progress.progress(n_folds * len(models), "train", unit="fold", lines=False) as fold_bar:
        for cfg in models:
            if len(models) > 1:
                progress.note(f"train: model {cfg.model}, settings {asdict(cfg)}")
            metas[cfg.model] = train_model(
                cfg, data, aug, data_id, member_seed(seed, cfg.model), device, verbose, fold_bar, monitor_rows,
                excluded, logger,
            )  # fmt: skip
            oofs[cfg.model] = collect_oof(cfg.model, len(data["y"]), n_folds)
    primary = models[0].model
    probs, folds = oofs[primary], metas[primary]
    write_npz(paths.OOF_NPZ, probs=probs, y=data["y"], fold=data["fold"])
    metrics = {
        "oof": scores(probs, data["y"]),
        "oof_untuned_rows": score_untuned_rows(probs, data["y"], data["fold"], scored_fold),
        "oof_kept_rows": score_kept_rows(probs, data["y"], excluded),
        "folds": {f"fold{k}": {"accuracy": m["accuracy"], "loss": m["loss"]} for k, m in folds.items()},
        "seconds_per_epoch": float(np.mean([m["seconds"] / max(1, m["epochs"]) for m in folds.values()])),
        "models": {name: scores(p, data["y"]) for name, p in oofs.items()},
    }
    write_json(paths.METRICS_JSON, metrics)
    return metrics


def describe_untuned(figures: dict, scored_fold: int | None) -> str:
    """Return how the OOF figures read on the rows that did not choose the tuned settings."""
    if scored_fold is None:
        return "no fold is recorded as having chosen the settings (untuned, or best_params.json predates it)"
    return f"{figures['accuracy']:.5f} on the {figures['rows']} rows outside fold {scored_fold}, which scored tuning"


def describe_kept(figures: dict) -> str:
    """Return how the OOF figures read on the rows not excluded, or "" when no row is excluded."""
    if not figures["excluded"]:
        return ""
    return f"; {figures['accuracy']:.5f} on the {figures['rows']} rows not excluded ({figures['excluded']} excluded)"


@reports_errors("train")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, train every fold, and print the OOF accuracy."""
    cfg = params.load("train")
    parser = stage_parser("train", __doc__)
    parser.add_argument("--epochs", type=int, default=cfg.epochs, help="epochs per fold (default from params.yaml)")
    parser.add_argument("--verbose", type=int, default=0, help="Keras progress output (0, 1 or 2)")
    args = parser.parse_args(argv)
    try:
        tuned = read_tuned()
        models = [replace(s, epochs=args.epochs) for s in member_settings(cfg, params.load("model"), tuned)]
        scored_fold = read_scored_fold() if cfg.use_tuned and tuned else None
    except ValueError as exc:
        return fail("train", exc)
    device = configure(params.load("device").precision)
    start = time.perf_counter()
    names = ", ".join(m.model for m in models)
    print(f"train: {names}, {cfg.folds} folds x {args.epochs} epochs on {device.describe()}")
    print(f"train: settings {asdict(models[0])}")
    try:
        metrics = train_all(models, cfg.folds, params.seed(), device, args.verbose, cfg.monitor_rows, scored_fold)
    except (OutputError, ValueError, FileNotFoundError) as exc:
        return fail("train", exc)
    progress.finish(
        "train",
        start,
        device.describe(),
        f"OOF accuracy {metrics['oof']['accuracy']:.5f}, loss {metrics['oof']['loss']:.4f} "
        f"({describe_untuned(metrics['oof_untuned_rows'], scored_fold)}){describe_kept(metrics['oof_kept_rows'])} "
        f"-> {paths.METRICS_JSON}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
