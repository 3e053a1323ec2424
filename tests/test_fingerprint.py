"""Persisted work is reused only when nothing that shaped it changed. models/folds is `persist: true` and
train keeps a finished fold whose fingerprint matches, and resumes a fold from a checkpoint whose
fingerprint matches: for every input of the fingerprint (each fit setting, the seed, the training and
augmented arrays, the precision, the training code) a change retrains every finished fold and discards a
checkpoint, and no change reuses both. Real training of a small MLP on synthetic digits, two folds."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from pipeline import augment, ingest, paths, train
from pipeline.device import configure
from pipeline.lib.files import read_json, read_npz, write_npz
from pipeline.lib.fitting import EpochSampler, FitSettings, fit
from tests.conftest import synthetic_digits, test_csv_text, tiny_params, train_csv_text

FOLDS = 2
SEED = 3
BASE = FitSettings(
    model="mlp", epochs=1, batch_size=16, learning_rate=0.003, warmup_epochs=0.5,
    dropout_conv=0.25, dropout_dense=0.5, aug_prob=0.5, label_smoothing=0.0,
)  # fmt: skip
CHANGED = {  # another value for every fit setting
    "model": "cnn_basic",
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 0.001,
    "warmup_epochs": 0.0,
    "dropout_conv": 0.1,
    "dropout_dense": 0.3,
    "aug_prob": 0.9,
    "label_smoothing": 0.1,
    "optimizer": "rmsprop",
    "schedule": "constant",
    "lr_decay": 0.5,
    "plateau_patience": 2,
    "ema_momentum": 0.9,
    "pseudo_rounds": 1,
    "pseudo_threshold": 0.5,
}


@dataclass
class Run:
    """One train_all call's inputs: settings, seed and precision."""

    settings: FitSettings = BASE
    seed: int = SEED
    precision: str = "float32"


def train_once(run: Run, capsys: pytest.CaptureFixture) -> str:
    """Run train_all with `run` in the current project (then restore the float32 policy); return its output."""
    try:
        train.train_all([run.settings], FOLDS, run.seed, configure(run.precision))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return capsys.readouterr().out


def metas(model: str) -> list[dict]:
    """Return the fold metadata of `model`."""
    return [read_json(paths.fold_meta(model, k)) for k in range(FOLDS)]


def fold_files(model: str) -> dict[str, bytes]:
    """Return the bytes of `model`'s fold models."""
    return {str(paths.fold_model(model, k)): paths.fold_model(model, k).read_bytes() for k in range(FOLDS)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project (two folds) after ingest, augment and a train with BASE, SEED and float32."""
    root = tmp_path_factory.mktemp("trained")
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    raw.joinpath("train.csv").write_text(train_csv_text(*synthetic_digits(60)))
    raw.joinpath("test.csv").write_text(test_csv_text(synthetic_digits(20, seed=1)[0]))
    doc = tiny_params()
    doc["train"]["folds"] = FOLDS
    doc["augment"]["copies"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert ingest.main([]) == 0 and augment.main([]) == 0
        train.train_all([BASE], FOLDS, SEED, configure("float32"))
    keras.mixed_precision.set_global_policy("float32")
    return root


@pytest.fixture
def project_copy(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    """A copy of the trained project as the cwd (its folds trained with BASE, SEED, float32)."""
    root = tmp_path / "copy"
    shutil.copytree(trained, root)
    monkeypatch.chdir(root)
    capsys.readouterr()
    return root


def change_train_npz(root: Path) -> None:
    """Rewrite train.npz with one pixel of one image changed."""
    data = read_npz(paths.TRAIN_NPZ)
    data["x"][0, 0, 0] ^= 1
    write_npz(paths.TRAIN_NPZ, **data)


def change_augmented_npz(root: Path) -> None:
    """Rewrite augmented.npz with one pixel of one copy changed."""
    aug = read_npz(paths.AUGMENTED_NPZ)
    aug["x"][0, 0, 0] ^= 1
    write_npz(paths.AUGMENTED_NPZ, **aug)


def change_code(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Edit one of the training code's files (a copy standing in for pipeline/lib/models.py)."""
    copy = root / "models_copy.py"
    copy.write_text(train.TRAINING_CODE[0].read_text())
    monkeypatch.setattr(train, "TRAINING_CODE", (copy, *train.TRAINING_CODE[1:]))
    before = train.code_digest()  # the same digest as the original's: the same bytes
    copy.write_text(copy.read_text() + "\n# an edit\n")
    assert train.code_digest() != before


# (input of the fingerprint, how to change it): a Run to train with, and an edit of the project
CHANGES: list[tuple[str, Run, Callable | None]] = [
    *[(f"setting {name}", Run(settings=replace(BASE, **{name: value})), None) for name, value in CHANGED.items()],
    ("seed", Run(seed=SEED + 1), None),
    ("precision", Run(precision="mixed_bfloat16"), None),
    ("train.npz", Run(), change_train_npz),
    ("augmented.npz", Run(), change_augmented_npz),
]


def test_every_fit_setting_is_covered() -> None:
    assert set(CHANGED) == {f.name for f in fields(FitSettings)}


@pytest.mark.parametrize(("run", "edit"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_a_changed_input_retrains_every_finished_fold(project_copy: Path, capsys, run: Run, edit) -> None:
    before = metas(BASE.model)
    if edit is not None:
        edit(project_copy)
    out = train_once(run, capsys)
    assert "already trained" not in out
    after = metas(run.settings.model)
    assert all(a["fingerprint"] != b["fingerprint"] for a, b in zip(after, before, strict=True))
    assert all(a["settings"] == {**vars(run.settings)} for a in after)
    assert all(a["epochs"] == run.settings.epochs for a in after)


def test_a_changed_training_code_retrains_every_finished_fold(
    project_copy: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = metas(BASE.model)
    change_code(project_copy, monkeypatch)
    out = train_once(Run(), capsys)
    assert "already trained" not in out
    assert all(a["fingerprint"] != b["fingerprint"] for a, b in zip(metas(BASE.model), before, strict=True))


def test_nothing_changed_reuses_every_finished_fold(project_copy: Path, capsys) -> None:
    before, models = metas(BASE.model), fold_files(BASE.model)
    out = train_once(Run(), capsys)
    assert out.count("already trained with these settings") == FOLDS
    assert metas(BASE.model) == before and fold_files(BASE.model) == models


def plant_checkpoint(run: Run, fold: int, fingerprint: str) -> None:
    """Write a one-epoch checkpoint of `run`'s settings for `fold` under `fingerprint`, as a killed train leaves."""
    data, aug = read_npz(paths.TRAIN_NPZ), read_npz(paths.AUGMENTED_NPZ)
    rows = np.flatnonzero(data["fold"] != fold)
    sampler = EpochSampler(data["x"], data["y"], rows, aug["x"], aug["source"], seed=0)
    val = np.flatnonzero(data["fold"] == fold)
    folder = paths.fold_checkpoint_dir(run.settings.model, fold)
    fit(replace(run.settings, epochs=1), sampler, (data["x"][val], data["y"][val]), None, None, folder, fingerprint)


@pytest.mark.parametrize("matching", [True, False], ids=["matching checkpoint", "checkpoint of other settings"])
def test_a_checkpoint_is_resumed_only_when_its_fingerprint_matches(project_copy: Path, capsys, matching: bool) -> None:
    run = Run(settings=replace(BASE, epochs=3))
    if matching:  # the fingerprint train gives fold 0 under `run`, read from a finished fold it then forgets
        train_once(run, capsys)
        fingerprint = metas(BASE.model)[0]["fingerprint"]
        for path in (paths.fold_model, paths.fold_meta, paths.fold_oof):
            path(BASE.model, 0).unlink()
    else:  # the fingerprint of the finished folds' settings (1 epoch, not 3)
        fingerprint = metas(BASE.model)[0]["fingerprint"]
    plant_checkpoint(run, 0, fingerprint)
    out = train_once(run, capsys)
    checkpoint = paths.fold_checkpoint_dir(run.settings.model, 0)
    resumed = f"train: fold 0 resumes after epoch 1/3 ({checkpoint})"
    discarded = f"train: fold 0 discarded {checkpoint}: made with other settings, data or code"
    assert (resumed in out, discarded in out) == (matching, not matching)
    epochs_run = [line for line in out.splitlines() if line.startswith("  fold 0 epoch")]
    assert [line.split()[3].rstrip(":") for line in epochs_run] == (
        ["2/3", "3/3"] if matching else ["1/3", "2/3", "3/3"]
    )
    assert metas(BASE.model)[0]["epochs"] == 3 and not checkpoint.exists()
