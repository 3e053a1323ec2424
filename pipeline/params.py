"""Loads params.yaml, applies the active profile, and returns each stage's settings as frozen
dataclasses. `python -m pipeline.params --profile quick` selects a profile in params.yaml."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline import paths
from pipeline.cli import stage_parser
from pipeline.files import write_text

T = TypeVar("T")


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or holds an unknown or invalid setting."""


@dataclass(frozen=True)
class IngestParams:
    max_train_rows: int | None
    max_test_rows: int | None
    expected_test_rows: int


@dataclass(frozen=True)
class AugmentParams:
    copies: int
    rotate_deg: float
    scale: float
    shift: float
    chunk_rows: int
    workers: int
    preview_rows: int


@dataclass(frozen=True)
class ModelParams:
    name: str
    ensemble: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def members(self) -> list[str]:
        """Return every model trained and blended: `name` first, then each `ensemble` entry."""
        names = [self.name, *(self.ensemble or [])]
        if len(set(names)) != len(names):
            raise ParamsError(f"params.yaml model: name and ensemble must not repeat a model, got {names}")
        return names

    def overrides_for(self, name: str) -> dict[str, Any]:
        """Return the train settings model `name` overrides (params.yaml model.overrides.<name>), if any."""
        return dict(self.overrides.get(name) or {})


@dataclass(frozen=True)
class FitParams:
    """The settings of one training run (params.yaml `train:`), which tune searches and model.overrides change."""

    epochs: int
    batch_size: int
    learning_rate: float
    warmup_epochs: float
    dropout_conv: float
    dropout_dense: float
    aug_prob: float
    label_smoothing: float


@dataclass(frozen=True)
class TrainParams(FitParams):
    folds: int
    use_tuned: bool
    monitor_rows: int | None


@dataclass(frozen=True)
class TuneParams:
    trials: int
    study_name: str
    storage: str | None
    fold: int
    epochs: int
    max_train_rows: int | None
    max_val_rows: int | None
    pruner: str
    pruner_warmup_epochs: int
    heartbeat_seconds: int
    grace_seconds: int
    max_retries: int
    trials_per_process: int
    workers_cpu: int
    workers_gpu: int
    space: dict[str, Any]
    model_space: dict[str, Any]


@dataclass(frozen=True)
class PredictParams:
    tta_views: int
    batch_size: int
    blend_by: str = "log_loss"


@dataclass(frozen=True)
class ReportParams:
    wrong_images: int
    test_images: int
    confusion_pairs: int


@dataclass(frozen=True)
class CompareParams:
    models: list[str]
    folds: list[int]
    epochs: int
    max_train_rows: int | None


SECTIONS: dict[str, type] = {
    "ingest": IngestParams,
    "augment": AugmentParams,
    "model": ModelParams,
    "train": TrainParams,
    "tune": TuneParams,
    "predict": PredictParams,
    "report": ReportParams,
    "compare": CompareParams,
}


def read_raw(path: Path = paths.PARAMS) -> dict[str, Any]:
    """Read params.yaml at `path` and return it as a plain dict."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ParamsError(f"{path} not found: run from the project root") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return doc


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in recursively (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "space":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the settings in `doc` with its active profile's overrides applied."""
    profile = doc.get("profile", "full")
    profiles = doc.get("profiles") or {}
    if profile != "full" and profile not in profiles:
        raise ParamsError(f"params.yaml: profile {profile!r} is not defined under profiles: ({', '.join(profiles)})")
    return merge(doc, profiles.get(profile) or {})


def build(section: str, values: dict[str, Any], cls: type[T]) -> T:
    """Build dataclass `cls` from `values`, naming unknown or missing keys of `section`."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    missing = sorted(names - set(values))
    if unknown or missing:
        raise ParamsError(f"params.yaml section {section!r}: unknown keys {unknown}, missing keys {missing}")
    return cls(**values)


def load(section: str, path: Path = paths.PARAMS) -> Any:
    """Return the effective settings of `section` from params.yaml as its frozen dataclass."""
    doc = effective(read_raw(path))
    if section not in doc or not isinstance(doc[section], dict):
        raise ParamsError(f"params.yaml has no section {section!r}")
    return build(section, doc[section], SECTIONS[section])


def seed(path: Path = paths.PARAMS) -> int:
    """Return the global seed from params.yaml."""
    return int(read_raw(path).get("seed", 0))


def profile(path: Path = paths.PARAMS) -> str:
    """Return the name of the active profile in params.yaml."""
    return str(read_raw(path).get("profile", "full"))


def set_profile(name: str, path: Path = paths.PARAMS) -> None:
    """Rewrite the `profile:` line of params.yaml to `name`, keeping comments and layout."""
    doc = read_raw(path)
    if name != "full" and name not in (doc.get("profiles") or {}):
        raise ParamsError(f"unknown profile {name!r}: choose full or one of {sorted(doc.get('profiles') or {})}")
    text = Path(path).read_text(encoding="utf-8")
    new, count = re.subn(r"(?m)^profile:.*$", f"profile: {name}", text, count=1)
    if count == 0:
        new = f"profile: {name}\n" + text
    if new != text:
        write_text(Path(path), new)


def main(argv: list[str] | None = None) -> None:
    """Print or set the active profile of params.yaml."""
    parser = stage_parser("params", __doc__)
    parser.add_argument("--profile", help="profile to select (full, quick, ...); omitted: print the active one")
    args = parser.parse_args(argv)
    if args.profile:
        set_profile(args.profile)
    print(f"profile: {profile()}")


if __name__ == "__main__":
    main()
