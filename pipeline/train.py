"""Stage `train`: k-fold training of the chosen model (params.yaml model.name, default: the dropout
CNN) with tune's best parameters, then of each model.ensemble member (train settings plus its
model.overrides), all on the same folds: each fold's training rows plus their augmented copies.

Reads data/processed/{train,augmented}.npz, data/processed/best_params.json and data/exclude_rows.csv
(rows left out of every fold's training rows, their augmented copies with them). Writes per model and
fold models/folds/<model>/fold{k}.keras, fold{k}_oof.npz (the held-out rows' probabilities, and the record of what
trained the fold: the rows whose images and whose augmented copies its models drew, the pseudo-labels its student
learned) and fold{k}.json (with the digest of the training data, which predict checks), and its per-epoch metrics
through DVCLive in reports/live/ (pipeline/lib/live.py); overall models/oof.npz (model.name's OOF probabilities) and
reports/metrics.json (model.name's OOF and fold metrics, every model's OOF metrics under "models", and
"oof_kept_rows": the OOF figures on the rows not excluded, which stay comparable as the list changes).
With train.pseudo_rounds, each fold's model (the teacher, which never saw the fold) labels the test images
(data/processed/test.npz): the confident ones, with augmented copies made as the augment stage makes them, join the
fold's training rows for a model trained afresh (the student), which becomes the fold's model; the OOF estimate stays
honest, as nothing of fold k's rows reaches fold k's student. A killed run resumes: finished folds are kept,
the interrupted fold restarts from its last epoch checkpoint in models/checkpoints/<model>/ (a student's in
round<r>/ there). On several GPUs the folds train at once, each in a worker process
of its own on one GPU (the device plan's train_envs, `python -m pipeline.device`; `--processes N` sets how
many), seeded by the seed, fold and member only, so with the results of one process."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import keras
import numpy as np

from pipeline import params, paths
from pipeline.device import DevicePlan, configure, process_env
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
    drawn_sources,
    fingerprint_of,
    fit,
    monitor_subset,
    predict_probs,
    scores,
)
from pipeline.lib.models import base_name, check_name, seed_offset
from pipeline.lib.training_data import Augmented, TrainingData, read_training_data, training_digest
from pipeline.params import (
    OVERRIDABLE,
    TUNABLE,
    AugmentParams,
    FitParams,
    ModelParams,
    ParamsError,
    TrainParams,
    fit_setting,
)

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


@dataclass(frozen=True)
class Unlabelled:
    """The images pseudo-labelling draws from (test.npz's, uint8 (m, 28, 28)), how their copies are made and from
    which seed; the copies are made once, when a first fold needs them, and serve every fold and round."""

    x: np.ndarray
    augment: AugmentParams
    seed: int

    @cached_property
    def copies(self) -> Augmented:
        """The augmented copies of every image, as the augment stage makes a training image's."""
        from pipeline.augment import augment, worker_count

        progress.note(f"train: {self.augment.copies} augmented copies of each of {len(self.x)} test images")
        made = augment(self.x, self.augment, self.seed, worker_count(self.augment))
        return Augmented(made["x"], made["source"])

    def copies_of(self, rows: np.ndarray) -> Augmented:
        """Return the copies of the images at sorted `rows`, their sources renumbered 0.. in the order of `rows`."""
        keep = np.isin(self.copies.source, rows)
        return Augmented(self.copies.x[keep], np.searchsorted(rows, self.copies.source[keep]))


@dataclass(frozen=True)
class Options:
    """How a train run reports and spreads its folds: Keras' output (0, 1 or 2), the held-out rows of each epoch's
    curve (None: the whole fold), the fold that scored tuning (left out of "oof_untuned_rows"), and one environment
    per training process run at once (a single one: the folds train in this process, one after another)."""

    verbose: int = 0
    monitor_rows: int | None = None
    scored_fold: int | None = None
    envs: tuple[Mapping[str, str], ...] = ({},)
    augment: AugmentParams | None = None  # how pseudo-labelled images are copied (None: params.yaml's augment:)


@dataclass(frozen=True)
class Run:
    """What every fold of a train run shares: the seed, the device, the identity of the data and training code, the
    rows left out of training, Keras' output, the held-out rows of each epoch's curve, and the DVCLive logger that
    records each epoch as it ends (None in a worker process: the parent logs the fold's history when it is done),
    and the unlabelled images of pseudo-labelling (None when no model uses it)."""

    seed: int
    device: DevicePlan
    data_id: tuple[str, ...]
    excluded: np.ndarray
    verbose: int = 0
    monitor_rows: int | None = None
    logger: Any = None
    unlabelled: Unlabelled | None = None


@dataclass(frozen=True)
class FoldJob:
    """One fold of one model to train: its settings, and the fingerprint its files are recognised by with the base
    fingerprint (the same settings and data, whatever rows are excluded)."""

    settings: FitSettings
    fold: int
    fingerprint: str
    base_fingerprint: str


def fold_job(cfg: FitSettings, fold: int, data: TrainingData, run: Run) -> FoldJob:
    """Return fold `fold` of model `cfg.model` with its fingerprints: the settings, seed, fold, data and code, and
    precision, with the excluded rows among its training rows (nothing when there are none), so that only folds
    whose training rows changed retrain."""
    seed = member_seed(run.seed, cfg.model)
    left_out = fold_exclusions(data.fold, run.excluded, fold)
    base = fingerprint_of(cfg, seed, fold, run.data_id, run.device.precision)
    excluding = {"excluded_rows": left_out}
    fingerprint = fingerprint_of(cfg, seed, fold, run.data_id, run.device.precision, excluding) if left_out else base
    return FoldJob(cfg, fold, fingerprint, base)


def fold_is_done(job: FoldJob) -> bool:
    """Return True when `job`'s fold already has a finished model with its fingerprint."""
    model, fold = job.settings.model, job.fold
    meta = paths.fold_meta(model, fold)
    return (
        meta.is_file()
        and paths.fold_model(model, fold).is_file()
        and paths.fold_oof(model, fold).is_file()
        and read_json(meta).get("fingerprint") == job.fingerprint
    )


def remove_stale_partials(models: list[str], n_folds: int) -> None:
    """Delete temporary files that a killed run left beside train's outputs."""
    own = [(paths.OOF_NPZ.parent, paths.OOF_NPZ.name)]
    own += [(paths.METRICS_JSON.parent, paths.METRICS_JSON.name)]
    own += [(paths.model_dir(m), "*") for m in models]
    own += [(paths.fold_checkpoint_dir(m, k), "*") for m in models for k in range(n_folds)]
    for folder, name in own:
        for path in remove_partials(folder, name):
            progress.note(f"train: removed {path}, left by an interrupted run")


def stage_fingerprint(job: FoldJob, stage: str) -> str:
    """Return the fingerprint of the checkpoints of `job`'s `stage` ("" for the fold's final model, " teacher" or
    " round1" ... for the models before it)."""
    return job.fingerprint + stage.replace(" ", "-")


def resume_point(job: FoldJob, logger: Any) -> Path:
    """Return `job`'s checkpoint folder, emptied when its checkpoint was made with another fingerprint; log a
    matching checkpoint's epochs to the DVCLive `logger` (if any), as they are not trained again (a teacher's
    are not logged: its student is the fold's model)."""
    cfg, fold = job.settings, job.fold
    folder = paths.fold_checkpoint_dir(cfg.model, fold)
    first = " teacher" if cfg.pseudo_rounds else ""
    history = checkpoint_history(folder, stage_fingerprint(job, first)) or []
    if not history and folder.exists():
        shutil.rmtree(folder)
        progress.note(f"train: fold {fold} discarded {folder}: made with other settings, data or code")
    if history:
        progress.note(f"train: fold {fold}{first} resumes after epoch {len(history)}/{cfg.epochs} ({folder})")
        if logger is not None and not first:
            live.log_history(logger, cfg.model, fold, history)
    return folder


def epoch_reporter(job: FoldJob, bar: Any, logger: Any, stage: str = "") -> Callable[[int, dict], None]:
    """Return the hook that shows each epoch of `job` (of its `stage`, e.g. " teacher") on `bar` and as a line, and
    logs it to the DVCLive `logger`."""
    cfg, fold = job.settings, job.fold

    def report(epoch: int, row: dict) -> None:
        bar.update(epoch + 1 - bar.n)
        bar.set_postfix_str(f"val_acc {row['val_accuracy']:.4f}")
        if logger is not None:
            live.log_epoch(logger, cfg.model, fold, row)
        progress.note(
            f"  fold {fold}{stage} epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.4f} "
            f"val_acc {row['val_accuracy']:.4f} lr {row['lr']:.2e} ({row['seconds']:.1f}s)"
        )

    return report


def confident_labels(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows of class probabilities `probs` whose top class has at least `threshold`, and that class."""
    rows = np.flatnonzero(probs.max(axis=1) >= threshold)
    return rows, probs[rows].argmax(axis=1)


def with_pseudo_rows(data: TrainingData, images: np.ndarray, labels: np.ndarray, copies: Augmented) -> TrainingData:
    """Return `data` with `images` appended as rows labelled `labels` in no fold (fold -1: they train every fold and
    are never scored), and their augmented `copies` (sources counted from the first appended row)."""
    n = len(data.y)
    return TrainingData(
        np.concatenate([data.x, images]),
        np.concatenate([data.y, labels.astype(data.y.dtype)]),
        np.concatenate([data.fold, np.full(len(images), -1, data.fold.dtype)]),
        Augmented(np.concatenate([data.aug.x, copies.x]), np.concatenate([data.aug.source, copies.source + n])),
    )


def pseudo_labelled(
    teacher: keras.Model, data: TrainingData, unlabelled: Unlabelled, threshold: float
) -> tuple[TrainingData, np.ndarray, np.ndarray]:
    """Return `data` plus the unlabelled images `teacher` labels with at least `threshold` confidence, with their
    copies, and which unlabelled rows those are with the labels given."""
    rows, labels = confident_labels(predict_probs(teacher, unlabelled.x), threshold)
    return with_pseudo_rows(data, unlabelled.x[rows], labels, unlabelled.copies_of(rows)), rows, labels


def fold_rows(data: TrainingData, fold: int, excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return fold `fold`'s training rows (the other folds' rows, appended ones included, minus `excluded`) and its
    held-out rows."""
    return np.flatnonzero((data.fold != fold) & kept_mask(len(data.y), excluded)), np.flatnonzero(data.fold == fold)


def fit_fold(
    job: FoldJob, data: TrainingData, run: Run, checkpoint: Path, stage: str = ""
) -> tuple[keras.Model, list, tuple[np.ndarray, np.ndarray]]:
    """Fit `job`'s model on `data`'s rows outside its fold minus the excluded ones, resuming from `checkpoint`; the
    epochs of a `stage` (a teacher) are shown but not logged to DVCLive. Return the model, its history, and the
    rows whose images and whose augmented copies trained it (`drawn_sources`)."""
    cfg, fold = job.settings, job.fold
    seed = member_seed(run.seed, cfg.model)
    keras.utils.set_random_seed(seed + fold)
    train_rows, val_rows = fold_rows(data, fold, run.excluded)
    sampler = EpochSampler(data.x, data.y, train_rows, data.aug.x, data.aug.source, seed + 1000 * fold)
    with progress.progress(cfg.epochs, f"fold {fold}{stage}", unit="epoch", lines=False, leave=False) as bar:
        watch = monitor_subset(val_rows, data.y, run.monitor_rows, seed + fold)
        report = epoch_reporter(job, bar, None if stage else run.logger, stage)
        val = (data.x[watch], data.y[watch])
        fingerprint = stage_fingerprint(job, stage)
        model, history = fit(cfg, sampler, val, run.device, report, checkpoint, fingerprint, run.verbose)
    return model, history, drawn_sources(sampler, data.aug.source, len(history), cfg.aug_prob)


def fit_with_pseudo_labels(
    job: FoldJob, data: TrainingData, run: Run, checkpoint: Path
) -> tuple[keras.Model, list[dict], list[dict], dict[str, np.ndarray]]:
    """Fit `job`'s fold, then for each of `pseudo_rounds` a student on the fold's training rows plus the test images
    the previous model labels confidently (resuming each from its own checkpoint). Return the last model, its
    history, per round the teacher's scores on the fold and the pseudo-labelled rows, and the record of what
    trained the fold's models (`training_record`)."""
    cfg, rounds = job.settings, job.settings.pseudo_rounds
    _, val_rows = fold_rows(data, job.fold, run.excluded)
    model, history, drawn = fit_fold(job, data, run, checkpoint, " teacher" if rounds else "")
    teachers, draws, labelled = [], [drawn], []
    for r in range(1, rounds + 1):
        if run.unlabelled is None:
            raise ValueError("train.pseudo_rounds needs the test images (data/processed/test.npz): none were given")
        student_data, test_rows, labels = pseudo_labelled(model, data, run.unlabelled, cfg.pseudo_threshold)
        teacher = scores(predict_probs(model, data.x[val_rows]), data.y[val_rows])
        teachers.append({"round": r, "teacher": teacher, "pseudo_rows": len(test_rows)})
        labelled.append((np.full(len(test_rows), r), test_rows, labels))
        progress.note(
            f"train: fold {job.fold} round {r}: teacher {teacher['accuracy']:.4f}, {len(test_rows)} pseudo-labels"
        )
        stage = f" round{r}" if r < rounds else ""
        model, history, drawn = fit_fold(job, student_data, run, checkpoint / f"round{r}", stage)
        draws.append(drawn)
    return model, history, teachers, training_record(len(data.y), draws, labelled)


def training_record(n_rows: int, draws: list[tuple[np.ndarray, np.ndarray]], labelled: list[tuple]) -> dict:
    """Return what trained a fold's models (its teacher and students): `trained_rows`, the train.npz rows (of
    `n_rows`) whose images any of them drew, and `copied_rows`, those whose augmented copies they drew (`draws`:
    `drawn_sources` per model); and per pseudo-labelling round (`labelled`: (round, test row, label) arrays) the
    test rows its student learned with the labels its teacher gave them."""

    def joined(parts: Iterator[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.zeros(0, np.int64), *parts])

    trained, copied = joined(own for own, _ in draws), joined(copies for _, copies in draws)
    return {
        "trained_rows": np.unique(trained[trained < n_rows]),
        "copied_rows": np.unique(copied[copied < n_rows]),
        "pseudo_round": joined(r for r, _, _ in labelled),
        "pseudo_row": joined(row for _, row, _ in labelled),
        "pseudo_label": joined(label for _, _, label in labelled),
    }


def train_fold(job: FoldJob, data: TrainingData, run: Run) -> dict:
    """Train `job`'s fold on the other folds' rows minus the excluded ones (resuming from its checkpoint), with its
    rounds of pseudo-labelling, and write its model, OOF probabilities (every row of the fold, excluded or not) and
    metadata with its history; return the metadata."""
    cfg, fold = job.settings, job.fold
    progress.note(f"train: {cfg.model} fold {fold + 1}/{data.n_folds} on {run.device.describe()}")
    start = time.perf_counter()
    checkpoint = resume_point(job, run.logger)
    model, history, teachers, record = fit_with_pseudo_labels(job, data, run, checkpoint)
    train_rows, val_rows = fold_rows(data, fold, run.excluded)
    probs = predict_probs(model, data.x[val_rows])
    meta = {
        "fold": fold,
        "fingerprint": job.fingerprint,
        "base_fingerprint": job.base_fingerprint,
        **scores(probs, data.y[val_rows]),
        "epochs": len(history),
        "settings": asdict(cfg),
        "device": run.device.describe(),
        "seconds": time.perf_counter() - start,
        "train_rows": len(train_rows),
        "history": history,
        "pseudo_rounds": teachers,
        "train_data": training_digest(data.x, data.y, data.fold),
    }
    write_with(paths.fold_model(cfg.model, fold), model.save, suffix=".keras")
    write_npz(paths.fold_oof(cfg.model, fold), rows=val_rows, probs=probs, **record)
    write_json(paths.fold_meta(cfg.model, fold), meta)
    shutil.rmtree(checkpoint, ignore_errors=True)
    progress.note(f"train: fold {fold} OOF accuracy {meta['accuracy']:.4f} in {meta['seconds']:.0f}s")
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


def pending_jobs(models: list[FitSettings], data: TrainingData, run: Run, bar: Any) -> list[FoldJob]:
    """Return every model's folds not already done, in order; keep the done ones (logging their history to the
    DVCLive logger, which starts afresh, and advancing progress `bar`)."""
    jobs = []
    for cfg in models:
        if len(models) > 1:
            progress.note(f"train: model {cfg.model}, settings {asdict(cfg)}")
        for fold in range(data.n_folds):
            job = fold_job(cfg, fold, data, run)
            if not fold_is_done(job):
                jobs.append(job)
                continue
            meta = read_json(paths.fold_meta(cfg.model, fold))
            if run.logger is not None:
                live.log_history(run.logger, cfg.model, fold, meta.get("history", []))
            shutil.rmtree(paths.fold_checkpoint_dir(cfg.model, fold), ignore_errors=True)  # left if killed after it
            progress.note(f"train: fold {fold} already trained with these settings (accuracy {meta['accuracy']:.4f})")
            bar.update(1)
    return jobs


def worker_spec(job: FoldJob, run: Run) -> str:
    """Return the JSON line a worker process reads from stdin to train `job` as `run` would (`train_in_worker`)."""
    fold = {"settings": asdict(job.settings), "fold": job.fold, "precision": run.device.precision}
    fold["why"] = run.device.reasons.get("precision", "")  # the parent's reason for it, for the worker's log
    shared = {"seed": run.seed, "data_id": run.data_id, "verbose": run.verbose, "monitor_rows": run.monitor_rows}
    augment = asdict(run.unlabelled.augment) if run.unlabelled is not None else None
    return json.dumps({**fold, **shared, "excluded": run.excluded.tolist(), "augment": augment})


def train_in_worker(spec: str) -> None:
    """Train the fold that the JSON `spec` (`worker_spec`) describes in this process, with the seeds and
    fingerprints of the parent's run, on this process's device under the parent's precision."""
    given = json.loads(spec)
    data, device = read_training_data(), configure(given["precision"])
    device = replace(device, reasons={**device.reasons, "precision": given["why"]})
    excluded = np.asarray(given["excluded"], np.int64)
    unlabelled = read_unlabelled(AugmentParams(**given["augment"]), given["seed"]) if given["augment"] else None
    shared = (given["seed"], device, tuple(given["data_id"]), excluded, given["verbose"], given["monitor_rows"])
    run = Run(*shared, unlabelled=unlabelled)
    train_fold(fold_job(FitSettings(**given["settings"]), given["fold"], data, run), data, run)


def exit_with_parent() -> None:
    """End this worker process when its parent ends (stdin, held open by the parent, closes) instead of training on
    beside a rerun; its checkpoint stays for that rerun to resume."""
    while os.read(sys.stdin.fileno(), 1 << 16):  # the file descriptor: no lock that could stall this process's exit
        pass
    os._exit(1)


def run_worker(job: FoldJob, run: Run, env: Mapping[str, str], name: str) -> FoldJob:
    """Train `job` in a worker process (`python -m pipeline.train --worker`) with this process's environment and
    Keras backend under the device plan's `env` (its GPU; device.process_env), relaying its output lines prefixed
    with `name`; return `job`."""
    env = process_env({**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONUNBUFFERED": "1"}, env)
    cmd = [sys.executable, "-m", "pipeline.train", "--worker"]
    with subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        try:
            proc.stdin.write(worker_spec(job, run) + "\n")
            proc.stdin.flush()  # stdin stays open while this process lives: see `exit_with_parent`
        except BrokenPipeError:  # a worker that ended before reading its job: its exit code says why
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()  # closed despite the failed flush, so Popen's exit does not flush again
        for line in proc.stdout:
            progress.note(f"[{name}] {line.rstrip()}")
    if proc.returncode:
        raise ChildProcessError(
            f"the worker process training {job.settings.model} fold {job.fold} exited {proc.returncode}"
        )
    return job


def run_workers(jobs: list[FoldJob], run: Run, envs: Sequence[Mapping[str, str]]) -> Iterator[FoldJob]:
    """Train each of `jobs` in its own worker process, one per environment of `envs` at a time (one per GPU),
    yielding each job as its process ends; a failure drops the jobs not started and is raised once those under way
    have ended."""
    free: SimpleQueue[int] = SimpleQueue()
    for slot in range(len(envs)):
        free.put(slot)

    def train(job: FoldJob) -> FoldJob:
        slot = free.get()
        try:
            return run_worker(job, run, envs[slot], f"worker {slot + 1}")
        finally:
            free.put(slot)

    pool = ThreadPoolExecutor(len(envs))
    try:
        for done in as_completed([pool.submit(train, job) for job in jobs]):
            yield done.result()
    finally:
        pool.shutdown(cancel_futures=True)


def train_jobs(jobs: list[FoldJob], data: TrainingData, run: Run, envs: Sequence[Mapping[str, str]], bar: Any) -> None:
    """Train `jobs` one after another in this process, or with several `envs` at once in worker processes (the
    parent logging each fold's history to DVCLive when it is done), advancing progress `bar` per fold."""
    if len(envs) < 2:
        for job in jobs:
            train_fold(job, data, run)
            bar.update(1)
        return
    for job in run_workers(jobs, run, envs):
        if run.logger is not None:
            history = read_json(paths.fold_meta(job.settings.model, job.fold))["history"]
            live.log_history(run.logger, job.settings.model, job.fold, history)
        bar.update(1)


def process_envs(plan: DevicePlan, processes: int | None) -> tuple[Mapping[str, str], ...]:
    """Return the environment of each training process: the plan's (one per GPU; one, this process, without a GPU),
    or `processes` of them, the plan's taken in turn (without a GPU, this process's environment each)."""
    envs = plan.train_envs
    return envs if processes is None else tuple(envs[i % len(envs)] for i in range(processes))


def data_identity(unlabelled: Unlabelled | None) -> tuple[str, ...]:
    """Return the identity of train's data and code: the digests of train.npz, augmented.npz and the training code,
    and with `unlabelled` images, test.npz's digest and how their copies are made (settings and code)."""
    own = (file_digest(paths.TRAIN_NPZ), file_digest(paths.AUGMENTED_NPZ), code_digest())
    if unlabelled is None:
        return own
    from pipeline import augment
    from pipeline.lib import transforms

    copying = [json.dumps(asdict(unlabelled.augment), sort_keys=True)]
    copying += [file_digest(Path(m.__file__)) for m in (augment, transforms)]
    return (*own, file_digest(paths.TEST_NPZ), *copying)


UNLABELLED_SEED = 7919  # the test images' copies are drawn from seed + this, apart from the training copies' seed


def read_unlabelled(augment: AugmentParams, seed: int) -> Unlabelled:
    """Return test.npz's images (ingest's) as pseudo-labelling's unlabelled images, copied under `augment` from
    the run's `seed`."""
    return Unlabelled(read_npz(require(paths.TEST_NPZ, "ingest"))["x"], augment, seed + UNLABELLED_SEED)


def unlabelled_for(models: list[FitSettings], augment: AugmentParams | None, seed: int) -> Unlabelled | None:
    """Return the unlabelled images, copied under `augment` (None: params.yaml's augment settings) from `seed`, when
    a model of `models` pseudo-labels; None otherwise."""
    if not any(m.pseudo_rounds for m in models):
        return None
    return read_unlabelled(augment or params.load("augment"), seed)


def train_all(
    models: list[FitSettings], n_folds: int, seed: int, device: DevicePlan, options: Options = Options()
) -> dict:
    """Train every model's folds not already done (the first model is model.name), then write model.name's
    OOF probabilities and the metrics (every model's OOF accuracy and loss under "models"; "oof_untuned_rows"
    leaves out the fold that scored tuning, the rows that chose the tuned settings); return the metrics."""
    data = read_training_data()
    if data.n_folds != n_folds:
        raise ValueError(f"{paths.TRAIN_NPZ} holds {data.n_folds} folds but train.folds is {n_folds}")
    excluded = read_exclusions(len(data.y))
    if len(excluded):
        progress.note(f"train: {len(excluded)} rows of {paths.EXCLUDE_ROWS} left out of every fold's training rows")
    remove_stale_partials([m.model for m in models], n_folds)
    unlabelled = unlabelled_for(models, options.augment, seed)
    logger = live.open_live()
    identity = data_identity(unlabelled)
    run = Run(seed, device, identity, excluded, options.verbose, options.monitor_rows, logger, unlabelled)
    with progress.progress(n_folds * len(models), "train", unit="fold", lines=False) as fold_bar:
        train_jobs(pending_jobs(models, data, run, fold_bar), data, run, options.envs, fold_bar)
    oofs = {cfg.model: collect_oof(cfg.model, len(data.y), n_folds) for cfg in models}
    primary = models[0].model
    probs, folds = oofs[primary], [read_json(paths.fold_meta(primary, k)) for k in range(n_folds)]
    write_npz(paths.OOF_NPZ, probs=probs, y=data.y, fold=data.fold)
    metrics = {
        "oof": scores(probs, data.y),
        "oof_untuned_rows": score_untuned_rows(probs, data.y, data.fold, options.scored_fold),
        "oof_kept_rows": score_kept_rows(probs, data.y, excluded),
        "folds": {f"fold{k}": {"accuracy": m["accuracy"], "loss": m["loss"]} for k, m in enumerate(folds)},
        "seconds_per_epoch": float(np.mean([m["seconds"] / max(1, m["epochs"]) for m in folds])),
        "models": {name: scores(p, data.y) for name, p in oofs.items()},
    }
    write_json(paths.METRICS_JSON, metrics)
    return metrics


def describe_untuned(figures: dict, scored_fold: int | None, use_tuned: bool = True) -> str:
    """Return how the OOF figures read on the rows that did not choose the tuned settings."""
    if not use_tuned:
        return "train.use_tuned is false: tune's settings were not used, so every row is outside tuning"
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
    parser.add_argument(
        "--processes",
        type=int,
        help="folds trained at once, each in a process of its own (default: one per GPU, see python -m "
        "pipeline.device; without a GPU, one: this process)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # train the fold given on stdin
    args = parser.parse_args(argv)
    if args.processes is not None and args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    try:
        if args.worker:
            spec = sys.stdin.readline()
            threading.Thread(target=exit_with_parent, daemon=True).start()
            train_in_worker(spec)
            return 0
        tuned = read_tuned()
        models = [replace(s, epochs=args.epochs) for s in member_settings(cfg, params.load("model"), tuned)]
        scored_fold = read_scored_fold() if cfg.use_tuned and tuned else None
    except (OutputError, ValueError, FileNotFoundError) as exc:
        return fail("train", exc)
    device = configure(params.load("device").precision)
    start = time.perf_counter()
    names = ", ".join(m.model for m in models)
    print(f"train: {names}, {cfg.folds} folds x {args.epochs} epochs on {device.describe()}")
    print(f"train: settings {asdict(models[0])}")
    envs = process_envs(device, args.processes)
    options = Options(args.verbose, cfg.monitor_rows, scored_fold, envs, params.load("augment"))
    try:
        metrics = train_all(models, cfg.folds, params.seed(), device, options)
    except (OutputError, ValueError, FileNotFoundError, ChildProcessError) as exc:
        return fail("train", exc)
    progress.finish(
        "train",
        start,
        device.describe(),
        f"OOF accuracy {metrics['oof']['accuracy']:.5f}, loss {metrics['oof']['loss']:.4f} "
        f"({describe_untuned(metrics['oof_untuned_rows'], scored_fold, cfg.use_tuned)})"
        f"{describe_kept(metrics['oof_kept_rows'])} "
        f"-> {paths.METRICS_JSON}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
