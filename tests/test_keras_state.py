"""Tests are independent of the order they run in: each starts from Keras' default global state (tests/conftest.py
`fresh_keras`), whatever the test before it set. Each test here checks that state first, then changes it as a test
may (a mixed-precision policy, layers named in the session); whichever runs second sees the other's changes unless
they are reset."""

from __future__ import annotations

import keras
import pytest


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_test_starts_from_float32_and_a_fresh_session(policy: str) -> None:
    assert keras.config.dtype_policy().name == "float32"
    assert keras.layers.Dense(1).name == "dense"  # the first layer of its kind in a cleared session
    keras.mixed_precision.set_global_policy(policy)  # left set, as a test that forgets to restore it would
    keras.layers.Dense(1)
    assert keras.layers.Dense(1).name == "dense_2"
