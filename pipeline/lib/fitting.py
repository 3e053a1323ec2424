"""The training core shared by tune and train: each epoch's sample of originals and their augmented copies, the
optimizer on its learning-rate schedule, and one Keras `model.fit` over all the epochs with Keras' own callbacks
(ReduceLROnPlateau, BackupAndRestore made atomic, the caller's: Optuna's pruning, DVCLive)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from pipeline.lib.device import DevicePlan
from pipeline.lib.members import FitSettings
from pipeline.lib.models import N_CLASSES, build_model

EVAL_BATCH = 1024  # inference needs no small batches; large ones are several times faster on a CPU
PLATEAU_FLOOR = 0.01  # the plateau schedule never goes below this share of learning_rate


class EpochSampler:
    """Builds each epoch's training set: every training row once, replaced by one of its augmented copies with
    probability `aug_prob`; copies of rows outside `rows` are never used."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, rows: np.ndarray, aug_x: np.ndarray, aug_source: np.ndarray, seed: int
    ) -> None:
        self.x, self.y, self.rows, self.aug_x, self.seed = x, y, np.asarray(rows), aug_x, seed
        self.aug_order = np.argsort(aug_source, kind="stable")
        self.starts = np.searchsorted(aug_source[self.aug_order], self.rows, side="left")
        self.counts = np.searchsorted(aug_source[self.aug_order], self.rows, side="right") - self.starts

    def sample_indices(self, epoch: int, aug_prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Return epoch `epoch`'s shuffled indices into [x; aug_x] and their labels, the same for the same seed."""
        rng = np.random.default_rng([self.seed, epoch])
        use_copy = (rng.random(len(self.rows)) < aug_prob) & (self.counts > 0)
        pick = self.starts + (rng.random(len(self.rows)) * np.maximum(self.counts, 1)).astype(np.int64)
        index = self.rows.astype(np.int64)
        index[use_copy] = len(self.x) + self.aug_order[pick[use_copy]]
        perm = rng.permutation(len(self.rows))
        return index[perm], self.y[self.rows][perm]

    def sample(self, epoch: int, aug_prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the shuffled (x uint8 (n, 28, 28), y) of epoch `epoch`, the same for the same seed."""
        index, labels = self.sample_indices(epoch, aug_prob)
        original = index < len(self.x)
        images = np.empty((len(index), *self.x.shape[1:]), dtype=self.x.dtype)
        images[original] = self.x[index[original]]
        images[~original] = self.aug_x[index[~original] - len(self.x)]
        return images, labels

    def drawn_sources(self, aug_source: np.ndarray, epochs: int, aug_prob: float) -> tuple[np.ndarray, np.ndarray]:
        """Return the rows whose own image the first `epochs` epochs draw, and the rows one of whose augmented copies
        (made from `aug_source`) they draw: sorted, each once."""
        drawn = np.concatenate([np.zeros(0, np.int64), *(self.sample_indices(e, aug_prob)[0] for e in range(epochs))])
        copies = drawn >= len(self.x)
        return np.unique(drawn[~copies]), np.unique(aug_source[drawn[copies] - len(self.x)])


class EpochBatches(keras.utils.PyDataset):
    """The batches of the epoch Keras is in: the sampler's sample for that epoch, set by `EpochSeeds` as it begins
    (so a run resumed by BackupAndRestore draws the epochs it would have drawn)."""

    def __init__(self, sampler: EpochSampler, batch_size: int, aug_prob: float) -> None:
        super().__init__()
        self.sampler, self.batch_size, self.aug_prob = sampler, batch_size, aug_prob
        self.epoch, self.current = -1, (np.zeros((0, 28, 28, 1), np.float32), np.zeros((0, N_CLASSES), np.float32))

    def begin(self, epoch: int) -> None:
        """Draw epoch `epoch`'s sample."""
        x, y = self.sampler.sample(epoch, self.aug_prob)
        self.epoch, self.current = epoch, (as_input(x), one_hot(y))

    def __len__(self) -> int:
        """Return the number of batches of an epoch (the last one may be partial)."""
        return -(-len(self.sampler.rows) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return batch `index` of the current epoch as (float32 images, one-hot labels)."""
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.current[0][part], self.current[1][part]


class EpochSeeds(keras.callbacks.Callback):
    """As each epoch begins: draws its sample and sets every dropout layer's random state from (`seed`, epoch), so an
    epoch is the same whether the run started at epoch 0 or resumed after a kill."""

    def __init__(self, batches: EpochBatches, seed: int) -> None:
        super().__init__()
        self.batches, self.seed = batches, seed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Draw epoch `epoch`'s sample and dropout masks' seeds."""
        self.batches.begin(epoch)
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for i, state in enumerate(states):
            value = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0] >> 1)
            state.assign(keras.ops.convert_to_tensor([value, 0], dtype=state.dtype))


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore with each epoch's weights and epoch number saved in a folder of their own, made current
    by one atomic rename of a link (`<folder>/current`): a kill at any point leaves one whole checkpoint."""

    def __init__(self, folder: Path) -> None:
        super().__init__(str(folder / "current"))
        self.folder = folder

    def _save_model(self) -> None:
        """Write the weights (with the optimizer's state) and the epoch, then switch `current` to them."""
        new = self.folder / f"epoch{self._current_epoch}"
        shutil.rmtree(new, ignore_errors=True)
        new.mkdir(parents=True)
        self.model.save_weights(str(new / "latest.weights.h5"))
        (new / "training_metadata.json").write_text(json.dumps({"epoch": self._current_epoch, "batch": 0}))
        link = self.folder / "current.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(new.name)
        os.replace(link, self.folder / "current")
        for old in self.folder.glob("epoch*"):
            if old != new:
                shutil.rmtree(old, ignore_errors=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        """Remove the checkpoint folder: the run is complete."""
        shutil.rmtree(self.folder, ignore_errors=True)


def resumed_epochs(folder: Path) -> int:
    """Return the epochs the checkpoint in `folder` holds (0 when there is none)."""
    meta = folder / "current" / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else 0


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


def schedule(cfg: FitSettings, steps: int) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """Return the learning rate of `cfg.schedule` for `steps` steps per epoch: warmup_cosine (a linear warmup to
    learning_rate, then cosine decay to 1% of it), exponential (x lr_decay per epoch) or a constant (constant and
    plateau, which ReduceLROnPlateau lowers)."""
    if cfg.schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, steps, cfg.lr_decay, staircase=True)
    if cfg.schedule != "warmup_cosine":
        return cfg.learning_rate
    total = max(1, cfg.epochs * steps)
    warmup = min(int(cfg.warmup_epochs * steps), total - 1)
    return keras.optimizers.schedules.CosineDecay(
        cfg.learning_rate / 10, max(1, total - warmup), alpha=0.01, warmup_target=cfg.learning_rate, warmup_steps=warmup
    )


def compiled_model(cfg: FitSettings, steps: int, jit_compile: bool | str = "auto") -> keras.Model:
    """Return model `cfg.model` compiled with its optimizer (weight averaging by use_ema when `cfg.ema_momentum` is
    set), schedule and label smoothing."""
    optimizer = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[cfg.optimizer]
    averaging = {} if cfg.ema_momentum is None else {"use_ema": True, "ema_momentum": cfg.ema_momentum}
    model = build_model(cfg.model, cfg.dropout_conv, cfg.dropout_dense)
    model.compile(
        optimizer=optimizer(schedule(cfg, steps), **averaging),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def fit(
    cfg: FitSettings,
    sampler: EpochSampler,
    val: tuple[np.ndarray, np.ndarray],
    device: DevicePlan | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    checkpoint: Path | None = None,
    verbose: int = 0,
) -> tuple[keras.Model, list[dict]]:
    """Train model `cfg.model` for `cfg.epochs` in one `model.fit`, scoring `val` (uint8 images, labels) after every
    epoch; with `checkpoint`, resume from the last epoch saved there and save each epoch. Return the model (the
    optimizer's weight average with use_ema) and the history of the epochs this call trained (epoch, loss, accuracy,
    val_loss, val_accuracy, lr)."""
    batches = EpochBatches(sampler, cfg.batch_size, cfg.aug_prob)
    model = compiled_model(cfg, len(batches), bool(device and device.jit_compile))
    model.build((None, 28, 28, 1))
    rate = keras.callbacks.LambdaCallback(  # every schedule's rate in the epoch logs (Keras adds it only on plateau)
        on_epoch_end=lambda _, logs: logs.setdefault(
            "learning_rate", keras.ops.convert_to_numpy(model.optimizer.learning_rate)
        )
    )
    own = [EpochSeeds(batches, sampler.seed), rate]
    if cfg.schedule == "plateau":
        floor = cfg.learning_rate * PLATEAU_FLOOR
        own.append(keras.callbacks.ReduceLROnPlateau("val_accuracy", cfg.lr_decay, cfg.plateau_patience, min_lr=floor))
    # the checkpoint goes after the caller's callbacks, which record an epoch before it is checkpointed
    last = [] if checkpoint is None else [AtomicBackup(Path(checkpoint))]
    history = model.fit(
        batches,
        epochs=cfg.epochs,
        shuffle=False,  # the sampler shuffles each epoch; Keras' own shuffle of the batches is not seeded by epoch
        validation_data=(as_input(val[0]), one_hot(val[1])),
        validation_batch_size=EVAL_BATCH,
        callbacks=[*own, *callbacks, *last],
        verbose=verbose,
    )
    rows = [dict(zip(history.history, values, strict=True)) for values in zip(*history.history.values(), strict=True)]
    first = cfg.epochs - len(rows)
    return model, [history_row(first + i, row) for i, row in enumerate(rows)]


def history_row(epoch: int, logs: dict) -> dict:
    """Return Keras' `logs` of 0-based `epoch` as a history row: epoch (from 1), the metrics, and lr."""
    row = {k: float(v) for k, v in logs.items() if k != "learning_rate"}
    return {"epoch": epoch + 1, **row, "lr": float(logs.get("learning_rate", np.nan))}


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Return the class probabilities (n, 10) of uint8 `images` (n, 28, 28)."""
    return np.asarray(model.predict(as_input(images), batch_size=batch_size, verbose=0), dtype=np.float32)
