"""The training core shared by tune and train: per-epoch sampling of originals and their
augmented copies, a warmup + cosine schedule, and an epoch loop that checkpoints and resumes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline.files import atomic_path, read_json, write_json
from pipeline.models import N_CLASSES, build_model


@dataclass(frozen=True)
class FitSettings:
    """What one training run needs besides data: model, optimisation and augmentation mix."""

    model: str
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_epochs: float
    dropout_conv: float
    dropout_dense: float
    aug_prob: float
    label_smoothing: float


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

    def copy_indices(self) -> np.ndarray:
        """Return the indices (into the augmented arrays) of every copy this sampler may draw."""
        return np.concatenate([self.aug_order[s : s + c] for s, c in zip(self.starts, self.counts, strict=True)])

    def sample(self, epoch: int, aug_prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the shuffled (x uint8 (n, 28, 28), y) of epoch `epoch`, the same for the same seed."""
        rng = np.random.default_rng([self.seed, epoch])
        use_copy = (rng.random(len(self.rows)) < aug_prob) & (self.counts > 0)
        pick = self.starts + (rng.random(len(self.rows)) * np.maximum(self.counts, 1)).astype(np.int64)
        images = self.x[self.rows].copy()
        chosen = self.aug_order[pick[use_copy]]
        images[use_copy] = self.aug_x[chosen]
        perm = rng.permutation(len(self.rows))
        return images[perm], self.y[self.rows][perm]


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


def schedule(cfg: FitSettings, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Return a linear warmup to `learning_rate` followed by cosine decay over the remaining steps."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate / 10,
        decay_steps=max(1, total - warmup),
        alpha=0.01,
        warmup_target=cfg.learning_rate,
        warmup_steps=warmup,
    )


def compiled_model(cfg: FitSettings, steps_per_epoch: int, jit_compile: bool) -> keras.Model:
    """Return a new model built and compiled with Adam, the schedule and label smoothing."""
    model = build_model(cfg.model, cfg.dropout_conv, cfg.dropout_dense)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule(cfg, steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


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
    jit_compile: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    verbose: int = 0,
) -> tuple[keras.Model, list[dict]]:
    """Train for `cfg.epochs`, evaluating on `val` each epoch; resume from `checkpoint` if it matches."""
    steps = int(np.ceil(len(sampler.rows) / cfg.batch_size))
    model, history = load_checkpoint(checkpoint, fingerprint)
    if model is None:
        model = compiled_model(cfg, steps, jit_compile)
    x_val, y_val = as_input(val[0]), one_hot(val[1])
    for epoch in range(len(history), cfg.epochs):
        start = time.perf_counter()
        reseed(model, sampler.seed, epoch)
        x_ep, y_ep = sampler.sample(epoch, cfg.aug_prob)
        lr = current_lr(model)
        logs = model.fit(
            as_input(x_ep),
            one_hot(y_ep),
            batch_size=cfg.batch_size,
            epochs=1,
            shuffle=False,
            validation_data=(x_val, y_val),
            validation_batch_size=EVAL_BATCH,
            verbose=verbose,
        ).history
        row = {k: float(v[-1]) for k, v in logs.items()}
        row.update(epoch=epoch + 1, lr=lr, seconds=time.perf_counter() - start)
        history.append(row)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, history, fingerprint)
        if on_epoch is not None:
            on_epoch(epoch, row)
    return model, history


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
