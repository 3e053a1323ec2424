"""`python -m pipeline.tools.estimate`: before `make run` starts the long stages on a machine without a GPU, measure
this machine for a few seconds (training and inference steps of model.name and of each model.ensemble member, at
its own batch size, on random images) and print how long the profile in params.yaml will take here (tune, train,
predict). Then it says what fits the 2 h 30 min a CPU run is sized for (or `--budget`) here, each alternative (the
quick, cpu and full profiles, a budget's fewer epochs) priced by the same measurement: no hint names a command
whose own estimate here does not fit. The run then proceeds. The estimate is recorded in reports/estimate.json, to
compare with the stages' own wall times in reports/timings/. With a GPU it only says so (the full profile is sized
for one). With `--budget MINUTES` (`make run BUDGET=150`) a profile estimated to take longer is recomposed with the
most epochs per fold (train.epochs) that fit the budget here. Not a stage."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from pipeline import params, paths
from pipeline.lib import progress
from pipeline.lib.cli import fail, stage_parser
from pipeline.lib.files import write_json
from pipeline.lib.fitting import FitSettings
from pipeline.lib.models import base_name
from pipeline.params import ParamsError
from pipeline.train import member_settings

COMPETITION_TRAIN_ROWS = 42000
COMPETITION_TEST_ROWS = 28000
TARGET_MINUTES = 150.0  # what a CPU run is sized for (README): the hint names only what its estimate fits in here
# the profiles the hint weighs, each priced here by its own estimate, and the command that runs each
COMMANDS = {"quick": "make quick", "cpu": "make run PROFILE=cpu", "full": "make run"}


@dataclass(frozen=True)
class Rates:
    """Measured seconds on this machine: per image of a training epoch and of a forward pass at the training batch
    size (validation), and per model trained (building and compiling it: its first fit call's time); `predict`: per
    image of a forward pass at predict's batch size (None: `infer`); `tune`: model.name's own, when they differ (tune
    trains only it)."""

    train: float
    infer: float
    startup: float = 0.0
    tune: Rates | None = None
    predict: float | None = None


CALIBRATION_BATCHES = 16  # images per timed model.fit epoch: this many batches (fit's per-epoch overhead included)


def calibrate(settings: FitSettings, predict_batch: int, budget: float = 3.0) -> Rates:
    """Return the seconds per image of training (model.fit epochs, as train runs them) and of inference of
    `settings.model` at its batch size and at `predict_batch`, measured on random images for about `budget` seconds
    after a first fit call, whose time is the model's startup."""
    from pipeline.device import configure
    from pipeline.lib.fitting import as_input, compiled_model, one_hot

    device = configure(params.load("device").precision)
    net = compiled_model(settings, steps_per_epoch=100, jit_compile=device.jit_compile)
    rng = np.random.default_rng(0)
    batch = settings.batch_size
    n = batch * CALIBRATION_BATCHES
    x = as_input(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
    y = one_hot(rng.integers(0, 10, size=n))
    start = time.perf_counter()
    net.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    startup = time.perf_counter() - start
    epoch = per_image(lambda: net.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False), n, budget / 2, 1)
    infer = per_image(lambda: net.predict_on_batch(x[:batch]), batch, budget / 4)
    big = as_input(rng.integers(0, 256, size=(predict_batch, 28, 28), dtype=np.uint8))
    predict = per_image(lambda: net.predict_on_batch(big), predict_batch, budget / 4)
    return Rates(train=epoch, infer=infer, startup=startup, predict=predict)


def calibration_kinds(members: list[FitSettings]) -> dict[tuple[str, int], FitSettings]:
    """Return the settings to calibrate for the ensemble `members`: one per distinct (model, batch size), seed
    members (`bn_lite@1`) priced as their model."""
    return {(base_name(m.model), m.batch_size): replace(m, model=base_name(m.model)) for m in members}


def kinds_of(groups: list[list[FitSettings]]) -> dict[tuple[str, int], FitSettings]:
    """Return the settings to calibrate for every ensemble of `groups` (calibration_kinds), each kind once."""
    kinds: dict[tuple[str, int], FitSettings] = {}
    for members in groups:
        kinds.update({key: s for key, s in calibration_kinds(members).items() if key not in kinds})
    return kinds


def measure(kinds: dict[tuple[str, int], FitSettings], predict_batch: int, budget: float = 3.0) -> dict:
    """Return the rates of each of `kinds` (calibration_kinds), each calibrated in its share of `budget` seconds."""
    return {key: calibrate(settings, predict_batch, budget / len(kinds)) for key, settings in kinds.items()}


def combined(members: list[FitSettings], measured: dict[tuple[str, int], Rates]) -> Rates:
    """Return the mean rates over the ensemble `members` (each trains and infers the same images) from the `measured`
    rates of their kinds, with the first member's (model.name's) as `tune`."""
    rates = [measured[(base_name(m.model), m.batch_size)] for m in members]
    train, infer, startup, predict = (
        float(np.mean([getattr(r, k) for r in rates])) for k in ("train", "infer", "startup", "predict")
    )
    return Rates(train, infer, startup, tune=rates[0], predict=predict)


def per_image(step: Callable[[], object], batch: int, budget: float, least: int = 3) -> float:
    """Return the seconds per image of `step` (one batch of `batch` images): one warm-up call, then calls until
    `budget` seconds have passed and at least `least` were timed."""
    step()
    calls, start = 0, time.perf_counter()
    while calls < least or time.perf_counter() - start < budget:
        step()
        calls += 1
    return (time.perf_counter() - start) / (calls * batch)


def member_count(doc: dict) -> int:
    """Return how many models the settings `doc` train on every fold: model.name and its ensemble members."""
    return 1 + len(doc["model"].get("ensemble") or [])


def workload(doc: dict) -> dict[str, tuple[float, float]]:
    """Return the images each long stage of the settings `doc` (params.yaml) trains on and infers, per stage."""
    rows = doc["ingest"]["max_train_rows"] or COMPETITION_TRAIN_ROWS
    test_rows = doc["ingest"]["max_test_rows"] or COMPETITION_TEST_ROWS
    train, tune, predict = doc["train"], doc["tune"], doc["predict"]
    folds = train["folds"]
    fold_rows, fit_rows = rows / folds, rows * (folds - 1) / folds
    models = member_count(doc)
    tune_fit = min(tune["max_train_rows"] or fit_rows, fit_rows)
    tune_val = min(tune["max_val_rows"] or fold_rows, fold_rows)
    monitor = min(train["monitor_rows"] or fold_rows, fold_rows)
    views = 1 + predict["tta_views"]
    rounds = train.get("pseudo_rounds", 0)  # each round: the teacher labels the test set; a student trains on more
    fits = (1 + rounds) * fit_rows + rounds * test_rows  # (pseudo-labels: at most every test image)
    return {
        "tune": (tune["trials"] * tune["epochs"] * tune_fit, tune["trials"] * tune["epochs"] * tune_val),
        "train": (
            models * folds * train["epochs"] * fits,
            models * folds * (1 + rounds) * (train["epochs"] * monitor + fold_rows)
            + models * folds * rounds * test_rows,
        ),
        "predict": (0.0, models * folds * views * (fold_rows + test_rows)),
    }


def models_built(doc: dict) -> dict[str, float]:
    """Return how many models each long stage of the settings `doc` builds and trains (each starts up once)."""
    rounds = 1 + doc["train"].get("pseudo_rounds", 0)
    return {"tune": doc["tune"]["trials"], "train": member_count(doc) * doc["train"]["folds"] * rounds, "predict": 0}


def estimate(doc: dict, rates: Rates, tune_workers: int = 1) -> dict[str, float]:
    """Return the estimated seconds of each long stage (and "total") for the settings `doc` at `rates` (tune at
    `rates.tune` when measured, predict's inference at `rates.predict`)."""
    built = models_built(doc)
    seconds = {}
    for stage, (fit, infer) in workload(doc).items():
        at = (rates.tune or rates) if stage == "tune" else rates
        per_inference = at.predict if stage == "predict" and at.predict is not None else at.infer
        seconds[stage] = fit * at.train + infer * per_inference + built[stage] * at.startup
    seconds["tune"] /= max(1, min(tune_workers, doc["tune"]["trials"]))
    seconds["total"] = sum(seconds.values())
    return seconds


def epochs_within(doc: dict, rates: Rates, budget: float, tune_workers: int = 1) -> int:
    """Return the most epochs per fold (at most `doc`'s train.epochs) whose estimated total at `rates` is within
    `budget` seconds, or 0 when not even one epoch fits."""
    trial = copy.deepcopy(doc)
    for epochs in range(doc["train"]["epochs"], 0, -1):
        trial["train"]["epochs"] = epochs
        if estimate(trial, rates, tune_workers)["total"] <= budget:
            return epochs
    return 0


def fit_budget(doc: dict, rates: Rates, minutes: float, overrides: list[str], tune_workers: int = 1) -> int:
    """Recompose params.yaml (its profile, `overrides`, then train.epochs) with the most epochs that fit `minutes`
    on this machine when the profile would take longer; return the epochs per fold the run will train."""
    epochs = epochs_within(doc, rates, minutes * 60, tune_workers)
    if epochs == doc["train"]["epochs"]:
        return epochs
    if epochs == 0:
        raise ParamsError(
            f"not even one epoch per fold of profile {doc['profile']} fits {minutes:g} minutes on this machine: "
            "choose fewer members (model.ensemble), a longer budget or `make quick`"
        )
    text = params.compose([f"profile={doc['profile']}", *overrides, f"train.epochs={epochs}"])
    params.write_params(text)
    return epochs


def members_of(doc: dict) -> list[FitSettings]:
    """Return the fit settings of every member the settings `doc` train (model.name first; tune's values aside)."""
    settings = params.validate(doc)
    return member_settings(settings.sections["train"], settings.sections["model"], None)


def profile_docs(current: str, conf: Path = paths.CONF_DIR) -> dict[str, dict]:
    """Return the settings of each profile in COMMANDS other than `current` defined in `conf`, as its command runs it
    (the profile alone); none when there is no `conf`."""
    names = [p for p in COMMANDS if p != current and (Path(conf) / paths.PROFILES_DIR.name / f"{p}.yaml").is_file()]
    return {name: yaml.safe_load(params.compose([f"profile={name}"], conf)) for name in names}


@dataclass(frozen=True)
class Option:
    """A command the hint may name: its estimated seconds here and what it changes (`note`)."""

    command: str
    seconds: float
    note: str = ""


def options(
    doc: dict, rates: Rates, others: dict[str, tuple[dict, Rates]], minutes: float, budgeted: bool = False
) -> list[Option]:
    """Return the alternatives to the run of `doc` at `rates`: each profile of `others` (its settings and rates here)
    and, unless `budgeted` (a budget already applies), `make run BUDGET=minutes` on `doc`'s profile with the epochs
    that fit, when fewer than its own do; each with its estimated seconds here."""
    out = [
        Option(COMMANDS.get(name, f"make run PROFILE={name}"), estimate(other, at, workers(other))["total"])
        for name, (other, at) in others.items()
    ]
    profile, epochs = doc["profile"], doc["train"]["epochs"]
    fits = 0 if budgeted or profile == "quick" else epochs_within(doc, rates, minutes * 60, workers(doc))
    if 0 < fits < epochs:
        command = f"make run BUDGET={minutes:g}" + ("" if profile == "full" else f" PROFILE={profile}")
        seconds = estimate({**doc, "train": {**doc["train"], "epochs": fits}}, rates, workers(doc))["total"]
        out.append(Option(command, seconds, f"train.epochs {fits} instead of {epochs}"))
    return sorted(out, key=lambda o: -o.seconds)


def workers(doc: dict) -> int:
    """Return the tuning workers the settings `doc` run on a CPU."""
    return int(doc["tune"].get("workers_cpu") or 1)


def advice(profile: str, total: float, alternatives: list[Option], minutes: float) -> str:
    """Return the hint printed after the estimate of `profile` (`total` seconds here): whether it fits `minutes`
    here, the `alternatives` whose estimate fits them (longest first) and, when none does, the shortest one with
    its time; a command is named as fitting only when its own estimate here does."""
    limit, budget = minutes * 60, progress.format_seconds(minutes * 60)

    def named(option: Option) -> str:
        note = f"{option.note}, " if option.note else ""
        return f"`{option.command}` ({note}about {progress.format_seconds(option.seconds)})"

    fitting = [o for o in alternatives if o.seconds <= limit]
    shorter = [o for o in fitting if o.seconds < total]
    if total <= limit:
        head = f"estimate: profile {profile} fits {budget} here"
        tail = f"; shorter: {', '.join(named(o) for o in shorter)}" if shorter else ""
    elif fitting:
        head = f"estimate: profile {profile} does not fit {budget} here"
        tail = f"; what fits {budget} here: {', '.join(named(o) for o in fitting)}"
    else:
        head = f"estimate: profile {profile} does not fit {budget} here, nor does any alternative"
        least = min(alternatives, key=lambda o: o.seconds, default=None)
        tail = f"; the shortest: {named(least)}" if least and least.seconds < total else ""
    stop = " (stop now with Ctrl-C to run one of them)" if tail else ""
    return f"{head}{tail}{stop}; the run proceeds"


def describe(seconds: dict[str, float], profile: str, rates: Rates) -> str:
    """Return the line printed before the run: the estimate per stage."""
    parts = ", ".join(f"{stage} {progress.format_seconds(s)}" for stage, s in seconds.items() if stage != "total")
    return (
        f"estimate: profile {profile} on this machine (no GPU): about {progress.format_seconds(seconds['total'])} "
        f"({parts}; measured {rates.train * 1e3:.2f} ms per training image, {rates.infer * 1e3:.2f} ms per inference)"
    )


def main(argv: list[str] | None = None) -> int:
    """Print and record the estimate of the profile in params.yaml on this machine and what fits the time a CPU run
    is sized for (or `--budget`) here (nothing to do on a GPU)."""
    parser = stage_parser("estimate", __doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="calibration budget in seconds (default 3)")
    parser.add_argument(
        "--budget",
        type=float,
        metavar="MINUTES",
        help="recompose params.yaml with the most train.epochs that fit this many minutes here (tune, train, predict)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="with --budget: the composition's overrides")
    args = parser.parse_args(argv)
    try:
        doc = params.read_raw()
        profile = params.profile()
        members = member_settings(params.load("train"), params.load("model"), None)
        predict_batch = params.load("predict").batch_size
        others = {name: (other, members_of(other)) for name, other in profile_docs(profile).items()}
    except ParamsError as exc:
        return fail("estimate", exc)
    from pipeline.device import detect

    if detect().gpus:
        print("estimate: a GPU is present: the full profile is sized for it (no CPU estimate needed)")
        return 0
    measured = measure(kinds_of([members, *(group for _, group in others.values())]), predict_batch, args.seconds)
    rates = combined(members, measured)
    seconds = estimate(doc, rates, workers(doc))
    print(describe(seconds, profile, rates), flush=True)
    record = {"profile": profile, "seconds": seconds, "train_seconds_per_image": rates.train}
    record.update(
        infer_seconds_per_image=rates.infer,
        predict_seconds_per_image=rates.predict,
        startup_seconds_per_model=rates.startup,
    )
    minutes, total, running = args.budget or TARGET_MINUTES, seconds["total"], profile
    if args.budget is not None:
        try:
            epochs = fit_budget(doc, rates, args.budget, args.overrides, workers(doc))
        except ParamsError as exc:
            return fail("estimate", exc)
        if epochs != doc["train"]["epochs"]:
            running = f"{profile} with train.epochs {epochs}"
        doc = params.read_raw()
        record.update(budget_minutes=args.budget, epochs=epochs, seconds=estimate(doc, rates, workers(doc)))
        total = record["seconds"]["total"]
        print(f"estimate: budget {args.budget:g} min: train.epochs {epochs} (about {progress.format_seconds(total)})")
    priced = {name: (other, combined(group, measured)) for name, (other, group) in others.items()}
    alternatives = options(doc, rates, priced, minutes, budgeted=args.budget is not None)
    print(advice(running, total, alternatives, minutes), flush=True)
    record["alternatives"] = {o.command: o.seconds for o in alternatives}
    write_json(paths.ESTIMATE_JSON, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
