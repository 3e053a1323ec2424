"""The ensemble's members and each one's effective training settings, resolved here and nowhere else: the `train:`
section, then the member's `model.overrides` (a seed member `bn_lite+2` takes `bn_lite`'s unless it has its own),
then, for model.name alone and with `train.use_tuned`, tune's best values. The composition (hydra_plugins/) calls
`derived` to write them into params.yaml, where each train unit's DVC params point at its own member's entry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from pipeline.params import TUNABLE, FitParams, ModelParams, TrainParams, fit_setting

SEED_MARK = "+"  # model.ensemble entry `bn_lite+2`: bn_lite again, from its own seeds (DVC stage names forbid "@")


@dataclass(frozen=True)
class FitSettings(FitParams):
    """What one training run needs besides data: the member's name and its training settings."""

    model: str


def base_name(name: str) -> str:
    """Return the zoo model of a member name (`bn_lite+2` -> `bn_lite`)."""
    return name.split(SEED_MARK, 1)[0]


def seed_offset(name: str) -> int:
    """Return the seed number of a member name (`bn_lite+2` -> 2; a plain model name -> 0)."""
    _, mark, number = name.partition(SEED_MARK)
    return int(number) if mark else 0


def member_seed(seed: int, name: str) -> int:
    """Return the seed member `name` trains from: `seed` itself, or for `name+N` one far from any plain member's."""
    return seed + 100_003 * seed_offset(name)


def members(model: ModelParams) -> list[str]:
    """Return every member trained and blended: model.name first, then each model.ensemble entry."""
    return [model.name, *model.ensemble]


def tuned_values(tuned: dict | None) -> dict:
    """Return tune's best values of the tunable settings, each typed as its setting declares."""
    return {k: fit_setting(k, v, "best_params.json: tuned") for k, v in (tuned or {}).items() if k in TUNABLE}


def member_settings(train: TrainParams, model: ModelParams, name: str, tuned: dict | None = None) -> FitSettings:
    """Return member `name`'s settings: `train:`, its overrides, then (model.name with use_tuned) `tuned`."""
    base = {f.name: getattr(train, f.name) for f in fields(FitParams)}
    own = name if name in model.overrides else base_name(name)
    settings = FitSettings(model=name, **{**base, **(model.overrides.get(own) or {})})
    if name == model.name and train.use_tuned:
        settings = replace(settings, **tuned_values(tuned))
    return settings


def derived(train: TrainParams, model: ModelParams) -> dict[str, Any]:
    """Return params.yaml's `derived:` section: the members, the fold numbers, and each member's settings before
    tuning (with whether tune's values apply to it), what the train matrix stage iterates and depends on."""
    settings = {}
    for name in members(model):
        values = asdict(member_settings(train, model, name))
        values.pop("model")
        settings[name] = {**values, "use_tuned": train.use_tuned and name == model.name}
    return {"members": members(model), "folds": list(range(train.folds)), "settings": settings}
