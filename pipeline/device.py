"""`python -m pipeline.device`: prints this machine's device plan and why. The plan is every device
decision of the stages, made by one pure function (`plan_devices`) from what the Keras backend
(TensorFlow, JAX or PyTorch) reports: each GPU's name, compute capability and memory, and the CPU's
flags. Precision (params.yaml `device.precision`; auto: bf16 mixed precision on GPUs of compute
capability 8.0 and up (A100, L4, H100) and on CPUs that compute bf16 natively, float16 mixed precision
(with Keras' loss scaling) from 7.0 to below 8.0 (V100, T4), float32 elsewhere (P100, other CPUs));
XLA (on a GPU, except with PyTorch); the tuning workers, spread round-robin over the GPUs, each with
its share of its GPU's memory; and one training process per GPU, each with its own environment.

--assume NAME,CC,GiB (repeatable) plans for GPUs that are not there, without asking the backend for
its own; --json prints the plan for scripts. Every stage logs the plan's one-line description."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras

from pipeline import params
from pipeline.lib.cli import reports_errors, stage_parser
from pipeline.params import Precision, choices

PRECISIONS = choices(Precision)
# /proc/cpuinfo flags of a CPU with native bf16 arithmetic: Intel AMX tiles and AVX512-BF16 (Sapphire Rapids
# and later Xeons, AMD Zen 4 and later), and the Armv8.6 BF16 extension (Graviton 3, Apple M2 under Linux).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})
BF16_CAPABILITY = (8, 0)  # Ampere and later: bf16 tensor cores (A100 8.0, L4 8.9, H100 9.0)
FLOAT16_CAPABILITY = (7, 0)  # Volta and Turing: float16 tensor cores, no bf16 units (V100 7.0, T4 7.5)
SHARED_MEMORY = 0.90  # the part of a GPU's memory that the tuning workers sharing it split between them
# A TensorFlow process caps its GPU memory at this many MB (set for it by the plan, read in `limit_tf_memory`)
TF_MEMORY_ENV = "DIGIT_TF_GPU_MEMORY_MB"
JAX_MEMORY_ENVS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")  # jax refuses both set at once


@dataclass(frozen=True)
class Gpu:
    """One GPU as the backend reports it."""

    name: str  # the card, e.g. "Tesla T4"
    capability: tuple[int, int]  # CUDA compute capability (major, minor); (0, 0) when unknown
    memory_gib: float | None  # total memory, None when unknown

    def describe(self) -> str:
        """Return e.g. "Tesla T4 (compute capability 7.5, 15 GiB)"."""
        memory = f", {self.memory_gib:g} GiB" if self.memory_gib else ""
        return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]}{memory})"


@dataclass(frozen=True)
class Hardware:
    """What the plan is made from: the Keras backend, its GPUs and the CPU."""

    backend: str
    gpus: tuple[Gpu, ...]
    cpu_flags: frozenset[str] = frozenset()
    cores: int = 1
    machine: str = "CPU"  # platform.machine(), for the log


@dataclass(frozen=True)
class TuneWorker:
    """One tuning worker process: its GPU (None on a CPU), its share of that GPU's memory and its environment."""

    gpu: int | None
    memory_fraction: float | None  # None: the worker has its GPU to itself, or there is none
    env: dict[str, str]


@dataclass(frozen=True)
class DevicePlan:
    """Every device decision of the stages, and why (`reasons`, one text per decision)."""

    backend: str
    gpus: tuple[Gpu, ...]
    cores: int
    precision: str  # the Keras dtype policy: float32, mixed_float16 or mixed_bfloat16
    jit_compile: bool  # XLA-compiled train steps
    resident: bool  # training images kept on the accelerator (fitting.ResidentFeed)
    tune_workers: tuple[TuneWorker, ...]
    train_envs: tuple[dict[str, str], ...]  # one training process each: one per GPU, a single {} without a GPU
    reasons: dict[str, str] = field(default_factory=dict)  # keys: precision, xla, tune, train

    def describe(self) -> str:
        """Return a one-line description for logs."""
        jit = "XLA on" if self.jit_compile else "XLA off"
        feed = ", data on the device" if self.resident else ""
        return f"{self.where()} via {self.backend}, {self.precision} ({self.reasons['precision']}), {jit}{feed}"

    def where(self) -> str:
        """Return e.g. "GPU (2 x Tesla T4)" or "CPU (4 cores)"."""
        if not self.gpus:
            return f"CPU ({self.cores} cores)"
        cards = Counter(gpu.name for gpu in self.gpus)
        return f"GPU ({', '.join(name if n == 1 else f'{n} x {name}' for name, n in cards.items())})"


# ---------------------------------------------------------------- the plan (pure)


def plan_devices(
    hardware: Hardware, precision: str = "auto", workers_per_gpu: int = 1, workers_cpu: int = 1, workers: int = 0
) -> DevicePlan:
    """Return the plan for `hardware` under the `precision` setting, with `workers` tuning workers (0: tune's
    default, `workers_per_gpu` on each GPU or `workers_cpu` without one)."""
    policy, why = choose_precision(precision, hardware)
    jit, jit_why = choose_xla(hardware)
    count = workers or (workers_per_gpu * len(hardware.gpus) if hardware.gpus else workers_cpu)
    tune = tune_workers(hardware, count)
    return DevicePlan(
        backend=hardware.backend,
        gpus=hardware.gpus,
        cores=hardware.cores,
        precision=policy,
        jit_compile=jit,
        # JAX takes batches of device tensors from a PyDataset as they are (on its CPU too, the same code path as
        # on a GPU); TensorFlow and PyTorch would route them through tf.data or a DataLoader: NumPy stays there
        resident=hardware.backend == "jax",
        tune_workers=tune,
        train_envs=tuple(gpu_env(hardware, i, None) for i in range(len(hardware.gpus))) or ({},),
        reasons={
            "precision": why,
            "xla": jit_why,
            "tune": tune_reason(hardware, tune),
            "train": train_reason(hardware),
        },
    )


def choose_precision(setting: str, hardware: Hardware) -> tuple[str, str]:
    """Return the Keras dtype policy for the `setting` (auto or a policy) on `hardware`, and why."""
    if setting not in PRECISIONS:
        raise ValueError(f"device.precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    auto, why = auto_precision(hardware)
    if setting == "auto":
        return auto, why
    return setting, "params.yaml device.precision" + (f"; auto would choose {auto}" if setting != auto else "")


def auto_precision(hardware: Hardware) -> tuple[str, str]:
    """Return the fastest accurate dtype policy for `hardware` and why: by the lowest compute capability of its
    GPUs (every process computes alike), else by the CPU's native bf16."""
    if hardware.gpus:
        capability = min(gpu.capability for gpu in hardware.gpus)
        cc = f"compute capability {capability[0]}.{capability[1]}"
        if capability >= BF16_CAPABILITY:
            return "mixed_bfloat16", f"{cc}: bf16 tensor cores"
        if capability >= FLOAT16_CAPABILITY:
            return "mixed_float16", f"{cc}: float16 tensor cores, no bf16 units"
        return "float32", f"{cc}: no tensor cores, bf16 would be emulated"
    flag = bf16_flag(hardware.cpu_flags)
    if flag:
        return "mixed_bfloat16", f"native bf16: {flag}"
    return "float32", f"no native bf16 on this {hardware.machine}"


def choose_xla(hardware: Hardware) -> tuple[bool, str]:
    """Return whether train steps are XLA-compiled on `hardware`, and why."""
    if not hardware.gpus:
        return False, "CPU: plain kernels (XLA measured several times slower here)"
    if hardware.backend == "torch":
        return False, "PyTorch: Keras' jit_compile is not used with torch"
    return True, f"GPU via {hardware.backend}: XLA-compiled steps"


def tune_workers(hardware: Hardware, count: int) -> tuple[TuneWorker, ...]:
    """Return `count` tuning workers spread round-robin over the GPUs of `hardware`, each with an equal share of
    its GPU's memory when it shares it (all on the CPU, with nothing set, without a GPU)."""
    if not hardware.gpus:
        return tuple(TuneWorker(None, None, {}) for _ in range(count))
    on_gpu = Counter(i % len(hardware.gpus) for i in range(count))
    workers = []
    for i in range(count):
        gpu = i % len(hardware.gpus)
        share = int(SHARED_MEMORY * 100) // on_gpu[gpu] / 100 if on_gpu[gpu] > 1 else None
        workers.append(TuneWorker(gpu, share, gpu_env(hardware, gpu, share)))
    return tuple(workers)


def gpu_env(hardware: Hardware, gpu: int, share: float | None) -> dict[str, str]:
    """Return the environment of a process on GPU `gpu` alone, capped at `share` of its memory when given
    (JAX: XLA_CLIENT_MEM_FRACTION; TensorFlow: TF_MEMORY_ENV in MB when the memory is known; PyTorch: no cap)."""
    env = {"CUDA_VISIBLE_DEVICES": str(gpu)}
    memory = hardware.gpus[gpu].memory_gib
    if share is None:
        return env
    if hardware.backend == "jax":
        env["XLA_CLIENT_MEM_FRACTION"] = f"{share:.2f}"
    elif hardware.backend == "tensorflow" and memory:
        env[TF_MEMORY_ENV] = str(int(share * memory * 1024))
    return env


def tune_reason(hardware: Hardware, workers: tuple[TuneWorker, ...]) -> str:
    """Return why the tuning workers run where they do."""
    if not hardware.gpus:
        return f"no GPU: {len(workers)} worker(s) on the CPU (tune.workers_cpu or --workers)"
    shares = {w.memory_fraction for w in workers if w.memory_fraction}
    memory = ""
    if shares:
        capped = hardware.backend == "jax" or (
            hardware.backend == "tensorflow" and all(g.memory_gib for g in hardware.gpus)
        )
        cap = "each capped at" if capped else f"{hardware.backend} cannot be capped here, each meant for"
        memory = f"; those sharing a GPU {cap} {min(shares):.0%} of its memory"
    return f"{len(workers)} worker(s) round-robin over {len(hardware.gpus)} GPU(s) (tune.workers_gpu per GPU){memory}"


def train_reason(hardware: Hardware) -> str:
    """Return why training runs in the processes it does."""
    if not hardware.gpus:
        return "no GPU: one process on the CPU"
    return f"one process per GPU ({len(hardware.gpus)}), each seeing only its own (CUDA_VISIBLE_DEVICES)"


def process_env(base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Return the environment of a child process: `base` (os.environ) with the plan's `env` over it, where the
    user's own settings win: a GPU index maps through the user's CUDA_VISIBLE_DEVICES, and a memory cap the user
    set (either JAX name, or TF_MEMORY_ENV) is kept instead of the plan's."""
    out = {**base}
    for key, value in env.items():
        if key == "CUDA_VISIBLE_DEVICES" and base.get(key, "").strip():
            visible = [d.strip() for d in base[key].split(",") if d.strip()]
            out[key] = visible[int(value)] if int(value) < len(visible) else value
        elif key in JAX_MEMORY_ENVS and any(base.get(name) for name in JAX_MEMORY_ENVS):
            continue
        elif key not in base or not base[key]:
            out[key] = value
    return out


# ---------------------------------------------------------------- what this machine reports


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Return the feature flags of the first CPU listed in `cpuinfo` ("flags" on x86, "Features" on Arm); empty
    where the file does not exist (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def bf16_flag(flags: frozenset[str]) -> str | None:
    """Return the first flag in `flags` that means native bf16 arithmetic (see BF16_CPU_FLAGS), or None."""
    found = sorted(flags & BF16_CPU_FLAGS)
    return found[0] if found else None


def parse_capability(value: object) -> tuple[int, int]:
    """Return a compute capability given as (7, 5), "7.5" or None as (major, minor); (0, 0) when unknown."""
    if isinstance(value, tuple | list) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, str) and "." in value:
        major, minor = value.split(".", 1)
        return int(major), int(minor)
    return (0, 0)


def nvidia_smi_gpus() -> list[tuple[str, float]] | None:
    """Return (name, GiB) of each GPU nvidia-smi lists, or None where there is no working nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.rsplit(",", 1) for line in done.stdout.strip().splitlines() if "," in line]
    return [(name.strip(), round(float(mib) / 1024, 1)) for name, mib in rows if mib.strip().isdigit()]


def memory_of(name: str, listed: list[tuple[str, float]] | None) -> float | None:
    """Return the GiB nvidia-smi lists for a GPU called `name`, or None."""
    return next((gib for card, gib in listed or [] if card == name), None)


def backend_gpus(backend: str) -> tuple[Gpu, ...]:
    """Return the GPUs the Keras `backend` sees, without starting its runtime on them (JAX: without reserving
    memory, XLA_PYTHON_CLIENT_PREALLOCATE=false unless set)."""
    listed = nvidia_smi_gpus()
    if backend == "tensorflow":
        import tensorflow as tf

        details = [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]
        return tuple(
            Gpu(d.get("device_name", "GPU"), parse_capability(d.get("compute_capability")),
                memory_of(d.get("device_name", ""), listed))
            for d in details
        )  # fmt: skip
    if backend == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax

        found = [d for d in jax.devices() if d.platform == "gpu"]
        return tuple(
            Gpu(d.device_kind, parse_capability(getattr(d, "compute_capability", None)),
                memory_of(d.device_kind, listed))
            for d in found
        )  # fmt: skip
    if backend == "torch":
        import torch

        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        return tuple(Gpu(p.name, (p.major, p.minor), round(p.total_memory / 2**30, 1)) for p in props)
    return ()


def detect(gpus: tuple[Gpu, ...] | None = None) -> Hardware:
    """Return this machine's hardware as the active Keras backend reports it, or with the assumed `gpus`
    instead of the backend's own (which are then not looked at)."""
    backend = keras.backend.backend()
    return Hardware(
        backend=backend,
        gpus=backend_gpus(backend) if gpus is None else gpus,
        cpu_flags=cpu_flags(),
        cores=os.cpu_count() or 1,
        machine=platform.machine() or "CPU",
    )


def unseen_gpus(hardware: Hardware) -> str | None:
    """Return a warning when nvidia-smi lists more GPUs than the backend sees, else None (also without nvidia-smi)."""
    listed = nvidia_smi_gpus()
    if listed is None or len(listed) <= len(hardware.gpus):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    return (
        f"nvidia-smi lists {len(listed)} GPU(s) ({', '.join(name for name, _ in listed)}) but {hardware.backend} "
        f"sees {len(hardware.gpus)}{hidden}: is the installed {hardware.backend} built with CUDA?"
    )


# ---------------------------------------------------------------- applying the plan in a process


def clear_session() -> None:
    """Free Keras' global state between models (keras.backend.clear_session), keeping the global precision policy:
    Keras resets it to float32 there, which silently turned every later tuning trial and compared model float32."""
    policy = keras.config.dtype_policy().name
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)


def limit_tf_memory(environ: Mapping[str, str]) -> None:
    """Before TensorFlow's runtime starts, cap each of its GPUs at TF_MEMORY_ENV MB from `environ` when set, else
    let its memory grow; a runtime already started keeps its settings (TensorFlow would raise)."""
    import tensorflow as tf

    limit = environ.get(TF_MEMORY_ENV, "").strip()
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            if limit:
                tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(int(limit))])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the runtime is initialized: too late, and nothing to undo
            print("device: TensorFlow's GPU runtime had started: its memory stays as set", file=sys.stderr)
            return


def configure(precision: str = "auto") -> DevicePlan:
    """Plan for the devices the active backend sees under the `precision` setting, apply the plan to this process
    (global dtype policy; TensorFlow's GPU memory) and return it."""
    if keras.backend.backend() == "tensorflow":
        limit_tf_memory(os.environ)  # before anything else asks TensorFlow about its GPUs
    plan = plan_devices(detect(), precision)
    keras.mixed_precision.set_global_policy(plan.precision)
    return plan


# ---------------------------------------------------------------- CLI


def assumed_gpu(text: str) -> Gpu:
    """Return the GPU described by --assume "NAME,CC,GiB", e.g. "Tesla T4,7.5,15"."""
    name, _, rest = text.rpartition(",")
    name, _, cc = name.rpartition(",")
    try:
        capability = parse_capability(cc.strip())
        memory = float(rest)
    except ValueError:
        capability, memory = (0, 0), 0.0
    if not name.strip() or capability == (0, 0) or memory <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME,CC,GiB such as 'Tesla T4,7.5,15', got {text!r}")
    return Gpu(name.strip(), capability, memory)


def plan_json(plan: DevicePlan) -> dict:
    """Return the plan as a JSON-ready dict (compute capabilities as "7.5")."""
    out = asdict(plan)
    out["gpus"] = [{**asdict(g), "capability": f"{g.capability[0]}.{g.capability[1]}"} for g in plan.gpus]
    return out


def report(plan: DevicePlan, assumed: bool) -> str:
    """Return the plan as lines for people: each decision, then why."""
    gpus = [f"  GPU {i}: {gpu.describe()}" for i, gpu in enumerate(plan.gpus)] or ["  no GPU"]
    placed = Counter(w.gpu for w in plan.tune_workers)
    where = ", ".join(f"{n} on the CPU" if gpu is None else f"{n} on GPU {gpu}" for gpu, n in placed.items())
    train = "; ".join(" ".join(f"{k}={v}" for k, v in env.items()) or "this process" for env in plan.train_envs)
    rows = [
        ("precision", plan.precision, plan.reasons["precision"]),
        ("XLA", "on" if plan.jit_compile else "off", plan.reasons["xla"]),
        ("tune", where, plan.reasons["tune"]),
        ("train", train, plan.reasons["train"]),
    ]
    workers = [f"  worker {i + 1}: {' '.join(f'{k}={v}' for k, v in w.env.items())}" for i, w in
               enumerate(plan.tune_workers) if w.env]  # fmt: skip
    lines = [f"{name:<10} {value}\n{'':<10} why: {why}" for name, value, why in rows]
    return "\n".join(
        [f"device: {plan.backend} on {'assumed ' if assumed else ''}{plan.where()}", *gpus, *lines, *workers]
    )


def parse_args(argv: list[str] | None, precision: str) -> argparse.Namespace:
    """Return the parsed command line (`precision`: params.yaml's device.precision, the default)."""
    parser = stage_parser("device", __doc__)
    parser.add_argument(
        "--assume", action="append", type=assumed_gpu, default=[], metavar="NAME,CC,GiB",
        help="plan for this GPU instead of the backend's (repeat for several), e.g. 'Tesla T4,7.5,15'",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=precision, help=f"device.precision (default: {precision})"
    )
    parser.add_argument("--workers", type=int, default=0, help="tuning workers (default: tune's settings)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be at least 0")
    return args


@reports_errors("device")
def main(argv: list[str] | None = None) -> int:
    """Print this machine's plan (or the plan for assumed GPUs) and why; warn about GPUs the backend misses."""
    tune = params.load("tune")
    args = parse_args(argv, params.load("device").precision)
    hardware = detect(tuple(args.assume) if args.assume else None)
    plan = plan_devices(hardware, args.precision, tune.workers_gpu, tune.workers_cpu, args.workers)
    print(json.dumps(plan_json(plan), indent=2) if args.json else report(plan, bool(args.assume)))
    warning = None if args.assume else unseen_gpus(hardware)
    if warning:
        print(f"device: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
