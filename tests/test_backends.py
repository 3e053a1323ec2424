"""The model, training and TTA code is backend-agnostic Keras 3: the same core runs on JAX."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = """
import numpy as np, keras
from pipeline.training import EpochSampler, FitSettings, fit, accuracy
from pipeline.tta import predict_views
from tests.conftest import synthetic_digits
assert keras.backend.backend() == "jax", keras.backend.backend()
x, y = synthetic_digits(60)
sampler = EpochSampler(x, y, np.arange(60), x[:30], np.arange(30, dtype=np.int32), seed=0)
model, history = fit(FitSettings("dropout_cnn", 2, 16, 0.003, 0.5, 0.25, 0.5, 0.5, 0.0), sampler, (x, y))
views = predict_views(model, x, 2, 64)
assert views.shape == (3, 60, 10) and np.allclose(views.sum(-1), 1, atol=1e-4)
print("jax ok", len(history), accuracy(views.mean(0), y))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX not installed (pip install 'jax[cpu]')")
def test_training_and_tta_run_on_the_jax_backend():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jax ok 2" in done.stdout
