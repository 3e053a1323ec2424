"""The model zoo: every model builds, has the parameter count its layer shapes give, trains a step,
and survives a .keras save/load round trip with safe_mode on."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.lib import models
from pipeline.lib.models import (
    DROPOUTS_USED,
    INPUT_SHAPE,
    MODELS,
    PUBLISHED,
    build_model,
    load_model,
    multiply_adds,
    search_space,
)


def conv(k: int, c_in: int, c_out: int) -> int:
    """Parameters of a k x k convolution with bias."""
    return k * k * c_in * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    """Parameters of a dense layer with bias."""
    return n_in * n_out + n_out


def bn(channels: int) -> int:
    """Parameters of batch normalisation (gamma, beta, moving mean, moving variance)."""
    return 4 * channels


def plain_conv(k: int, c_in: int, c_out: int) -> int:
    """Parameters of a k x k convolution without bias followed by batch normalisation."""
    return k * k * c_in * c_out + bn(c_out)


EXPECTED_PARAMS = {
    # 784 pixels -> 128 -> 32 -> 10
    "mlp": dense(784, 128) + dense(128, 32) + dense(32, 10),
    # valid 3x3: 28 -> 26, pool 13; 3x3: 13 -> 11, pool 5; flatten 5*5*64
    "cnn_basic": conv(3, 1, 32) + conv(3, 32, 64) + dense(5 * 5 * 64, 512) + dense(512, 10),
    # same 2x2: 28, pool 14; same 2x2: 14, pool 7; flatten 7*7*64
    "cnn_small2x2": conv(2, 1, 32) + conv(2, 32, 64) + dense(7 * 7 * 64, 1024) + dense(1024, 10),
    # same 5x5 x2: 28, pool 14; same 3x3 x2: 14, pool 7; flatten 7*7*64
    "dropout_cnn": conv(5, 1, 32) + conv(5, 32, 32) + conv(3, 32, 64) + conv(3, 64, 64) + dense(7 * 7 * 64, 256)
    + dense(256, 10),
    # valid 3x3 x2: 28 -> 24, strided 5x5 same: 12; valid 3x3 x2: 12 -> 8, strided 5x5: 4; valid 4x4: 1x1x128
    "bn_cnn": conv(3, 1, 32) + conv(3, 32, 32) + conv(5, 32, 32) + 3 * bn(32)
    + conv(3, 32, 64) + conv(3, 64, 64) + conv(5, 64, 64) + 3 * bn(64)
    + conv(4, 64, 128) + bn(128) + dense(128, 10),
    # bn_cnn without the batch normalisation of its four unstrided 3x3 convs
    "bn_lite": conv(3, 1, 32) + conv(3, 32, 32) + conv(5, 32, 32) + bn(32)
    + conv(3, 32, 64) + conv(3, 64, 64) + conv(5, 64, 64) + bn(64)
    + conv(4, 64, 128) + bn(128) + dense(128, 10),
    # An et al. 2020: valid convs without bias, each batch-normalised; dense 10 without bias, batch-normalised
    # 3x3 x10: 28 -> 8, flatten 8*8*176
    "bn_plain3": sum(plain_conv(3, a, b) for a, b in zip((1, *range(32, 161, 16)), range(32, 177, 16), strict=True))
    + 10 * 8 * 8 * 176 + bn(10),
    # 5x5 x5: 28 -> 8, flatten 8*8*160
    "bn_plain5": sum(plain_conv(5, a, b) for a, b in zip((1, 32, 64, 96, 128), (32, 64, 96, 128, 160), strict=True))
    + 10 * 8 * 8 * 160 + bn(10),
    # 7x7 x4: 28 -> 4, flatten 4*4*192
    "bn_plain7": sum(plain_conv(7, a, b) for a, b in zip((1, 48, 96, 144), (48, 96, 144, 192), strict=True))
    + 10 * 4 * 4 * 192 + bn(10),
}  # fmt: skip

# Multiply-adds per image of the convolutions and dense layers: output height * width * channels * inputs per output
EXPECTED_MULTIPLY_ADDS = {
    "dropout_cnn": 28 * 28 * 32 * (5 * 5 * 1 + 5 * 5 * 32) + 14 * 14 * 64 * (3 * 3 * 32 + 3 * 3 * 64)
    + 7 * 7 * 64 * 256 + 256 * 10,
    "bn_plain7": 22 * 22 * 48 * 49 * 1 + 16 * 16 * 96 * 49 * 48 + 10 * 10 * 144 * 49 * 96 + 4 * 4 * 192 * 49 * 144
    + 3072 * 10,
}  # fmt: skip


def test_every_model_has_an_expected_count_and_a_published_figure():
    assert set(EXPECTED_PARAMS) == set(MODELS) == set(PUBLISHED) == set(DROPOUTS_USED)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_builds_with_the_expected_parameter_count(name):
    model = build_model(name, 0.3, 0.4)
    assert model.input_shape == (None, *INPUT_SHAPE)
    assert model.output_shape == (None, 10)
    assert model.count_params() == EXPECTED_PARAMS[name]


def test_the_models_have_the_parameter_counts_published_with_their_architectures():
    # the counts in the Keras summaries the architectures were published with, against the models built here (the
    # hand counts of EXPECTED_PARAMS are checked against the built models above)
    assert build_model("dropout_cnn").count_params() == 887_530
    assert build_model("bn_cnn").count_params() == 327_242
    # the flattened features An et al.'s dense layers take (their nn.Linear(11264 / 10240 / 3072, 10))
    plain = ("bn_plain3", "bn_plain5", "bn_plain7")
    flat = {name: build_model(name).get_layer("logits").input.shape[-1] for name in plain}
    assert flat == {"bn_plain3": 11264, "bn_plain5": 10240, "bn_plain7": 3072}


@pytest.mark.parametrize("name", sorted(EXPECTED_MULTIPLY_ADDS))
def test_multiply_adds_count_every_convolution_and_dense_layer(name):
    assert multiply_adds(build_model(name)) == EXPECTED_MULTIPLY_ADDS[name]


def test_plain_bn_models_have_no_pooling_no_dropout_and_batch_norm_before_each_relu():
    for name in ("bn_plain3", "bn_plain5", "bn_plain7"):
        kinds = [type(layer).__name__ for layer in build_model(name, 0.4, 0.4).layers]
        assert "MaxPooling2D" not in kinds and "Dropout" not in kinds
        convs = [i for i, kind in enumerate(kinds) if kind == "Conv2D"]
        assert all(kinds[i + 1 : i + 3] == ["BatchNormalization", "ReLU"] for i in convs)
        assert kinds[-3:] == ["Dense", "BatchNormalization", "Activation"]


def test_the_batch_normalised_head_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("bn_plain7")
        assert model.get_layer("scale").compute_dtype == "bfloat16"
        assert {model.get_layer(n).compute_dtype for n in ("logits", "logits_bn", "probs")} == {"float32"}
        x = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.float32)
        assert keras.ops.convert_to_numpy(model(x, training=False)).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_returns_probabilities_of_raw_pixels_and_trains_one_step(name, digits):
    images, labels = digits
    x = images[:16].astype(np.float32)[..., None]  # raw 0-255: the model scales them itself
    y = np.eye(10, dtype=np.float32)[labels[:16]]
    keras.utils.set_random_seed(0)
    model = build_model(name)
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    assert probs.shape == (16, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_survives_a_keras_round_trip_with_safe_mode(name, digits, tmp_path):
    x = digits[0][:8].astype(np.float32)[..., None]
    model = build_model(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = load_model(str(path))
    assert loaded.name == name
    assert loaded.count_params() == model.count_params()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_dropout_rates_reach_the_layers():
    rates = [layer.rate for layer in build_model("bn_cnn", 0.4, 0.3).layers if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.4, 0.4, 0.3]
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in build_model("mlp", 0.4, 0.3).layers)


def test_search_space_drops_the_dropouts_a_model_ignores():
    space = {"learning_rate": [1e-4, 1e-2, "log"], "dropout_conv": [0.1, 0.4], "dropout_dense": [0.2, 0.6]}
    assert set(search_space("mlp", space)) == {"learning_rate"}
    assert set(search_space("cnn_small2x2", space)) == {"learning_rate", "dropout_dense"}
    assert search_space("bn_cnn", space) == space


def test_batch_norm_statistics_settle_within_a_short_cpu_run():
    momenta = [
        layer.momentum for layer in build_model("bn_cnn").layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert momenta == [0.9] * 7  # at Keras' 0.99, 3 epochs of 63 steps left bn_cnn at 37% held-out accuracy


def test_a_seed_member_builds_and_searches_as_its_model():
    """A member name `model+N` (the schema checks the names) is its zoo model, for building and for tuning."""
    assert models.build_model("mlp+3").name == "mlp"
    space = {"learning_rate": [1e-4, 1e-2, "log"], "dropout_conv": [0.1, 0.4]}
    assert search_space("mlp+2", space) == search_space("mlp", space) == {"learning_rate": [1e-4, 1e-2, "log"]}
