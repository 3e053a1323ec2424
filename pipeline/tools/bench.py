"""`python -m pipeline.tools.bench`: measures the pipeline's hot paths on this machine, each beside a reference
measured in the same run, prints one table and writes it to reports/bench.json: training images/s (lib.fitting.fit
vs a bare model.fit), inference image-views/s (TTA vs a bare model.predict), mixed precision (the device plan's, else
bf16) vs float32 on the pipeline's own path per wall and CPU second, augmentation images/s (every core vs one
albumentations loop), ingest seconds (the competition zip's CSVs vs pandas.read_csv) and each stage core's peak
memory in a fresh process. Speeds are taken after a warm-up; the table reports a target, never asserts one."""

from __future__ import annotations

import io
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import params, paths
from pipeline.lib import quiet
from pipeline.lib.cli import reports_errors, stage_parser
from pipeline.lib.files import write_json
from pipeline.lib.members import FitSettings, member_settings
from pipeline.params import AugmentParams

if TYPE_CHECKING:  # keras stays unimported until a measurement needs it (the memory rows' baseline)
    from pipeline.lib.device import DevicePlan

STAGES = ("ingest", "augment", "train", "predict")
MIXED_LABELS = {"mixed_bfloat16": "bf16", "mixed_float16": "float16"}


@dataclass(frozen=True)
class BenchSetup:
    """The settings the measured stages run with (training epochs include the warm-up; device None: plain CPU)."""

    settings: FitSettings
    augment: AugmentParams
    views: int  # TTA views besides the original
    predict_batch: int
    seed: int = 0
    device: DevicePlan | None = None


def row(figure: str, unit: str, value: float, reference_name: str, reference: float, target: str, note: str) -> dict:
    """Return one table row; `ratio` is value / reference."""
    ratio = value / reference if reference > 0 else float("nan")
    return {"figure": figure, "unit": unit, "value": value, "reference_name": reference_name, "reference": reference,
            "ratio": ratio, "target": target, "note": note}  # fmt: skip


def bench_images(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return `rows` random uint8 28x28 images and balanced labels (speed does not depend on content)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8), (np.arange(rows) % 10).astype(np.uint8)


def clock() -> np.ndarray:
    """Return the wall and CPU seconds now."""
    return np.array([time.perf_counter(), time.process_time()])


def steady_rates(images: int, spans: list[np.ndarray]) -> np.ndarray:
    """Return images per wall and CPU second of the fastest epoch after the warm-up (load only slows one down)."""
    return images / np.min(spans[1:] or spans, axis=0)


def timed(call: Callable[[], object]) -> float:
    """Return the seconds one call of `call` takes."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@contextmanager
def global_policy(name: str) -> Iterator[None]:
    """Run the block under Keras dtype policy `name` in a fresh session, then restore the policy."""
    import keras

    from pipeline.lib.device import clear_session

    before = keras.config.dtype_policy().name
    keras.mixed_precision.set_global_policy(name)
    clear_session()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def epoch_timer() -> tuple[object, list[np.ndarray]]:
    """Return a Keras callback recording each epoch's wall and CPU seconds, and the list it fills."""
    import keras

    spans: list[np.ndarray] = []
    begin, end = (lambda *_: spans.append(-clock())), (lambda *_: spans.append(spans.pop() + clock()))
    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end), spans


def bare_fit(setup: BenchSetup, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Return each epoch's wall and CPU seconds of one plain model.fit over float arrays prepared beforehand."""
    import keras

    from pipeline.lib.fitting import as_input, compiled_model, one_hot

    keras.utils.set_random_seed(setup.seed)
    cfg, (timer, spans) = setup.settings, epoch_timer()
    model = compiled_model(cfg, -(-len(x) // cfg.batch_size), bool(setup.device and setup.device.jit_compile))
    val = (as_input(x[: cfg.batch_size]), one_hot(y[: cfg.batch_size]))
    model.fit(as_input(x), one_hot(y), batch_size=cfg.batch_size, epochs=cfg.epochs, shuffle=False,
              validation_data=val, verbose=0, callbacks=[timer])  # fmt: skip
    return spans


def pipeline_rates(setup: BenchSetup, x: np.ndarray, y: np.ndarray, aug: dict) -> tuple[np.ndarray, object]:
    """Return images per wall and CPU second of fitting.fit, then of fitting.predict_probs, and the trained model."""
    import keras

    from pipeline.lib.fitting import EpochSampler, fit, predict_probs

    keras.utils.set_random_seed(setup.seed)
    (timer, spans), batch = epoch_timer(), setup.settings.batch_size
    sampler = EpochSampler(x, y, np.arange(len(x)), aug["x"], aug["source"], setup.seed)
    model = fit(setup.settings, sampler, (x[:batch], y[:batch]), setup.device, [timer])[0]
    predict_probs(model, x[:1024])  # warm-up
    start = clock()
    predict_probs(model, x)
    return np.concatenate([steady_rates(len(x), spans), len(x) / np.maximum(clock() - start, 1e-9)]), model


def mixed_policy(device: DevicePlan | None) -> str:
    """Return the mixed precision set against float32: the plan's, or bf16 where it chose float32 (or no plan)."""
    return device.precision if device and device.precision in MIXED_LABELS else "mixed_bfloat16"


def bench_training(setup: BenchSetup, x: np.ndarray, y: np.ndarray, aug: dict, repeats: int = 2) -> tuple[list, object]:
    """Return the training row (fitting.fit vs a bare model.fit, under the plan's precision), the rows of mixed
    precision vs float32 (training and inference, per wall and CPU second) and a model trained by fitting.fit."""
    device, mixed = setup.device, mixed_policy(setup.device)
    own = device.precision if device else "float32"
    bare, runs, models = 0.0, {mixed: [], "float32": []}, {}
    for _ in range(repeats):  # alternating
        with global_policy(own):
            bare = max(bare, steady_rates(len(x), bare_fit(setup, x, y))[0])
        for policy, rates in runs.items():
            with global_policy(policy):
                rate, models[policy] = pipeline_rates(setup, x, y, aug)
            rates.append(rate)
    best = {policy: np.max(rates, axis=0).tolist() for policy, rates in runs.items()}
    xla = "XLA on" if device and device.jit_compile else "XLA off"
    chosen = (
        f"the plan chose {device.precision} ({device.reasons['precision']}), {xla}" if device else f"no plan, {xla}"
    )
    cfg = setup.settings
    head = f"{cfg.model}, batch {cfg.batch_size}, {len(x)} rows; best of {repeats} runs"
    training = row("training", "images/s", best[own][0], "bare model.fit", bare, ">= 0.95",
                   f"{head}, the fastest of epochs 2-{cfg.epochs}")  # fmt: skip
    kinds_of = (("training", f"fitting.fit, {head}"), ("inference", f"fitting.predict_probs, {len(x)} rows"))
    kinds = [(f"{what}, {MIXED_LABELS[mixed]}{cpu}", unit, f"{how}; {chosen}") for what, how in kinds_of
             for cpu, unit in (("", "images/s"), (", CPU time", "images/CPU-s"))]  # fmt: skip
    rows = [row(figure, unit, best[mixed][i], "float32", best["float32"][i], "-", note)
            for i, (figure, unit, note) in enumerate(kinds)]  # fmt: skip
    return [training, *rows], models[own]


def bench_inference(model, x: np.ndarray, views: int, batch_size: int, repeats: int = 2) -> dict:
    """Return the inference row: tta.predict_views vs bare model.predict on the same views."""
    from pipeline.lib.tta import apply_view, predict_views, views_for

    model.predict(x[:batch_size].astype(np.float32)[..., None], batch_size=batch_size, verbose=0)  # warm-up
    arrays = [apply_view(x, v) for v in views_for(views)]
    calls = (lambda: [model.predict(a, batch_size=batch_size, verbose=0) for a in arrays]), (
        lambda: predict_views(model, x, views, batch_size))  # fmt: skip
    times = [[timed(call) for call in calls] for _ in range(repeats)]  # alternating
    bare, piped = (len(x) * len(arrays) / min(t[i] for t in times) for i in (0, 1))
    note = f"{len(x)} images x {len(arrays)} views, batch {batch_size}, best of {repeats} runs; the pipeline also "
    return row("inference + TTA", "image-views/s", piped, "bare model.predict", bare, ">= 0.95",
               note + "computes the views")  # fmt: skip


def bench_augment(x: np.ndarray, cfg: AugmentParams, seed: int, workers: int) -> tuple[dict, dict]:
    """Return the augmentation row (augment on `workers` processes vs one albumentations loop) and the copies."""
    import cv2

    from pipeline.lib.transforms import augment, build_transform

    cv2.setNumThreads(1)
    transform = build_transform(cfg, seed)
    single = len(x) * cfg.copies / timed(lambda: [transform(image=image) for image in x for _ in range(cfg.copies)])
    start = time.perf_counter()
    out = augment(x, cfg, seed, workers)
    piped = len(x) * cfg.copies / (time.perf_counter() - start)
    note = (
        f"{len(x)} images x {cfg.copies} copies, chunks of {cfg.chunk_rows}; starting {workers - 1} helper(s) included"
    )
    return row(f"augmentation ({workers} workers)", "images/s", piped, "1-process loop", single, f"~ {workers}",
               note), out  # fmt: skip


def bench_ingest(zip_path: Path | None) -> dict:
    """Return the ingest row: parse_train + parse_test on the zip's CSVs vs pandas.read_csv defaults (seconds)."""
    if zip_path is None or not Path(zip_path).is_file():
        return row("ingest", "s", float("nan"), "pandas.read_csv", float("nan"), "", f"skipped: no zip at {zip_path}")
    import pandas as pd

    from pipeline.lib.competition_csv import RawSource, parse_test, parse_train, read_member

    source = RawSource(Path(zip_path), None, None)
    train, test = read_member(source, "train.csv"), read_member(source, "test.csv")
    reference = timed(lambda: (pd.read_csv(io.BytesIO(train)), pd.read_csv(io.BytesIO(test))))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, x_test = parse_train(train)[0], parse_test(test)
    note = f"{len(x)} + {len(x_test)} rows, {(len(train) + len(test)) / 1e6:.0f} MB of CSV; lower is faster"
    return row("ingest (parse + validate)", "s", time.perf_counter() - start, "pandas.read_csv", reference, "-", note)


def peak_kib() -> tuple[int, int]:
    """Return this process's peak RSS in KiB (VmHWM where Linux has it) and its largest waited-for child's."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    own = next((int(s.split()[1]) for s in lines if s.startswith("VmHWM:")), 0)
    return own or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(
        resource.RUSAGE_CHILDREN
    ).ru_maxrss


def stage_core(stage: str, setup: BenchSetup, x: np.ndarray, y: np.ndarray, aug: dict, zip_path: Path | None,
               workers: int) -> Callable[[], object]:  # fmt: skip
    """Import stage `stage`'s code and return its core as a call (run by the memory child)."""
    settings = replace(setup.settings, epochs=1)
    if stage == "ingest":
        from pipeline.lib.competition_csv import RawSource, parse_test, parse_train, read_member

        source = RawSource(Path(zip_path), None, None)
        return lambda: (parse_train(read_member(source, "train.csv")), parse_test(read_member(source, "test.csv")))
    if stage == "augment":  # joblib's workers shut down with it, as the stage's do when it exits (and so are counted)
        from joblib.externals.loky import get_reusable_executor

        from pipeline.lib.transforms import augment

        return lambda: (augment(x, setup.augment, setup.seed, workers), get_reusable_executor().shutdown(wait=True))
    if stage == "train":
        from pipeline.lib.device import configure
        from pipeline.lib.fitting import EpochSampler, fit

        sampler = EpochSampler(x, y, np.arange(len(y)), aug["x"], aug["source"], setup.seed)
        device = configure(setup.device.precision if setup.device else "float32")
        return lambda: fit(settings, sampler, (x[:256], y[:256]), device)
    from pipeline.lib.models import build_model
    from pipeline.lib.tta import predict_views

    return lambda: predict_views(build_model(settings.model), x, setup.views, setup.predict_batch)


def memory_child(stage: str, *args: object) -> tuple[int, int, int]:
    """Run stage `stage`'s core; return this process's peak KiB after its imports, after it, and its children's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = stage_core(stage, *args)
        before = peak_kib()[0]
        core()
    return before, *peak_kib()


def bench_memory(stage: str, *args: object) -> dict:
    """Return the memory row of `stage`: its core's peak RSS in a fresh process vs that process after imports."""
    # quiet.install runs before `args` (the plan) import Keras: TensorFlow's native log lines stay off stderr
    with ProcessPoolExecutor(1, get_context("spawn"), initializer=quiet.install) as pool:
        before, peak, children = pool.submit(memory_child, stage, *args).result()
    workers = f"; each worker <= {children / 1024:.0f} MiB" if stage == "augment" and children else ""
    return row(f"peak memory: {stage}", "MiB", peak / 1024, "after imports", before / 1024, "-",
               f"peak of the stage's core in a fresh process{workers}")  # fmt: skip


def run_bench(rows: int, zip_path: Path | None, setup: BenchSetup, stages: tuple[str, ...] = STAGES,
              log: Callable[[str], None] = print, aug_rows: int | None = None) -> list[dict]:  # fmt: skip
    """Measure every figure on `rows` random images (augmentation on `aug_rows`) and return the table rows."""
    x, y = bench_images(max(rows, aug_rows or 0), setup.seed)
    workers = os.cpu_count() or 1
    aug_row, aug = bench_augment(x[: aug_rows or rows], setup.augment, setup.seed, workers)
    x, y, keep = x[:rows], y[:rows], aug["source"] < rows
    aug = {"x": aug["x"][keep], "source": aug["source"][keep]}
    log(f"bench: augmentation {aug_row['value']:,.0f} images/s")
    fits, model = bench_training(setup, x, y, aug)
    log(f"bench: training {fits[0]['value']:,.0f} images/s")
    table = [fits[0], bench_inference(model, x, setup.views, setup.predict_batch), *fits[1:]]
    log(f"bench: {table[2]['figure']} {table[2]['value']:,.0f} vs float32 {table[2]['reference']:,.0f} images/s")
    table += [aug_row, bench_ingest(zip_path)]
    for stage in stages:
        if stage != "ingest" or (zip_path and Path(zip_path).is_file()):
            table.append(bench_memory(stage, setup, x, y, aug, zip_path, workers))
            log(f"bench: {stage} peak memory measured")
    return table


def json_safe(table: list[dict]) -> list[dict]:
    """Return the rows with NaN figures (skipped measurements) as None, for strict JSON."""
    return [{k: None if isinstance(v, float) and v != v else v for k, v in r.items()} for r in table]


def format_table(table: list[dict]) -> str:
    """Return the rows as an aligned text table (one figure per line, with its reference and ratio)."""
    header = ("figure", "value", "reference", "ratio", "target", "note")
    lines = [(r["figure"], f"{r['value']:,.1f} {r['unit']}", f"{r['reference']:,.1f} ({r['reference_name']})",
              f"{r['ratio']:.2f}", r["target"], r["note"]) for r in table]  # fmt: skip
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *lines])


def setup_from_params(epochs: int, device: DevicePlan | None) -> BenchSetup:
    """Return the bench setup from params.yaml: model.name's settings for `epochs`, augment's and predict's."""
    model, predict = params.load("model"), params.load("predict")
    settings = replace(member_settings(params.load("train"), model, model.name), epochs=epochs)
    return BenchSetup(settings, params.load("augment"), predict.tta_views, predict.batch_size, params.seed(), device)


@reports_errors("bench")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, run every measurement, print the table and write reports/bench.json."""
    from pipeline.lib.device import configure

    parser = stage_parser("bench", __doc__)
    parser.add_argument("--rows", type=int, default=4096, help="images per measurement (default 4096)")
    parser.add_argument("--aug-rows", type=int, default=42000, help="images augmented (default 42000: all of them)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run; the first is a warm-up")
    parser.add_argument("--zip", type=Path, default=paths.RAW_ZIP, help="competition zip for the ingest row")
    parser.add_argument("--stages", nargs="*", default=list(STAGES), help="stages whose peak memory is measured")
    args = parser.parse_args(argv)
    if args.rows < 16 or args.epochs < 1:
        parser.error("--rows must be at least 16 and --epochs at least 1")
    device = configure(params.load("device").precision)
    setup = setup_from_params(args.epochs, device)
    print(f"bench: {args.rows} rows, {setup.settings.model}, on {device.describe()}", flush=True)
    table = run_bench(args.rows, args.zip, setup, tuple(args.stages), aug_rows=args.aug_rows)
    print(format_table(table))
    write_json(paths.BENCH_JSON, {"device": device.describe(), "rows": args.rows, "table": json_safe(table)})
    print(f"bench: -> {paths.BENCH_JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
