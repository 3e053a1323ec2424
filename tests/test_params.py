"""Params: sections become frozen dataclasses, the profile's overrides apply, unknown keys fail."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline import params
from tests.conftest import REPO


def test_every_section_of_the_repository_params_loads_in_both_profiles(tmp_path):
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    for profile in ("full", *doc["profiles"]):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**doc, "profile": profile}))
        for section in params.SECTIONS:
            value = params.load(section, tmp_path / "params.yaml")
            assert dataclasses.is_dataclass(value)
            with pytest.raises(dataclasses.FrozenInstanceError):
                value.__setattr__(dataclasses.fields(value)[0].name, None)


def test_quick_profile_overrides_only_what_it_names(tmp_path):
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    params.set_profile("quick", path)
    assert params.profile(path) == "quick"
    assert "# The only home" in path.read_text()  # comments survive
    train = params.load("train", path)
    assert train.folds == doc["profiles"]["quick"]["train"]["folds"]
    assert train.warmup_epochs == doc["train"]["warmup_epochs"]  # not named by quick: the base value
    params.set_profile("full", path)
    assert params.load("train", path).folds == doc["train"]["folds"]


def test_unknown_keys_and_profiles_are_refused(tmp_path):
    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    doc["train"]["epoch"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(params.ParamsError, match="unknown keys \\['epoch'\\]"):
        params.load("train", tmp_path / "params.yaml")
    with pytest.raises(params.ParamsError, match="unknown profile"):
        params.set_profile("turbo", tmp_path / "params.yaml")
