"""Quiet by default: no TensorFlow/absl C++ log lines on stderr unless DIGIT_VERBOSE=1 or --verbose asks for them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import cv2
import numpy as np

from pipeline import paths
from pipeline.lib import quiet
from pipeline.lib.files import write_with
from pipeline.lib.models import build_model
from tests.conftest import REPO

# lines TensorFlow 2.21 prints while loading on a machine without a GPU, as seen in the issue
NATIVE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795295350.704819    7730 port.cc:153] oneDNN custom operations are on. You may see slightly ...",
    "I0000 00:00:1795295350.705050    7730 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
    "E0000 00:00:1795295354.927362    7730 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    "W1121 21:04:05.123456   123 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.",
]


def clean_env(**extra: str) -> dict[str, str]:
    """Return the environment without the log switches, plus `extra` and the repository on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", quiet.VERBOSE_ENV)}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_native_log_lines_are_recognised_and_everything_else_kept():
    assert all(quiet.kept_lines(line) == "" for line in NATIVE)
    own = ["predict: error: no trained model models/folds/x/fold0.keras", "UserWarning: something", "x.png: digit 7"]
    assert all(quiet.kept_lines(line) == line for line in own)
    assert quiet.kept_lines("\n".join([NATIVE[0], own[0], NATIVE[1], own[1]]) + "\n") == f"{own[0]}\n{own[1]}\n"


def test_verbose_is_asked_for_by_the_environment_or_the_command_line():
    assert not quiet.wants_verbose([], {})
    assert quiet.wants_verbose([], {"DIGIT_VERBOSE": "1"}) and not quiet.wants_verbose([], {"DIGIT_VERBOSE": "0"})
    assert quiet.wants_verbose(["--verbose"], {}) and quiet.wants_verbose(["--verbose", "2"], {})
    assert not quiet.wants_verbose(["--verbose", "0"], {}) and not quiet.wants_verbose(["--verbose=0"], {})
    env: dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "1"}
    assert quiet.install([], env) and env["TF_CPP_MIN_LOG_LEVEL"] == "1"  # a level the user set is kept
    env = {}
    assert quiet.install([], env) and env["TF_CPP_MIN_LOG_LEVEL"] == "3"
    env = {"DIGIT_VERBOSE": "1"}
    assert not quiet.install([], env) and "TF_CPP_MIN_LOG_LEVEL" not in env
    assert logging.getLogger("tensorflow").level == logging.ERROR  # its Python warnings (retracing, ...) too


def test_filtered_stderr_passes_on_python_warnings_and_drops_native_lines(tmp_path):
    code = (
        "import os, sys; from pipeline.lib import quiet\n"
        "with quiet.filtered_stderr():\n"
        f"    os.write(2, {NATIVE[1]!r}.encode() + b'\\n')\n"
        "    print('genuine warning', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "genuine warning\n"


def test_predict_image_prints_only_the_pipelines_lines(project):
    # finding 2: TensorFlow's loading and CUDA probing printed 6-8 C++ log lines around the answer
    for fold in range(3):
        write_with(paths.fold_model("dropout_cnn", fold), build_model("dropout_cnn").save, suffix=".keras")
    digit = np.zeros((40, 40), np.uint8)
    digit[8:32, 18:22] = 255
    cv2.imwrite(str(project / "x.png"), digit)
    cmd = [sys.executable, "-m", "pipeline.predict", "--image", "x.png"]
    done = subprocess.run(cmd, cwd=project, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("x.png: digit ") and len(done.stdout.splitlines()) == 11
    assert done.stderr == ""
    loud = subprocess.run(cmd, cwd=project, env=clean_env(DIGIT_VERBOSE="1"), capture_output=True, text=True)
    assert quiet.kept_lines(loud.stderr) != loud.stderr  # asked for: shown


def test_importing_the_package_changes_nothing():
    # a notebook's `import pipeline.paths` used to install the import hook, which redirected fd 2 whenever TensorFlow
    # loaded afterwards, so the user's own `import tensorflow` printed differently. Entry points (`python -m
    # pipeline.<module>`) still install it: test_predict_image_prints_only_the_pipelines_lines
    code = (
        "import os, sys; before = (list(sys.meta_path), dict(os.environ)); import pipeline.paths, pipeline.params; "
        "print(sys.meta_path == before[0] and dict(os.environ) == before[1])"
    )
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
