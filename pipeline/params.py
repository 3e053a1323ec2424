"""Loads params.yaml, the effective settings exactly as the stages run them, and returns each stage's
settings as frozen dataclasses.

params.yaml is composed by Hydra from conf/config.yaml and a profile (conf/profile/<name>.yaml):
`python -m pipeline.params --profile quick [key=value ...]` writes it (what `make quick` runs) the
same way `dvc exp run -S profile=quick -S key=value` does, and makes NAME the profile a plain
`dvc exp run` composes (conf/local/profile.yaml, git-ignored: choosing a profile changes no tracked
file). A params.yaml that differs from the last composition and from every version git holds (a hand
edit) is never overwritten silently: composing stops, or with --force keeps it as params.yaml.<time>.bak."""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline import paths
from pipeline.cli import StageError, fail, stage_parser
from pipeline.files import write_text

T = TypeVar("T")


class ParamsError(StageError, ValueError):
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
    elastic_prob: float = 0.0  # chance that a copy is also elastically distorted (Simard et al. 2003)
    elastic_alpha: float = 34.0
    elastic_sigma: float = 4.0


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
    # Keyword-only with defaults (params.yaml still has to name each): the optimizer, the learning-rate schedule
    # and weight averaging, which code building FitSettings by hand may leave at the pipeline's defaults.
    optimizer: str = field(default="adam", kw_only=True)  # adam | rmsprop
    schedule: str = field(default="warmup_cosine", kw_only=True)  # warmup_cosine | constant | exponential | plateau
    lr_decay: float = field(default=0.95, kw_only=True)  # exponential: factor per epoch; plateau: per plateau
    plateau_patience: int = field(default=3, kw_only=True)  # plateau: epochs without a better val_accuracy
    ema_momentum: float | None = field(default=None, kw_only=True)  # null = off; else the weight average's momentum


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
    diff_images: int = 40


@dataclass(frozen=True)
class AuditParams:
    """The label audit (pipeline/audit.py): cleanlab.filter.find_label_issues on the OOF probabilities."""

    filter_by: str
    rank_by: str
    grid_images: int


@dataclass(frozen=True)
class DeviceParams:
    """How the stages that run a model compute (params.yaml `device:`)."""

    precision: str  # auto | float32 | mixed_bfloat16 (pipeline/device.py resolves auto per machine)


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
    published_copies: int = 8  # --published: transformed copies per image that stand in for online augmentation


SECTIONS: dict[str, type] = {
    "device": DeviceParams,
    "ingest": IngestParams,
    "augment": AugmentParams,
    "model": ModelParams,
    "train": TrainParams,
    "tune": TuneParams,
    "predict": PredictParams,
    "audit": AuditParams,
    "report": ReportParams,
    "compare": CompareParams,
}


# ---------------------------------------------------------------- validation
# Every setting is checked once, when params.yaml is read, in every stage: its type is the type of the
# dataclass field it fills (TOP_LEVEL for the two outside a section), what it may be is RULES (a range or
# choices), the structured ones (the search space, per-model overrides) have their own checks, and CROSS_CHECKS
# relate settings of different sections. A bad value stops the stage with one line naming the key, the value
# and what is allowed (exit 2).

TUNABLE = ("learning_rate", "batch_size", "dropout_conv", "dropout_dense", "aug_prob")  # what tune.space may search
OVERRIDABLE = tuple(f.name for f in fields(FitParams) if f.name != "epochs")  # what model.overrides may set
TOP_LEVEL: dict[str, Any] = {"profile": str, "seed": int}


@dataclass(frozen=True)
class Allowed:
    """What a setting may be besides its type: a range from `low` to `high` (a bound is excluded when it is
    `*_open`, absent when None), or one of `choices`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    def admits(self, value: Any) -> bool:
        """Return True when `value` (of the right type) is allowed."""
        if self.choices:
            return value in self.choices
        if isinstance(value, float) and math.isnan(value):
            return False
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = self.high is None or value < self.high or (value == self.high and not self.high_open)
        return above and below

    def describe(self) -> str:
        """Return what is allowed, in words (`from 0 to 1 (1 excluded)`, `at least 1`, `one of a, b`)."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            low = f"{self.low:g}" + (" (excluded)" if self.low_open else "")
            return f"from {low} to {self.high:g}" + (" (excluded)" if self.high_open else "")
        if self.low is not None:
            return f"above {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return f"below {self.high:g}" if self.high_open else f"at most {self.high:g}"


def at_least(low: float) -> Allowed:
    """Return the rule of a setting that may be `low` or more."""
    return Allowed(low=low)


def one_of(*choices: object) -> Allowed:
    """Return the rule of a setting that must be one of `choices`."""
    return Allowed(choices=choices)


FRACTION = Allowed(0.0, 1.0, high_open=True)  # a dropout rate, a label smoothing, a share of the image
POSITIVE = Allowed(low=0.0, low_open=True)

# cleanlab.filter.find_label_issues' filter_by values and cleanlab.rank's orderings (pipeline/audit.py uses them)
AUDIT_FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
AUDIT_RANKINGS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")

RULES: dict[str, Allowed] = {
    "seed": at_least(0),
    "ingest.max_train_rows": at_least(1),  # null for all rows (0 would silently mean all rows too)
    "ingest.max_test_rows": at_least(1),
    "ingest.expected_test_rows": at_least(1),
    "augment.copies": at_least(1),
    "augment.rotate_deg": Allowed(0.0, 180.0),
    "augment.scale": FRACTION,
    "augment.shift": FRACTION,
    "augment.chunk_rows": at_least(1),
    "augment.workers": at_least(0),
    "augment.preview_rows": at_least(1),
    "augment.elastic_prob": Allowed(0.0, 1.0),
    "augment.elastic_alpha": at_least(0.0),
    "augment.elastic_sigma": POSITIVE,
    "device.precision": one_of("auto", "float32", "mixed_bfloat16"),  # pipeline/device.py PRECISIONS
    "train.folds": at_least(2),
    "train.epochs": at_least(1),
    "train.batch_size": at_least(1),
    "train.learning_rate": POSITIVE,
    "train.warmup_epochs": at_least(0),
    "train.dropout_conv": FRACTION,
    "train.dropout_dense": FRACTION,
    "train.aug_prob": Allowed(0.0, 1.0),
    "train.label_smoothing": FRACTION,
    "train.optimizer": one_of("adam", "rmsprop"),  # pipeline/training.py OPTIMIZERS
    "train.schedule": one_of("warmup_cosine", "constant", "exponential", "plateau"),  # training.py SCHEDULES
    "train.lr_decay": Allowed(0.0, 1.0, low_open=True),
    "train.plateau_patience": at_least(1),
    "train.ema_momentum": FRACTION,  # null = no weight averaging
    "train.monitor_rows": at_least(1),
    "tune.trials": at_least(1),
    "tune.fold": at_least(0),
    "tune.epochs": at_least(1),
    "tune.max_train_rows": at_least(1),
    "tune.max_val_rows": at_least(1),
    "tune.pruner": one_of("median", "hyperband", "none"),
    "tune.pruner_warmup_epochs": at_least(0),
    "tune.heartbeat_seconds": at_least(1),
    "tune.grace_seconds": at_least(1),
    "tune.max_retries": at_least(0),
    "tune.trials_per_process": at_least(0),
    "tune.workers_cpu": at_least(1),
    "tune.workers_gpu": at_least(1),
    "predict.tta_views": Allowed(0, 8),  # pipeline/tta.py VIEWS
    "predict.batch_size": at_least(1),
    "predict.blend_by": one_of("log_loss", "accuracy", "equal"),  # pipeline/ensemble.py OBJECTIVES
    "predict.diff_images": at_least(0),
    "audit.filter_by": one_of(*AUDIT_FILTERS),
    "audit.rank_by": one_of(*AUDIT_RANKINGS),
    "audit.grid_images": at_least(0),
    "report.wrong_images": at_least(0),
    "report.test_images": at_least(0),
    "report.confusion_pairs": at_least(0),
    "compare.folds": at_least(0),  # each entry
    "compare.epochs": at_least(1),
    "compare.max_train_rows": at_least(1),
    "compare.published_copies": at_least(1),
}


def kinds(hint: Any) -> tuple:
    """Return the types a type hint admits: `int | None` gives (int, NoneType), `list[str]` gives (list,)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in kinds(arg))
    return (typing.get_origin(hint) or hint,)


def fits(value: Any, hint: Any) -> bool:
    """Return True when `value` has the type `hint` (a whole number counts as a float; true is no number)."""
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) in (int, float)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(fits(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return type(value) is hint


def noun(hint: Any) -> str:
    """Return the type `hint` in words ("a whole number", "a number", "a list of names", ...)."""
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a name", dict: "a mapping"}
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        parts = [noun(arg) for arg in typing.get_args(hint) if arg is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(hint) else "")
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        return {int: "a list of whole numbers", str: "a list of names"}.get(item, "a list")
    return names.get(typing.get_origin(hint) or hint, str(hint))


def shown(value: Any) -> str:
    """Return `value` as a user wrote it in YAML, text quoted (so that '2e-3' read as text shows as such)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def check_setting(key: str, value: Any, hint: Any, where: str = "params.yaml") -> Any:
    """Return `value` of setting `key` (dotted, e.g. train.learning_rate) if its type `hint` and RULES allow it,
    whole numbers for float settings as floats; else raise ParamsError naming `where`, the key, the value and
    what is allowed. Never converts a value to another kind (text to a number, a fraction to a whole number)."""
    rule = RULES.get(key)
    optional = type(None) in kinds(hint)
    if rule and rule.choices:
        wanted = rule.describe()
    else:
        wanted = noun(hint).removesuffix(" or null") + (f" {rule.describe()}" if rule else "")
    wanted += " or null" if optional else ""
    if not fits(value, hint):
        why = " (text, not a number)" if isinstance(value, str) and {int, float} & set(kinds(hint)) else ""
        raise ParamsError(f"{where} {key}: got {shown(value)}{why}, expected {wanted}")
    if rule and value is not None and not isinstance(value, list | dict) and not rule.admits(value):
        raise ParamsError(f"{where} {key}: got {shown(value)}, expected {wanted}")
    return float(value) if type(value) is int and float in kinds(hint) else value


def fit_setting(name: str, value: Any, where: str) -> Any:
    """Return `value` for the training setting `name` (a `train:` key, also set by tune and model.overrides) as
    its own declared type, or raise ParamsError naming `where`; a tuned 0.25 never becomes a whole number."""
    hints = typing.get_type_hints(FitParams)
    if name not in hints:
        raise ParamsError(f"{where}: {name!r} is not a training setting; choose from {', '.join(hints)}")
    return check_setting(f"train.{name}", value, hints[name], where)


def check_spec(key: str, name: str, spec: Any) -> None:
    """Raise ParamsError unless `name` is a tunable setting and `spec` (at `key`) a valid range or choice list
    of its values: [low, high], [low, high, log] (low > 0) or {choices: [...]}."""
    if name not in TUNABLE:
        raise ParamsError(f"params.yaml {key}: not a tunable setting; choose from {', '.join(TUNABLE)}")
    if isinstance(spec, dict):
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ParamsError(f"params.yaml {key}: a choice must be written {{choices: [a, b, ...]}}, got {spec!r}")
        for value in spec["choices"]:
            fit_setting(name, value, f"params.yaml {key}:")
        return
    numbers = isinstance(spec, list) and len(spec) in (2, 3) and all(fits(v, float) for v in spec[:2])
    if not numbers or spec[0] >= spec[1] or (len(spec) == 3 and spec[2] != "log"):
        raise ParamsError(f"params.yaml {key}: expected [low, high] or [low, high, log] with low < high, got {spec!r}")
    for bound in spec[:2]:
        fit_setting(name, bound, f"params.yaml {key}:")
    if len(spec) == 3 and spec[0] <= 0:
        raise ParamsError(f"params.yaml {key}: a log range needs low > 0, got {spec!r}")


def check_space(doc: dict) -> None:
    """Check tune.space and every model's entries in tune.model_space (null drops a setting)."""
    for name, spec in doc["tune"]["space"].items():
        check_spec(f"tune.space.{name}", name, spec)
    for model, entries in doc["tune"]["model_space"].items():
        if not isinstance(entries, dict):
            raise ParamsError(f"params.yaml tune.model_space.{model}: got {shown(entries)}, expected a mapping")
        for name, spec in entries.items():
            if spec is not None:
                check_spec(f"tune.model_space.{model}.{name}", name, spec)


def check_model(doc: dict) -> None:
    """Check model.ensemble (no model twice) and model.overrides (training settings of the models, by name)."""
    ModelParams(**doc["model"]).members()
    for model, settings in doc["model"]["overrides"].items():
        if not isinstance(settings, dict):
            raise ParamsError(f"params.yaml model.overrides.{model}: got {shown(settings)}, expected a mapping")
        for name, value in settings.items():
            if name not in OVERRIDABLE:
                raise ParamsError(
                    f"params.yaml model.overrides.{model}.{name}: not a setting a model overrides; choose from "
                    f"{', '.join(OVERRIDABLE)}"
                )
            fit_setting(name, value, f"params.yaml model.overrides.{model}.{name}:")


def folds_of(doc: dict) -> str:
    """Return the folds train.folds makes, in words."""
    return f"a fold of train.folds = {doc['train']['folds']}: 0 to {doc['train']['folds'] - 1}"


# (key, the check on the whole document, what is allowed in words): settings that relate sections
CROSS_CHECKS: list[tuple[str, Callable[[dict], bool], Callable[[dict], str]]] = [
    ("tune.fold", lambda d: d["tune"]["fold"] < d["train"]["folds"], folds_of),
    ("compare.folds", lambda d: all(f < d["train"]["folds"] for f in d["compare"]["folds"]), lambda d: folds_of(d)),
    (
        "tune.grace_seconds",
        lambda d: d["tune"]["grace_seconds"] > d["tune"]["heartbeat_seconds"],
        lambda d: f"more than tune.heartbeat_seconds = {d['tune']['heartbeat_seconds']} (else live trials are failed)",
    ),
]


def validate(doc: dict[str, Any], path: Path = paths.PARAMS) -> None:
    """Check every setting of `doc` (params.yaml at `path`): known sections and keys, each value's type and range,
    the search space, the per-model overrides, and the settings that relate sections; raise ParamsError on the
    first bad one."""
    known = [*TOP_LEVEL, *SECTIONS]
    for key in doc:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ParamsError(f"{path}: unknown setting {key!r}{hint}; the sections are {', '.join(known)}")
    for key, hint in TOP_LEVEL.items():
        if key in doc:
            check_setting(key, doc[key], hint, str(path))
    if "seed" not in doc:
        raise ParamsError(f"{path} has no seed")
    for section, cls in SECTIONS.items():
        values = doc.get(section)
        if not isinstance(values, dict):
            raise ParamsError(f"{path} has no section {section!r} (a mapping of its settings)")
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise ParamsError(f"{path} section {section!r}: unknown keys {unknown}, missing keys {missing}")
        for name, hint in typing.get_type_hints(cls).items():
            check_setting(f"{section}.{name}", values[name], hint, str(path))
            if section == "compare" and name == "folds":
                for fold in values[name]:
                    check_setting("compare.folds", fold, int, str(path))
    check_space(doc)
    check_model(doc)
    for key, holds, allowed in CROSS_CHECKS:
        if not holds(doc):
            section, name = key.split(".")
            raise ParamsError(f"{path} {key}: got {shown(doc[section][name])}, expected {allowed(doc)}")


# ---------------------------------------------------------------- reading


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does (2e-3 is a float, as in Hydra's configs, where YAML
    1.1 needs 2.0e-3 and PyYAML would give the string '2e-3') and refusing a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Return the mapping of `node`; raise a ConstructorError naming the line of a repeated key."""
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                where = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice (first on line {seen[key]}): the last would win", where
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
SettingsLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


def yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """Return PyYAML's error `exc` about `path` on one line: the line and column, and the problem."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def read_raw(path: Path = paths.PARAMS) -> dict[str, Any]:
    """Read params.yaml at `path` and return it as a plain dict (not yet validated: see `read_settings`)."""
    try:
        loader = SettingsLoader(Path(path).read_text(encoding="utf-8"))
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except FileNotFoundError as exc:
        raise ParamsError(f"{path} not found: run from the project root") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(yaml_error(path, exc)) from exc
    if not isinstance(doc, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return doc


def read_settings(path: Path = paths.PARAMS) -> dict[str, Any]:
    """Read params.yaml at `path`, validate every setting in it (`validate`), and return it."""
    doc = read_raw(path)
    validate(doc, path)
    return doc


def build(section: str, values: dict[str, Any], cls: type[T]) -> T:
    """Build dataclass `cls` from `values`, naming unknown or missing keys of `section`; whole numbers given for
    float settings become floats."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    missing = sorted(names - set(values))
    if unknown or missing:
        raise ParamsError(f"params.yaml section {section!r}: unknown keys {unknown}, missing keys {missing}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: float(v) if float in kinds(hints[k]) and type(v) is int else v for k, v in values.items()})


def load(section: str, path: Path = paths.PARAMS) -> Any:
    """Return the settings of `section` from params.yaml, exactly as written there and validated, as its frozen
    dataclass."""
    doc = read_settings(path)
    return build(section, doc[section], SECTIONS[section])


def seed(path: Path = paths.PARAMS) -> int:
    """Return the global seed from params.yaml."""
    return read_settings(path)["seed"]


def profile(path: Path = paths.PARAMS) -> str:
    """Return the name of the profile params.yaml was composed with."""
    return str(read_raw(path).get("profile", "full"))


def profiles(conf: Path = paths.CONF_DIR) -> list[str]:
    """Return the names of the profiles defined in `conf`/profile/*.yaml."""
    return sorted(p.stem for p in (Path(conf) / paths.PROFILES_DIR.name).glob("*.yaml"))


def compose(overrides: list[str], conf: Path = paths.CONF_DIR) -> str:
    """Return the YAML text Hydra composes from `conf`/config.yaml with `overrides` (as `dvc exp run -S`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    choice = next((o.split("=", 1)[1] for o in overrides if o.startswith("profile=")), None)
    if choice is not None and choice not in profiles(conf):
        raise ParamsError(f"unknown profile {choice!r}: choose one of {profiles(conf)} ({Path(conf) / 'profile'}/)")
    try:
        with initialize_config_dir(str(Path(conf).resolve()), version_base=None):
            cfg = hydra_compose(config_name=paths.CONF_CONFIG.stem, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ParamsError(f"cannot compose {Path(conf) / paths.CONF_CONFIG.name} with {overrides}: {exc}") from exc
    return OmegaConf.to_yaml(cfg)


def digest(text: str) -> str:
    """Return the sha256 hex digest of `text` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def known_to_git(path: Path) -> bool:
    """Return whether git holds `path`'s exact content (committed, staged, or recorded by `dvc exp run`)."""
    try:
        blob = subprocess.run(
            ["git", "hash-object", "--", str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        return subprocess.run(["git", "cat-file", "-e", blob], capture_output=True).returncode == 0
    except (OSError, subprocess.CalledProcessError):
        return False


def disposable(path: Path = paths.PARAMS, stamp: Path = paths.PARAMS_STAMP) -> bool:
    """Return whether params.yaml at `path` may be overwritten: missing, last composed here (`stamp`), or in git."""
    if not Path(path).exists():
        return True
    if Path(stamp).exists() and Path(stamp).read_text().strip() == digest(Path(path).read_text(encoding="utf-8")):
        return True
    return known_to_git(path)


def write_params(
    text: str, force: bool = False, path: Path = paths.PARAMS, stamp: Path = paths.PARAMS_STAMP
) -> Path | None:
    """Write the composed `text` to params.yaml and record its digest; return the backup made of a hand-edited
    params.yaml (only with `force`, else ParamsError), or None."""
    path, backup = Path(path), None
    if path.exists() and path.read_text(encoding="utf-8") != text and not disposable(path, stamp):
        if not force:
            raise ParamsError(
                f"{path} has changes that are neither the last composition nor in git (a hand edit?), so it is left "
                f"as it is. Settings are edited in {paths.CONF_DIR}/ (or passed as key=value overrides); to compose "
                f"anyway and keep this file as {path}.<time>.bak, add --force"
            )
        backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        write_text(backup, path.read_text(encoding="utf-8"))
    write_text(path, text)
    write_text(stamp, digest(text) + "\n")
    return backup


def choose_profile(name: str, conf: Path = paths.CONF_DIR) -> None:
    """Make `name` the profile a plain `dvc exp run` composes: write `conf`/local/profile.yaml (git-ignored), which
    overrides the profile entry of conf/config.yaml's defaults list; no tracked file changes."""
    choice = Path(conf) / paths.PROFILE_CHOICE.relative_to(paths.CONF_DIR)
    text = f"# @package _global_\n# written by `python -m pipeline.params --profile {name}`\ndefaults:\n"
    write_text(choice, text + f"  - override /profile: {name}\n")


def main(argv: list[str] | None = None) -> int:
    """Compose params.yaml from conf/ (a profile and overrides), or print the profile it was composed with."""
    parser = stage_parser("params", __doc__)
    parser.add_argument("--profile", help=f"compose this profile ({', '.join(profiles()) or 'conf/profile/*.yaml'})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. train.epochs=10")
    parser.add_argument("--force", action="store_true", help="overwrite a hand-edited params.yaml (kept as .bak)")
    args = parser.parse_args(argv)
    if args.profile or args.overrides:
        overrides = ([f"profile={args.profile}"] if args.profile else []) + list(args.overrides)
        try:
            backup = write_params(compose(overrides), force=args.force)
            if args.profile:
                choose_profile(args.profile)
        except ParamsError as exc:
            return fail("params", exc)
        if backup:
            print(f"params: your edited params.yaml is kept as {backup}")
        print(f"params: composed {paths.PARAMS} from {paths.CONF_DIR}/ with {' '.join(overrides)}")
    print(f"profile: {profile()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
