"""`python -m pipeline.tools.bench`: measures the pipeline's hot paths on this machine, each beside a
reference measured in the same run, prints one table and writes it to reports/bench.json.

1. training images/s: the train stage's input path and step (EpochSampler + lib.fitting.fit, one
   model.fit per epoch) vs one bare model.fit on in-memory arrays (same model, batch, epochs);
2. inference image-views/s: tta.predict_views vs bare model.predict on the same (pre-transformed) views;
   mixed precision (the device plan's, else bf16) vs float32, training and inference on the pipeline's own
   path (fitting.fit with the plan's XLA setting, fitting.predict_probs), alternating in one run;
3. augmentation images/s: pipeline.augment.augment on every core vs a single-process albumentations loop;
4. ingest seconds: lib.competition_csv.parse_train/parse_test on the competition zip's CSVs vs pandas.read_csv defaults;
5. peak resident memory of each stage's core, run in a fresh subprocess, vs that process after its imports.

Speeds are measured after a warm-up epoch or call; the table never asserts a target, it reports one."""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import params, paths
from pipeline.lib.cli import reports_errors, stage_parser
from pipeline.lib.files import read_npz, write_json, write_npz
from pipeline.params import AugmentParams, IngestParams

if TYPE_CHECKING:  # keras stays unimported until a measurement needs it (the memory rows' baseline)
    from pipeline.device import DevicePlan
    from pipeline.lib.fitting import FitSettings

STAGES = ("ingest", "augment", "train", "predict")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchSetup:
    """The settings the measured stages run with (from params.yaml in `main`)."""

    settings: FitSettings  # model, batch size and schedule of the training runs; `epochs` includes the warm-up
    augment: AugmentParams
    ingest: IngestParams
    folds: int
    views: int  # TTA views besides the original
    predict_batch: int
    seed: int = 0
    device: DevicePlan | None = None  # None: plain CPU settings


def row(figure: str, unit: str, value: float, reference_name: str, reference: float, target: str, note: str) -> dict:
    """Return one table row; `ratio` is value / reference."""
    ratio = value / reference if reference > 0 else float("nan")
    return {
        "figure": figure, "unit": unit, "value": value, "reference_name": reference_name,
        "reference": reference, "ratio": ratio, "target": target, "note": note,
    }  # fmt: skip


def bench_images(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return `rows` random uint8 28x28 images and balanced labels (speed does not depend on content)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8), (np.arange(rows) % 10).astype(np.uint8)


def steady_rate(images: int, seconds: list[float]) -> float:
    """Return images per second of the fastest epoch after the first (warm-up), or of the only epoch.

    The fastest rather than the mean: on a shared machine other processes only ever slow an epoch down."""
    return images / min(seconds[1:] or seconds)


def bare_fit(
    settings: FitSettings, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray], jit: bool
) -> tuple[list[float], object, list[float]]:
    """Return per-epoch wall seconds of one plain model.fit over float arrays prepared beforehand, the model, and
    per-epoch CPU seconds of this process (all its threads)."""
    import keras

    from pipeline.lib.fitting import as_input, compiled_model, one_hot

    seconds: list[float] = []
    cpu_seconds: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        """Records each epoch's wall time and CPU time (training steps and validation)."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            """Start the epoch's clocks."""
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            """Record the epoch's seconds."""
            seconds.append(time.perf_counter() - self.start)
            cpu_seconds.append(time.process_time() - self.cpu_start)

    steps = int(np.ceil(len(x) / settings.batch_size))
    model = compiled_model(settings, steps, jit)
    xf, yf, val_f = as_input(x), one_hot(y), (as_input(val[0]), one_hot(val[1]))
    model.fit(
        xf, yf, batch_size=settings.batch_size, epochs=settings.epochs, shuffle=False, validation_data=val_f,
        verbose=0, callbacks=[EpochTimer()],
    )  # fmt: skip
    return seconds, model, cpu_seconds


def bench_training(
    settings: FitSettings,
    x: np.ndarray,
    y: np.ndarray,
    aug: dict,
    device: DevicePlan | None,
    seed: int,
    repeats: int = 2,
) -> tuple[dict, object]:
    """Return the training row (pipeline path vs bare model.fit, alternating runs) and a pipeline-trained model."""
    import keras

    from pipeline.device import clear_session
    from pipeline.lib.fitting import EpochSampler, fit

    val = (x[: settings.batch_size], y[: settings.batch_size])
    jit = bool(device and device.jit_compile)
    sampler = EpochSampler(x, y, np.arange(len(x)), aug["x"], aug["source"], seed)
    bare, piped = 0.0, 0.0
    for _ in range(repeats):
        clear_session()
        keras.utils.set_random_seed(seed)
        bare = max(bare, steady_rate(len(x), bare_fit(settings, x, y, val, jit)[0]))
        clear_session()
        keras.utils.set_random_seed(seed)
        model, history = fit(settings, sampler, val, device)
        piped = max(piped, steady_rate(len(x), [r["seconds"] for r in history]))
    note = (
        f"{settings.model}, batch {settings.batch_size}, {len(x)} rows; fastest of epochs 2-{settings.epochs} "
        f"over {repeats} alternating runs"
    )
    return row("training", "images/s", piped, "bare model.fit", bare, ">= 0.95", note), model


def timed(call: Callable[[], object]) -> float:
    """Return the seconds one call of `call` takes."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bench_inference(model, x: np.ndarray, views: int, batch_size: int, repeats: int = 2) -> dict:
    """Return the inference row: tta.predict_views vs bare model.predict on the same views."""
    from pipeline.lib.tta import apply_view, predict_views, views_for

    model.predict(x[:batch_size].astype(np.float32)[..., None], batch_size=batch_size, verbose=0)  # warm-up
    arrays = [apply_view(x, v) for v in views_for(views)]

    def bare_call() -> None:
        for a in arrays:
            model.predict(a, batch_size=batch_size, verbose=0)

    times = [(timed(bare_call), timed(lambda: predict_views(model, x, views, batch_size))) for _ in range(repeats)]
    bare = len(x) * len(arrays) / min(t[0] for t in times)
    piped = len(x) * len(arrays) / min(t[1] for t in times)
    note = (
        f"{len(x)} images x {len(arrays)} views, batch {batch_size}, best of {repeats} alternating runs; "
        "the pipeline also computes the views"
    )
    return row("inference + TTA", "image-views/s", piped, "bare model.predict", bare, ">= 0.95", note)


@contextmanager
def global_policy(name: str) -> Iterator[None]:
    """Run the block under Keras dtype policy `name`, then restore the policy that was set before."""
    import keras

    before = keras.config.dtype_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


MIXED_LABELS = {"mixed_bfloat16": "bf16", "mixed_float16": "float16"}


def mixed_policy(device: DevicePlan | None) -> str:
    """Return the mixed precision the precision rows set against float32: the plan's choice, or bf16 where it chose
    float32 (or there is no plan)."""
    return device.precision if device and device.precision in MIXED_LABELS else "mixed_bfloat16"


def precision_rates(
    settings: FitSettings, x: np.ndarray, y: np.ndarray, aug: dict, policy: str, device: DevicePlan | None, seed: int
) -> dict[str, float]:
    """Return the training and inference images per wall second and per CPU second (this process's threads
    together) under `policy`, on the pipeline's own path: fitting.fit with the plan's XLA setting and input feed,
    and fitting.predict_probs."""
    import keras

    from pipeline.device import clear_session
    from pipeline.lib.fitting import EpochSampler, fit, predict_probs

    with global_policy(policy):
        clear_session()
        keras.utils.set_random_seed(seed)
        sampler = EpochSampler(x, y, np.arange(len(x)), aug["x"], aug["source"], seed)
        marks = [time.process_time()]
        model, history = fit(settings, sampler, (x[: settings.batch_size], y[: settings.batch_size]), device,
                             lambda epoch, logs: marks.append(time.process_time()))  # fmt: skip
        predict_probs(model, x[:1024])  # warm-up
        cpu_start = time.process_time()
        infer = len(x) / timed(lambda: predict_probs(model, x))
        infer_cpu = len(x) / max(time.process_time() - cpu_start, 1e-9)
    return {
        "train": steady_rate(len(x), [r["seconds"] for r in history]),
        "train_cpu": steady_rate(len(x), list(np.diff(marks))),
        "infer": infer, "infer_cpu": infer_cpu,
    }  # fmt: skip


def bench_precision(settings: FitSettings, x: np.ndarray, y: np.ndarray, aug: dict, device: DevicePlan | None,
                    seed: int, repeats: int = 2) -> list[dict]:  # fmt: skip
    """Return the training and inference rows of mixed precision (`mixed_policy`) vs float32 on the pipeline's path
    (alternating in this process), per wall second and per CPU second, each noting the precision and XLA setting
    the plan chose here. Per CPU second is the steadier figure where the machine's share of its cores varies."""
    mixed = mixed_policy(device)
    rates: dict[str, list[dict[str, float]]] = {mixed: [], "float32": []}
    for _ in range(repeats):
        for policy, measured in rates.items():
            measured.append(precision_rates(settings, x, y, aug, policy, device, seed))
    xla = "XLA on" if device and device.jit_compile else "XLA off"
    chosen = (
        f"the plan chose {device.precision} ({device.reasons['precision']}), {xla}" if device else f"no plan, {xla}"
    )
    note = f"fitting.fit, {settings.model}, batch {settings.batch_size}, {len(x)} rows; best of {repeats} alternating"
    note += f" runs; {chosen}"
    infer_note = f"fitting.predict_probs, batch 1024, {len(x)} rows; {chosen}"
    best = {p: {k: max(r[k] for r in m) for k in m[0]} for p, m in rates.items()}
    low, f32, label = best[mixed], best["float32"], MIXED_LABELS[mixed]
    return [
        row(f"training, {label}", "images/s", low["train"], "float32", f32["train"], "-", note),
        row(f"training, {label}, CPU time", "images/CPU-s", low["train_cpu"], "float32", f32["train_cpu"], "-", note),
        row(f"inference, {label}", "images/s", low["infer"], "float32", f32["infer"], "-", infer_note),
        row(f"inference, {label}, CPU time", "images/CPU-s", low["infer_cpu"], "float32", f32["infer_cpu"], "-",
            infer_note),
    ]  # fmt: skip


def augment_loop(x: np.ndarray, cfg: AugmentParams, seed: int) -> tuple[float, float]:
    """Run the plain single-process albumentations loop over `x`; return its (start, end) wall-clock times."""
    import cv2

    from pipeline.lib.transforms import build_transform

    cv2.setNumThreads(1)
    transform = build_transform(cfg, seed)
    start = time.time()
    for image in x:
        for _ in range(cfg.copies):
            transform(image=image)
    return start, time.time()


def loop_child(x: np.ndarray, cfg: AugmentParams, seed: int, barrier, results) -> None:
    """In a spawned process: wait until every loop is ready, run one loop, and put its (start, end) on `results`."""
    augment_loop(x[:1], cfg, seed)  # imports and first-call set-up happen before the barrier
    barrier.wait()
    results.put(augment_loop(x, cfg, seed))


def side_by_side_rate(x: np.ndarray, cfg: AugmentParams, seed: int, workers: int) -> float:
    """Return images/s of `workers` independent loops over equal parts of `x` started together: what these
    cores give to perfectly parallel work, start-up excluded (the ceiling for the augment stage)."""
    from multiprocessing import get_context

    ctx = get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    parts = np.array_split(x, workers)
    procs = [ctx.Process(target=loop_child, args=(part, cfg, seed, barrier, results)) for part in parts]
    for proc in procs:
        proc.start()
    times = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    return len(x) * cfg.copies / (max(end for _, end in times) - min(start for start, _ in times))


def bench_augment(x: np.ndarray, cfg: AugmentParams, seed: int, workers: int) -> tuple[dict, dict]:
    """Return the augmentation row (augment on `workers` processes vs one albumentations loop) and the copies."""
    from pipeline.augment import augment

    start, end = augment_loop(x, cfg, seed)
    single = len(x) * cfg.copies / (end - start)
    ceiling = side_by_side_rate(x, cfg, seed, workers) if workers > 1 else single
    start = time.perf_counter()
    out = augment(x, cfg, seed, workers)
    piped = len(x) * cfg.copies / (time.perf_counter() - start)
    note = (
        f"{len(x)} images x {cfg.copies} copies, chunks of {cfg.chunk_rows}; includes starting the "
        f"{workers - 1} spawned helper(s), while this process already works; {workers} independent loops "
        f"side by side give {ceiling:,.0f} images/s ({ceiling / single:.2f}x), the most these cores give"
    )
    return row(
        f"augmentation ({workers} workers)", "images/s", piped, "1-process loop", single, f"~ {workers}", note
    ), out


def bench_ingest(zip_path: Path | None) -> dict:
    """Return the ingest row: parse_train + parse_test on the zip's CSVs vs pandas.read_csv defaults (seconds)."""
    if zip_path is None or not Path(zip_path).is_file():
        return row("ingest", "s", float("nan"), "pandas.read_csv", float("nan"), "", f"skipped: no zip at {zip_path}")
    import pandas as pd

    from pipeline.lib.competition_csv import RawSource, parse_test, parse_train, read_member

    source = RawSource(Path(zip_path), None, None)
    train, test = read_member(source, "train.csv"), read_member(source, "test.csv")
    start = time.perf_counter()
    pd.read_csv(io.BytesIO(train))
    pd.read_csv(io.BytesIO(test))
    reference = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, _ = parse_train(train)
        x_test = parse_test(test)
    seconds = time.perf_counter() - start
    note = f"{len(x)} + {len(x_test)} rows, {(len(train) + len(test)) / 1e6:.0f} MB of CSV; lower is faster"
    return row("ingest (parse + validate)", "s", seconds, "pandas.read_csv", reference, "-", note)


def peak_kib() -> tuple[int, int]:
    """Return this process's and its largest waited-for child's peak resident memory in KiB.

    Linux carries ru_maxrss across fork and exec (a child starts at its parent's peak), so this
    process's own peak is read from /proc/self/status VmHWM when available; the children figure
    (ru_maxrss of RUSAGE_CHILDREN) is therefore an upper bound."""
    status = Path("/proc/self/status")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if status.is_file():
        own = next((int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:")), own)
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def stage_core(stage: str, spec: dict, inputs: dict) -> Callable[[], object]:
    """Import stage `stage`'s modules and return its core as a call (run by the memory child)."""
    if stage == "ingest":
        from pipeline.ingest import ingest
        from pipeline.lib.competition_csv import RawSource

        source, cfg = RawSource(Path(spec["zip"]), None, None), IngestParams(**spec["ingest"])
        return lambda: ingest(source, cfg, spec["folds"], spec["seed"])
    if stage == "augment":
        from pipeline.augment import augment

        return lambda: augment(inputs["x"], AugmentParams(**spec["augment"]), spec["seed"], spec["workers"])
    from pipeline.lib.fitting import EpochSampler, FitSettings, fit

    settings = FitSettings(**{**spec["settings"], "epochs": 1})
    if stage == "train":
        sampler = EpochSampler(inputs["x"], inputs["y"], np.arange(len(inputs["y"])), inputs["aug_x"],
                               inputs["aug_source"], spec["seed"])  # fmt: skip
        from pipeline.device import configure

        device = configure(spec["precision"])
        return lambda: fit(settings, sampler, (inputs["x"][:256], inputs["y"][:256]), device)
    if stage == "predict":
        from pipeline.lib.models import build_model
        from pipeline.lib.tta import predict_views

        return lambda: predict_views(build_model(settings.model), inputs["x"], spec["views"], spec["batch"])
    raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")


def child(stage: str, workdir: str) -> None:
    """Run stage `stage`'s core in this (fresh) process and print its peak memory as JSON."""
    spec = json.loads((Path(workdir) / "spec.json").read_text())
    inputs = read_npz(Path(workdir) / "inputs.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = stage_core(stage, spec, inputs)
        before = peak_kib()[0]
        core()
    self_kib, children_kib = peak_kib()
    print(json.dumps({"imports_kib": before, "peak_kib": self_kib, "children_kib": children_kib}))


def bench_memory(stage: str, workdir: Path) -> dict:
    """Return the memory row of `stage`: its core's peak RSS in a fresh process vs that process after imports."""
    code = "import sys; from pipeline.tools.bench import child; child(sys.argv[1], sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    done = subprocess.run(
        [sys.executable, "-c", code, stage, str(workdir)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench: the {stage} memory run failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    workers = (
        f"; each worker <= {out['children_kib'] / 1024:.0f} MiB" if stage == "augment" and out["children_kib"] else ""
    )
    note = f"peak of the stage's core in a fresh process{workers}"
    return row(f"peak memory: {stage}", "MiB", out["peak_kib"] / 1024, "after imports", out["imports_kib"] / 1024,
               "-", note)  # fmt: skip


def run_bench(
    rows: int,
    zip_path: Path | None,
    setup: BenchSetup,
    stages: tuple[str, ...] = STAGES,
    log: Callable[[str], None] = print,
    aug_rows: int | None = None,
) -> list[dict]:
    """Measure every figure on `rows` random images (augmentation on `aug_rows`) and return the table rows."""
    x, y = bench_images(max(rows, aug_rows or 0), setup.seed)
    workers = os.cpu_count() or 1
    aug_row, aug = bench_augment(x[: aug_rows or rows], setup.augment, setup.seed, workers)
    x, y = x[:rows], y[:rows]
    keep = aug["source"] < rows
    aug = {"x": aug["x"][keep], "source": aug["source"][keep]}
    log(f"bench: augmentation {aug_row['value']:,.0f} images/s")
    train_row, model = bench_training(setup.settings, x, y, aug, setup.device, setup.seed)
    log(f"bench: training {train_row['value']:,.0f} images/s")
    table = [train_row, bench_inference(model, x, setup.views, setup.predict_batch)]
    table += bench_precision(setup.settings, x, y, aug, setup.device, setup.seed)
    log(f"bench: {table[2]['figure']} {table[2]['value']:,.0f} vs float32 {table[2]['reference']:,.0f} images/s")
    table += [aug_row, bench_ingest(zip_path)]
    log("bench: inference and ingest measured")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        spec = {
            "seed": setup.seed, "folds": setup.folds, "zip": str(zip_path), "ingest": asdict(setup.ingest),
            "augment": asdict(setup.augment), "workers": workers, "settings": asdict(setup.settings),
            "views": setup.views, "batch": setup.predict_batch,
            "precision": setup.device.precision if setup.device else "float32",
        }  # fmt: skip
        write_json(Path(tmp) / "spec.json", spec)
        write_npz(Path(tmp) / "inputs.npz", x=x, y=y, aug_x=aug["x"], aug_source=aug["source"])
        for stage in stages:
            if stage == "ingest" and not (zip_path and Path(zip_path).is_file()):
                continue
            table.append(bench_memory(stage, Path(tmp)))
            log(f"bench: {stage} peak memory measured")
    return table


def json_safe(table: list[dict]) -> list[dict]:
    """Return the rows with NaN figures (skipped measurements) as None, for strict JSON."""
    return [{k: None if isinstance(v, float) and v != v else v for k, v in r.items()} for r in table]


def format_table(table: list[dict]) -> str:
    """Return the rows as an aligned text table (one figure per line, with its reference and ratio)."""
    header = ("figure", "value", "reference", "ratio", "target", "note")
    lines = [
        (r["figure"], f"{r['value']:,.1f} {r['unit']}", f"{r['reference']:,.1f} ({r['reference_name']})",
         f"{r['ratio']:.2f}", r["target"], r["note"])
        for r in table
    ]  # fmt: skip
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *lines])


def setup_from_params(epochs: int, device: DevicePlan | None) -> BenchSetup:
    """Return the bench setup from params.yaml: the chosen model with train's batch and schedule, augment, predict."""
    from pipeline.train import fit_settings

    predict = params.load("predict")
    settings = fit_settings(params.load("train"), params.load("model").name, None)
    return BenchSetup(
        settings=replace(settings, epochs=epochs), augment=params.load("augment"), ingest=params.load("ingest"),
        folds=params.load("train").folds, views=predict.tta_views, predict_batch=predict.batch_size,
        seed=params.seed(), device=device,
    )  # fmt: skip


@reports_errors("bench")
def main(argv: list[str] | None = None) -> int:
    """Parse the CLI, run every measurement, print the table and write reports/bench.json."""
    from pipeline.device import configure

    parser = stage_parser("bench", __doc__)
    parser.add_argument(
        "--rows", type=int, default=4096, help="images per measurement (default 4096, ~3 min on 2 cores)"
    )
    parser.add_argument(
        "--aug-rows", type=int, default=42000, help="images augmented (default 42000, the stage's full input)"
    )
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
