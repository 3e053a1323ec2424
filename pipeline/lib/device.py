"""The device plan: every device decision of the stages (precision, XLA, where each tuning worker runs), made by the
pure `plan_devices` from what the Keras backend reports (each GPU's name, compute capability, memory) and the CPU."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import keras

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})  # /proc/cpuinfo: Intel AMX, AVX512-BF16; Arm BF16
PRECISIONS = (  # (lowest compute capability, policy, why): the first that the slowest GPU reaches
    ((8, 0), "mixed_bfloat16", "bf16 tensor cores"),  # Ampere and later (A100 8.0, L4 8.9, H100 9.0)
    ((7, 0), "mixed_float16", "float16 tensor cores, no bf16 units"),  # Volta and Turing (V100 7.0, T4 7.5)
    ((0, 0), "float32", "no tensor cores, bf16 would be emulated"),  # Pascal (P100 6.0) and older
)
SHARED_MEMORY = 0.90  # the part of a GPU's memory that the tuning workers sharing it split between them
TF_MEMORY_ENV = "DIGIT_TF_GPU_MEMORY_MB"  # a TensorFlow worker's GPU memory cap in MB (read by `configure`)
JAX_MEMORY_ENVS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")  # jax refuses both set at once


@dataclass(frozen=True)
class Gpu:
    """One GPU as the backend reports it: compute capability (0, 0) and memory None when unknown."""

    name: str
    capability: tuple[int, int]
    memory_gib: float | None

    def describe(self) -> str:
        """Return e.g. "Tesla T4 (compute capability 7.5, 15 GiB)"."""
        memory = f", {self.memory_gib:g} GiB" if self.memory_gib else ""
        return f"{self.name} (compute capability {self.capability[0]}.{self.capability[1]}{memory})"


@dataclass(frozen=True)
class Hardware:
    """What the plan is made from: the Keras backend, its GPUs and the CPU (`machine`: platform.machine())."""

    backend: str
    gpus: tuple[Gpu, ...]
    cpu_flags: frozenset[str] = frozenset()
    cores: int = 1
    machine: str = "CPU"


@dataclass(frozen=True)
class TuneWorker:
    """One tuning worker process: its GPU (None on a CPU), its share of that GPU's memory (None: all) and its env."""

    gpu: int | None
    memory_fraction: float | None
    env: dict[str, str]


@dataclass(frozen=True)
class DevicePlan:
    """Every device decision of the stages, and why (`reasons`: precision, xla, tune)."""

    backend: str
    gpus: tuple[Gpu, ...]
    cores: int
    precision: str  # the Keras dtype policy: float32, mixed_float16 or mixed_bfloat16
    jit_compile: bool  # XLA-compiled train steps
    tune_workers: tuple[TuneWorker, ...]
    reasons: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """Return a one-line description for logs."""
        jit = "XLA on" if self.jit_compile else "XLA off"
        return f"{self.where()} via {self.backend}, {self.precision} ({self.reasons['precision']}), {jit}"

    def where(self) -> str:
        """Return e.g. "GPU (2 x Tesla T4)" or "CPU (4 cores)"."""
        cards = ", ".join(name if n == 1 else f"{n} x {name}" for name, n in Counter(g.name for g in self.gpus).items())
        return f"GPU ({cards})" if cards else f"CPU ({self.cores} cores)"


def plan_devices(
    hardware: Hardware, precision: str = "auto", workers_per_gpu: int = 1, workers_cpu: int = 1, workers: int = 0
) -> DevicePlan:
    """Return the plan for `hardware` under `precision`, with `workers` tuning workers (0: tune's settings)."""
    gpus, backend = hardware.gpus, hardware.backend
    if gpus:  # the slowest GPU decides, so that every process computes alike
        major, minor = min(gpu.capability for gpu in gpus)
        auto, why = next((policy, why) for cc, policy, why in PRECISIONS if (major, minor) >= cc)
        why = f"compute capability {major}.{minor}: {why}"
    elif flag := min(hardware.cpu_flags & BF16_CPU_FLAGS, default=None):
        auto, why = "mixed_bfloat16", f"native bf16: {flag}"
    else:
        auto, why = "float32", f"no native bf16 on this {hardware.machine}"
    if precision != "auto":
        why = "params.yaml device.precision" + (f"; auto would choose {auto}" if precision != auto else "")
    if not gpus:
        jit, jit_why = False, "CPU: plain kernels (XLA measured several times slower here)"
    elif backend == "torch":
        jit, jit_why = False, "PyTorch: Keras' jit_compile is not used with torch"
    else:
        jit, jit_why = True, f"GPU via {backend}: XLA-compiled steps"
    tune, tune_why = tune_workers(hardware, workers or (workers_per_gpu * len(gpus) if gpus else workers_cpu))
    reasons = {"precision": why, "xla": jit_why, "tune": tune_why}
    return DevicePlan(backend, gpus, hardware.cores, auto if precision == "auto" else precision, jit, tune, reasons)


def tune_workers(hardware: Hardware, count: int) -> tuple[tuple[TuneWorker, ...], str]:
    """Return `count` workers round-robin over the GPUs, those sharing one splitting SHARED_MEMORY of it, and why."""
    gpus, backend = hardware.gpus, hardware.backend
    if not gpus:
        why = f"no GPU: {count} worker(s) on the CPU (tune.workers_cpu or --workers)"
        return tuple(TuneWorker(None, None, {}) for _ in range(count)), why
    on_gpu = Counter(i % len(gpus) for i in range(count))
    workers = []
    for gpu in (i % len(gpus) for i in range(count)):
        share = int(SHARED_MEMORY * 100) // on_gpu[gpu] / 100 if on_gpu[gpu] > 1 else None
        env, memory = {"CUDA_VISIBLE_DEVICES": str(gpu)}, gpus[gpu].memory_gib
        if share and backend == "jax":  # PyTorch cannot be capped from outside
            env["XLA_CLIENT_MEM_FRACTION"] = f"{share:.2f}"
        elif share and backend == "tensorflow" and memory:
            env[TF_MEMORY_ENV] = str(int(share * memory * 1024))
        workers.append(TuneWorker(gpu, share, env))
    why = f"{count} worker(s) round-robin over {len(gpus)} GPU(s) (tune.workers_gpu per GPU)"
    if shares := {w.memory_fraction for w in workers if w.memory_fraction}:
        capped = backend == "jax" or (backend == "tensorflow" and all(g.memory_gib for g in gpus))
        cap = "each capped at" if capped else f"{backend} cannot be capped here, each meant for"
        why += f"; those sharing a GPU {cap} {min(shares):.0%} of its memory"
    return tuple(workers), why


def process_env(base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Return `base` (os.environ) with the plan's `env` over it, the user's GPU list and memory caps winning."""
    out, visible = {**base}, [d.strip() for d in base.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    users_jax = any(base.get(name) for name in JAX_MEMORY_ENVS)  # jax refuses two of them
    for key, value in env.items():
        if key == "CUDA_VISIBLE_DEVICES" and base.get(key, "").strip():  # an index within the user's GPUs
            out[key] = visible[int(value)] if int(value) < len(visible) else value
        elif not base.get(key) and not (key in JAX_MEMORY_ENVS and users_jax):
            out[key] = value
    return out


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Return the feature flags of the first CPU in `cpuinfo` (x86 "flags", Arm "Features"); none without it."""
    try:
        rows = [line.partition(":") for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return frozenset()
    return frozenset(next((v for k, _, v in rows if k.strip().lower() in ("flags", "features")), "").split())


def parse_capability(value: object) -> tuple[int, int]:
    """Return a compute capability given as (7, 5), "7.5" or None as (major, minor); (0, 0) when unknown."""
    parts = value.split(".", 1) if isinstance(value, str) else value
    return (int(parts[0]), int(parts[1])) if isinstance(parts, tuple | list) and len(parts) == 2 else (0, 0)


def nvidia_smi_gpus() -> list[tuple[str, float]] | None:
    """Return (name, GiB) of each GPU nvidia-smi lists, or None where there is no working nvidia-smi."""
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):  # also: no nvidia-smi on the PATH
        return None
    rows = [line.rsplit(",", 1) for line in done.stdout.strip().splitlines() if "," in line]
    return [(name.strip(), round(float(mib) / 1024, 1)) for name, mib in rows if mib.strip().isdigit()]


def detect(gpus: tuple[Gpu, ...] | None = None) -> Hardware:
    """Return this machine's hardware: the GPUs the Keras backend sees (not starting it), or the assumed `gpus`."""
    backend, found = keras.backend.backend(), []
    if gpus is None and backend == "tensorflow":
        import tensorflow as tf

        details = [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]
        found = [(d.get("device_name", "GPU"), d.get("compute_capability")) for d in details]
    elif gpus is None and backend == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # look without reserving memory
        import jax

        found = [(d.device_kind, getattr(d, "compute_capability", None)) for d in jax.devices() if d.platform == "gpu"]
    elif gpus is None and backend == "torch":
        import torch

        props = map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))
        found = [(p.name, (p.major, p.minor)) for p in props]
    if gpus is None:  # the memory from nvidia-smi
        memory = dict(nvidia_smi_gpus() or [])
        gpus = tuple(Gpu(name, parse_capability(cc), memory.get(name)) for name, cc in found)
    return Hardware(backend, gpus, cpu_flags(), os.cpu_count() or 1, platform.machine() or "CPU")


def unseen_gpus(hardware: Hardware) -> str | None:
    """Return a warning when nvidia-smi lists more GPUs than the backend sees, else None (also without nvidia-smi)."""
    listed, backend = nvidia_smi_gpus() or [], hardware.backend
    if len(listed) <= len(hardware.gpus):
        return None
    hidden = "" if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is None else f" (CUDA_VISIBLE_DEVICES={visible})"
    names, sees = ", ".join(name for name, _ in listed), f"{backend} sees {len(hardware.gpus)}{hidden}"
    return f"nvidia-smi lists {len(listed)} GPU(s) ({names}) but {sees}: is the installed {backend} built with CUDA?"


def clear_session() -> None:
    """Free Keras' global state between models, keeping the dtype policy (Keras resets it to float32 there)."""
    policy = keras.config.dtype_policy().name
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)


def configure(precision: str = "auto") -> DevicePlan:
    """Plan for this machine under `precision`, apply the plan to this process (dtype policy, TF memory), return it."""
    if keras.backend.backend() == "tensorflow":  # before anything else asks TensorFlow about its GPUs
        import tensorflow as tf

        limit = os.environ.get(TF_MEMORY_ENV, "").strip()  # a cap in MB, else memory that grows
        try:
            for gpu in tf.config.list_physical_devices("GPU"):
                if limit:
                    tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(int(limit))])
                else:
                    tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the runtime is initialized: too late, and nothing to undo
            print("device: TensorFlow's GPU runtime had started: its memory stays as set", file=sys.stderr)
    plan = plan_devices(detect(), precision)
    keras.mixed_precision.set_global_policy(plan.precision)
    return plan
