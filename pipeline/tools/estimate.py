"""`python -m pipeline.tools.estimate` (make run's first step; not a stage): on a machine without a GPU, times a few
seconds of training and inference of each member's model at its batch size on random images, prints how long
params.yaml's profile takes here (tune, train, predict) and which alternatives (the quick, cpu and full profiles,
fewer epochs) fit the 2 h 30 min a CPU run is sized for (or `--budget`), each priced by the same measurement; the run
then proceeds. Records reports/estimate.json (compare with reports/timings/). `--budget MINUTES` (`make run
BUDGET=150`) recomposes params.yaml with the most train.epochs that fit the budget here. With a GPU it only says so."""

from __future__ import annotations

import copy
import sys
import time
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from pipeline import params, paths
from pipeline.lib import progress
from pipeline.lib.cli import reports_errors, stage_parser
from pipeline.lib.compose import compose, composed, write_params
from pipeline.lib.files import write_json
from pipeline.lib.members import FitSettings, base_name, member_settings, members
from pipeline.params import ParamsError

COMPETITION_TRAIN_ROWS = 42000
COMPETITION_TEST_ROWS = 28000
TARGET_MINUTES = 150.0  # what a CPU run is sized for (README): the hint names only what its estimate fits in here
# the profiles the hint weighs, each priced here by its own estimate, and the command that runs each
COMMANDS = {"quick": "make quick", "cpu": "make run PROFILE=cpu", "full": "make run"}


@dataclass(frozen=True)
class Rates:
    """Seconds here per image trained, inferred at the training batch and at predict's (None: `infer`), per model
    started (its first fit call); `tune`: model.name's own (tune trains only it)."""

    train: float
    infer: float
    startup: float = 0.0
    tune: Rates | None = None
    predict: float | None = None


CALIBRATION_BATCHES = 16  # images per timed model.fit epoch: this many batches (fit's per-epoch overhead included)


def calibrate(settings: FitSettings, predict_batch: int, budget: float = 3.0) -> Rates:
    """Return the rates of `settings` (inference also at `predict_batch`) on random images, timed for `budget` s."""
    from pipeline.lib.device import configure
    from pipeline.lib.fitting import as_input, compiled_model, one_hot

    net = compiled_model(settings, 100, configure(params.load("device").precision).jit_compile)
    rng, batch = np.random.default_rng(0), settings.batch_size
    n = batch * CALIBRATION_BATCHES
    x, y = as_input(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)), one_hot(rng.integers(0, 10, size=n))
    start = time.perf_counter()
    net.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    startup = time.perf_counter() - start
    epoch = per_image(lambda: net.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False), n, budget / 2, 1)
    infer = per_image(lambda: net.predict_on_batch(x[:batch]), batch, budget / 4)
    big = as_input(rng.integers(0, 256, size=(predict_batch, 28, 28), dtype=np.uint8))
    predict = per_image(lambda: net.predict_on_batch(big), predict_batch, budget / 4)
    return Rates(train=epoch, infer=infer, startup=startup, predict=predict)


def calibration_kinds(*groups: list[FitSettings]) -> dict[tuple[str, int], FitSettings]:
    """Return the settings to calibrate for ensembles `groups`: one per (model, batch size), seed members as theirs."""
    return {(base_name(m.model), m.batch_size): replace(m, model=base_name(m.model)) for g in groups for m in g}


def combined(group: list[FitSettings], measured: dict[tuple[str, int], Rates]) -> Rates:
    """Return the mean `measured` rates of the ensemble `group`, with the first member's (model.name's) as `tune`."""
    rates = [measured[(base_name(m.model), m.batch_size)] for m in group]
    mean = {k: float(np.mean([getattr(r, k) for r in rates])) for k in ("train", "infer", "startup", "predict")}
    return Rates(**mean, tune=rates[0])


def per_image(step: Callable[[], object], batch: int, budget: float, least: int = 3) -> float:
    """Return the seconds per image of `step` (a batch of `batch`) after a warm-up, over `budget` s, `least` calls."""
    step()
    calls, start = 0, time.perf_counter()
    while calls < least or time.perf_counter() - start < budget:
        step()
        calls += 1
    return (time.perf_counter() - start) / (calls * batch)


def workload(doc: dict) -> dict[str, tuple[float, float]]:
    """Return the images each long stage of the settings `doc` (params.yaml) trains on and infers, per stage."""
    rows = doc["ingest"]["max_train_rows"] or COMPETITION_TRAIN_ROWS
    test_rows = doc["ingest"]["max_test_rows"] or COMPETITION_TEST_ROWS
    train, tune, predict = doc["train"], doc["tune"], doc["predict"]
    folds, units = train["folds"], units_of(doc)
    fold_rows, fit_rows = rows / folds, rows * (folds - 1) / folds
    tune_fit = min(tune["max_train_rows"] or fit_rows, fit_rows)
    tune_val = min(tune["max_val_rows"] or fold_rows, fold_rows)
    monitor = min(train["monitor_rows"] or fold_rows, fold_rows)
    return {
        "tune": (tune["trials"] * tune["epochs"] * tune_fit, tune["trials"] * tune["epochs"] * tune_val),
        "train": (units * train["epochs"] * fit_rows, units * (train["epochs"] * monitor + fold_rows)),
        "predict": (0.0, units * (1 + predict["tta_views"]) * (fold_rows + test_rows)),
    }


def units_of(doc: dict) -> int:
    """Return the models the settings `doc` train: each member (model.name and model.ensemble) on every fold."""
    return (1 + len(doc["model"].get("ensemble") or [])) * doc["train"]["folds"]


def estimate(doc: dict, rates: Rates, tune_workers: int = 1) -> dict[str, float]:
    """Return the estimated seconds of each long stage (and "total") of the settings `doc` at `rates` here."""
    built = {"tune": doc["tune"]["trials"], "train": units_of(doc), "predict": 0}  # each model starts up once
    seconds = {}
    for stage, (fit, infer) in workload(doc).items():
        at = (rates.tune or rates) if stage == "tune" else rates
        per_inference = at.predict if stage == "predict" and at.predict is not None else at.infer
        seconds[stage] = fit * at.train + infer * per_inference + built[stage] * at.startup
    seconds["tune"] /= max(1, min(tune_workers, doc["tune"]["trials"]))
    seconds["total"] = sum(seconds.values())
    return seconds


def epochs_within(doc: dict, rates: Rates, budget: float, tune_workers: int = 1) -> int:
    """Return the most epochs per fold (at most train.epochs) estimated within `budget` seconds, or 0 if none fits."""
    trial = copy.deepcopy(doc)
    for epochs in range(doc["train"]["epochs"], 0, -1):
        trial["train"]["epochs"] = epochs
        if estimate(trial, rates, tune_workers)["total"] <= budget:
            return epochs
    return 0


def fit_budget(doc: dict, rates: Rates, minutes: float, overrides: list[str], tune_workers: int = 1) -> int:
    """Recompose params.yaml with the most train.epochs that fit `minutes` here if fewer do; return the epochs."""
    epochs = epochs_within(doc, rates, minutes * 60, tune_workers)
    if epochs == doc["train"]["epochs"]:
        return epochs
    if epochs == 0:
        raise ParamsError(
            f"not even one epoch per fold of profile {doc['profile']} fits {minutes:g} minutes on this machine: "
            "choose fewer members (model.ensemble), a longer budget or `make quick`"
        )
    write_params(composed([f"profile={doc['profile']}", *overrides, f"train.epochs={epochs}"]))
    return epochs


def members_of(doc: dict) -> list[FitSettings]:
    """Return the fit settings of every member the settings `doc` train (model.name first; tune's values aside)."""
    train, model = (params.validate(doc).sections[k] for k in ("train", "model"))
    return [member_settings(train, model, name) for name in members(model)]


def profile_docs(current: str, conf: Path = paths.CONF_DIR) -> dict[str, dict]:
    """Return the settings of each profile of COMMANDS but `current` that `conf` defines, as its command runs it."""
    names = [p for p in COMMANDS if p != current and (Path(conf) / paths.PROFILES_DIR.name / f"{p}.yaml").is_file()]
    return {name: yaml.safe_load(compose([f"profile={name}"], conf)) for name in names}


Option = namedtuple("Option", "command seconds note", defaults=("",))  # a command the hint may name: its estimate


def options(doc: dict, rates: Rates, others: dict[str, tuple[dict, Rates]], minutes: float,
            budgeted: bool = False) -> list[Option]:  # fmt: skip
    """Return the other profiles (`others`: settings, rates) and, unless `budgeted`, `make run BUDGET=minutes` (when
    fewer epochs fit), each with its estimate here, longest first."""
    out = [Option(COMMANDS.get(name, f"make run PROFILE={name}"), estimate(other, at, workers(other))["total"])
           for name, (other, at) in others.items()]  # fmt: skip
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
    """Return the hint: whether `profile` fits `minutes` here and which alternatives do (or the shortest)."""
    limit, budget = minutes * 60, progress.format_seconds(minutes * 60)
    named = {o: f"`{o.command}` ({f'{o.note}, ' if o.note else ''}about {progress.format_seconds(o.seconds)})"
             for o in alternatives}  # fmt: skip
    fitting = [o for o in alternatives if o.seconds <= limit]
    least = min(alternatives, key=lambda o: o.seconds, default=None)
    if total <= limit:
        head, listed = f"fits {budget} here", [named[o] for o in fitting if o.seconds < total]
        tail = f"; shorter: {', '.join(listed)}" if listed else ""
    elif fitting:
        head, tail = f"does not fit {budget} here", f"; what fits {budget} here: {', '.join(named[o] for o in fitting)}"
    else:
        head = f"does not fit {budget} here, nor does any alternative"
        tail = f"; the shortest: {named[least]}" if least and least.seconds < total else ""
    stop = " (stop now with Ctrl-C to run one of them)" if tail else ""
    return f"estimate: profile {profile} {head}{tail}{stop}; the run proceeds"


@reports_errors("estimate")
def main(argv: list[str] | None = None) -> int:
    """Print and record the estimate of params.yaml's profile here and what fits (nothing to do on a GPU)."""
    parser = stage_parser("estimate", __doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="calibration budget in seconds (default 3)")
    parser.add_argument("--budget", type=float, metavar="MINUTES", help="fit train.epochs to this many minutes here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="with --budget: the composition's overrides")
    args = parser.parse_args(argv)
    doc, profile, predict_batch = params.read_raw(), params.profile(), params.load("predict").batch_size
    own = members_of(doc)
    others = {name: (other, members_of(other)) for name, other in profile_docs(profile).items()}
    from pipeline.lib.device import detect

    if detect().gpus:
        print("estimate: a GPU is present: the full profile is sized for it (no CPU estimate needed)")
        return 0
    kinds = calibration_kinds(own, *(group for _, group in others.values()))
    measured = {key: calibrate(s, predict_batch, args.seconds / len(kinds)) for key, s in kinds.items()}
    rates = combined(own, measured)
    seconds = estimate(doc, rates, workers(doc))
    parts = ", ".join(f"{stage} {progress.format_seconds(s)}" for stage, s in seconds.items() if stage != "total")
    print(f"estimate: profile {profile} on this machine (no GPU): about {progress.format_seconds(seconds['total'])} "
          f"({parts}; measured {rates.train * 1e3:.2f} ms per training image, {rates.infer * 1e3:.2f} ms per "
          "inference)", flush=True)  # fmt: skip
    record = {"profile": profile, "seconds": seconds, "train_seconds_per_image": rates.train,
              "infer_seconds_per_image": rates.infer, "predict_seconds_per_image": rates.predict,
              "startup_seconds_per_model": rates.startup}  # fmt: skip
    minutes, total, running = args.budget or TARGET_MINUTES, seconds["total"], profile
    if args.budget is not None:
        epochs = fit_budget(doc, rates, args.budget, args.overrides, workers(doc))
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
