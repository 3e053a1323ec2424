"""Stage `tune`: an Optuna study (seeded TPE, pruning on per-epoch validation accuracy) over the search space of
params.yaml's `tune.space` (adjusted per model by `tune.model_space`), scored on one held-out fold.

Reads data/processed/{train,augmented}.npz. The study lives in Optuna's storage: --storage, else $DIGIT_TUNE_STORAGE,
else tune.storage (any RDB URL, e.g. PostgreSQL, so several machines work on one study), else the SQLite file
data/processed/optuna.db. Reruns continue the same study. Without --trials it is topped up to `tune.trials` finished
(completed or pruned) trials, which is what `dvc repro` runs; `--trials N` adds N more. `--workers N` runs N worker
processes on the same study until that target is reached.

Running trials write heartbeats; a trial whose worker died (even by kill -9) is failed once its heartbeat is
`tune.grace_seconds` old, and re-queued with the same parameters, by any live worker or the next run. Writes
data/processed/best_params.json (read by train), reports/tune.json (a DVC metric) and reports/tuning/ (trials.csv,
history.png, importances.png, parallel.png)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import datetime, timedelta
from pathlib import Path

import keras
import numpy as np
import optuna
import sqlalchemy.event
import sqlalchemy.exc
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.trial import TrialState
from optuna_integration.keras import KerasPruningCallback
from sklearn.model_selection import train_test_split
from sqlalchemy.engine import make_url

from pipeline import params, paths
from pipeline.lib import progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.device import TuneWorker, clear_session, configure, detect, plan_devices, process_env
from pipeline.lib.files import OutputError, read_npz, require, write_json, write_text
from pipeline.lib.fitting import EpochSampler, fit, monitor_subset
from pipeline.lib.members import FitSettings, member_settings
from pipeline.lib.models import search_space
from pipeline.lib.plots import save_figure
from pipeline.lib.secrets import mask_url, scrub
from pipeline.lib.training_data import read_training_data
from pipeline.params import TrainParams, TuneParams

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CLEAR_ERRORS = (ValueError, OutputError, FileNotFoundError, sqlalchemy.exc.SQLAlchemyError, StorageInternalError)
# Processes opening one fresh database together race on creating Optuna's tables, types and version rows (SQLite:
# "table studies already exists"; PostgreSQL: type "studydirection" already exists, duplicate keys); the losers retry.
SCHEMA_RACE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
SCHEMA_ATTEMPTS = 6
INT_SETTINGS = frozenset(f.name for f in fields(FitSettings) if f.type in ("int", int))
PLOTS = {"history": "history.png", "importances": "importances.png", "parallel": "parallel.png"}


class SurplusTrial(Exception):
    """A worker started a trial after other workers had already claimed the study's target."""


class TakenOver(Exception):
    """Another worker failed (and re-queued) this worker's running trial because its heartbeat came too late."""


def resolve_space(cfg: TuneParams, model: str) -> dict:
    """Return `cfg.space` with `cfg.model_space[model]` applied (null drops), less the dropouts `model` ignores."""
    space = {**cfg.space, **(cfg.model_space.get(model) or {})}
    return search_space(model, {name: spec for name, spec in space.items() if spec is not None})


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Return one value per parameter of `space` drawn through `trial` (integers for integer settings)."""
    values = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif name in INT_SETTINGS:
            values[name] = trial.suggest_int(name, int(spec[0]), int(spec[1]), log=len(spec) == 3)
        else:
            values[name] = trial.suggest_float(name, float(spec[0]), float(spec[1]), log=len(spec) == 3)
    return values


def tunable_defaults(train: TrainParams, space: dict) -> dict:
    """Return the train-section values of the parameters in `space` that lie inside it (the baseline trial)."""
    defaults = {}
    for name, spec in space.items():
        value = getattr(train, name)
        if value in spec["choices"] if isinstance(spec, dict) else spec[0] <= value <= spec[1]:
            defaults[name] = value
    return defaults


def check_running(trial: optuna.Trial) -> None:
    """Raise TakenOver when `trial` is no longer RUNNING in the storage (failed as stale by another worker)."""
    if all(t.number != trial.number for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        raise TakenOver(
            f"trial {trial.number} was failed and re-queued by another worker while it ran here: its heartbeat "
            "came more than tune.grace_seconds late (raise tune.grace_seconds)"
        )


def load_objective(cfg: TuneParams, space: dict, seed: int, target: int) -> Callable[[optuna.Trial], float]:
    """Load the data and pick the device once for this process; return the objective: train on the other folds (a
    stratified subsample) with the trial's settings, report fold `cfg.fold`'s accuracy after each epoch."""
    data = read_training_data()
    device = configure(params.load("device").precision)
    base = member_settings(params.load("train"), params.load("model"), params.load("model").name)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"{os.getpid()}{f' (CUDA_VISIBLE_DEVICES={gpu})' if gpu else ''} on {device.describe()}"
    print(f"tune: worker {where}", flush=True)
    train_rows = np.flatnonzero(data.fold != cfg.fold)
    if cfg.max_train_rows and cfg.max_train_rows < len(train_rows):
        sub, _ = train_test_split(
            train_rows, train_size=cfg.max_train_rows, stratify=data.y[train_rows], random_state=seed
        )
        train_rows = np.sort(sub)
    val_rows = monitor_subset(np.flatnonzero(data.fold == cfg.fold), data.y, cfg.max_val_rows, seed)
    sampler = EpochSampler(data.x, data.y, train_rows, data.aug.x, data.aug.source, seed)
    val, worker = (data.x[val_rows], data.y[val_rows]), f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        # first, and in this order: a trial marked with its worker has a heartbeat (Optuna's heartbeat thread
        # races the objective for its first record), so the dead are failed by fail_stale, and a RUNNING trial
        # without the mark never started (fail_orphans)
        trial.storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("worker", worker)
        claimed = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        if sum(t.number < trial.number for t in claimed) >= target:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} not needed: the study's {target} trials are already claimed")
        settings = replace(base, epochs=cfg.epochs, **suggest(trial, space))
        # the folds of the rows the trial trains on (their images or augmented copies, in its epochs) and scores
        own, copied = sampler.drawn_sources(data.aug.source, settings.epochs, settings.aug_prob)
        trained = np.unique(data.fold[np.concatenate([own, copied])]).tolist()
        trial.set_user_attr("folds", {"trained": trained, "scored": np.unique(data.fold[val_rows]).tolist()})
        keras.utils.set_random_seed(seed)
        heartbeat = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: check_running(trial))
        try:
            _, history = fit(settings, sampler, val, device, [heartbeat, KerasPruningCallback(trial, "val_accuracy")])
        finally:
            clear_session()  # Keras' clear_session also runs gc.collect
        check_running(trial)
        trial.set_user_attr("train_accuracy", history[-1]["accuracy"])  # against the score: how much was memorised
        return history[-1]["val_accuracy"]

    return objective


def storage_for(url: str, cfg: TuneParams) -> optuna.storages.RDBStorage:
    """Return the RDB storage at `url` with heartbeats and re-queueing of trials whose worker died."""
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True},
                    heartbeat_interval=cfg.heartbeat_seconds,
                    grace_period=cfg.grace_seconds,
                    heartbeat_stale_trial_callback=retry_callback(cfg),
                )
            break
        except SCHEMA_RACE:  # another process is creating the same fresh schema: its tables appear meanwhile
            if attempt == SCHEMA_ATTEMPTS:
                raise
            time.sleep(0.1 * attempt * (1 + os.getpid() % 7 / 7))
    if sqlite:
        # Optuna claims a queued trial with SELECT ... FOR UPDATE, which SQLite ignores, so two workers could claim
        # the same one (optuna#4002): every transaction begins with the write lock (SQLAlchemy's pysqlite recipe),
        # waiting up to the connection's 60 s timeout
        sqlalchemy.event.listen(storage.engine, "connect", leave_begin_to_sqlalchemy)
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        storage.engine.dispose()  # connections opened by the storage's set-up reconnect with the listeners
    return storage


def leave_begin_to_sqlalchemy(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    """Stop pysqlite from emitting BEGIN (and COMMIT before DDL) itself on a new connection."""
    dbapi_connection.isolation_level = None


def retry_callback(cfg: TuneParams) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Return the callback that re-queues a trial whose worker died, at most `cfg.max_retries` times."""
    with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retries)


def fail_stale(study: optuna.Study, cfg: TuneParams) -> None:
    """Fail and re-queue the running trials of `study` whose worker died (stale heartbeat, or none at all)."""
    with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
        optuna.storages.fail_stale_trials(study)
    fail_orphans(study, cfg)


def fail_orphans(study: optuna.Study, cfg: TuneParams, now: datetime | None = None) -> None:
    """Fail and re-queue RUNNING trials that never reached the objective `cfg.grace_seconds` before `now` (default:
    the current time) after they started: Optuna's heartbeat check skips trials without a heartbeat yet."""
    limit = (now or datetime.now()) - timedelta(seconds=cfg.grace_seconds)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in trial.user_attrs or trial.datetime_start is None or trial.datetime_start > limit:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker failed it first (and re-queued it)
        retry_callback(cfg)(study, study.trials[trial.number])


def open_study(
    name: str, storage: optuna.storages.BaseStorage, cfg: TuneParams, seed: int, worker: int
) -> optuna.Study:
    """Create or continue study `name` (seeded TPE, configured pruner), failing trials left by dead workers."""
    if cfg.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=cfg.pruner_warmup_epochs)
    elif cfg.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
    )
    tpe_seed = np.random.SeedSequence([seed, worker, len(study.trials)]).generate_state(1)[0]  # per worker and rerun
    study.sampler = optuna.samplers.TPESampler(seed=int(tpe_seed), constant_liar=True)
    fail_stale(study, cfg)
    return study


def finished_count(study: optuna.Study) -> int:
    """Return the number of completed or pruned trials in `study`."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trials(study: optuna.Study, objective: Callable, target: int, cfg: TuneParams, limit: int = 0) -> None:
    """Run trials here until `study` has `target` finished (by any worker) or this process ran `limit` (0 = no limit);
    wait while the rest run elsewhere (a dead worker's trial goes stale, is re-queued and picked up here)."""
    ran = 0
    while not limit or ran < limit:
        fail_stale(study, cfg)
        counts = Counter(t.state for t in study.get_trials(deepcopy=False))
        finished = sum(counts[state] for state in FINISHED)
        if finished >= target:
            return
        if finished + counts[TrialState.RUNNING] >= target:
            time.sleep(cfg.heartbeat_seconds)
            continue
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)
        ran += 1


def tuning_workers(requested: int | None, cfg: TuneParams) -> tuple[TuneWorker, ...]:
    """Return the planned workers: --workers (`requested`) when given, else tune.workers_gpu on each GPU the backend
    sees, else tune.workers_cpu; spread over the GPUs with their memory shares (device.plan_devices)."""
    plan = plan_devices(detect(), params.load("device").precision, cfg.workers_gpu, cfg.workers_cpu, requested or 0)
    print(f"tune: {plan.reasons['tune']}", flush=True)
    return plan.tune_workers


def run_rounds(
    study: optuna.Study, workers: tuple[TuneWorker, ...], name: str, url: str, target: int, cfg: TuneParams
) -> list[int]:
    """Run rounds of one fresh process per planned worker (on its GPU with its memory share, `url` in its environment,
    never argv), each for at most `cfg.trials_per_process` trials (bounding the memory a process accumulates), until
    `target` finished trials; stop early on a failed or fruitless round; return the last round's exit codes."""
    cmd = [sys.executable, "-m", "pipeline.tune", "--study-name", name, "--until", str(target)]
    cmd += ["--max-trials", str(cfg.trials_per_process)]
    codes = [0]
    while (before := finished_count(study)) < target:
        procs = [
            subprocess.Popen(
                [*cmd, "--worker", str(i)], env={**process_env(os.environ, w.env), paths.TUNE_STORAGE_ENV: url}
            )
            for i, w in enumerate(workers, 1)
        ]
        try:
            codes = [proc.wait() for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
        if any(codes) or finished_count(study) == before:
            break
    return codes


def write_plots(study: optuna.Study, seed: int) -> dict[str, str]:
    """Write the optimisation history, parameter importances and parallel-coordinate PNGs to reports/tuning/;
    return the plots that could not be drawn yet (written as a notice saying why), with the reason."""
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm  # after pipeline.lib.plots chose the headless backend

    fanova = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    draw = {
        "history": ovm.plot_optimization_history,
        "importances": lambda s: ovm.plot_param_importances(s, evaluator=fanova),
        "parallel": ovm.plot_parallel_coordinate,
    }
    notices = {}
    for kind, filename in PLOTS.items():
        try:
            with warnings.catch_warnings(action="ignore", category=ExperimentalWarning):
                fig = draw[kind](study).figure
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notices[kind] = str(exc) or type(exc).__name__
            fig, ax = plt.subplots(figsize=(6, 2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"{kind}: not available yet\n({notices[kind]})", ha="center", va="center", wrap=True)
        save_figure(fig, paths.TUNING_DIR / filename)
    return notices


def write_outputs(study: optuna.Study, seed: int, fold: int) -> dict:
    """Write best_params.json (what train reads: the study, its best parameters and the fold that scored them, so its
    bytes change only when they do), reports/tune.json and reports/tuning/; return the best trial's summary."""
    try:
        best = study.best_trial
    except ValueError as exc:
        raise OutputError(f"study {study.study_name} has no completed trial yet: nothing to write") from exc
    write_json(paths.BEST_PARAMS, {"study": study.study_name, "params": best.params, "scored_fold": fold})
    summary = {"value": best.value, "trial": best.number, "finished_trials": finished_count(study)}
    write_json(paths.TUNE_JSON, summary)
    write_text(paths.TRIALS_CSV, study.trials_dataframe().to_csv(index=False))
    for kind, reason in write_plots(study, seed).items():
        print(f"tune: the {kind} plot is a notice for now: {reason}")
    return {**summary, "params": best.params}


def parse_args(argv: list[str] | None, cfg: TuneParams) -> argparse.Namespace:
    """Return the parsed command line (`storage`: the URL tune opens)."""
    parser = stage_parser("tune", __doc__)
    parser.add_argument(
        "--trials", type=int, help=f"finished trials to add (default: top the study up to {cfg.trials})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=f"worker processes on this machine (default: tune.workers_cpu={cfg.workers_cpu}, "
        f"or tune.workers_gpu={cfg.workers_gpu} on each GPU the backend sees), spread over the GPUs",
    )
    parser.add_argument(
        "--storage",
        help=f"Optuna RDB storage URL, e.g. postgresql://user:pw@host/db (default: ${paths.TUNE_STORAGE_ENV}, "
        "then tune.storage, then sqlite:///data/processed/optuna.db)",
    )
    parser.add_argument("--study-name", help=f"study name (default: {cfg.study_name}-<settings hash>)")
    parser.add_argument("--until", type=int, help=argparse.SUPPRESS)  # worker: target finished count
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # worker index (sampler seed)
    parser.add_argument("--max-trials", type=int, default=0, help=argparse.SUPPRESS)  # worker: trials before exiting
    args = parser.parse_args(argv)
    if (args.workers is not None and args.workers < 1) or (args.trials is not None and args.trials < 0):
        parser.error("--workers must be at least 1 and --trials at least 0")
    args.storage = args.storage or paths.tune_storage(cfg.storage)
    return args


def run_study(args: argparse.Namespace, cfg: TuneParams) -> int:
    """Open the study, run its trials here or in worker processes, and write the outputs; return the exit code."""
    start = time.perf_counter()
    require(paths.TRAIN_NPZ, "ingest")  # both inputs, before the study is opened
    require(paths.AUGMENTED_NPZ, "augment")
    model, seed = params.load("model").name, params.seed()
    space = resolve_space(cfg, model)
    train = read_npz(paths.TRAIN_NPZ)
    data_id = hashlib.sha256(train["x"].tobytes() + train["fold"].tobytes()).hexdigest()
    key = json.dumps([model, cfg.fold, cfg.epochs, cfg.max_train_rows, space, data_id], sort_keys=True)
    name = args.study_name or f"{cfg.study_name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"  # comparable trials
    study = open_study(name, storage_for(args.storage, cfg), cfg, seed, args.worker)
    if args.until is not None:  # a worker started by --workers: run trials, leave the outputs to the parent
        run_trials(study, load_objective(cfg, space, seed, args.until), args.until, cfg, args.max_trials)
        return 0
    workers = tuning_workers(args.workers, cfg)
    if not study.trials:
        study.set_user_attr("model", model)
        study.set_user_attr("space", space)
        study.enqueue_trial(tunable_defaults(params.load("train"), space), skip_if_exists=True)
    target = cfg.trials if args.trials is None else finished_count(study) + args.trials
    remaining = target - finished_count(study)
    where = f"{name} in {mask_url(args.storage)}"
    print(f"tune: study {where}: {target - remaining} finished trials, target {target}", flush=True)
    codes = [0]
    if remaining > 0 and (len(workers) > 1 or 0 < cfg.trials_per_process < remaining):
        codes = run_rounds(study, workers, name, args.storage, target, cfg)
    elif remaining > 0:
        run_trials(study, load_objective(cfg, space, seed, target), target, cfg)
    summary = write_outputs(study, seed, cfg.fold)
    print(f"tune: best val accuracy {summary['value']:.5f} (trial {summary['trial']}) with {summary['params']}")
    done = f"{summary['finished_trials']} finished trials -> {paths.BEST_PARAMS}, {paths.TUNING_DIR}/"
    progress.finish("tune", start, f"{len(workers)} worker(s)", done)
    if any(codes):
        print(f"tune: error: worker exit codes {codes}", file=sys.stderr)
        return 1
    return 0


@reports_errors("tune")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI and tune; print a clear error (exit code 2) for bad settings, data or storage."""
    cfg = params.load("tune")
    args = parse_args(argv, cfg)
    try:
        return run_study(args, cfg)
    except ImportError as exc:
        return fail("tune", f"{exc} (PostgreSQL storage needs `pip install psycopg2-binary`)")
    except CLEAR_ERRORS as exc:
        return fail("tune", scrub(exc, args.storage))


if __name__ == "__main__":
    sys.exit(main())
