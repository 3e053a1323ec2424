"""The training core shared by tune and train: per-epoch sampling of originals and their
augmented copies, the optimizer (Adam or RMSprop) with its learning-rate schedule (warmup + cosine,
constant, exponential or reduced on plateau) and optional weight averaging (Keras' use_ema), and an
epoch loop that checkpoints and resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import keras
import numpy as np

from pipeline.device import DevicePlan
from pipeline.lib.files import atomic_path, read_json, write_json
from pipeline.lib.models import N_CLASSES, build_model
from pipeline.params import FitParams, Schedule, choices


@dataclass(frozen=True)
class FitSettings(FitParams):
    """What one training run needs besides data: the model's name and its optimisation and augmentation mix."""

    model: str


class EpochSampler:
    """Builds each epoch's training set: every training row once, replaced by one of its augmented
    copies with probability `aug_prob`; copies of rows outside `rows` are never used."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, rows: np.ndarray, aug_x: np.ndarray, aug_source: np.ndarray, seed: int
    ) -> None:
        self.x, self.y, self.rows, self.aug_x, self.seed = x, y, np.asarray(rows), aug_x, seed
        order = np.argsort(aug_source, kind="stable")
        self.aug_order = order
        self.starts = np.searchsorted(aug_source[order], self.rows, side="left")
        self.counts = np.searchsorted(aug_source[order], self.rows, side="right") - self.starts

    def sample_indices(self, epoch: int, aug_prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Return epoch `epoch`'s shuffled indices into the pool [x; aug_x] (see `pool`) and their labels,
        the same for the same seed."""
        rng = np.random.default_rng([self.seed, epoch])
        use_copy = (rng.random(len(self.rows)) < aug_prob) & (self.counts > 0)
        pick = self.starts + (rng.random(len(self.rows)) * np.maximum(self.counts, 1)).astype(np.int64)
        index = self.rows.astype(np.int64)
        index[use_copy] = len(self.x) + self.aug_order[pick[use_copy]]
        perm = rng.permutation(len(self.rows))
        return index[perm], self.y[self.rows][perm]

    @cached_property
    def pool(self) -> np.ndarray:
        """The uint8 images `sample_indices` points into: every original, then every augmented copy (built once
        per sampler, which tune reuses for every trial)."""
        return np.concatenate([self.x, self.aug_x])

    def sample(self, epoch: int, aug_prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the shuffled (x uint8 (n, 28, 28), y) of epoch `epoch`, the same for the same seed."""
        index, labels = self.sample_indices(epoch, aug_prob)
        original = index < len(self.x)
        images = np.empty((len(index), *self.x.shape[1:]), dtype=self.x.dtype)
        images[original] = self.x[index[original]]
        images[~original] = self.aug_x[index[~original] - len(self.x)]
        return images, labels


def drawn_sources(
    sampler: EpochSampler, aug_source: np.ndarray, epochs: int, aug_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows whose own image `sampler` draws in its first `epochs` epochs, and the rows one of whose
    augmented copies (made from `aug_source`) it draws: sorted, each once."""
    index = [sampler.sample_indices(epoch, aug_prob)[0] for epoch in range(epochs)]
    drawn = np.concatenate([np.zeros(0, np.int64), *index])
    copies = drawn >= len(sampler.x)
    return np.unique(drawn[~copies]), np.unique(aug_source[drawn[copies] - len(sampler.x)])


def monitor_subset(rows: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Return a seeded, class-stratified subset of at most `limit` of `rows` (all of them when `limit` is falsy)."""
    if not limit or limit >= len(rows):
        return rows
    from sklearn.model_selection import train_test_split

    subset, _ = train_test_split(rows, train_size=limit, stratify=labels[rows], random_state=seed)
    return np.sort(subset)


def as_input(images: np.ndarray) -> np.ndarray:
    """Return uint8 images (n, 28, 28) as the float32 (n, 28, 28, 1) tensor models take."""
    return images.astype(np.float32)[..., None]


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Return float32 one-hot rows for integer `labels`."""
    return np.eye(N_CLASSES, dtype=np.float32)[labels]


class DeviceBatches(keras.utils.PyDataset):
    """Consecutive batches sliced from (x, y) backend tensors that already live on the accelerator, so
    no step waits for a host-to-device copy (model.fit would copy NumPy arrays batch by batch)."""

    def __init__(self, x: object, y: object, batch_size: int) -> None:
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        """Return the number of batches (the last one may be partial)."""
        return -(-int(self.x.shape[0]) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[object, object]:
        """Return batch `index` as (x, y) tensors on the device."""
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


class ResidentFeed:
    """Keeps a fold's images on the accelerator: the originals and augmented copies are uploaded once as
    uint8, and each epoch only its shuffled indices travel; gathering, scaling to float and one-hot
    labels happen on the device."""

    def __init__(self, sampler: EpochSampler, val: tuple[np.ndarray, np.ndarray], batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size
        self.pool = keras.ops.convert_to_tensor(sampler.pool)
        self.val = DeviceBatches(device_input(val[0]), device_one_hot(val[1]), EVAL_BATCH)

    def epoch(self, epoch: int, aug_prob: float) -> DeviceBatches:
        """Return epoch `epoch`'s batches, gathered on the device in the sampler's order."""
        index, labels = self.sampler.sample_indices(epoch, aug_prob)
        images = keras.ops.take(self.pool, keras.ops.convert_to_tensor(index.astype(np.int32)), axis=0)
        return DeviceBatches(device_input(images), device_one_hot(labels), self.batch_size)


def device_input(images: object) -> object:
    """Return uint8 images (n, 28, 28), NumPy or tensor, as the float32 (n, 28, 28, 1) tensor on the device."""
    return keras.ops.expand_dims(keras.ops.cast(keras.ops.convert_to_tensor(images), "float32"), -1)


def device_one_hot(labels: np.ndarray) -> object:
    """Return integer `labels` as float32 one-hot rows on the device."""
    return keras.ops.one_hot(keras.ops.convert_to_tensor(np.asarray(labels, dtype=np.int32)), N_CLASSES)


OPTIMIZERS = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}  # the classes of params.Optimizer
PLATEAU_MIN_DELTA = 1e-4  # Keras' ReduceLROnPlateau default: a smaller val_accuracy gain is no improvement
PLATEAU_FLOOR = 0.01  # the plateau schedule never goes below this share of learning_rate (1e-3 -> 1e-5)


def schedule(cfg: FitSettings, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """Return the learning rate of `cfg.schedule`: warmup_cosine, a linear warmup to `learning_rate` followed by
    cosine decay over the remaining steps; exponential, `learning_rate` times `lr_decay` after every epoch;
    constant and plateau, `learning_rate` itself (the fit loop lowers a plateau's, `plateau_rate`)."""
    if cfg.schedule not in choices(Schedule):
        raise ValueError(f"train.schedule must be one of {', '.join(choices(Schedule))}, got {cfg.schedule!r}")
    if cfg.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            cfg.learning_rate, decay_steps=steps_per_epoch, decay_rate=cfg.lr_decay, staircase=True
        )
    if cfg.schedule != "warmup_cosine":
        return cfg.learning_rate
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate / 10,
        decay_steps=max(1, total - warmup),
        alpha=0.01,
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
    )


def plateau_rate(cfg: FitSettings, history: list[dict]) -> float:
    """Return the learning rate of the epoch after `history` under Keras' ReduceLROnPlateau rule on val_accuracy
    (factor `lr_decay`, patience `plateau_patience`, floor PLATEAU_FLOOR x `learning_rate`), computed from the
    recorded epochs alone, so a resumed run continues exactly."""
    rate, best, wait = cfg.learning_rate, -np.inf, 0
    for row in history:
        if row["val_accuracy"] > best + PLATEAU_MIN_DELTA:
            best, wait = row["val_accuracy"], 0
            continue
        wait += 1
        if wait >= cfg.plateau_patience:
            rate, wait = max(rate * cfg.lr_decay, cfg.learning_rate * PLATEAU_FLOOR), 0
    return rate


def optimizer_for(cfg: FitSettings, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Return the optimizer `cfg.optimizer` on the schedule, averaging the weights (Keras' use_ema) when
    `cfg.ema_momentum` is set."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    averaging = {} if cfg.ema_momentum is None else {"use_ema": True, "ema_momentum": cfg.ema_momentum}
    return OPTIMIZERS[cfg.optimizer](schedule(cfg, steps_per_epoch), **averaging)


def compiled_model(cfg: FitSettings, steps_per_epoch: int, jit_compile: bool) -> keras.Model:
    """Return a new model built and compiled with the optimizer, the schedule and label smoothing."""
    model = build_model(cfg.model, cfg.dropout_conv, cfg.dropout_dense)
    model.compile(
        optimizer=optimizer_for(cfg, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


class AveragedWeights(keras.callbacks.Callback):
    """For an optimizer that averages the weights (use_ema): validation scores the averaged weights, and the
    model keeps its trained weights when a model.fit call ends (Keras replaces them with the averages there,
    `finalize_variable_values`), so each one-epoch fit continues the trained weights, not their average.

    The average lives in the optimizer's variables, so checkpoints carry it; `fit` swaps it in at the very end.
    (keras.callbacks.SwapEMAWeights swaps by addition on TensorFlow, which is not exact, and keeps the
    average in the model after a fit of one epoch.)"""

    def __init__(self) -> None:
        super().__init__()
        self.trained: list[np.ndarray] | None = None

    def keep_trained(self) -> None:
        """Remember the trained weights (copies)."""
        self.trained = [keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables]

    def restore_trained(self) -> None:
        """Put the remembered trained weights back into the model."""
        for variable, value in zip(self.model.trainable_variables, self.trained or [], strict=True):
            variable.assign(value)
        self.trained = None

    def on_test_begin(self, logs: dict | None = None) -> None:
        """Score validation with the averaged weights."""
        self.keep_trained()
        inner_optimizer(self.model).finalize_variable_values(self.model.trainable_variables)

    def on_test_end(self, logs: dict | None = None) -> None:
        """Go back to the trained weights after validation."""
        self.restore_trained()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Remember the trained weights before model.fit replaces them with the averages."""
        self.keep_trained()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Undo model.fit's replacement: the model continues from its trained weights."""
        self.restore_trained()


def inner_optimizer(model: keras.Model) -> keras.optimizers.Optimizer:
    """Return the optimizer that `model` was compiled with: under mixed_float16 Keras wraps it in a
    LossScaleOptimizer, whose own use_ema is always False."""
    optimizer = model.optimizer
    return optimizer.inner_optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else optimizer


def use_averaged_weights(model: keras.Model) -> None:
    """Replace `model`'s weights with the optimizer's average of them when it keeps one (use_ema)."""
    optimizer = inner_optimizer(model)
    if getattr(optimizer, "use_ema", False):
        optimizer.finalize_variable_values(model.trainable_variables)


def current_lr(model: keras.Model) -> float:
    """Return the optimizer's learning rate at its current step."""
    lr = model.optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))


def reseed(model: keras.Model, seed: int, epoch: int) -> None:
    """Set the state of every random layer (dropout) of `model` from (`seed`, `epoch`), so an epoch draws
    the same masks whether the run started at epoch 0 or resumed from a checkpoint."""
    states = [v for v in model.variables if v.name == "seed_generator_state"]
    for i, state in enumerate(states):
        value = int(np.random.SeedSequence([seed, epoch, i]).generate_state(1)[0] >> 1)
        state.assign(keras.ops.convert_to_tensor([value, 0], dtype=state.dtype))


def save_checkpoint(folder: Path, model: keras.Model, history: list[dict], fingerprint: str) -> None:
    """Atomically save the model (with optimizer state) and the history so far to `folder`."""
    with atomic_path(folder / "last.keras", suffix=".keras") as tmp:
        model.save(tmp)
    write_json(folder / "state.json", {"fingerprint": fingerprint, "history": history})


def checkpoint_history(folder: Path | None, fingerprint: str) -> list[dict] | None:
    """Return the epoch history of the checkpoint in `folder` if it is complete and matches `fingerprint`, else None."""
    if folder is None or not (folder / "state.json").is_file() or not (folder / "last.keras").is_file():
        return None
    state = read_json(folder / "state.json")
    return state.get("history", []) if state.get("fingerprint") == fingerprint else None


def load_checkpoint(folder: Path | None, fingerprint: str) -> tuple[keras.Model | None, list[dict]]:
    """Return the checkpointed model and history in `folder` if it matches `fingerprint`, else (None, [])."""
    history = checkpoint_history(folder, fingerprint)
    if history is None:
        return None, []
    model = keras.saving.load_model(folder / "last.keras", safe_mode=True, compile=True)
    return model, history


def fingerprint_of(*parts: object) -> str:
    """Return a short stable hash of `parts` (settings and data identities)."""
    import hashlib

    blob = json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


EpochHook = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 1024  # inference needs no small batches; large ones are several times faster on CPU


def fit(
    cfg: FitSettings,
    sampler: EpochSampler,
    val: tuple[np.ndarray, np.ndarray],
    device: DevicePlan | None = None,
    on_epoch: EpochHook | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    verbose: int = 0,
) -> tuple[keras.Model, list[dict]]:
    """Train for `cfg.epochs` on `device` (None: plain CPU settings), evaluating on `val` each epoch; resume
    from `checkpoint` if it matches. With weight averaging (`cfg.ema_momentum`) the returned model holds the
    averaged weights (checkpoints hold the trained ones and the average), and validation scores the average.

    A resident device keeps the images on the accelerator (`ResidentFeed`); otherwise each epoch is built
    in NumPy and model.fit copies it batch by batch (fastest on a CPU, where there is no copy)."""
    steps = int(np.ceil(len(sampler.rows) / cfg.batch_size))
    model, history = load_checkpoint(checkpoint, fingerprint)
    if model is None:
        model = compiled_model(cfg, steps, bool(device and device.jit_compile))
    resident = bool(device and device.resident)
    feed = ResidentFeed(sampler, val, cfg.batch_size) if resident else None
    val_in = None if resident else (as_input(val[0]), one_hot(val[1]))
    for epoch in range(len(history), cfg.epochs):
        start = time.perf_counter()
        reseed(model, sampler.seed, epoch)
        if cfg.schedule == "plateau":
            model.optimizer.learning_rate = plateau_rate(cfg, history)
        lr = current_lr(model)
        logs = fit_epoch(model, cfg, sampler, val_in, epoch, feed, verbose)
        row = {k: float(v[-1]) for k, v in logs.items()}
        row.update(epoch=epoch + 1, lr=lr, seconds=time.perf_counter() - start)
        history.append(row)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, history, fingerprint)
        if on_epoch is not None:
            on_epoch(epoch, row)
    use_averaged_weights(model)
    return model, history


def fit_epoch(
    model: keras.Model,
    cfg: FitSettings,
    sampler: EpochSampler,
    val_in: tuple[np.ndarray, np.ndarray] | None,
    epoch: int,
    feed: ResidentFeed | None,
    verbose: int,
) -> dict[str, list[float]]:
    """Run one model.fit epoch on epoch `epoch`'s sample, from `feed` when resident, else from NumPy arrays
    validated on the model inputs `val_in`; return its history."""
    callbacks = [AveragedWeights()] if cfg.ema_momentum is not None else []
    if feed is not None:
        batches = feed.epoch(epoch, cfg.aug_prob)
        return model.fit(
            batches, epochs=1, shuffle=False, validation_data=feed.val, callbacks=callbacks, verbose=verbose
        ).history
    x_ep, y_ep = sampler.sample(epoch, cfg.aug_prob)
    return model.fit(
        as_input(x_ep),
        one_hot(y_ep),
        batch_size=cfg.batch_size,
        epochs=1,
        shuffle=False,
        validation_data=val_in,
        validation_batch_size=EVAL_BATCH,
        callbacks=callbacks,
        verbose=verbose,
    ).history


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Return the class probabilities (n, 10) of uint8 `images` (n, 28, 28)."""
    return np.asarray(model.predict(as_input(images), batch_size=batch_size, verbose=0), dtype=np.float32)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Return the fraction of rows whose most probable class equals the label."""
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Return the mean cross-entropy of `probs` against integer `labels`."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Return the accuracy and log loss of class probabilities `probs` against integer `labels`."""
    return {"accuracy": accuracy(probs, labels), "loss": log_loss(probs, labels)}
