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
import functools
import hashlib
import re
import subprocess
import sys
import time
import types
import typing
from dataclasses import field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from pipeline import paths
from pipeline.lib.cli import StageError, fail, stage_parser
from pipeline.lib.files import write_text


class ParamsError(StageError, ValueError):
    """params.yaml is missing, malformed, or holds an unknown or invalid setting."""


# ---------------------------------------------------------------- the schema
# Every setting once: its type, its range or choices, and what it does. pydantic (v2, strict: no value is ever
# converted to another kind, only a whole number to a float) checks each section as its dataclass is built; the
# messages are this module's own (`expected`), one line naming the file, the key, the value and what is allowed.
# pydantic dataclasses rather than Hydra structured configs: the stages read params.yaml (what DVC tracks), not
# a Hydra composition, and pydantic gives ranges and choices as well as types.

STRICT = ConfigDict(strict=True, extra="forbid")
schema = functools.partial(dataclass, frozen=True, config=STRICT)


def setting(description: str, **bounds: float) -> Any:
    """Return the pydantic Field of a setting: its one-line `description` and its `bounds` (ge, gt, le, lt)."""
    return Field(description=description, **bounds)


Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Optimizer = Literal["adam", "rmsprop"]
Schedule = Literal["warmup_cosine", "constant", "exponential", "plateau"]
Pruner = Literal["median", "hyperband", "none"]
BlendObjective = Literal["log_loss", "accuracy", "equal"]
# cleanlab.filter.find_label_issues' filter_by values and cleanlab.rank's orderings (pipeline/audit.py uses them)
AuditFilter = Literal[
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
]
AuditRanking = Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"]
TTA_VIEWS = 8  # the deterministic views pipeline/lib/tta.py offers
# the model zoo's names (pipeline/lib/models.py MODELS, which tests/test_bad_settings.py holds to this list): here
# too, so that settings are checked without importing Keras; `name@N` (N >= 1) is model `name` from other seeds
MODEL_NAMES = (
    "mlp",
    "cnn_basic",
    "cnn_small2x2",
    "dropout_cnn",
    "bn_cnn",
    "bn_lite",
    "bn_plain3",
    "bn_plain5",
    "bn_plain7",
)
SEED_MEMBER = re.compile(r"^(?P<model>[^@]+)(@(?P<seed>[1-9][0-9]*))?$")


def choices(kind: Any) -> tuple:
    """Return the values a Literal setting type (e.g. Precision) allows, in order."""
    return typing.get_args(kind)


@schema
class IngestParams:
    max_train_rows: Annotated[int | None, setting("use only the first N training rows (null = all)", ge=1)]
    max_test_rows: Annotated[int | None, setting("use only the first N test rows (null = all)", ge=1)]
    expected_test_rows: Annotated[int, setting("the test rows Kaggle scores; other counts only warn", ge=1)]


@schema
class AugmentParams:
    copies: Annotated[int, setting("augmented copies written per training image", ge=1)]
    rotate_deg: Annotated[float, setting("rotation drawn from [-rotate_deg, +rotate_deg]", ge=0.0, le=180.0)]
    scale: Annotated[float, setting("zoom drawn from [1 - scale, 1 + scale]", ge=0.0, lt=1.0)]
    shift: Annotated[float, setting("shift drawn from [-shift, +shift] of the image size, per axis", ge=0.0, lt=1.0)]
    chunk_rows: Annotated[int, setting("rows per worker task (fixed: results never depend on the core count)", ge=1)]
    workers: Annotated[int, setting("worker processes (0 = one per core)", ge=0)]
    preview_rows: Annotated[int, setting("originals shown in reports/augmentations.png", ge=1)]
    elastic_prob: Annotated[float, setting("chance that a copy is also elastically distorted", ge=0.0, le=1.0)] = 0.0
    elastic_alpha: Annotated[float, setting("elastic displacement scale in pixels", ge=0.0)] = 34.0
    elastic_sigma: Annotated[float, setting("Gaussian smoothing of the elastic displacement, pixels", gt=0.0)] = 4.0


@schema
class ModelParams:
    name: Annotated[str, setting(f"the model: {', '.join(MODEL_NAMES)}; predict blends it with `ensemble`")]
    ensemble: Annotated[list[str], setting("more models on the same folds; `name@N` is the model from other seeds")] = (
        field(default_factory=list)
    )
    overrides: Annotated[dict[str, dict[str, Any]], setting("per-model train settings over `train:`")] = field(
        default_factory=dict
    )

    def members(self) -> list[str]:
        """Return every model trained and blended: `name` first, then each `ensemble` entry."""
        names = [self.name, *(self.ensemble or [])]
        if len(set(names)) != len(names):
            raise ParamsError(f"params.yaml model: name and ensemble must not repeat a model, got {names}")
        return names


@schema
class FitParams:
    """The settings of one training run (params.yaml `train:`), which tune searches and model.overrides change."""

    epochs: Annotated[int, setting("epochs of training", ge=1)]
    batch_size: Annotated[int, setting("images per training step", ge=1)]
    learning_rate: Annotated[float, setting("peak learning rate of the schedule", gt=0.0)]
    warmup_epochs: Annotated[float, setting("warmup_cosine: epochs of linear warmup", ge=0.0)]
    dropout_conv: Annotated[float, setting("dropout after the convolution blocks", ge=0.0, lt=1.0)]
    dropout_dense: Annotated[float, setting("dropout before the classifier", ge=0.0, lt=1.0)]
    aug_prob: Annotated[float, setting("chance an image is replaced by an augmented copy each epoch", ge=0.0, le=1.0)]
    label_smoothing: Annotated[float, setting("label smoothing of the cross-entropy", ge=0.0, lt=1.0)]
    # Keyword-only with defaults (params.yaml still has to name each): code building FitParams by hand may leave
    # the optimizer, the schedule and weight averaging at the pipeline's defaults.
    optimizer: Annotated[Optimizer, setting("the optimizer")] = field(default="adam", kw_only=True)
    schedule: Annotated[Schedule, setting("the learning-rate schedule")] = field(default="warmup_cosine", kw_only=True)
    lr_decay: Annotated[float, setting("exponential: factor per epoch; plateau: per plateau", gt=0.0, le=1.0)] = field(
        default=0.95, kw_only=True
    )
    plateau_patience: Annotated[int, setting("plateau: epochs without a better val_accuracy", ge=1)] = field(
        default=3, kw_only=True
    )
    ema_momentum: Annotated[float | None, setting("weight averaging momentum (null = off)", ge=0.0, lt=1.0)] = field(
        default=None, kw_only=True
    )
    pseudo_rounds: Annotated[int, setting("rounds of pseudo-labelling the test images (0 = off)", ge=0)] = field(
        default=0, kw_only=True
    )
    pseudo_threshold: Annotated[float, setting("confidence a pseudo-label needs", gt=0.0, le=1.0)] = field(
        default=0.99, kw_only=True
    )


@schema
class TrainParams(FitParams):
    folds: Annotated[int, setting("stratified folds, assigned once by ingest and reused everywhere", ge=2)]
    use_tuned: Annotated[bool, setting("override the settings above with tune's best parameters")]
    monitor_rows: Annotated[int | None, setting("held-out rows of the per-epoch curve (null = the fold)", ge=1)]


@schema
class TuneParams:
    trials: Annotated[int, setting("finished trials the study is topped up to", ge=1)]
    study_name: Annotated[str, setting("the Optuna study")]
    storage: Annotated[str | None, setting("an RDB URL (null = SQLite file data/processed/optuna.db)")]
    fold: Annotated[int, setting("the held-out fold that scores every trial", ge=0)]
    epochs: Annotated[int, setting("epochs per trial", ge=1)]
    max_train_rows: Annotated[int | None, setting("stratified subsample of the trial's training rows", ge=1)]
    max_val_rows: Annotated[int | None, setting("stratified subsample of the held-out fold's rows", ge=1)]
    pruner: Annotated[Pruner, setting("how unpromising trials stop early")]
    pruner_warmup_epochs: Annotated[int, setting("epochs before a trial may be pruned", ge=0)]
    heartbeat_seconds: Annotated[int, setting("a running trial records a heartbeat this often", ge=1)]
    grace_seconds: Annotated[int, setting("a trial without a heartbeat this long is failed and re-queued", ge=1)]
    max_retries: Annotated[int, setting("times a failed trial is re-queued with the same parameters", ge=0)]
    trials_per_process: Annotated[int, setting("trials before a worker process is replaced (0 = never)", ge=0)]
    workers_cpu: Annotated[int, setting("worker processes when no GPU is found", ge=1)]
    workers_gpu: Annotated[int, setting("worker processes on each GPU, sharing its memory", ge=1)]
    space: Annotated[dict[str, Any], setting("train setting: [low, high], [low, high, log] or {choices: [...]}")]
    model_space: Annotated[dict[str, Any], setting("per model.name: entries replace those of `space`; null drops")]


@schema
class PredictParams:
    tta_views: Annotated[int, setting("deterministic views added to the original image", ge=0, le=TTA_VIEWS)]
    batch_size: Annotated[int, setting("images per inference batch", ge=1)]
    blend_by: Annotated[BlendObjective, setting("how ensemble weights are chosen on OOF predictions")] = "log_loss"
    diff_images: Annotated[int, setting("changed test images drawn in reports/submission_diff.png", ge=0)] = 40


@schema
class AuditParams:
    """The label audit (pipeline/audit.py): cleanlab.filter.find_label_issues on the OOF probabilities."""

    filter_by: Annotated[AuditFilter, setting("cleanlab.filter.find_label_issues' filter_by")]
    rank_by: Annotated[AuditRanking, setting("the order of reports/label_issues.csv (cleanlab.rank)")]
    grid_images: Annotated[int, setting("top issues drawn in reports/label_issues.png", ge=0)]


@schema
class DeviceParams:
    """How the stages that run a model compute (params.yaml `device:`)."""

    precision: Annotated[Precision, setting("auto = the device plan's choice per machine (python -m pipeline.device)")]


@schema
class ReportParams:
    wrong_images: Annotated[int, setting("most confidently wrong OOF images in reports/wrong.png", ge=0)]
    test_images: Annotated[int, setting("first test images in reports/test_grid.png", ge=0)]
    confusion_pairs: Annotated[int, setting("most frequent (true, predicted) mistakes listed", ge=0)]


@schema
class CompareParams:
    models: Annotated[list[str], setting("the models compared on the same folds, rows and budget")]
    folds: Annotated[list[Annotated[int, Field(ge=0)]], setting("held-out folds scored")]
    epochs: Annotated[int, setting("the same budget for every model", ge=1)]
    max_train_rows: Annotated[int | None, setting("stratified subsample of each fold's training rows", ge=1)]
    published_copies: Annotated[int, setting("--published: copies per image under each recipe's transform", ge=1)] = 8


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
TOP_LEVEL: dict[str, FieldInfo] = {
    "profile": FieldInfo.from_annotation(Annotated[str, setting("the name of the composed profile")]),
    "seed": FieldInfo.from_annotation(Annotated[int, setting("seeds every stage", ge=0)]),
}
TUNABLE = ("learning_rate", "batch_size", "dropout_conv", "dropout_dense", "aug_prob")  # what tune.space may search
OVERRIDABLE = tuple(f.name for f in fields(FitParams) if f.name != "epochs")  # what model.overrides may set


@dataclass(frozen=True)
class Settings:
    """params.yaml, validated: the profile, the seed and every section's settings."""

    profile: str
    seed: int
    sections: dict[str, Any]


# ---------------------------------------------------------------- messages


def field_info(section: str, name: str) -> FieldInfo:
    """Return the schema of setting `name` of `section` ("" for the top level)."""
    return TOP_LEVEL[name] if not section else SECTIONS[section].__pydantic_fields__[name]


def noun(hint: Any) -> str:
    """Return the type `hint` in words ("a whole number", "a number", "a list of names", ...)."""
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a name", dict: "a mapping"}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        item = typing.get_args(item)[0] if typing.get_origin(item) is Annotated else item
        return {int: "a list of whole numbers", str: "a list of names"}.get(item, "a list")
    return names.get(typing.get_origin(hint) or hint, str(hint))


def bounds(metadata: list) -> str:
    """Return the range a setting's pydantic `metadata` (Ge, Gt, Le, Lt) allows, in words ("" for none)."""
    low = next(((m.ge, False) for m in metadata if isinstance(m, Ge)), None) or next(
        ((m.gt, True) for m in metadata if isinstance(m, Gt)), None
    )
    high = next(((m.le, False) for m in metadata if isinstance(m, Le)), None) or next(
        ((m.lt, True) for m in metadata if isinstance(m, Lt)), None
    )
    if low and high:
        return f"from {low[0]:g}{' (excluded)' if low[1] else ''} to {high[0]:g}{' (excluded)' if high[1] else ''}"
    if low:
        return f"above {low[0]:g}" if low[1] else f"at least {low[0]:g}"
    if high:
        return f"below {high[0]:g}" if high[1] else f"at most {high[0]:g}"
    return ""


def expected(info: FieldInfo) -> str:
    """Return what a setting of schema `info` may be, in words: "one of a, b", "a number above 0 or null", ..."""
    hint, optional = info.annotation, False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint, optional = args[0], len(args) < len(typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        wanted = "one of " + ", ".join(str(c) for c in choices(hint))
    else:
        wanted = " ".join(filter(None, [noun(hint), bounds(info.metadata)]))
    return wanted + (" or null" if optional else "")


def shown(value: Any) -> str:
    """Return `value` as a user wrote it in YAML, text quoted (so that '2e-3' read as text shows as such)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def bad_value(where: str, key: str, value: Any, info: FieldInfo) -> ParamsError:
    """Return the one-line error of setting `key` (dotted) at `where` holding `value`, which schema `info` refuses."""
    numeric = {int, float} & set(typing.get_args(info.annotation) or (info.annotation,))
    why = " (text, not a number)" if isinstance(value, str) and numeric else ""
    return ParamsError(f"{where} {key}: got {shown(value)}{why}, expected {expected(info)}")


@functools.cache
def adapter(info: FieldInfo) -> TypeAdapter:
    """Return the strict validator of one setting of schema `info`."""
    return TypeAdapter(Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation, config=STRICT)


def fit_setting(name: str, value: Any, where: str) -> Any:
    """Return `value` for the training setting `name` (a `train:` key, also set by tune and model.overrides) as
    its own declared type, or raise ParamsError naming `where`; a tuned 0.25 never becomes a whole number."""
    if name not in FitParams.__pydantic_fields__:
        raise ParamsError(f"{where}: {name!r} is not a training setting; choose from {', '.join(OVERRIDABLE)}")
    info = field_info("train", name)
    try:
        return adapter(info).validate_python(value)
    except ValidationError:
        raise bad_value(where, f"train.{name}", value, info) from None


# ---------------------------------------------------------------- validation


def build(section: str, values: dict[str, Any], path: Path) -> Any:
    """Return the frozen dataclass of `section` built from `values`, or raise ParamsError on the first setting the
    schema refuses (whole numbers given for float settings become floats)."""
    cls = SECTIONS[section]
    try:
        return cls(**values)
    except ValidationError as exc:
        name = exc.errors()[0]["loc"][0]
        raise bad_value(str(path), f"{section}.{name}", values[name], field_info(section, name)) from None


def check_structure(doc: dict, path: Path) -> None:
    """Raise ParamsError unless `doc` has the seed, every section and exactly each section's keys."""
    known = [*TOP_LEVEL, *SECTIONS]
    for key in doc:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ParamsError(f"{path}: unknown setting {key!r}{hint}; the sections are {', '.join(known)}")
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
    ranged = isinstance(spec, list) and len(spec) in (2, 3) and all(type(v) in (int, float) for v in spec[:2])
    if not ranged or not spec[0] < spec[1] or (len(spec) == 3 and spec[2] != "log"):
        raise ParamsError(f"params.yaml {key}: expected [low, high] or [low, high, log] with low < high, got {spec!r}")
    for bound in spec[:2]:
        fit_setting(name, bound, f"params.yaml {key}:")
    if len(spec) == 3 and spec[0] <= 0:
        raise ParamsError(f"params.yaml {key}: a log range needs low > 0, got {spec!r}")


def check_space(tune: TuneParams) -> None:
    """Check tune.space and every model's entries in tune.model_space (null drops a setting)."""
    for name, spec in tune.space.items():
        check_spec(f"tune.space.{name}", name, spec)
    for model, entries in tune.model_space.items():
        check_model_name("tune.model_space", model, seeded=False)
        if not isinstance(entries, dict):
            raise ParamsError(f"params.yaml tune.model_space.{model}: got {shown(entries)}, expected a mapping")
        for name, spec in entries.items():
            if spec is not None:
                check_spec(f"tune.model_space.{model}.{name}", name, spec)


def check_model_name(key: str, name: Any, seeded: bool = True) -> None:
    """Raise ParamsError unless `name` (at `key`) is a model of the zoo, or with `seeded` one followed by @N (N >= 1,
    the same model trained from other seeds)."""
    match = SEED_MEMBER.match(name) if isinstance(name, str) else None
    if not match or match["model"] not in MODEL_NAMES or (match["seed"] and not seeded):
        also = ", or one followed by @N (N >= 1) for the same model from other seeds" if seeded else ""
        raise ParamsError(f"params.yaml {key}: got {shown(name)}, expected one of {', '.join(MODEL_NAMES)}{also}")


def check_model(model: ModelParams) -> None:
    """Check the model names, model.ensemble (no model twice) and model.overrides (training settings of the models,
    by name)."""
    check_model_name("model.name", model.name)
    for name in model.ensemble:
        check_model_name("model.ensemble", name)
    model.members()
    for name, settings in model.overrides.items():
        if not isinstance(settings, dict):
            raise ParamsError(f"params.yaml model.overrides.{name}: got {shown(settings)}, expected a mapping")
        for key, value in settings.items():
            if key not in OVERRIDABLE:
                raise ParamsError(
                    f"params.yaml model.overrides.{name}.{key}: not a setting a model overrides; choose from "
                    f"{', '.join(OVERRIDABLE)}"
                )
            fit_setting(key, value, f"params.yaml model.overrides.{name}.{key}:")


def check_across(s: dict[str, Any], path: Path) -> None:
    """Raise ParamsError where settings of different sections disagree (folds that train.folds does not make, a
    grace period no longer than the heartbeat)."""
    folds = s["train"].folds
    made = f"a fold of train.folds = {folds}: 0 to {folds - 1}"
    if s["tune"].fold >= folds:
        raise ParamsError(f"{path} tune.fold: got {s['tune'].fold}, expected {made}")
    if any(f >= folds for f in s["compare"].folds):
        raise ParamsError(f"{path} compare.folds: got {s['compare'].folds}, expected {made}")
    if s["tune"].grace_seconds <= s["tune"].heartbeat_seconds:
        raise ParamsError(
            f"{path} tune.grace_seconds: got {s['tune'].grace_seconds}, expected more than tune.heartbeat_seconds = "
            f"{s['tune'].heartbeat_seconds} (else live trials are failed)"
        )


def validate(doc: dict[str, Any], path: Path = paths.PARAMS) -> Settings:
    """Check every setting of `doc` (params.yaml at `path`) against the schema: known sections and keys, each value's
    type and range, the search space, the per-model overrides and the settings that relate sections; return them, or
    raise ParamsError on the first bad one."""
    check_structure(doc, path)
    for key, info in TOP_LEVEL.items():
        if key in doc:
            try:
                adapter(info).validate_python(doc[key])
            except ValidationError:
                raise bad_value(str(path), key, doc[key], info) from None
    sections = {name: build(name, doc[name], path) for name in SECTIONS}
    check_space(sections["tune"])
    check_model(sections["model"])
    for name in sections["compare"].models:
        check_model_name("compare.models", name, seeded=False)
    check_across(sections, path)
    return Settings(profile=str(doc.get("profile", "full")), seed=doc["seed"], sections=sections)


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


def parse(text: str, path: Path) -> dict[str, Any]:
    """Return the settings document in YAML `text` (of `path`), not yet validated."""
    try:
        loader = SettingsLoader(text)
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ParamsError(yaml_error(path, exc)) from exc
    if not isinstance(doc, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return doc


def read_text(path: Path) -> str:
    """Return the text of params.yaml at `path`; raise ParamsError when there is none."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ParamsError(f"{path} not found: run from the project root") from exc


def read_raw(path: Path = paths.PARAMS) -> dict[str, Any]:
    """Read params.yaml at `path` and return it as a plain dict (not yet validated: see `read_settings`)."""
    return parse(read_text(path), path)


@functools.lru_cache(maxsize=8)
def checked(text: str, path: Path) -> Settings:
    """Return the settings in params.yaml text `text` (of `path`), validated once per process for each text."""
    return validate(parse(text, path), path)


def read_settings(path: Path = paths.PARAMS) -> Settings:
    """Return params.yaml at `path`, every setting validated (`validate`); a file read again is not re-validated."""
    return checked(read_text(path), Path(path))


def load(section: str, path: Path = paths.PARAMS) -> Any:
    """Return the settings of `section` from params.yaml, exactly as written there and validated, as its frozen
    dataclass."""
    return read_settings(path).sections[section]


def seed(path: Path = paths.PARAMS) -> int:
    """Return the global seed from params.yaml."""
    return read_settings(path).seed


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
    except yaml.YAMLError as exc:  # a file of conf/ that is not YAML: Hydra passes PyYAML's error on
        raise ParamsError(yaml_error(marked_file(exc, Path(conf) / paths.CONF_CONFIG.name), exc)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ParamsError(f"cannot compose {Path(conf) / paths.CONF_CONFIG.name} with {overrides}: {exc}") from exc
    return OmegaConf.to_yaml(cfg)


def marked_file(exc: yaml.YAMLError, default: Path) -> Path:
    """Return the file PyYAML's error `exc` is about (relative to the cwd when inside it), else `default`."""
    mark = getattr(exc, "problem_mark", None)
    name = Path(mark.name) if mark and mark.name and not mark.name.startswith("<") else Path(default)
    try:
        return name.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return name


def composed(overrides: list[str], conf: Path = paths.CONF_DIR) -> str:
    """Return the YAML text Hydra composes from `conf` with `overrides`, every setting validated (`validate`) before
    anything is written: a bad value is refused here, not by the stage that runs it after DVC removed its outputs."""
    text = compose(overrides, conf)
    try:
        checked(text, paths.PARAMS)
    except ParamsError as exc:
        raise ParamsError(f"{exc} (composed with {' '.join(overrides)}; {paths.PARAMS} is left as it was)") from None
    return text


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


def describe() -> str:
    """Return every setting of the schema, one line each: its key, what it may be, and what it does."""
    rows = [(key, info) for key, info in TOP_LEVEL.items()]
    rows += [(f"{s}.{name}", info) for s, cls in SECTIONS.items() for name, info in cls.__pydantic_fields__.items()]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {info.description} ({expected(info)})" for key, info in rows)


def main(argv: list[str] | None = None) -> int:
    """Compose params.yaml from conf/ (a profile and overrides), print the schema, or print the profile it was composed
    with."""
    parser = stage_parser("params", __doc__)
    parser.add_argument("--profile", help=f"compose this profile ({', '.join(profiles()) or 'conf/profile/*.yaml'})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides, e.g. train.epochs=10")
    parser.add_argument("--force", action="store_true", help="overwrite a hand-edited params.yaml (kept as .bak)")
    parser.add_argument("--describe", action="store_true", help="print every setting, what it may be and what it does")
    args = parser.parse_args(argv)
    if args.describe:
        print(describe())
        return 0
    if args.profile or args.overrides:
        overrides = ([f"profile={args.profile}"] if args.profile else []) + list(args.overrides)
        try:
            backup = write_params(composed(overrides), force=args.force)
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
