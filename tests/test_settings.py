"""The bad-settings matrix: every row breaks params.yaml the way a user might (a YAML slip, a typo, a value
of the wrong type or out of range, settings that contradict each other) and checks that reading it stops
with one line naming the key, the value and what is allowed; the rows marked accepted must load. Then every
stage is run on broken settings: one line, exit 2, no traceback, nothing already produced touched. And a
tuned value is never forced into the type of the setting it replaces.

Columns: case id, the damage (a function of the params document, or of params.yaml's text), and the message
regex (None: the file is accepted, and the check given instead must hold)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import audit, augment, ingest, params, paths, predict, report, train, tune
from pipeline.lib import compose, ensemble, tta
from pipeline.lib.device import Gpu, Hardware, plan_devices
from pipeline.lib.files import write_json
from pipeline.lib.members import member_settings
from pipeline.tools import compare, submit
from tests.conftest import REPO, dump_params, tracked_conf
from tests.test_bad_input import seed_outputs, snapshot


def setting(key: str, value: object) -> Callable[[dict], None]:
    """Return a damage that sets the dotted `key` of the params document to `value`."""

    def damage(doc: dict) -> None:
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node[last] = value

    return damage


def text(edit: Callable[[str], str]) -> Callable[[str], str]:
    """Mark `edit` as a damage of params.yaml's text (the YAML as written, not the document)."""
    edit.on_text = True
    return edit


def removed(key: str) -> Callable[[dict], None]:
    """Return a damage that deletes the dotted `key`."""

    def damage(doc: dict) -> None:
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        del node[last]

    return damage


def renamed(key: str, new: str) -> Callable[[dict], None]:
    """Return a damage that renames the dotted `key` to `new` (a typo)."""

    def damage(doc: dict) -> None:
        *parents, last = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node[new] = node.pop(last)

    return damage


def edited(text: str, old: str, new: str) -> str:
    """Return `text` with its first `old` replaced by `new`; fail the test when `old` is not in it (a damage that
    changes nothing would test nothing)."""
    assert old in text, f"the damage's text {old!r} is not in params.yaml"
    return text.replace(old, new, 1)


def replace_all(old: str, new: str) -> Callable[[str], str]:
    """Return a text damage replacing every `old` with `new` (a setting and its copy under `derived:`)."""
    return text(lambda t: edited(t, old, new).replace(old, new))


def line_after(anchor: str, line: str) -> Callable[[str], str]:
    """Return a text damage inserting `line` after the first line that is `anchor`."""
    return text(lambda t: edited(t, f"\n{anchor}\n", f"\n{anchor}\n{line}\n"))


def replace_line(old: str, new: str) -> Callable[[str], str]:
    """Return a text damage replacing the line `old` with `new`."""
    return text(lambda t: edited(t, f"\n{old}\n", f"\n{new}\n"))


def loads(section: str, key: str, value: object) -> Callable[[], None]:
    """Return a check that params.yaml now loads, `section`.`key` equal to `value` (type included)."""

    def check() -> None:
        got = getattr(params.load(section), key)
        assert got == value and type(got) is type(value), (got, value)

    return check


def loads_space(name: str, index: int, value: object) -> Callable[[], None]:
    """Return a check that params.yaml now loads, tune.space.`name`[`index`] equal to `value` (type included)."""

    def check() -> None:
        got = params.load("tune").space[name][index]
        assert got == value and type(got) is type(value), (got, value)

    return check


PY = "params.yaml"
# (case id, damage, message regex, or None and the check of an accepted file)
MATRIX: list[tuple[str, Callable, str | Callable[[], None]]] = [
    # the YAML itself
    ("not YAML", text(lambda t: t.replace("train:\n", "train: [\n", 1)), r", line \d+, column \d+: not valid YAML"),
    (
        "a key written twice",
        line_after("train:", "  epochs: 3"),
        r", line \d+, column 3: not valid YAML: the key 'epochs' appears twice \(first on line \d+\)",
    ),
    ("a list, not settings", text(lambda t: "- 1\n- 2\n"), r"must hold a mapping of sections"),
    (
        "2e-3 is a number (YAML 1.2)",
        replace_all("learning_rate: 0.003", "learning_rate: 2e-3"),
        loads("train", "learning_rate", 0.002),
    ),
    (
        "2E-3 too",
        replace_all("learning_rate: 0.003", "learning_rate: 2E-3"),
        loads("train", "learning_rate", 0.002),
    ),
    ("a whole number for a float setting", setting("train.dropout_conv", 0), loads("train", "dropout_conv", 0.0)),
    # names
    ("section typo", renamed("train", "trian"), r": unknown setting 'trian' \(did you mean 'train'\?\)"),
    (
        "key typo",
        renamed("train.epochs", "epoch"),
        r"section 'train': unknown keys \['epoch'\], missing keys \['epochs'\]",
    ),
    ("section missing", removed("report"), r"has no section 'report'"),
    ("seed missing", removed("seed"), r"has no seed"),
    # types: never converted
    (
        "quoted number",
        replace_line("  learning_rate: 0.003", '  learning_rate: "2e-3"'),
        r"train\.learning_rate: got '2e-3' \(text, not a number\), expected a number above 0",
    ),
    (
        "a word for a count",
        setting("train.epochs", "ten"),
        r"train\.epochs: got 'ten' \(text, not a number\), expected a whole number at least 1",
    ),
    (
        "a quoted count",
        setting("train.folds", "3"),
        r"train\.folds: got '3' \(text, not a number\), expected a whole number at least 2",
    ),
    (
        "a fraction for a count",
        setting("train.batch_size", 32.5),
        r"train\.batch_size: got 32\.5, expected a whole number at least 1",
    ),
    ("true for a count", setting("train.batch_size", True), r"train\.batch_size: got true, expected a whole number"),
    ("seed null", setting("seed", None), r"seed: got null, expected a whole number at least 0"),
    ("seed text", setting("seed", "42"), r"seed: got '42' \(text, not a number\), expected a whole number"),
    ("yes in quotes", setting("train.use_tuned", "yes"), r"train\.use_tuned: got 'yes', expected true or false"),
    (
        "a name for a list",
        setting("model.ensemble", "bn_cnn"),
        r"model\.ensemble: got 'bn_cnn', expected a list of names",
    ),
    ("a profile number", setting("profile", 3), r"profile: got 3, expected a name"),
    ("NaN", setting("train.learning_rate", float("nan")), r"train\.learning_rate: got nan, expected a number above 0"),
    # ranges
    (
        "negative learning rate",
        setting("train.learning_rate", -1),
        r"train\.learning_rate: got -1, expected a number above 0",
    ),
    (
        "zero learning rate",
        setting("train.learning_rate", 0.0),
        r"train\.learning_rate: got 0\.0, expected a number above 0",
    ),
    ("batch size 0", setting("train.batch_size", 0), r"train\.batch_size: got 0, expected a whole number at least 1"),
    ("one fold", setting("train.folds", 1), r"train\.folds: got 1, expected a whole number at least 2"),
    (
        "dropout 1",
        setting("train.dropout_conv", 1.0),
        r"train\.dropout_conv: got 1\.0, expected a number from 0 to 1 \(excluded\)",
    ),
    (
        "negative dropout",
        setting("train.dropout_dense", -0.1),
        r"train\.dropout_dense: got -0\.1, expected a number from 0 to 1",
    ),
    ("aug_prob above 1", setting("train.aug_prob", 1.5), r"train\.aug_prob: got 1\.5, expected a number from 0 to 1$"),
    (
        "label smoothing 1",
        setting("train.label_smoothing", 1),
        r"train\.label_smoothing: got 1, expected a number from 0 to 1",
    ),
    (
        "negative warmup",
        setting("train.warmup_epochs", -1),
        r"train\.warmup_epochs: got -1, expected a number at least 0",
    ),
    (
        "monitor_rows 0",
        setting("train.monitor_rows", 0),
        r"train\.monitor_rows: got 0, expected a whole number at least 1 or null",
    ),
    ("no copies", setting("augment.copies", -1), r"augment\.copies: got -1, expected a whole number at least 1"),
    (
        "chunk_rows 0",
        setting("augment.chunk_rows", 0),
        r"augment\.chunk_rows: got 0, expected a whole number at least 1",
    ),
    (
        "rotation 200",
        setting("augment.rotate_deg", 200),
        r"augment\.rotate_deg: got 200, expected a number from 0 to 180",
    ),
    ("scale 1", setting("augment.scale", 1.0), r"augment\.scale: got 1\.0, expected a number from 0 to 1"),
    (
        "negative workers",
        setting("augment.workers", -2),
        r"augment\.workers: got -2, expected a whole number at least 0",
    ),
    (
        "max_train_rows 0 (not 'all')",
        setting("ingest.max_train_rows", 0),
        r"ingest\.max_train_rows: got 0, expected a whole number at least 1 or null",
    ),
    (
        "expected_test_rows 0",
        setting("ingest.expected_test_rows", 0),
        r"ingest\.expected_test_rows: got 0, expected a whole number at least 1",
    ),
    ("no trials", setting("tune.trials", 0), r"tune\.trials: got 0, expected a whole number at least 1"),
    ("negative tune fold", setting("tune.fold", -1), r"tune\.fold: got -1, expected a whole number at least 0"),
    (
        "pruner typo",
        setting("tune.pruner", "medain"),
        r"tune\.pruner: got 'medain', expected one of median, hyperband, none",
    ),
    ("tta views 9", setting("predict.tta_views", 9), r"predict\.tta_views: got 9, expected a whole number from 0 to 8"),
    (
        "blend_by mean",
        setting("predict.blend_by", "mean"),
        r"predict\.blend_by: got 'mean', expected one of log_loss, accuracy, equal",
    ),
    (
        "predict batch 0",
        setting("predict.batch_size", 0),
        r"predict\.batch_size: got 0, expected a whole number at least 1",
    ),
    (
        "precision bf16",
        setting("device.precision", "bf16"),
        r"device\.precision: got 'bf16', expected one of auto, float32, mixed_bfloat16, mixed_float16",
    ),
    (
        "audit filter typo",
        setting("audit.filter_by", "noise"),
        r"audit\.filter_by: got 'noise', expected one of prune_by_noise_rate",
    ),
    (
        "negative report images",
        setting("report.wrong_images", -1),
        r"report\.wrong_images: got -1, expected a whole number at least 0",
    ),
    (
        "compare fold text",
        setting("compare.folds", [0, "1"]),
        r"compare\.folds: got \[0, '1'\], expected a list of whole numbers",
    ),
    # settings that relate sections
    (
        "tune fold beyond the folds",
        setting("tune.fold", 5),
        r"tune\.fold: got 5, expected a fold of train\.folds = 3: 0 to 2",
    ),
    (
        "compare fold beyond the folds",
        setting("compare.folds", [0, 7]),
        r"compare\.folds: got \[0, 7\], expected a fold of train\.folds = 3",
    ),
    (
        "grace below heartbeat",
        setting("tune.grace_seconds", 5),
        r"tune\.grace_seconds: got 5, expected more than tune\.heartbeat_seconds = 10",
    ),
    ("a model twice", setting("model.ensemble", ["dropout_cnn"]), r"model: name and ensemble must not repeat a model"),
    # the search space and the per-model overrides
    (
        "space low > high",
        setting("tune.space.learning_rate", [0.01, 0.001]),
        r"tune\.space\.learning_rate: expected \[low, high\] or \[low, high, log\] with low < high",
    ),
    (
        "space of an unknown setting",
        setting("tune.space.momentum", [0.1, 0.9]),
        r"tune\.space\.momentum: not a tunable setting",
    ),
    (
        "space outside the setting's range",
        setting("tune.space.dropout_conv", [0.1, 1.5]),
        r"tune\.space\.dropout_conv: train\.dropout_conv: got 1\.5, expected a number from 0 to 1",
    ),
    (
        "space choice of batch 0",
        setting("tune.space.batch_size", {"choices": [64, 0]}),
        r"tune\.space\.batch_size: train\.batch_size: got 0, expected a whole number at least 1",
    ),
    (
        "space log from 0",
        setting("tune.space.learning_rate", [0, 0.01, "log"]),
        r"tune\.space\.learning_rate: train\.learning_rate: got 0, expected a number above 0",
    ),
    (
        "space written as options",
        setting("tune.space.batch_size", {"options": [64]}),
        r"tune\.space\.batch_size: a choice must be written \{choices: \[a, b, \.\.\.\]\}",
    ),
    (
        "space in 2e-4 notation",
        replace_line("    - 0.0005", "    - 5e-4"),
        loads_space("learning_rate", 0, 0.0005),  # YAML reads 5e-4 as a string: the schema makes it the number
    ),
    (
        "model_space low > high",
        setting("tune.model_space.mlp", {"learning_rate": [0.5, 0.1]}),
        r"tune\.model_space\.mlp\.learning_rate: expected \[low, high\]",
    ),
    (
        "override out of range",
        setting("model.overrides.bn_cnn.dropout_conv", 2),
        r"model\.overrides\.bn_cnn\.dropout_conv: train\.dropout_conv: got 2, expected a number from 0 to 1",
    ),
    (
        "override of an unknown setting",
        setting("model.overrides.bn_cnn.momentum", 0.9),
        r"model\.overrides\.bn_cnn\.momentum: not a setting a model overrides",
    ),
    # derived: written by the composition from model: and train:, never by hand
    (
        "train edited by hand, derived left stale",
        replace_line("  folds: 3", "  folds: 4"),
        r"derived: does not match model/train \(params\.yaml edited by hand\?\): compose it again",
    ),
    ("derived missing", removed("derived"), r"derived: does not match model/train"),
    ("derived edited", setting("derived.folds", [0, 1]), r"derived: does not match model/train"),
    (
        "seed members +N",
        setting("model.ensemble", ["dropout_cnn+1", "bn_lite+12"]),
        loads("model", "ensemble", ["dropout_cnn+1", "bn_lite+12"]),
    ),
    (
        "a seed member @N (the old mark)",
        setting("model.ensemble", ["dropout_cnn@1"]),
        r"model\.ensemble: got 'dropout_cnn@1', expected one of .*, or one followed by \+N \(N >= 1\)",
    ),
    ("a seed member +0", setting("model.ensemble", ["bn_lite+0"]), r"model\.ensemble: got 'bn_lite\+0'"),
    (
        "override of the epochs",
        setting("model.overrides.bn_cnn.epochs", 3),
        r"model\.overrides\.bn_cnn\.epochs: not a setting a model overrides",
    ),
]


def apply(damage: Callable, path: Path = paths.PARAMS) -> None:
    """Apply `damage` to params.yaml at `path`: to its text as it is, or to its document as if composed again (its
    `derived:` recomputed, unless the damage is to `derived:` itself)."""
    if getattr(damage, "on_text", False):
        path.write_text(damage(path.read_text()))
        return
    doc = yaml.safe_load(path.read_text())
    before = yaml.safe_dump(doc.get("derived"))
    damage(doc)
    if isinstance(doc, dict) and yaml.safe_dump(doc.get("derived")) == before:
        dump_params(doc, path)
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.parametrize(("damage", "expected"), [c[1:] for c in MATRIX], ids=[c[0] for c in MATRIX])
def test_settings_matrix(project: Path, damage: Callable, expected) -> None:
    apply(damage)
    if callable(expected):
        assert expected() is None  # accepted, and read as written: the check asserts (a returned value would be lost)
        return
    with pytest.raises(params.ParamsError) as caught:
        params.load("train")
    message = str(caught.value)
    assert message.startswith(PY) and "\n" not in message
    assert re.search(expected, message), f"{expected!r} not in {message!r}"


def test_every_stage_reads_every_section(project: Path) -> None:
    """A bad setting of any section stops any stage, not only the stages that read that section."""
    apply(setting("compare.epochs", 0))
    for section in params.SECTIONS:
        with pytest.raises(params.ParamsError, match=r"compare\.epochs: got 0"):
            params.load(section)
    with pytest.raises(params.ParamsError, match=r"compare\.epochs: got 0"):
        params.seed()


def test_every_profiles_settings_pass_and_every_setting_is_described(project: Path) -> None:
    for profile in compose.profiles(tracked_conf()):
        params.validate(yaml.safe_load(compose.compose([f"profile={profile}"], tracked_conf())))
    infos = [*params.TOP_LEVEL.values()] + [i for c in params.SECTIONS.values() for i in c.__pydantic_fields__.values()]
    assert infos and all(info.description and "\n" not in info.description for info in infos)


def test_every_choice_the_schema_allows_runs_in_the_code_that_uses_it() -> None:
    """The schema is the only list of choices; each one it allows is one the module behind it runs."""
    for precision in params.choices(params.Precision):
        plan = plan_devices(Hardware("tensorflow", (Gpu("Tesla T4", (7, 5), 15.0),)), precision)
        assert plan.precision in {"float32", "mixed_bfloat16", "mixed_float16"}
        assert plan.precision == precision or precision == "auto"
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=(2, 60))
    labels = np.arange(60) % 10
    for objective in params.choices(params.BlendObjective):
        assert ensemble.choose_weights(probs, labels, objective).sum() == pytest.approx(1.0)
    for filter_by in params.choices(params.AuditFilter):
        for rank_by in params.choices(params.AuditRanking):
            audit.find_issues(probs[0], labels, params.AuditParams(filter_by, rank_by, 0))
    assert len(tta.views_for(params.TTA_VIEWS)) == params.TTA_VIEWS + 1  # the original and every view allowed


# ---------------------------------------------------------------- every stage


def run_main(main: Callable[[list[str]], int], argv: list[str]) -> tuple[int, str, str]:
    """Run a stage's main in this process; return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


STAGES = {
    "ingest": (ingest.main, []),
    "augment": (augment.main, []),
    "tune": (tune.main, []),
    "train": (train.main, []),
    "predict": (predict.main, []),
    "audit": (audit.main, []),
    "report": (report.main, []),
    "compare": (compare.main, []),
    "submit": (submit.main, ["-m", "x", "--dry-run"]),
}
BROKEN = {
    "a YAML slip": line_after("train:", "  epochs: 3"),
    "a typo": renamed("train.epochs", "epoch"),
    "a word for a count": setting("train.epochs", "ten"),
    "a tune fold beyond the folds": setting("tune.fold", 5),
}


@pytest.mark.parametrize("broken", list(BROKEN))
@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_stops_on_bad_settings_with_one_line(project: Path, stage: str, broken: str) -> None:
    seed_outputs(project)
    before = snapshot(project)
    apply(BROKEN[broken])
    main, argv = STAGES[stage]
    code, out, err = run_main(main, argv)
    assert code == 2, out + err
    assert err.startswith(f"{stage}: error: params.yaml") and err.count("\n") == 1, err
    assert "--epochs" not in err  # reported as the setting it is, not as a command-line flag never given
    assert snapshot(project) == before


def test_a_stage_process_stops_without_a_traceback(project: Path) -> None:
    apply(setting("train.learning_rate", -1))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train"], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 2
    assert done.stderr == "train: error: params.yaml train.learning_rate: got -1, expected a number above 0\n"


# ---------------------------------------------------------------- tuned values


def test_a_tuned_value_keeps_its_own_type(project: Path) -> None:
    """`dropout_conv: 0` and `learning_rate: 1` written as whole numbers: tune's 0.25 and 0.002 stay what they are."""
    apply(setting("train.dropout_conv", 0))
    apply(setting("train.learning_rate", 1))
    tuned = {"dropout_conv": 0.25, "learning_rate": 0.002, "batch_size": 64}
    settings = member_settings(params.load("train"), params.load("model"), "dropout_cnn", tuned)
    assert (settings.dropout_conv, settings.learning_rate, settings.batch_size) == (0.25, 0.002, 64)
    assert type(settings.batch_size) is int


@pytest.mark.parametrize(
    ("tuned", "message"),
    [
        (
            {"learning_rate": -0.1},
            r"best_params\.json: tuned train\.learning_rate: got -0\.1, expected a number above 0",
        ),
        ({"batch_size": 64.5}, r"best_params\.json: tuned train\.batch_size: got 64\.5, expected a whole number"),
        ({"dropout_dense": "0.3"}, r"best_params\.json: tuned train\.dropout_dense: got '0\.3'"),
    ],
)
def test_train_refuses_a_bad_tuned_value_in_one_line(project: Path, tuned: dict, message: str) -> None:
    write_json(paths.BEST_PARAMS, {"params": tuned, "value": 0.9})
    code, _, err = run_main(train.main, [])
    assert code == 2 and re.search(message, err) and err.count("\n") == 1, err
    assert json.loads(paths.BEST_PARAMS.read_text())["params"] == tuned


def test_a_row_limit_that_leaves_a_digit_short_is_refused(project: Path) -> None:
    """ingest.max_train_rows keeping fewer rows of some digit than train.folds stops ingest (it used to pass when
    the digit had no row at all), naming the setting and the digits."""
    apply(setting("ingest.max_train_rows", 12))  # the first 12 of 60 shuffled rows: some digit has under 3
    code, _, err = run_main(ingest.main, [])
    assert code == 2 and not paths.TRAIN_NPZ.exists()
    assert re.fullmatch(
        r"ingest: error: params\.yaml ingest\.max_train_rows: 12 keeps fewer than train\.folds = 3 rows of digit\(s\) "
        r"\[[0-9, ]+\]: raise it \(null keeps every row\)\n",
        err,
    ), err


def test_folds_need_every_digit() -> None:
    """A training set without some digit is refused (it used to be accepted when the other digits had enough rows)."""
    labels = np.repeat(np.arange(9), 3)  # no 9
    with pytest.raises(ValueError, match=r"every digit needs at least 3 training rows for 3 folds"):
        ingest.assign_folds(labels, 3, seed=0)
    assert len(ingest.assign_folds(np.repeat(np.arange(10), 3), 3, seed=0)) == 30


def test_a_text_damage_whose_text_is_absent_fails_instead_of_testing_nothing() -> None:
    # replace_line("  learning_rate: 0.003", ...) was a silent no-op once params.yaml held another learning rate
    with pytest.raises(AssertionError, match=r"is not in params\.yaml"):
        replace_line("  learning_rate: 0.003", "  learning_rate: 2e-3")("train:\n  learning_rate: 0.004\n")
    with pytest.raises(AssertionError, match=r"is not in params\.yaml"):
        line_after("trian:", "  epochs: 3")("train:\n  epochs: 2\n")
