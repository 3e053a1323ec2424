"""Picks the compute device for the active Keras backend (TensorFlow, JAX or PyTorch) and the
fastest settings for it: XLA and bf16 mixed precision on a GPU, plain kernels on a CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras


@dataclass(frozen=True)
class Device:
    """The device Keras trains on and the settings chosen for it."""

    backend: str
    kind: str  # "gpu" or "cpu"
    name: str
    jit_compile: bool
    precision: str
    resident: bool = False  # training images kept on the accelerator (training.ResidentFeed)

    def describe(self) -> str:
        """Return a one-line description for logs."""
        jit = "XLA on" if self.jit_compile else "XLA off"
        feed = ", data on the device" if self.resident else ""
        return f"{self.kind.upper()} ({self.name}) via {self.backend}, {self.precision}, {jit}{feed}"


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


def configure(mixed_precision: bool = True) -> Device:
    """Detect the device, set the global precision policy, and return the chosen settings."""
    name = gpu_name()
    backend = keras.backend.backend()
    # JAX takes batches of device tensors from a PyDataset as they are (on its CPU too, where this is the
    # same code path as on a GPU); TensorFlow and PyTorch would route them through tf.data or a DataLoader,
    # so there the NumPy path with the backends' own prefetching stays
    resident = backend == "jax"
    if name is None:
        keras.mixed_precision.set_global_policy("float32")
        cores = f"{os.cpu_count()} cores"
        return Device(backend, "cpu", cores, jit_compile=False, precision="float32", resident=resident)
    policy = "mixed_bfloat16" if mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return Device(backend, "gpu", name, jit_compile=backend != "torch", precision=policy, resident=resident)
