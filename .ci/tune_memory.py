"""Measure whether tuning memory grows with the trial count: run 5, then 25 more (30 in all) tiny
trials of the real tune objective (synthetic digits, 1 epoch each) in one process, and print the
peak RSS (getrusage) and current RSS after each. Usage: .venv/bin/python .ci/tune_memory.py"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import optuna

from pipeline import params, tune
from pipeline.lib.device import configure
from pipeline.train import fit_settings


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return `n` 28x28 uint8 images whose bright bar position encodes the label, and the labels."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 3 + 2 * int(label) : 5 + 2 * int(label), 6:22] = 255
    return images, labels


def rss_mib() -> tuple[float, float]:
    """Return (peak RSS, current RSS) of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    current = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak, current


def main() -> None:
    """Run 5 then 30 trials in an in-memory study and print the memory after each batch."""
    x, y = synthetic(200)
    data = {"x": x, "y": y, "fold": (np.arange(len(y)) % 3).astype(np.int8)}
    aug = {"x": x[np.repeat(np.arange(len(y)), 2)], "source": np.repeat(np.arange(len(y)), 2)}
    cfg = params.load("tune")
    cfg = type(cfg)(**{**cfg.__dict__, "epochs": 1, "max_train_rows": None, "pruner": "none"})
    base = fit_settings(params.load("train"), params.load("model").name, None)
    objective = tune.make_objective(data, aug, base, cfg, dict(cfg.space), 0, configure().jit_compile, 10**6)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for target in (5, 30):
        tune.run_trials(study, objective, target, cfg)
        peak, current = rss_mib()
        print(f"after {target:2d} trials: peak RSS {peak:7.1f} MiB, current RSS {current:7.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
