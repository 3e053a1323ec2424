"""Params: params.yaml is composed from conf/ by Hydra (as `dvc exp run` does) and read exactly as written;
sections become frozen dataclasses, unknown keys and profiles fail, a hand edit is never lost silently."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline import params, paths
from pipeline.lib import compose, members, models
from tests.conftest import REPO, tracked_conf


@pytest.fixture(scope="module")
def conf_dir():
    """The repository's tracked conf/ (a copy without conf/local/, this machine's profile choice)."""
    return tracked_conf()


@pytest.fixture
def confdir(tmp_path, monkeypatch, conf_dir):
    """A project folder (the cwd) holding a copy of the repository's tracked conf/."""
    shutil.copytree(conf_dir, tmp_path / "conf")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_section_loads_in_every_profile(tmp_path, conf_dir):
    assert {"full", "quick"} <= set(compose.profiles(conf_dir))
    for profile in compose.profiles(conf_dir):
        (tmp_path / "params.yaml").write_text(compose.compose([f"profile={profile}"], conf_dir))
        assert params.profile(tmp_path / "params.yaml") == profile
        for section in params.SECTIONS:
            value = params.load(section, tmp_path / "params.yaml")
            assert dataclasses.is_dataclass(value)
            with pytest.raises(dataclasses.FrozenInstanceError):
                value.__setattr__(dataclasses.fields(value)[0].name, None)
        model, cfg = params.load("model", tmp_path / "params.yaml"), params.load("train", tmp_path / "params.yaml")
        for name in members.members(model):  # every member and its overrides resolve
            assert members.member_settings(cfg, model, name).model == name
            assert models.build_model(members.base_name(name)).count_params() > 0


def test_stages_read_exactly_what_params_yaml_says(tmp_path, conf_dir):
    # finding 1: a quick profile used to be overlaid at load time, shadowing the value params.yaml shows
    quick = yaml.safe_load(compose.compose(["profile=quick"], conf_dir))
    # not the profile's value, which an overlay would bring back
    views = (quick["predict"]["tta_views"] + 1) % (params.TTA_VIEWS + 1)
    doc = {**quick, "predict": {**quick["predict"], "tta_views": views}}  # as `dvc exp run -S predict.tta_views=N`
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    assert params.load("predict", tmp_path / "params.yaml").tta_views == views


def test_quick_profile_overrides_only_what_it_names_and_a_user_override_wins(conf_dir):
    full = yaml.safe_load(compose.compose(["profile=full"], conf_dir))
    quick = yaml.safe_load(compose.compose(["profile=quick"], conf_dir))
    named = yaml.safe_load((conf_dir / "profile" / "quick.yaml").read_text())
    assert quick["train"]["folds"] == named["train"]["folds"] != full["train"]["folds"]
    assert quick["predict"]["tta_views"] == named["predict"]["tta_views"]
    assert quick["train"]["warmup_epochs"] == full["train"]["warmup_epochs"]  # not named by quick: the base value
    assert quick["tune"]["space"] == named["tune"]["space"]
    both = yaml.safe_load(compose.compose(["profile=quick", "predict.tta_views=0", "train.epochs=10"], conf_dir))
    assert both["predict"]["tta_views"] == 0 and both["train"]["epochs"] == 10
    assert both["train"]["folds"] == named["train"]["folds"]


def test_composition_is_byte_for_byte_what_dvc_exp_run_writes(tmp_path, conf_dir):
    from dvc.utils.hydra import compose_and_dump

    overrides = ["profile=quick", "predict.tta_views=0"]
    compose_and_dump(tmp_path / "params.yaml", str(conf_dir), None, "config", str(tmp_path), overrides)
    assert (tmp_path / "params.yaml").read_text() == compose.compose(overrides, conf_dir)


def test_committed_params_yaml_is_the_composition_of_conf(conf_dir):
    # edit conf/, then `python -m pipeline.params --profile full`: the committed params.yaml must follow. git's copy,
    # not the workspace's, which `make quick` or `dvc exp run -S` rewrite
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == compose.compose(["profile=full"], conf_dir)


def test_unknown_keys_and_profiles_are_refused(tmp_path, confdir, conf_dir):
    doc = yaml.safe_load(compose.compose([], conf_dir))
    doc["train"]["epoch"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(params.ParamsError, match="unknown keys \\['epoch'\\]"):
        params.load("train", tmp_path / "params.yaml")
    with pytest.raises(params.ParamsError, match="unknown profile 'turbo'"):
        compose.compose(["profile=turbo"], conf_dir)
    with pytest.raises(params.ParamsError, match="cannot compose"):
        compose.compose(["train.epoch=3"], conf_dir)  # Hydra refuses a key the config does not have
    assert compose.main(["--profile", "turbo"]) == 2


def test_profile_switch_composes_params_yaml_and_the_default_of_dvc_exp_run(confdir, capsys):
    tracked = {p: p.read_bytes() for p in (confdir / "conf").rglob("*") if p.is_file()}
    assert compose.main(["--profile", "quick", "train.epochs=4"]) == 0
    written = (confdir / "params.yaml").read_text()
    assert written == compose.compose(["profile=quick", "train.epochs=4"])
    assert params.load("train").epochs == 4 and params.profile() == "quick"
    assert compose.compose([]) == compose.compose(["profile=quick"])  # a plain `dvc exp run` composes quick now
    assert compose.compose(["profile=full"]) != compose.compose(["profile=quick"])  # -S profile=full still wins
    assert {p: p.read_bytes() for p in tracked} == tracked  # no file of conf/ that git tracks changed
    assert compose.main(["--profile", "full"]) == 0  # our own last composition: replaced without asking
    assert params.profile() == "full" and compose.compose([]) == compose.compose(["profile=full"])


def test_the_profile_choice_is_a_file_git_ignores():
    ignored = subprocess.run(["git", "check-ignore", "-q", str(paths.PROFILE_CHOICE)], cwd=REPO)
    assert ignored.returncode == 0
    assert "optional local: profile" in (REPO / paths.CONF_CONFIG).read_text()


def test_a_hand_edited_params_yaml_is_never_overwritten_silently(confdir, capsys):
    assert compose.main(["--profile", "full"]) == 0
    composed = (confdir / "params.yaml").read_text()
    assert "  epochs: 30\n" in composed  # the edit below changes something
    edited = composed.replace("  epochs: 30\n", "  epochs: 12\n", 1)
    (confdir / "params.yaml").write_text(edited)
    assert compose.main(["--profile", "quick"]) == 2
    assert "hand edit" in capsys.readouterr().err
    assert (confdir / "params.yaml").read_text() == edited
    assert compose.compose([]) == compose.compose(["profile=full"])  # nothing changed
    assert compose.main(["--profile", "quick", "--force"]) == 0
    (backup,) = confdir.glob("params.yaml.*.bak")
    assert backup.read_text() == edited and f"kept as {backup.name}" in capsys.readouterr().out
    assert params.profile() == "quick"


def test_a_params_yaml_that_git_holds_may_be_recomposed(confdir):
    (confdir / "params.yaml").write_text("seed: 7\n")  # neither our composition nor ...
    assert not compose.disposable()
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "add", "params.yaml"], check=True)  # ... until git holds it (as `dvc exp run` does)
    assert compose.disposable()
    assert compose.main(["--profile", "quick"]) == 0 and params.profile() == "quick"


def test_describe_prints_every_setting_with_what_it_may_be_and_does(capsys):
    assert compose.main(["--describe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    count = len(params.TOP_LEVEL) + sum(len(c.__pydantic_fields__) for c in params.SECTIONS.values())
    assert len(lines) == count
    precision = next(line for line in lines if line.startswith("device.precision "))
    assert "(one of " + ", ".join(params.choices(params.Precision)) + ")" in precision
    assert any(line.startswith("train.learning_rate ") and "(a number above 0)" in line for line in lines)


def test_the_composition_writes_derived_from_model_and_train(conf_dir):
    overrides = ["profile=test", "model.ensemble=[bn_lite,bn_lite+1]", "train.folds=4", "train.batch_size=24"]
    doc = yaml.safe_load(compose.compose(overrides, conf_dir))
    cfg, model = params.TrainParams(**doc["train"]), params.ModelParams(**doc["model"])
    assert doc["derived"] == members.derived(cfg, model)
    assert doc["derived"]["members"] == ["dropout_cnn", "bn_lite", "bn_lite+1"] and doc["derived"]["folds"] == [
        0,
        1,
        2,
        3,
    ]
    settings = doc["derived"]["settings"]
    assert settings["dropout_cnn"]["batch_size"] == 24  # train: as overridden
    assert settings["bn_lite+1"] == settings["bn_lite"] != settings["dropout_cnn"]  # bn_lite's overrides, seeds apart
    assert settings["bn_lite"]["batch_size"] == doc["model"]["overrides"]["bn_lite"]["batch_size"]


def test_dvc_s_own_hydra_composition_writes_the_same_derived(tmp_path, conf_dir):
    """`dvc exp run` composes in its own process: Hydra's plugin scan imports hydra_plugins/ from the repository
    root (dvc.utils.hydra.compose_and_dump's plugins_path), whose resolvers write `derived:`."""
    overrides = ["profile=quick", "model.ensemble=[bn_lite+1,bn_lite+2]", "train.epochs=3"]
    code = "import sys; from dvc.utils.hydra import compose_and_dump; compose_and_dump(*sys.argv[1:6], sys.argv[6:])"
    args = [str(tmp_path / "params.yaml"), str(conf_dir), "", "config", str(REPO), *overrides]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    written = (tmp_path / "params.yaml").read_text()
    assert written == compose.compose(overrides, conf_dir)
    doc = yaml.safe_load(written)
    assert doc["derived"]["members"] == [doc["model"]["name"], "bn_lite+1", "bn_lite+2"]
    assert params.load("train", tmp_path / "params.yaml").epochs == 3  # valid, derived included


def test_seed_members_compose_through_hydras_override_grammar(confdir, capsys):
    assert compose.main(["--profile", "quick", "model.name=dropout_cnn", "model.ensemble=[bn_lite,bn_lite+1]"]) == 0
    assert params.load("model").ensemble == ["bn_lite", "bn_lite+1"]
    capsys.readouterr()
    assert compose.main(["--profile", "quick", "model.ensemble=[bn_lite@1]"]) == 2  # the old mark (DVC forbids "@")
    (line,) = capsys.readouterr().err.splitlines()
    assert "model.ensemble: got 'bn_lite@1'" in line and "one followed by +N (N >= 1)" in line
