"""Training options beyond the default recipe, through Keras' own machinery: weight averaging by the optimizer's
use_ema (the model fit returns and saves holds the averages), resuming from the checkpoint of a run that stopped
after an epoch (BackupAndRestore) to exactly the uninterrupted result, the optimizers and the learning-rate schedules
of the published recipes (constant, exponential per epoch, ReduceLROnPlateau)."""

from __future__ import annotations

import typing
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.lib.fitting import EpochSampler, compiled_model, fit, predict_probs, resumed_epochs, schedule
from pipeline.lib.members import FitSettings
from pipeline.lib.models import load_model
from pipeline.params import FitParams

SETTINGS = FitSettings(
    model="cnn_basic", epochs=3, batch_size=16, learning_rate=0.003, warmup_epochs=0.5,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip
EMA = replace(SETTINGS, ema_momentum=0.9)


class Stop(keras.callbacks.Callback):
    """Ends a fit after epoch `after` (0-based) the way a killed run ends: its checkpoint holds the epoch before."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Stop the run."""
        if epoch == self.after:
            raise KeyboardInterrupt


def sampler_of(digits) -> EpochSampler:
    """Return a sampler over the first 45 of the sixty synthetic digits, each with one augmented copy."""
    images, labels = digits
    return EpochSampler(images, labels, np.arange(45), images[::-1].copy(), np.arange(60)[::-1].copy(), seed=3)


def fit_fresh(cfg: FitSettings, digits, **kwargs) -> tuple[keras.Model, list[dict]]:
    """Return `fit` of `cfg` from the same initial weights, validated on the last 15 digits."""
    images, labels = digits
    keras.utils.set_random_seed(7)
    return fit(cfg, sampler_of(digits), (images[45:], labels[45:]), **kwargs)


def test_the_model_fit_returns_and_saves_holds_the_weight_averages(digits, tmp_path: Path):
    model, _ = fit_fresh(EMA, digits)
    averages = [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]
    for weight, average in zip(model.trainable_variables, averages, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), average)
    plain, _ = fit_fresh(SETTINGS, digits)
    images = digits[0][45:]
    assert not np.allclose(predict_probs(model, images), predict_probs(plain, images), atol=1e-4)  # EMA counts
    model.save(tmp_path / "ema.keras")
    np.testing.assert_allclose(
        predict_probs(load_model(str(tmp_path / "ema.keras")), images), predict_probs(model, images)
    )


@pytest.mark.parametrize("cfg", [SETTINGS, EMA, replace(SETTINGS, schedule="exponential", optimizer="rmsprop")])
def test_a_run_resumed_from_its_checkpoint_ends_exactly_like_an_uninterrupted_one(digits, tmp_path: Path, cfg):
    cfg = replace(cfg, epochs=4)
    whole, history = fit_fresh(cfg, digits)
    with pytest.raises(KeyboardInterrupt):
        fit_fresh(cfg, digits, callbacks=[Stop(after=2)], checkpoint=tmp_path / "ckpt")
    assert resumed_epochs(tmp_path / "ckpt") == 2  # epoch 3's checkpoint was never written
    resumed, rest = fit_fresh(cfg, digits, checkpoint=tmp_path / "ckpt")
    assert [r["epoch"] for r in rest] == [3, 4]
    assert rest == history[2:]
    images = digits[0][45:]
    np.testing.assert_array_equal(predict_probs(resumed, images), predict_probs(whole, images))
    assert not (tmp_path / "ckpt").exists()  # removed once the run is complete


def test_rmsprop_and_the_schedules_reach_the_optimizer():
    model = compiled_model(replace(SETTINGS, optimizer="rmsprop", schedule="constant"), steps=10)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    lr = schedule(replace(SETTINGS, schedule="exponential", lr_decay=0.5), steps=10)
    assert [float(lr(step)) for step in (0, 9, 10, 25)] == pytest.approx([0.003, 0.003, 0.0015, 0.00075])


def test_plateau_lowers_the_rate_after_patience_epochs_without_a_better_val_accuracy(digits):
    """Validation on ten identical blank images, one of each label: val_accuracy is 0.1 whatever the model learns."""
    images, labels = digits
    cfg = replace(SETTINGS, epochs=4, schedule="plateau", lr_decay=0.5, plateau_patience=1)
    blank = (np.zeros((10, 28, 28), np.uint8), np.arange(10))
    _, history = fit(cfg, EpochSampler(images, labels, np.arange(60), images[:0], np.zeros(0, int), 0), blank)
    assert [r["val_accuracy"] for r in history] == pytest.approx([0.1] * 4)
    # the rate each epoch trained at: epoch 1 sets the best, each later one lowers the next epoch's
    assert [r["lr"] for r in history] == pytest.approx([0.003, 0.003, 0.0015, 0.00075])


@pytest.mark.parametrize("name", typing.get_args(FitParams.__pydantic_fields__["optimizer"].annotation))
def test_every_optimizer_the_schema_allows_is_built(name: str):
    optimizer = compiled_model(replace(SETTINGS, optimizer=name), steps=5).optimizer
    assert type(optimizer).__name__.lower() == name


@pytest.mark.parametrize("name", typing.get_args(FitParams.__pydantic_fields__["schedule"].annotation))
def test_every_schedule_the_schema_allows_gives_a_rate_up_to_the_peak(name: str):
    lr = schedule(replace(SETTINGS, schedule=name), steps=5)
    rates = [float(lr(step)) if callable(lr) else lr for step in range(15)]
    assert max(rates) == pytest.approx(SETTINGS.learning_rate) and min(rates) > 0
