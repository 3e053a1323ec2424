"""Stage `tune`: an Optuna study (seeded TPE, pruning on per-epoch validation accuracy) over the
learning rate, batch size, dropout rates and augmentation mix, scored on one held-out fold.

Reads data/processed/{train,augmented}.npz. The study persists in data/processed/optuna.db (or
--storage URL), so reruns continue it. Writes data/processed/best_params.json (read by train),
reports/tune.json (a DVC metric) and reports/tuning/trials.csv.

Without --trials the study is topped up to `tune.trials` finished trials (what `dvc repro` runs);
`--trials N` adds N more finished trials."""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace

import keras
import numpy as np
import optuna
from sklearn.model_selection import train_test_split

from pipeline import params, paths
from pipeline.device import Device, configure
from pipeline.files import OutputError, read_npz, write_json, write_text
from pipeline.params import TrainParams, TuneParams
from pipeline.train import fit_settings
from pipeline.training import EpochSampler, FitSettings, fit

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Return one value per parameter of `space` drawn through `trial`."""
    values = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(spec[0], int) and isinstance(spec[1], int) and len(spec) == 2:
            values[name] = trial.suggest_int(name, spec[0], spec[1])
        else:
            values[name] = trial.suggest_float(name, float(spec[0]), float(spec[1]), log=len(spec) > 2 and spec[2] == "log")
    return values


def tuning_rows(folds: np.ndarray, labels: np.ndarray, cfg: TuneParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train rows, validation rows): validation is fold `cfg.fold`, training a stratified subsample of the rest."""
    val = np.flatnonzero(folds == cfg.fold)
    train = np.flatnonzero(folds != cfg.fold)
    if cfg.max_train_rows and cfg.max_train_rows < len(train):
        train, _ = train_test_split(train, train_size=cfg.max_train_rows, stratify=labels[train], random_state=seed)
        train = np.sort(train)
    return train, val


def make_objective(data: dict, aug: dict, base: FitSettings, cfg: TuneParams, seed: int, device: Device) -> Callable:
    """Return the Optuna objective: train on the tuning rows, report val accuracy each epoch, prune."""
    train_rows, val_rows = tuning_rows(data["fold"], data["y"], cfg, seed)
    sampler = EpochSampler(data["x"], data["y"], train_rows, aug["x"], aug["source"], seed)
    val = (data["x"][val_rows], data["y"][val_rows])

    def objective(trial: optuna.Trial) -> float:
        settings = replace(base, epochs=cfg.epochs, **suggest(trial, cfg.space))

        def report(epoch: int, row: dict) -> None:
            trial.report(row["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} (val accuracy {row['val_accuracy']:.4f})")

        keras.utils.set_random_seed(seed)
        try:
            _, history = fit(settings, sampler, val, device.jit_compile, report)
        finally:
            keras.backend.clear_session()
            gc.collect()
        return history[-1]["val_accuracy"]

    return objective


def make_pruner(cfg: TuneParams) -> optuna.pruners.BasePruner:
    """Return the pruner named by `cfg.pruner` (median, hyperband or none)."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=cfg.pruner_warmup_epochs)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"tune.pruner must be median, hyperband or none, got {cfg.pruner!r}")


def storage_for(url: str | None) -> optuna.storages.BaseStorage:
    """Return the study storage: `url` (any RDB URL) or the embedded SQLite file, with heartbeats and retries."""
    url = url or f"sqlite:///{paths.OPTUNA_DB}"
    if url.startswith("sqlite:///"):
        paths.OPTUNA_DB.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
        heartbeat_interval=10,
        grace_period=30,
        failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2),
    )


def study_name_for(cfg: TuneParams, model: str, data_id: str) -> str:
    """Return `cfg.study_name` suffixed with a hash of everything that makes trials comparable."""
    key = json.dumps([model, cfg.fold, cfg.epochs, cfg.max_train_rows, cfg.space, data_id], sort_keys=True)
    return f"{cfg.study_name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def open_study(name: str, storage: optuna.storages.BaseStorage, cfg: TuneParams, seed: int) -> optuna.Study:
    """Create or continue study `name` (seeded TPE sampler, configured pruner)."""
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )


def finished_count(study: optuna.Study) -> int:
    """Return the number of completed or pruned trials in `study`."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trials(study: optuna.Study, objective: Callable, target: int, defaults: dict) -> None:
    """Run trials until `study` has `target` finished trials; the first trial of a new study tries `defaults`."""
    if not study.trials:
        study.enqueue_trial(defaults, skip_if_exists=True)
    remaining = target - finished_count(study)
    if remaining <= 0:
        return
    stop = optuna.study.MaxTrialsCallback(target, states=FINISHED)
    study.optimize(objective, n_trials=remaining, callbacks=[stop], catch=(), gc_after_trial=True)


def best_summary(study: optuna.Study) -> dict:
    """Return the best trial's parameters and value with the study's counts."""
    best = study.best_trial
    return {
        "study": study.study_name,
        "params": best.params,
        "value": best.value,
        "trial": best.number,
        "finished_trials": finished_count(study),
    }


def write_outputs(study: optuna.Study) -> dict:
    """Write best_params.json, reports/tune.json and reports/tuning/trials.csv; return the summary."""
    summary = best_summary(study)
    write_json(paths.BEST_PARAMS, summary)
    write_json(paths.TUNE_JSON, {"best_value": summary["value"], "finished_trials": summary["finished_trials"]})
    write_text(paths.TRIALS_CSV, study.trials_dataframe().to_csv(index=False))
    return summary


def tunable_defaults(train: TrainParams, space: dict) -> dict:
    """Return the train-section values of the parameters in `space` (the baseline trial)."""
    return {name: getattr(train, name) for name in space if hasattr(train, name)}


def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, run the study's trials, and write the best parameters."""
    cfg = params.load("tune")
    parser = argparse.ArgumentParser(prog="python -m pipeline.tune", description=__doc__)
    parser.add_argument("--trials", type=int, default=None, help=f"finished trials to add (default: top up to {cfg.trials})")
    parser.add_argument("--storage", default=cfg.storage, help="Optuna storage URL (default: SQLite data/processed/optuna.db)")
    parser.add_argument("--study-name", default=None, help=f"study name (default: {cfg.study_name}-<settings hash>)")
    args = parser.parse_args(argv)
    train_cfg, model = params.load("train"), params.load("model").name
    seed = params.seed()
    data, aug = read_npz(paths.TRAIN_NPZ), read_npz(paths.AUGMENTED_NPZ)
    device = configure()
    base = fit_settings(train_cfg, model, None)
    data_id = hashlib.sha256(data["x"].tobytes() + data["fold"].tobytes()).hexdigest()
    name = args.study_name or study_name_for(cfg, model, data_id)
    study = open_study(name, storage_for(args.storage), cfg, seed)
    target = cfg.trials if args.trials is None else finished_count(study) + args.trials
    print(f"tune: study {name}: {finished_count(study)} finished trials, target {target}, on {device.describe()}")
    run_trials(study, make_objective(data, aug, base, cfg, seed, device), target, tunable_defaults(train_cfg, cfg.space))
    try:
        summary = write_outputs(study)
    except OutputError as exc:
        print(f"tune: error: {exc}", file=sys.stderr)
        return 2
    print(f"tune: best val accuracy {summary['value']:.5f} (trial {summary['trial']}) with {summary['params']}")
    print(f"tune: {summary['finished_trials']} finished trials -> {paths.BEST_PARAMS}; settings base {asdict(base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
