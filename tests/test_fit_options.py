"""Training options beyond the default recipe: weight averaging through the optimizer's own use_ema (OOF and
saved models from the averaged weights, checkpoints resuming exactly), the optimizers and the learning-rate
schedules of the published recipes (constant, exponential per epoch, reduced on plateau)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import params
from pipeline.lib.fitting import (
    EpochSampler,
    FitSettings,
    compiled_model,
    current_lr,
    fit,
    optimizer_for,
    plateau_rate,
    predict_probs,
    schedule,
)
from pipeline.lib.models import load_model

SETTINGS = FitSettings(
    model="cnn_basic", epochs=3, batch_size=16, learning_rate=0.003, warmup_epochs=0.5,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip
EMA = replace(SETTINGS, ema_momentum=0.9)


class Stop(Exception):
    """Raised by an epoch hook to end a fit the way a killed run ends: after an epoch's checkpoint."""


def sampler_of(digits) -> EpochSampler:
    """Return a sampler over the first 45 of the sixty synthetic digits, each with one augmented copy."""
    images, labels = digits
    return EpochSampler(images, labels, np.arange(45), images[::-1].copy(), np.arange(60)[::-1].copy(), seed=3)


def fit_fresh(cfg: FitSettings, digits, **kwargs) -> tuple[keras.Model, list[dict]]:
    """Return `fit` of `cfg` from the same initial weights, validated on the last 15 digits."""
    images, labels = digits
    keras.utils.set_random_seed(7)
    return fit(cfg, sampler_of(digits), (images[45:], labels[45:]), **kwargs)


def trainable(model: keras.Model) -> list[np.ndarray]:
    """Return copies of `model`'s trainable weights."""
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


def averages(model: keras.Model) -> list[np.ndarray]:
    """Return copies of the weight averages `model`'s optimizer keeps (use_ema)."""
    return [keras.ops.convert_to_numpy(v) for v in model.optimizer._model_variables_moving_average]


def test_averaged_weights_are_what_fit_returns_and_the_saved_model_holds(digits, tmp_path: Path):
    images, _ = digits
    checkpoint = tmp_path / "checkpoint"
    model, history = fit_fresh(EMA, digits, checkpoint=checkpoint, fingerprint="ema")
    assert len(history) == 3
    # the last checkpoint holds the trained weights and, in its optimizer, their average
    last = keras.saving.load_model(checkpoint / "last.keras", safe_mode=True, compile=True)
    for got, average, raw in zip(trainable(model), averages(last), trainable(last), strict=True):
        np.testing.assert_array_equal(got, average)  # fit returns the average ...
        assert raw.shape == got.shape
    assert any(not np.allclose(a, b) for a, b in zip(trainable(model), trainable(last), strict=True))  # ... not these
    assert not np.allclose(predict_probs(model, images), predict_probs(last, images))
    model.save(tmp_path / "fold0.keras")  # what train writes: the averaged weights
    saved = load_model(str(tmp_path / "fold0.keras"))
    np.testing.assert_array_equal(predict_probs(saved, images), predict_probs(model, images))


def test_weight_averaging_leaves_the_trained_weights_as_they_were(digits, tmp_path: Path):
    """Keras swaps the average into the model when each one-epoch model.fit ends; the trained weights must carry
    on from where the optimizer left them, so they are exactly those of the same run without averaging."""
    plain, _ = fit_fresh(SETTINGS, digits)
    fit_fresh(EMA, digits, checkpoint=tmp_path, fingerprint="ema")
    trained = keras.saving.load_model(tmp_path / "last.keras", safe_mode=True, compile=True)
    for a, b in zip(trainable(plain), trainable(trained), strict=True):
        np.testing.assert_array_equal(a, b)


def test_validation_scores_the_averaged_weights(digits):
    images, labels = digits
    model, history = fit_fresh(EMA, digits)
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    scored = model.evaluate(images[45:].astype(np.float32)[..., None], np.eye(10)[labels[45:]], verbose=0)
    assert history[-1]["val_loss"] == pytest.approx(scored[0], rel=1e-5)


@pytest.mark.parametrize("cfg", [SETTINGS, EMA], ids=["plain", "ema"])
def test_a_run_resumed_from_its_checkpoint_ends_exactly_like_an_uninterrupted_one(digits, tmp_path: Path, cfg):
    images, _ = digits
    whole, history = fit_fresh(cfg, digits, checkpoint=tmp_path / "whole", fingerprint="f")

    def stop_after_second(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit_fresh(cfg, digits, checkpoint=tmp_path / "cut", fingerprint="f", on_epoch=stop_after_second)
    keras.backend.clear_session()
    resumed, resumed_history = fit_fresh(cfg, digits, checkpoint=tmp_path / "cut", fingerprint="f")
    assert [row["epoch"] for row in resumed_history] == [1, 2, 3]
    assert resumed_history[2]["val_loss"] == history[2]["val_loss"]
    for a, b in zip(trainable(whole), trainable(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(predict_probs(resumed, images), predict_probs(whole, images))


def test_rmsprop_and_the_schedules_reach_the_optimizer():
    cfg = replace(SETTINGS, optimizer="rmsprop", schedule="exponential", lr_decay=0.5, learning_rate=0.004)
    model = compiled_model(cfg, steps_per_epoch=10, jit_compile=False)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    lr = schedule(cfg, steps_per_epoch=10)
    assert [float(lr(step)) for step in (0, 9, 10, 25)] == pytest.approx([0.004, 0.004, 0.002, 0.001])
    assert schedule(replace(cfg, schedule="constant"), 10) == 0.004
    assert not compiled_model(SETTINGS, 10, False).optimizer.use_ema
    averaged = compiled_model(EMA, 10, False).optimizer
    assert (averaged.use_ema, averaged.ema_momentum) == (True, 0.9)
    with pytest.raises(ValueError, match=r"train\.optimizer"):
        compiled_model(replace(SETTINGS, optimizer="sgd"), 10, False)
    with pytest.raises(ValueError, match=r"train\.schedule"):
        schedule(replace(SETTINGS, schedule="cyclic"), 10)


def test_plateau_halves_the_rate_after_patience_epochs_without_a_better_val_accuracy():
    cfg = replace(SETTINGS, schedule="plateau", learning_rate=0.001, lr_decay=0.5, plateau_patience=2)
    accuracies = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7, 0.7]
    rates = [plateau_rate(cfg, [{"val_accuracy": a} for a in accuracies[:n]]) for n in range(len(accuracies) + 1)]
    assert rates == pytest.approx([0.001] * 4 + [0.0005] * 3 + [0.00025] * 2 + [0.000125])
    stuck = [{"val_accuracy": 0.5}] * 40
    assert plateau_rate(cfg, stuck) == pytest.approx(0.001 * 0.01)  # never below 1% of learning_rate


def test_a_plateau_run_sets_each_epochs_rate_from_its_history(digits):
    cfg = replace(SETTINGS, epochs=4, schedule="plateau", lr_decay=0.5, plateau_patience=1, learning_rate=0.002)
    model, history = fit_fresh(cfg, digits)
    for n, row in enumerate(history):
        assert row["lr"] == pytest.approx(plateau_rate(cfg, history[:n]))
    assert current_lr(model) == pytest.approx(history[-1]["lr"])


@pytest.mark.parametrize("name", params.choices(params.Optimizer))
def test_every_optimizer_the_schema_allows_is_built(name: str):
    optimizer = optimizer_for(replace(SETTINGS, optimizer=name), steps_per_epoch=10)
    assert type(optimizer).__name__.lower() == name


@pytest.mark.parametrize("name", params.choices(params.Schedule))
def test_every_schedule_the_schema_allows_gives_a_rate_up_to_the_peak(name: str):
    rate = schedule(replace(SETTINGS, schedule=name), steps_per_epoch=10)
    first = float(keras.ops.convert_to_numpy(rate(0))) if callable(rate) else rate
    assert 0 < first <= SETTINGS.learning_rate * (1 + 1e-6)  # float32


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ema_momentum", 1.0, r"train\.ema_momentum: got 1\.0, expected a number from 0 to 1 \(excluded\) or null"),
        ("optimizer", "sgd", r"train\.optimizer: got 'sgd', expected one of adam, rmsprop"),
        ("lr_decay", 0, r"train\.lr_decay: got 0"),
        ("plateau_patience", 0, r"train\.plateau_patience: got 0"),
    ],
)
def test_bad_training_options_stop_at_load(project: Path, key: str, value: object, message: str):
    doc = params.read_raw()
    doc["train"][key] = value
    with pytest.raises(params.ParamsError, match=message):
        params.validate(doc)
    doc = params.read_raw()
    doc["model"]["overrides"] = {"bn_plain5": {key: value}}
    with pytest.raises(params.ParamsError, match=rf"model\.overrides\.bn_plain5\.{key}"):
        params.validate(doc)
