"""Picks the compute device for the active Keras backend (TensorFlow, JAX or PyTorch) and the
fastest settings for it: XLA and bf16 mixed precision on a GPU; on a CPU plain kernels, in bf16
mixed precision where the CPU computes bf16 natively (AMX or AVX512-BF16 on x86, BF16 on Arm),
else float32. params.yaml `device.precision` (auto | float32 | mixed_bfloat16) overrides the choice."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import keras

from pipeline.params import Precision, choices

PRECISIONS = choices(Precision)
# /proc/cpuinfo flags of a CPU with native bf16 arithmetic: Intel AMX tiles and AVX512-BF16 (Sapphire Rapids
# and later Xeons, AMD Zen 4 and later), and the Armv8.6 BF16 extension (Graviton 3, Apple M2 under Linux).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


@dataclass(frozen=True)
class Device:
    """The device Keras trains on and the settings chosen for it."""

    backend: str
    kind: str  # "gpu" or "cpu"
    name: str
    jit_compile: bool
    precision: str
    resident: bool = False  # training images kept on the accelerator (training.ResidentFeed)
    reason: str = ""  # why this precision: "native bf16 (amx_bf16)", "params.yaml device.precision", ...

    def describe(self) -> str:
        """Return a one-line description for logs."""
        jit = "XLA on" if self.jit_compile else "XLA off"
        feed = ", data on the device" if self.resident else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.kind.upper()} ({self.name}) via {self.backend}, {self.precision}{why}, {jit}{feed}"


def gpu_name() -> str | None:
    """Return the first GPU's name for the active backend, or None when there is none."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        return gpus[0].name if gpus else None
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return gpus[0].device_kind if gpus else None
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return None


def gpu_present() -> bool:
    """Return whether the active backend sees a GPU, without reserving its memory (JAX would take 75%)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return gpu_name() is not None


def sharing_env(processes: int) -> dict[str, str]:
    """Return the environment that caps each of `processes` JAX processes at an equal share of one GPU."""
    return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{(90 // processes) / 100:.2f}"} if processes > 1 else {}


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


def resolve_precision(setting: str, gpu: bool, flags: frozenset[str]) -> tuple[str, str]:
    """Return the Keras dtype policy for `setting` (auto | float32 | mixed_bfloat16) on a GPU or a CPU with
    `flags`, and why it was chosen."""
    if setting not in PRECISIONS:
        raise ValueError(f"device.precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting != "auto":
        return setting, "params.yaml device.precision"
    if gpu:
        return "mixed_bfloat16", "GPU"
    flag = bf16_flag(flags)
    if flag:
        return "mixed_bfloat16", f"native bf16: {flag}"
    return "float32", f"no native bf16 on this {platform.machine() or 'CPU'}"


def clear_session() -> None:
    """Free Keras' global state between models (keras.backend.clear_session), keeping the global precision policy:
    Keras resets it to float32 there, which silently turned every later tuning trial and compared model float32."""
    policy = keras.config.dtype_policy().name
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)


def configure(precision: str = "auto") -> Device:
    """Detect the device, set the global precision policy for `precision` (auto | float32 | mixed_bfloat16),
    and return the chosen settings."""
    name = gpu_name()
    backend = keras.backend.backend()
    policy, reason = resolve_precision(precision, name is not None, cpu_flags())
    keras.mixed_precision.set_global_policy(policy)
    # JAX takes batches of device tensors from a PyDataset as they are (on its CPU too, where this is the
    # same code path as on a GPU); TensorFlow and PyTorch would route them through tf.data or a DataLoader,
    # so there the NumPy path with the backends' own prefetching stays
    resident = backend == "jax"
    if name is None:
        cores = f"{os.cpu_count()} cores"
        return Device(backend, "cpu", cores, jit_compile=False, precision=policy, resident=resident, reason=reason)
    return Device(
        backend, "gpu", name, jit_compile=backend != "torch", precision=policy, resident=resident, reason=reason
    )
