"""The model zoo: every digit recognizer takes 28x28x1 raw pixels (0-255), scales them once in its
first layer, and returns class probabilities for the 10 digits."""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
from keras import layers

from pipeline.lib.members import base_name

INPUT_SHAPE = (28, 28, 1)
N_CLASSES = 10
BN_MOMENTUM = 0.9  # Keras' 0.99 leaves the moving statistics near their start after the few hundred steps of a run


def inputs_scaled() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Return the model input and its pixels scaled to [0, 1] (the one place pixels are scaled)."""
    inputs = keras.Input(INPUT_SHAPE, name="pixels")
    return inputs, layers.Rescaling(1.0 / 255.0, name="scale")(inputs)


def head(x: keras.KerasTensor, batch_norm: bool = False) -> keras.KerasTensor:
    """Return float32 class probabilities of features `x` (also under mixed precision), logits batch-normalised
    (`batch_norm`: a dense layer without bias, then batch normalisation) or not."""
    if not batch_norm:
        return layers.Dense(N_CLASSES, activation="softmax", dtype="float32", name="probs")(x)
    x = layers.Dense(N_CLASSES, use_bias=False, dtype="float32", name="logits")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, dtype="float32", name="logits_bn")(x)
    return layers.Activation("softmax", dtype="float32", name="probs")(x)


def mlp(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return Flatten, Dense 128, Dense 32, softmax 10 (dropouts unused)."""
    inputs, x = inputs_scaled()
    x = layers.Dense(128, activation="relu")(layers.Flatten()(x))
    x = layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, head(x), name="mlp")


def cnn_basic(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return conv 32 3x3, pool, conv 64 3x3, pool, dense 512, softmax 10 (dropouts unused)."""
    inputs, x = inputs_scaled()
    for filters in (32, 64):
        x = layers.MaxPooling2D()(layers.Conv2D(filters, 3, activation="relu")(x))
    x = layers.Dense(512, activation="relu")(layers.Flatten()(x))
    return keras.Model(inputs, head(x), name="cnn_basic")


def cnn_small2x2(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return conv 32 2x2, pool, conv 64 2x2, pool, dense 1024, dropout, softmax 10."""
    inputs, x = inputs_scaled()
    for filters in (32, 64):
        x = layers.MaxPooling2D()(layers.Conv2D(filters, 2, padding="same", activation="relu")(x))
    x = layers.Dense(1024, activation="relu")(layers.Flatten()(x))
    x = layers.Dropout(dropout_dense)(x)
    return keras.Model(inputs, head(x), name="cnn_small2x2")


def dropout_cnn(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return the competition classic: conv5x5x32 x2, pool, dropout, conv3x3x64 x2, pool, dropout, dense 256."""
    inputs, x = inputs_scaled()
    for filters, kernel in ((32, 5), (64, 3)):
        x = layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout_conv)(x)
    x = layers.Dense(256, activation="relu")(layers.Flatten()(x))
    x = layers.Dropout(dropout_dense)(x)
    return keras.Model(inputs, head(x), name="dropout_cnn")


def conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, strides: int = 1, padding: str = "valid", norm: bool = True
) -> keras.KerasTensor:
    """Return a ReLU convolution of `x`, batch-normalised with `norm`."""
    x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, activation="relu")(x)
    return layers.BatchNormalization(momentum=BN_MOMENTUM)(x) if norm else x


def strided_cnn(name: str, dropout_conv: float, dropout_dense: float, norm_all: bool) -> keras.Model:
    """Return (3x3 conv x2, strided 5x5 conv) x2, a 4x4 conv to 128; batch norm after every conv or (not `norm_all`)
    only after the strided ones and the last."""
    inputs, x = inputs_scaled()
    for filters in (32, 64):
        x = conv_bn(x, filters, 3, norm=norm_all)
        x = conv_bn(x, filters, 3, norm=norm_all)
        x = conv_bn(x, filters, 5, strides=2, padding="same")
        x = layers.Dropout(dropout_conv)(x)
    x = conv_bn(x, 128, 4)
    x = layers.Flatten()(x)
    x = layers.Dropout(dropout_dense)(x)
    return keras.Model(inputs, head(x), name=name)


def bn_cnn(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return the BN CNN of the strongest public ensembles: stacked 3x3 convs, strided 5x5 instead of pooling."""
    return strided_cnn("bn_cnn", dropout_conv, dropout_dense, norm_all=True)


def bn_lite(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return bn_cnn with 3 of its 7 batch normalisations (after the strided convs and the last): for CPUs."""
    return strided_cnn("bn_lite", dropout_conv, dropout_dense, norm_all=False)


def bn_conv(x: keras.KerasTensor, filters: int, kernel: int) -> keras.KerasTensor:
    """Return a valid (unpadded) convolution without bias, batch normalisation, then ReLU (An et al. 2020's block)."""
    x = layers.Conv2D(filters, kernel, use_bias=False)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    return layers.ReLU()(x)


def bn_plain(name: str, kernel: int, widths: tuple[int, ...]) -> keras.Model:
    """Return An et al. 2020's (arXiv:2008.10400) CNN of `bn_conv` blocks `kernel` wide, `widths` channels, BN head."""
    inputs, x = inputs_scaled()
    for filters in widths:
        x = bn_conv(x, filters, kernel)
    x = layers.Flatten()(x)
    return keras.Model(inputs, head(x, batch_norm=True), name=name)


def bn_plain3(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return An et al.'s M3: ten 3x3 convs of 32, 48, ..., 176 channels (28 -> 8), 1.13 M parameters."""
    return bn_plain("bn_plain3", 3, tuple(range(32, 177, 16)))


def bn_plain5(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return An et al.'s M5: five 5x5 convs of 32, 64, 96, 128, 160 channels (28 -> 8), 1.13 M parameters."""
    return bn_plain("bn_plain5", 5, (32, 64, 96, 128, 160))


def bn_plain7(dropout_conv: float, dropout_dense: float) -> keras.Model:
    """Return An et al.'s M7: four 7x7 convs of 48, 96, 144, 192 channels (28 -> 4), 2.29 M parameters."""
    return bn_plain("bn_plain7", 7, (48, 96, 144, 192))


MODELS: dict[str, Callable[[float, float], keras.Model]] = {
    build.__name__: build
    for build in (mlp, cnn_basic, cnn_small2x2, dropout_cnn, bn_cnn, bn_lite, bn_plain3, bn_plain5, bn_plain7)
}


# The accuracy each architecture is published with (the reference column of reports/models.md).
PUBLISHED: dict[str, str] = {
    "mlp": "about 97.4% after 25 epochs (Adam)",
    "cnn_basic": "98.57% after 3 epochs, above 99% after 10 (Adam, batch 250)",
    "cnn_small2x2": "none published (tutorial: 10 epochs, Adam lr 0.01)",
    "dropout_cnn": "99.5-99.67% public LB",
    "bn_cnn": "99.64% single, 99.75% ensemble",
    "bn_lite": "none published (bn_cnn with 3 of its 7 batch normalisations, for CPUs)",
    **dict.fromkeys(("bn_plain3", "bn_plain5", "bn_plain7"), "99.87% M3+M5+M7 vote, 99.91% 2-level (MNIST test)"),
}

# The dropout settings each builder reads; tuning the others would only add noise to the study.
DROPOUTS_USED: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(MODELS, ()),
    "cnn_small2x2": ("dropout_dense",),
    **dict.fromkeys(("dropout_cnn", "bn_cnn", "bn_lite"), ("dropout_conv", "dropout_dense")),
}


def multiply_adds(model: keras.Model) -> int:
    """Return the multiply-adds one image costs in `model`'s convolution and dense layers (the bulk of its compute)."""
    costly = [layer for layer in model.layers if isinstance(layer, layers.Conv2D | layers.Dense)]  # a dense: a 1x1 conv
    return sum(
        math.prod(c.output.shape[1:]) * c.input.shape[-1] * math.prod(getattr(c, "kernel_size", ())) for c in costly
    )


def search_space(name: str, space: dict) -> dict:
    """Return the tuning `space` without the dropout settings member `name`'s model does not read."""
    unused = {"dropout_conv", "dropout_dense"} - set(DROPOUTS_USED[base_name(name)])
    return {key: spec for key, spec in space.items() if key not in unused}


def build_model(name: str, dropout_conv: float = 0.25, dropout_dense: float = 0.5) -> keras.Model:
    """Return a new, uncompiled model `name` (a zoo model, or a seed member of one) with the given dropout rates."""
    return MODELS[base_name(name)](dropout_conv, dropout_dense)


def load_model(path: str) -> keras.Model:
    """Load a trained `.keras` model in safe mode (no code from the file), computing in the global dtype policy."""
    return in_global_policy(keras.saving.load_model(path, safe_mode=True, compile=False))


def in_global_policy(model: keras.Model) -> keras.Model:
    """Return `model`, a zoo model saved under another dtype policy rebuilt under the global one with its weights."""
    policy = keras.config.dtype_policy().name
    if model.name not in MODELS or model.get_layer("scale").dtype_policy.name == policy:
        return model
    twin = build_model(model.name)
    twin.set_weights(model.get_weights())
    return twin
