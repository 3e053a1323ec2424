"""The model, training and TTA code is backend-agnostic Keras 3: the same code runs on JAX, the only
backend on the GPU machine, which has no TensorFlow at all."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.lib.exclusions import header_text
from pipeline.lib.submission_file import validate_submission_file
from tests.conftest import REPO, synthetic_digits, test_csv_text, tiny_params, train_csv_text

needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX not installed (pip install 'jax[cpu]')"
)

# Imported at start-up through PYTHONPATH: makes TensorFlow look uninstalled, as on the GPU machine.
NO_TENSORFLOW = """
import importlib.machinery

_find_spec = importlib.machinery.PathFinder.find_spec.__func__


def _without_tensorflow(cls, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
        return None
    return _find_spec(cls, name, path, target)


importlib.machinery.PathFinder.find_spec = classmethod(_without_tensorflow)
"""

SCRIPT = """
import sys, numpy as np, keras
from pipeline.lib.device import configure
from pipeline.lib.fitting import EpochSampler, fit, predict_probs
from pipeline.lib.members import FitSettings
from pipeline.lib.metrics import accuracy
from pipeline.lib.tta import predict_views
from tests.conftest import synthetic_digits
assert keras.backend.backend() == "jax", keras.backend.backend()
device = configure("float32")
x, y = synthetic_digits(90)
sampler = EpochSampler(x, y, np.arange(60), x[:40], np.arange(20, 60, dtype=np.int32), seed=0)
settings = FitSettings(model="dropout_cnn", epochs=3, batch_size=16, learning_rate=0.003, warmup_epochs=0.5,
                       dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0)


class Stop(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


keras.utils.set_random_seed(1)
model, history = fit(settings, sampler, (x[60:], y[60:]), device)
keras.utils.set_random_seed(1)
try:
    fit(settings, sampler, (x[60:], y[60:]), device, [Stop()], checkpoint=sys.argv[1])
except KeyboardInterrupt:
    pass
keras.utils.set_random_seed(1)
resumed, rest = fit(settings, sampler, (x[60:], y[60:]), device, checkpoint=sys.argv[1])
assert rest == history[1:], (rest, history)
assert np.allclose(predict_probs(resumed, x[60:]), predict_probs(model, x[60:]), atol=1e-6)
views = predict_views(model, x, 2, 64)
assert views.shape == (3, 90, 10) and np.allclose(views.sum(-1), 1, atol=1e-4)
print("jax ok", len(history), accuracy(views.mean(0), y))
"""


BF16_SCRIPT = """
import sys, numpy as np, keras
from pipeline.lib.device import configure
from pipeline.lib.models import load_model
from pipeline.lib.fitting import EpochSampler, fit, predict_probs
from pipeline.lib.members import FitSettings
from pipeline.lib.tta import predict_views
from tests.conftest import synthetic_digits
assert keras.backend.backend() == "jax", keras.backend.backend()
device = configure("mixed_bfloat16")
assert device.precision == "mixed_bfloat16" and "mixed_bfloat16" in device.describe(), device
x, y = synthetic_digits(90)
sampler = EpochSampler(x, y, np.arange(60), x[:40], np.arange(20, 60, dtype=np.int32), seed=0)
settings = FitSettings(model="bn_cnn", epochs=2, batch_size=16, learning_rate=0.003, warmup_epochs=0.5,
                       dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0)
keras.utils.set_random_seed(1)
model, history = fit(settings, sampler, (x[60:], y[60:]), device)
assert model.get_layer("scale").compute_dtype == "bfloat16" and model.get_layer("probs").compute_dtype == "float32"
assert all(np.isfinite(r["loss"]) for r in history), history
probs = predict_probs(model, x)
model.save(sys.argv[1])
# measured 3e-4 apart (XLA fuses the reloaded graph differently; TensorFlow reloads exactly)
assert np.allclose(predict_probs(load_model(sys.argv[1]), x), probs, atol=1e-3)
views = predict_views(model, x, 2, 64)
assert views.shape == (3, 90, 10) and views.dtype == np.float32 and np.allclose(views.sum(-1), 1, atol=1e-3)
print("jax bf16 ok", len(history))
"""


def jax_env(tmp_path: Path) -> dict[str, str]:
    """Return an environment with the JAX backend on the CPU and TensorFlow hidden."""
    block = tmp_path / "no_tensorflow"
    block.mkdir()
    (block / "sitecustomize.py").write_text(NO_TENSORFLOW)
    path = os.pathsep.join([str(block), str(REPO)])
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }  # fmt: skip


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd` with `env` and return the finished process (output captured)."""
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


@needs_jax
def test_tensorflow_is_hidden_from_the_jax_runs(tmp_path):
    done = run([sys.executable, "-c", "import tensorflow"], tmp_path, jax_env(tmp_path))
    assert done.returncode != 0 and "No module named 'tensorflow'" in done.stderr


@needs_jax
def test_training_resumes_exactly_from_its_checkpoint_on_jax(tmp_path):
    done = run([sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")], REPO, jax_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jax ok 3" in done.stdout


@needs_jax
def test_bf16_training_saving_and_tta_run_on_jax(tmp_path):
    done = run([sys.executable, "-c", BF16_SCRIPT, str(tmp_path / "m.keras")], REPO, jax_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jax bf16 ok 2" in done.stdout


@pytest.mark.slow
@needs_jax
def test_dvc_repro_runs_on_jax_without_tensorflow(tmp_path):
    work = tmp_path / "project"
    shutil.copytree(REPO / "pipeline", work / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, work / name)
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    raw = work / "data" / "raw"
    raw.mkdir(parents=True)
    (work / "data" / "exclude_rows.csv").write_text(header_text())  # none excluded (not the user's list)
    (raw / "train.csv").write_text(train_csv_text(*synthetic_digits(60)))
    (raw / "test.csv").write_text(test_csv_text(synthetic_digits(20, seed=1)[0]))
    env = jax_env(tmp_path)
    # a clone has a commit: DVCLive (train) reads the baseline revision
    commit = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "a clone"]
    setup = (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"])
    for cmd in (*setup, ["git", "add", "-A"], commit):
        assert run(cmd, work, env).returncode == 0
    done = run(["dvc", "repro"], work, env)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "via jax" in done.stdout + done.stderr  # the device the train units ran on
    assert len(validate_submission_file(work / "submissions" / "latest.csv", expected_rows=20)) == 20
