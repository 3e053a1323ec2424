"""The settings schema: every setting of params.yaml once (its type, range or choices and what it does), checked
by pydantic, and the readers that return each stage's section as a frozen dataclass.

params.yaml is composed by Hydra from conf/ (pipeline/lib/compose.py, or `dvc exp run`): `python -m pipeline.params
--profile quick [key=value ...]` composes it (what `make quick` runs), `--describe` prints the schema."""

from __future__ import annotations

import difflib
import functools
import json
import re
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from pipeline import paths
from pipeline.lib.cli import StageError


class ParamsError(StageError, ValueError):
    """params.yaml is missing, malformed, or holds an unknown or invalid setting."""


# ---------------------------------------------------------------- the schema
# pydantic, strict (no value converted to another kind, only a whole number to a float), checks each section as its
# dataclass is built; the messages are one line naming the file, the key, the value and what is allowed.
STRICT = ConfigDict(strict=True, extra="forbid")
schema = functools.partial(dataclass, frozen=True, config=STRICT)


def setting(description: str, **bounds: Any) -> Any:
    """Return the pydantic Field of a setting: its one-line `description`, its bounds (ge, gt, le, lt) or default."""
    return Field(description=description, **bounds)


Precision = Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"]
Optimizer = Literal["adam", "rmsprop"]
Schedule = Literal["warmup_cosine", "constant", "exponential", "plateau"]
Pruner = Literal["median", "hyperband", "none"]
BlendObjective = Literal["log_loss", "accuracy", "equal"]
# cleanlab.filter.find_label_issues' filter_by values and cleanlab.rank's orderings (pipeline/audit.py uses them)
AuditFilter = Literal[
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
    "low_normalized_margin", "low_self_confidence",
]  # fmt: skip
AuditRanking = Literal["self_confidence", "normalized_margin", "confidence_weighted_entropy"]
TTA_VIEWS = 8  # the deterministic views pipeline/lib/tta.py offers
# the model zoo's names (pipeline/lib/models.py MODELS, which tests/test_bad_settings.py holds to this list): here
# too, so that settings are checked without importing Keras; `name+N` (N >= 1) is model `name` from other seeds
MODEL_NAMES = (
    "mlp", "cnn_basic", "cnn_small2x2", "dropout_cnn", "bn_cnn", "bn_lite", "bn_plain3", "bn_plain5", "bn_plain7",
)  # fmt: skip
SEED_MEMBER = re.compile(r"^(?P<model>[^+]+)(\+(?P<seed>[1-9][0-9]*))?$")


def choices(kind: Any) -> tuple:
    """Return the values a Literal setting type (e.g. Precision) allows, in order."""
    return typing.get_args(kind)


@schema(kw_only=True)
class TopLevel:
    profile: Annotated[str, setting("the name of the composed profile")] = "full"
    seed: Annotated[int, setting("seeds every stage", ge=0)]
    derived: Annotated[dict[str, Any], setting("composed from model and train, never by hand", default_factory=dict)]


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
    ensemble: Annotated[
        list[str],
        setting("more models on the same folds; `name+N` is the model from other seeds", default_factory=list),
    ]
    overrides: Annotated[
        dict[str, dict[str, Any]], setting("per-model train settings over `train:`", default_factory=dict)
    ]


@schema(kw_only=True)
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
    optimizer: Annotated[Optimizer, setting("the optimizer")] = "adam"
    schedule: Annotated[Schedule, setting("the learning-rate schedule")] = "warmup_cosine"
    lr_decay: Annotated[float, setting("exponential: factor per epoch; plateau: per plateau", gt=0.0, le=1.0)] = 0.95
    plateau_patience: Annotated[int, setting("plateau: epochs without a better val_accuracy", ge=1)] = 3
    ema_momentum: Annotated[float | None, setting("weight averaging momentum (null = off)", ge=0.0, lt=1.0)] = None


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
    model_space: Annotated[
        dict[str, dict[str, Any]], setting("per model.name: entries replace those of `space`; null drops")
    ]


@schema
class PredictParams:
    tta_views: Annotated[int, setting("deterministic views added to the original image", ge=0, le=TTA_VIEWS)]
    batch_size: Annotated[int, setting("images per inference batch", ge=1)]
    blend_by: Annotated[BlendObjective, setting("how ensemble weights are chosen on OOF predictions")] = "log_loss"
    diff_images: Annotated[int, setting("changed test images drawn in reports/submission_diff.png", ge=0)] = 40


@schema
class AuditParams:
    filter_by: Annotated[AuditFilter, setting("cleanlab.filter.find_label_issues' filter_by")]
    rank_by: Annotated[AuditRanking, setting("the order of reports/label_issues.csv (cleanlab.rank)")]
    grid_images: Annotated[int, setting("top issues drawn in reports/label_issues.png", ge=0)]


@schema
class DeviceParams:
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
    "device": DeviceParams, "ingest": IngestParams, "augment": AugmentParams, "model": ModelParams,
    "train": TrainParams, "tune": TuneParams, "predict": PredictParams, "audit": AuditParams,
    "report": ReportParams, "compare": CompareParams,
}  # fmt: skip
TOP_LEVEL: dict[str, FieldInfo] = TopLevel.__pydantic_fields__
TUNABLE = ("learning_rate", "batch_size", "dropout_conv", "dropout_dense", "aug_prob")  # what tune.space may search
OVERRIDABLE = tuple(f.name for f in fields(FitParams) if f.name != "epochs")  # what model.overrides may set


class Settings(typing.NamedTuple):  # params.yaml, validated
    profile: str
    seed: int
    sections: dict[str, Any]


# ---------------------------------------------------------------- messages
NOUNS = {int: "a whole number", float: "a number", bool: "true or false", str: "a name", dict: "a mapping"}
PLURALS = {int: "whole numbers", str: "names"}
BOUNDS = {Ge: ("at least {}", "from {}"), Gt: ("above {}", "from {} (excluded)"), Le: ("at most {}", "to {}")}
BOUNDS[Lt] = ("below {}", "to {} (excluded)")


def bounds(metadata: list) -> str:
    """Return the range a setting's pydantic `metadata` (Ge, Gt, Le, Lt) allows, in words ("" for none)."""
    marks = sorted((m for m in metadata if type(m) in BOUNDS), key=lambda m: type(m) in (Le, Lt))
    return " ".join(BOUNDS[type(m)][len(marks) > 1].format(f"{getattr(m, type(m).__name__.lower()):g}") for m in marks)


def expected(info: FieldInfo) -> str:
    """Return what a setting of schema `info` may be, in words: "one of a, b", "a number above 0 or null", ..."""
    hint, optional = info.annotation, type(None) in typing.get_args(info.annotation)
    hint = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, choices(hint))) + " or null" * optional
    if typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        noun = f"a list of {PLURALS[getattr(item, '__origin__', item)]}"
    else:
        noun = NOUNS[typing.get_origin(hint) or hint]
    return " ".join(filter(None, [noun, bounds(info.metadata)])) + " or null" * optional


def shown(value: Any) -> str:
    """Return `value` as a user wrote it in YAML, text quoted (so that '2e-3' read as text shows as such)."""
    return json.dumps(value) if value is None or isinstance(value, bool) else repr(value)


def bad_value(where: str, key: str, value: Any, info: FieldInfo) -> ParamsError:
    """Return the one-line error of setting `key` (dotted) at `where` holding `value`, which schema `info` refuses."""
    numeric = {int, float} & {info.annotation, *typing.get_args(info.annotation)}
    why = " (text, not a number)" if isinstance(value, str) and numeric else ""
    return ParamsError(f"{where} {key}: got {shown(value)}{why}, expected {expected(info)}")


@functools.cache
def adapter(info: FieldInfo) -> TypeAdapter:
    """Return the strict validator of one setting of schema `info`."""
    return TypeAdapter(Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation, config=STRICT)


def fit_setting(name: str, value: Any, where: str) -> Any:
    """Return `value` of training setting `name` as its declared type (0.25 stays a float), or raise ParamsError."""
    info = FitParams.__pydantic_fields__[name]
    try:
        return adapter(info).validate_python(value)
    except ValidationError:
        raise bad_value(where, f"train.{name}", value, info) from None


# ---------------------------------------------------------------- validation


def build(section: str, values: Any, path: Path) -> Any:
    """Return the frozen dataclass of `section` ("" for the top level) built from `values`, or raise ParamsError."""
    cls = SECTIONS.get(section, TopLevel)
    if not isinstance(values, dict):
        raise ParamsError(f"{path} has no section {section!r} (a mapping of its settings)")
    names = {f.name for f in fields(cls)}
    unknown, missing = sorted(set(values) - names), sorted(names - set(values))
    if section and (unknown or missing):
        raise ParamsError(f"{path} section {section!r}: unknown keys {unknown}, missing keys {missing}")
    try:
        return cls(**values)
    except ValidationError as exc:
        name = exc.errors()[0]["loc"][0]
        key = f"{section}.{name}" if section else name
        raise bad_value(str(path), key, values[name], cls.__pydantic_fields__[name]) from None


def check_spec(key: str, name: str, spec: Any) -> None:
    """Raise ParamsError unless tunable `name`'s `spec` (at `key`) is [low, high], [low, high, log] or {choices: []}."""
    where = f"params.yaml {key}:"
    if name not in TUNABLE:
        raise ParamsError(f"{where} not a tunable setting; choose from {', '.join(TUNABLE)}")
    if isinstance(spec, dict):
        if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ParamsError(f"{where} a choice must be written {{choices: [a, b, ...]}}, got {spec!r}")
        values = spec["choices"]
    else:
        ranged = isinstance(spec, list) and len(spec) in (2, 3) and all(type(v) in (int, float) for v in spec[:2])
        if not ranged or not spec[0] < spec[1] or (len(spec) == 3 and spec[2] != "log"):
            raise ParamsError(f"{where} expected [low, high] or [low, high, log] with low < high, got {spec!r}")
        values = spec[:2]
    for value in values:
        fit_setting(name, value, where)
    if isinstance(spec, list) and len(spec) == 3 and spec[0] <= 0:
        raise ParamsError(f"{where} a log range needs low > 0, got {spec!r}")


def check_model_name(key: str, name: Any, seeded: bool = True) -> None:
    """Raise ParamsError unless `name` (at `key`) is a model of the zoo, or (`seeded`) one followed by +N (N >= 1)."""
    match = SEED_MEMBER.match(name) if isinstance(name, str) else None
    if not match or match["model"] not in MODEL_NAMES or (match["seed"] and not seeded):
        also = ", or one followed by +N (N >= 1) for the same model from other seeds" if seeded else ""
        raise ParamsError(f"params.yaml {key}: got {shown(name)}, expected one of {', '.join(MODEL_NAMES)}{also}")


def check_model(model: ModelParams) -> None:
    """Check the model names, model.ensemble (no model twice) and model.overrides (training settings, by model)."""
    names = [model.name, *model.ensemble]
    for i, name in enumerate(names):
        check_model_name("model.ensemble" if i else "model.name", name)
    if len(set(names)) != len(names):
        raise ParamsError(f"params.yaml model: name and ensemble must not repeat a model, got {names}")
    for name, settings in model.overrides.items():
        for key, value in settings.items():
            where = f"params.yaml model.overrides.{name}.{key}:"
            if key not in OVERRIDABLE:
                raise ParamsError(f"{where} not a setting a model overrides; choose from {', '.join(OVERRIDABLE)}")
            fit_setting(key, value, where)


def check_sections(s: dict[str, Any], top: TopLevel, path: Path) -> None:
    """Raise ParamsError on what types and ranges leave: the search space, models, related settings, `derived:`."""
    from pipeline.lib.members import derived  # lib/members builds on this schema

    folds, tune = s["train"].folds, s["tune"]
    for name, spec in tune.space.items():
        check_spec(f"tune.space.{name}", name, spec)
    for model, entries in tune.model_space.items():  # null drops a setting of `space`
        check_model_name("tune.model_space", model, seeded=False)
        for name, spec in entries.items():
            if spec is not None:
                check_spec(f"tune.model_space.{model}.{name}", name, spec)
    check_model(s["model"])
    for name in s["compare"].models:
        check_model_name("compare.models", name, seeded=False)
    made = f"a fold of train.folds = {folds}: 0 to {folds - 1}"
    if tune.fold >= folds:
        raise ParamsError(f"{path} tune.fold: got {tune.fold}, expected {made}")
    if any(f >= folds for f in s["compare"].folds):
        raise ParamsError(f"{path} compare.folds: got {s['compare'].folds}, expected {made}")
    if tune.grace_seconds <= tune.heartbeat_seconds:
        raise ParamsError(
            f"{path} tune.grace_seconds: got {tune.grace_seconds}, expected more than tune.heartbeat_seconds = "
            f"{tune.heartbeat_seconds} (else live trials are failed)"
        )
    if top.derived != derived(s["train"], s["model"]):
        raise ParamsError(
            f"{path} derived: does not match model/train (params.yaml edited by hand?): compose it again: "
            "python -m pipeline.params"
        )


def validate(doc: dict[str, Any], path: Path = paths.PARAMS) -> Settings:
    """Return the settings of `doc` (params.yaml at `path`), or raise ParamsError on the first the schema refuses."""
    known = [*TOP_LEVEL, *SECTIONS]
    for key in doc:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ParamsError(f"{path}: unknown setting {key!r}{hint}; the sections are {', '.join(known)}")
    if "seed" not in doc:
        raise ParamsError(f"{path} has no seed")
    top = build("", {key: doc[key] for key in TOP_LEVEL if key in doc}, path)
    sections = {name: build(name, doc.get(name), path) for name in SECTIONS}
    check_sections(sections, top, path)
    return Settings(profile=top.profile, seed=top.seed, sections=sections)


# ---------------------------------------------------------------- reading


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading 2e-3 as a float (YAML 1.2, as Hydra does) and refusing a key written twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Return the mapping of `node`; raise a ConstructorError naming the line of a repeated key."""
        lines: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in lines:
                problem = f"the key {key!r} appears twice (first on line {lines[key]}): the last would win"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
SettingsLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


def yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """Return PyYAML's error `exc` about `path` on one line: the line and column, and the problem."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    context = getattr(exc, "context", None)
    return f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}" + (f" ({context})" if context else "")


def parse(text: str, path: Path) -> dict[str, Any]:
    """Return the settings document in YAML `text` (of `path`), not yet validated."""
    try:
        doc = SettingsLoader(text).get_single_data()
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
    """Return params.yaml at `path` as a plain dict, not yet validated."""
    return parse(read_text(path), path)


@functools.lru_cache(maxsize=8)
def checked(text: str, path: Path) -> Settings:
    """Return the settings in params.yaml text `text` (of `path`), validated once per process for each text."""
    return validate(parse(text, path), path)


def read_settings(path: Path = paths.PARAMS) -> Settings:
    """Return params.yaml at `path`, every setting validated (`validate`), a text read before not again."""
    return checked(read_text(path), Path(path))


def load(section: str, path: Path = paths.PARAMS) -> Any:
    """Return the validated settings of `section` of params.yaml, as its frozen dataclass."""
    return read_settings(path).sections[section]


def seed(path: Path = paths.PARAMS) -> int:
    """Return the global seed from params.yaml."""
    return read_settings(path).seed


def profile(path: Path = paths.PARAMS) -> str:
    """Return the name of the profile params.yaml was composed with."""
    return str(read_raw(path).get("profile", "full"))


def describe() -> str:
    """Return every setting of the schema, one line each: its key, what it may be, and what it does."""
    rows = [*TOP_LEVEL.items()]
    rows += [(f"{s}.{name}", info) for s, cls in SECTIONS.items() for name, info in cls.__pydantic_fields__.items()]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {info.description} ({expected(info)})" for key, info in rows)


if __name__ == "__main__":  # `python -m pipeline.params`: the composition's command line, beside the schema
    from pipeline.lib.compose import main

    sys.exit(main())
