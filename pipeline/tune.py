"""Stage `tune`: an Optuna study (seeded TPE, pruning on per-epoch validation accuracy) over the
search space declared in params.yaml (`tune.space`, adjusted per model by `tune.model_space`),
scored on one held-out fold.

Reads data/processed/{train,augmented}.npz. The study lives in Optuna's storage: by default the
SQLite file data/processed/optuna.db (no server), or any RDB URL given by --storage or the
DIGIT_TUNE_STORAGE environment variable (e.g. PostgreSQL, so several machines work on one study).
Reruns continue the same study. Without --trials the study is topped up to `tune.trials` finished
(completed or pruned) trials, which is what `dvc repro` runs; `--trials N` adds N more finished
trials. `--workers N` runs N worker processes on the same study until that target is reached.

Running trials write heartbeats; a trial whose worker died (even by kill -9) is failed once its
heartbeat is `tune.grace_seconds` old, and re-queued with the same parameters, by any live worker
or the next run. Writes data/processed/best_params.json (read by train), reports/tune.json (a DVC
metric) and reports/tuning/ (trials.csv, history.png, importances.png, parallel.png)."""

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
from matplotlib.figure import Figure
from optuna.trial import TrialState
from optuna_integration.keras import KerasPruningCallback
from sklearn.model_selection import train_test_split
from sqlalchemy.engine import Connection, Engine, make_url

from pipeline import params, paths
from pipeline.lib import progress
from pipeline.lib.cli import fail, reports_errors, stage_parser
from pipeline.lib.device import DevicePlan, TuneWorker, clear_session, configure, detect, plan_devices, process_env
from pipeline.lib.files import OutputError, read_npz, require, write_json, write_text
from pipeline.lib.fitting import EpochSampler, fit, monitor_subset
from pipeline.lib.members import FitSettings, member_settings
from pipeline.lib.models import search_space
from pipeline.lib.plots import save_figure
from pipeline.lib.secrets import mask_url, scrub
from pipeline.lib.training_data import TrainingData, read_training_data
from pipeline.params import TrainParams, TuneParams

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
STORAGE_ENV = "DIGIT_TUNE_STORAGE"
CLEAR_ERRORS = (
    ValueError,
    OutputError,
    FileNotFoundError,
    sqlalchemy.exc.SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
)
# Processes opening one fresh database together race on creating Optuna's tables, types and version rows
# (SQLite: "table studies already exists", "UNIQUE constraint failed: alembic_version"; PostgreSQL:
# type "studydirection" already exists, duplicate keys); the losers retry.
SCHEMA_RACE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
SCHEMA_ATTEMPTS = 6
INT_SETTINGS = frozenset(f.name for f in fields(FitSettings) if f.type in ("int", int))
PLOTS = {"history": "history.png", "importances": "importances.png", "parallel": "parallel.png"}


class SurplusTrial(Exception):
    """A worker started a trial after other workers had already claimed the study's target."""


class TakenOver(Exception):
    """Another worker failed (and re-queued) this worker's running trial because its heartbeat came too late."""


# ---------------------------------------------------------------- search space


def resolve_space(cfg: TuneParams, model: str) -> dict:
    """Return `cfg.space` with `cfg.model_space[model]` applied (null drops a parameter), without the dropout
    rates `model` does not read (models.search_space); both were validated when params.yaml was read."""
    space = dict(cfg.space)
    for name, spec in (cfg.model_space.get(model) or {}).items():
        if spec is None:
            space.pop(name, None)
        else:
            space[name] = spec
    return search_space(model, space)


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


def in_space(value: object, spec: list | dict) -> bool:
    """Return True when `value` is one of the choices or lies inside the range `spec`."""
    if isinstance(spec, dict):
        return value in spec["choices"]
    return spec[0] <= value <= spec[1]


def tunable_defaults(train: TrainParams, space: dict) -> dict:
    """Return the train-section values of the parameters in `space` that lie inside it (the baseline trial)."""
    return {name: getattr(train, name) for name, spec in space.items() if in_space(getattr(train, name), spec)}


# ---------------------------------------------------------------- objective


def tuning_rows(folds: np.ndarray, labels: np.ndarray, cfg: TuneParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train rows, validation rows): fold `cfg.fold`, and a stratified subsample of the other folds."""
    val = np.flatnonzero(folds == cfg.fold)
    train = np.flatnonzero(folds != cfg.fold)
    if cfg.max_train_rows and cfg.max_train_rows < len(train):
        train, _ = train_test_split(train, train_size=cfg.max_train_rows, stratify=labels[train], random_state=seed)
        train = np.sort(train)
    return train, val


def worker_id() -> str:
    """Return this process's worker name (host:pid), recorded on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def check_claim(trial: optuna.Trial, target: int) -> None:
    """Raise SurplusTrial when `target` trials numbered below `trial` are already finished or running."""
    ahead = [t for t in trial.study.get_trials(deepcopy=False, states=CLAIMED) if t.number < trial.number]
    if len(ahead) >= target:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number} not needed: the study's {target} trials are already claimed")


def check_running(trial: optuna.Trial) -> None:
    """Raise TakenOver when `trial` is no longer RUNNING in the storage (failed as stale by another worker)."""
    running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if all(t.number != trial.number for t in running):
        raise TakenOver(
            f"trial {trial.number} was failed and re-queued by another worker while it ran here: its heartbeat "
            "came more than tune.grace_seconds late (raise tune.grace_seconds)"
        )


def trial_folds(sampler: EpochSampler, data: TrainingData, val_rows: np.ndarray, settings: FitSettings) -> dict:
    """Return the folds (train.npz's) of the rows a trial with `settings` trains on, its images or their augmented
    copies, in its epochs (`sampler`'s draws), and of the rows `val_rows` that score it."""
    own, copied = sampler.drawn_sources(data.aug.source, settings.epochs, settings.aug_prob)
    trained = np.unique(data.fold[np.concatenate([own, copied])])
    return {"trained": trained.tolist(), "scored": np.unique(data.fold[val_rows]).tolist()}


class Heartbeat(keras.callbacks.Callback):
    """Stops a trial, after each epoch, that another worker failed and re-queued meanwhile (`check_running`)."""

    def __init__(self, trial: optuna.Trial) -> None:
        super().__init__()
        self.trial = trial

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Raise TakenOver when the trial is no longer running in the storage."""
        check_running(self.trial)


def make_objective(
    data: TrainingData, base: FitSettings, cfg: TuneParams, space: dict, seed: int, device: DevicePlan, target: int
) -> Callable[[optuna.Trial], float]:
    """Return the objective: train on the tuning rows with the trial's settings, report val accuracy each epoch."""
    train_rows, val_rows = tuning_rows(data.fold, data.y, cfg, seed)
    val_rows = monitor_subset(val_rows, data.y, cfg.max_val_rows, seed)
    sampler = EpochSampler(data.x, data.y, train_rows, data.aug.x, data.aug.source, seed)
    val = (data.x[val_rows], data.y[val_rows])
    worker = worker_id()

    def objective(trial: optuna.Trial) -> float:
        # first, and in this order: a trial marked with its worker has a heartbeat (Optuna's heartbeat thread
        # races the objective for its first record), so the dead are failed by fail_stale, and a RUNNING trial
        # without the mark never started (fail_orphans)
        trial.storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("worker", worker)
        check_claim(trial, target)
        settings = replace(base, epochs=cfg.epochs, **suggest(trial, space))
        trial.set_user_attr("folds", trial_folds(sampler, data, val_rows, settings))
        keras.utils.set_random_seed(seed)
        try:
            _, history = fit(
                settings, sampler, val, device, [Heartbeat(trial), KerasPruningCallback(trial, "val_accuracy")]
            )
        finally:
            clear_session()  # Keras' clear_session also runs gc.collect
        check_running(trial)
        trial.set_user_attr("train_accuracy", history[-1]["accuracy"])  # against the score: how much was memorised
        return history[-1]["val_accuracy"]

    return objective


# ---------------------------------------------------------------- storage and study


def storage_url(url: str | None) -> str:
    """Return `url`, or the embedded SQLite file data/processed/optuna.db when it is empty."""
    return url or f"sqlite:///{paths.OPTUNA_DB}"


def storage_for(url: str, cfg: TuneParams) -> optuna.storages.RDBStorage:
    """Return the RDB storage at `url` with heartbeats and re-queueing of trials whose worker died."""
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return open_storage(url, sqlite, cfg)
        except SCHEMA_RACE:  # another process is creating the same fresh schema: its tables appear meanwhile
            time.sleep(0.1 * attempt * (1 + os.getpid() % 7 / 7))
    return open_storage(url, sqlite, cfg)


def open_storage(url: str, sqlite: bool, cfg: TuneParams) -> optuna.storages.RDBStorage:
    """Return Optuna's RDB storage at `url`, creating its tables if the database is new (one attempt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True},
            heartbeat_interval=cfg.heartbeat_seconds,
            grace_period=cfg.grace_seconds,
            heartbeat_stale_trial_callback=retry_callback(cfg),
        )
    if sqlite:
        lock_on_begin(storage.engine)
    return storage


def lock_on_begin(engine: Engine) -> None:
    """Make every transaction on the SQLite `engine` take the database's write lock when it begins.

    Optuna claims a queued trial with SELECT ... FOR UPDATE, which SQLite ignores; and pysqlite runs that
    SELECT outside any transaction. Two workers could then both claim the same enqueued trial, and the
    second one's result failed with "Cannot tell a COMPLETE trial" (optuna#4002). BEGIN IMMEDIATE
    serialises the read and the write (SQLAlchemy's pysqlite recipe); waiting transactions retry for
    the connection's 60 s timeout."""
    sqlalchemy.event.listen(engine, "connect", leave_begin_to_sqlalchemy)
    sqlalchemy.event.listen(engine, "begin", begin_immediate)
    engine.dispose()  # connections opened by the storage's set-up reconnect with the listeners


def leave_begin_to_sqlalchemy(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    """Stop pysqlite from emitting BEGIN (and COMMIT before DDL) itself on a new connection."""
    dbapi_connection.isolation_level = None


def begin_immediate(connection: Connection) -> None:
    """Begin the SQLAlchemy `connection`'s transaction holding SQLite's write lock."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def study_name_for(cfg: TuneParams, model: str, space: dict, data_id: str) -> str:
    """Return `cfg.study_name` suffixed with a hash of everything that makes trials comparable."""
    key = json.dumps([model, cfg.fold, cfg.epochs, cfg.max_train_rows, space, data_id], sort_keys=True)
    return f"{cfg.study_name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def data_id_of(data: dict) -> str:
    """Return a hash of the training images and fold assignment (train.npz's x and fold)."""
    return hashlib.sha256(data["x"].tobytes() + data["fold"].tobytes()).hexdigest()


def make_pruner(cfg: TuneParams) -> optuna.pruners.BasePruner:
    """Return the pruner named by `cfg.pruner` (median, hyperband or none)."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=cfg.pruner_warmup_epochs)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    return optuna.pruners.NopPruner()


def sampler_seed(seed: int, worker: int, n_trials: int) -> int:
    """Return the TPE seed of `worker` joining a study of `n_trials` trials (distinct per worker and rerun)."""
    return int(np.random.SeedSequence([seed, worker, n_trials]).generate_state(1)[0])


def retry_callback(cfg: TuneParams) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Return the callback that re-queues a trial whose worker died, at most `cfg.max_retries` times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retries)


def fail_stale(study: optuna.Study, cfg: TuneParams) -> None:
    """Fail and re-queue the running trials of `study` whose worker died (stale heartbeat, or none at all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_orphans(study, cfg)


def fail_orphans(study: optuna.Study, cfg: TuneParams, now: datetime | None = None) -> None:
    """Fail and re-queue RUNNING trials that never reached the objective `cfg.grace_seconds` before `now` (default:
    the current time) after they started.

    Optuna's heartbeat check skips a trial that has no heartbeat yet, so a worker killed between
    creating a trial and its first heartbeat would otherwise leave that trial RUNNING forever."""
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
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", pruner=make_pruner(cfg), load_if_exists=True
    )
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, worker, len(study.trials)), constant_liar=True)
    fail_stale(study, cfg)
    return study


def prepare_study(study: optuna.Study, defaults: dict, model: str, space: dict) -> None:
    """Record the model and space on `study`; queue the baseline trial `defaults` when it has no trials yet."""
    if not study.trials:
        study.set_user_attr("model", model)
        study.set_user_attr("space", space)
        study.enqueue_trial(defaults, skip_if_exists=True)


def state_counts(study: optuna.Study) -> Counter:
    """Return the number of trials of `study` in each state."""
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def finished_count(study: optuna.Study) -> int:
    """Return the number of completed or pruned trials in `study`."""
    counts = state_counts(study)
    return sum(counts[state] for state in FINISHED)


def run_trials(study: optuna.Study, objective: Callable, target: int, cfg: TuneParams, limit: int = 0) -> None:
    """Run trials one at a time until `study` has `target` finished trials, whichever worker finishes them,
    or until this process has run `limit` trials (0 = no limit).

    While the remaining trials are all running elsewhere this worker waits; if one of those workers
    dies, its trial goes stale, is failed and re-queued, and this worker picks it up."""
    ran = 0
    while not limit or ran < limit:
        fail_stale(study, cfg)
        counts = state_counts(study)
        finished = sum(counts[state] for state in FINISHED)
        if finished >= target:
            return
        if finished + counts[TrialState.RUNNING] >= target:
            time.sleep(cfg.heartbeat_seconds)
            continue
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,), gc_after_trial=True)
        ran += 1


# ---------------------------------------------------------------- workers


def worker_command(index: int, name: str, target: int, limit: int = 0) -> list[str]:
    """Return the command line of worker `index` running study `name` until it has `target` finished trials
    or the worker has run `limit` trials (0 = no limit)."""
    cmd = [sys.executable, "-m", "pipeline.tune", "--study-name", name, "--until", str(target), "--worker", str(index)]
    return [*cmd, "--max-trials", str(limit)]


def run_workers(workers: tuple[TuneWorker, ...], name: str, url: str, target: int, limit: int = 0) -> list[int]:
    """Run one process per planned worker on study `name` at `url` (passed in the environment, never argv), each on
    its GPU with its memory share and for at most `limit` trials; return their exit codes."""
    procs = [
        subprocess.Popen(
            worker_command(i + 1, name, target, limit), env={**process_env(os.environ, w.env), STORAGE_ENV: url}
        )
        for i, w in enumerate(workers)
    ]
    try:
        return [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()


def tuning_workers(requested: int | None, cfg: TuneParams) -> tuple[TuneWorker, ...]:
    """Return the planned workers: --workers (`requested`) when given, else tune.workers_gpu on each GPU the backend
    sees, else tune.workers_cpu; spread over the GPUs with their memory shares (device.plan_devices)."""
    plan = plan_devices(detect(), params.load("device").precision, cfg.workers_gpu, cfg.workers_cpu, requested or 0)
    print(f"tune: {plan.reasons['tune']}", flush=True)
    return plan.tune_workers


def needs_workers(study: optuna.Study, args: argparse.Namespace, cfg: TuneParams, target: int) -> bool:
    """Return True when trials must run in worker processes: several asked for, or more than one process's share."""
    remaining = target - finished_count(study)
    return remaining > 0 and (args.workers > 1 or 0 < cfg.trials_per_process < remaining)


def run_rounds(
    study: optuna.Study, workers: tuple[TuneWorker, ...], name: str, url: str, target: int, cfg: TuneParams
) -> list[int]:
    """Run rounds of fresh `workers`, each for at most `cfg.trials_per_process` trials, until `target` finished
    trials (bounding the memory a process accumulates); stop early on a failed or fruitless round."""
    codes = [0]
    while finished_count(study) < target:
        before = finished_count(study)
        codes = run_workers(workers, name, url, target, cfg.trials_per_process)
        if any(codes) or finished_count(study) == before:
            break
    return codes


# ---------------------------------------------------------------- outputs


def best_summary(study: optuna.Study, fold: int) -> dict:
    """Return the best trial's parameters and value with the study's counts and the fold that scored them."""
    try:
        best = study.best_trial
    except ValueError as exc:
        raise OutputError(f"study {study.study_name} has no completed trial yet: nothing to write") from exc
    return {
        "study": study.study_name,
        "params": best.params,
        "value": best.value,
        "trial": best.number,
        "finished_trials": finished_count(study),
        "scored_fold": fold,
    }


def plot_study(study: optuna.Study, kind: str, seed: int) -> Figure:
    """Return the matplotlib figure `kind` (history, importances or parallel) of `study`."""
    import optuna.visualization.matplotlib as ovm  # after pipeline.lib.plots chose the headless backend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "history":
            ax = ovm.plot_optimization_history(study)
        elif kind == "importances":
            ax = ovm.plot_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
        else:
            ax = ovm.plot_parallel_coordinate(study)
    return ax.figure


def notice_figure(title: str, reason: str) -> Figure:
    """Return a figure that says why plot `title` could not be drawn."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}: not available yet\n({reason})", ha="center", va="center", wrap=True)
    return fig


def write_plots(study: optuna.Study, seed: int) -> dict[str, str]:
    """Write the optimisation history, parameter importances and parallel-coordinate PNGs to reports/tuning/;
    return the plots that could not be drawn yet (written as a notice saying why), with the reason."""
    notices = {}
    for kind, filename in PLOTS.items():
        try:
            fig = plot_study(study, kind, seed)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notices[kind] = str(exc) or type(exc).__name__
            fig = notice_figure(kind, notices[kind])
        save_figure(fig, paths.TUNING_DIR / filename)
    return notices


def write_outputs(study: optuna.Study, seed: int, fold: int) -> dict:
    """Write best_params.json (what train reads: the study, its best parameters and the fold that scored them, so
    its bytes change only when they do), reports/tune.json (the best trial, its value and the finished trials) and
    reports/tuning/ (CSV and PNGs); return the summary."""
    summary = best_summary(study, fold)
    write_json(paths.BEST_PARAMS, {k: summary[k] for k in ("study", "params", "scored_fold")})
    write_json(paths.TUNE_JSON, {k: summary[k] for k in ("value", "trial", "finished_trials")})
    write_text(paths.TRIALS_CSV, study.trials_dataframe().to_csv(index=False))
    for kind, reason in write_plots(study, seed).items():
        print(f"tune: the {kind} plot is a notice for now: {reason}")
    return summary


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None, cfg: TuneParams) -> argparse.Namespace:
    """Return the parsed command line."""
    parser = stage_parser("tune", __doc__)
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help=f"finished trials to add to the study (default: top it up to {cfg.trials})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"worker processes on this machine (default: tune.workers_cpu={cfg.workers_cpu}, "
        f"or tune.workers_gpu={cfg.workers_gpu} on each GPU the backend sees), spread over the GPUs",
    )
    parser.add_argument(
        "--storage",
        default=os.environ.get(STORAGE_ENV) or cfg.storage,
        help=f"Optuna RDB storage URL, e.g. postgresql://user:pw@host/db (default: ${STORAGE_ENV}, "
        "then tune.storage, then sqlite:///data/processed/optuna.db)",
    )
    parser.add_argument("--study-name", default=None, help=f"study name (default: {cfg.study_name}-<settings hash>)")
    parser.add_argument("--until", type=int, default=None, help=argparse.SUPPRESS)  # worker: target finished count
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # worker index (sampler seed)
    parser.add_argument("--max-trials", type=int, default=0, help=argparse.SUPPRESS)  # worker: trials before exiting
    args = parser.parse_args(argv)
    if (args.workers is not None and args.workers < 1) or (args.trials is not None and args.trials < 0):
        parser.error("--workers must be at least 1 and --trials at least 0")
    return args


def load_objective(cfg: TuneParams, space: dict, seed: int, target: int) -> Callable[[optuna.Trial], float]:
    """Load the data once for this process, pick the device, and return the objective."""
    data = read_training_data()
    device = configure(params.load("device").precision)
    base = member_settings(params.load("train"), params.load("model"), params.load("model").name)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(
        f"tune: worker {os.getpid()}{f' (CUDA_VISIBLE_DEVICES={gpu})' if gpu else ''} on {device.describe()}",
        flush=True,
    )
    return make_objective(data, base, cfg, space, seed, device, target)


def run_study(args: argparse.Namespace, cfg: TuneParams) -> int:
    """Open the study, run its trials here or in worker processes, and write the outputs; return the exit code."""
    start = time.perf_counter()
    require(paths.TRAIN_NPZ, "ingest")  # both inputs, before the study is opened
    require(paths.AUGMENTED_NPZ, "augment")
    model, seed = params.load("model").name, params.seed()
    space = resolve_space(cfg, model)
    data_id = data_id_of(read_npz(require(paths.TRAIN_NPZ, "ingest")))
    name = args.study_name or study_name_for(cfg, model, space, data_id)
    url = storage_url(args.storage)
    study = open_study(name, storage_for(url, cfg), cfg, seed, args.worker)
    if args.until is not None:  # a worker started by --workers: run trials, leave the outputs to the parent
        run_trials(study, load_objective(cfg, space, seed, args.until), args.until, cfg, args.max_trials)
        return 0
    workers = tuning_workers(args.workers, cfg)
    args.workers = len(workers)
    prepare_study(study, tunable_defaults(params.load("train"), space), model, space)
    target = cfg.trials if args.trials is None else finished_count(study) + args.trials
    where = f"{name} in {mask_url(url)}"
    print(f"tune: study {where}: {finished_count(study)} finished trials, target {target}", flush=True)
    codes = [0]
    if needs_workers(study, args, cfg, target):
        codes = run_rounds(study, workers, name, url, target, cfg)
    elif finished_count(study) < target:
        run_trials(study, load_objective(cfg, space, seed, target), target, cfg)
    summary = write_outputs(study, seed, cfg.fold)
    print(f"tune: best val accuracy {summary['value']:.5f} (trial {summary['trial']}) with {summary['params']}")
    progress.finish(
        "tune",
        start,
        f"{args.workers} worker(s)",
        f"{summary['finished_trials']} finished trials -> {paths.BEST_PARAMS}, {paths.TUNING_DIR}/",
    )
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
        return fail("tune", scrub(exc, storage_url(args.storage)))


if __name__ == "__main__":
    sys.exit(main())
