"""Precision per device: bf16 mixed precision where the hardware computes bf16 natively, float32 elsewhere,
params.yaml's device.precision overriding both; a bf16-trained model saves, reloads and predicts as trained."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import device
from pipeline.lib.fitting import EpochSampler, FitSettings, fit, predict_probs
from pipeline.lib.models import load_model
from tests.conftest import synthetic_digits

X86_BF16 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile avx512_bf16\n"
X86_PLAIN = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve sve2 bf16 i8mm\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"


@pytest.fixture(autouse=True)
def restore_policy():
    """Leave the global dtype policy as each test found it."""
    before = keras.config.dtype_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize(
    ("cpuinfo", "flag"),
    [(X86_BF16, "amx_bf16"), (X86_PLAIN, None), (ARM_BF16, "bf16"), (ARM_PLAIN, None), ("", None)],
)
def test_cpu_flags_find_native_bf16_on_x86_and_arm(tmp_path: Path, cpuinfo: str, flag: str | None):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert device.bf16_flag(device.cpu_flags(path)) == flag


def test_cpu_flags_of_a_machine_without_proc_cpuinfo_are_empty(tmp_path: Path):
    assert device.cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(
    ("setting", "gpu", "cpuinfo", "policy"),
    [
        ("auto", False, X86_BF16, "mixed_bfloat16"),
        ("auto", False, X86_PLAIN, "float32"),
        ("auto", False, ARM_BF16, "mixed_bfloat16"),
        ("auto", True, X86_PLAIN, "mixed_bfloat16"),
        ("float32", False, X86_BF16, "float32"),
        ("float32", True, X86_BF16, "float32"),
        ("mixed_bfloat16", False, X86_PLAIN, "mixed_bfloat16"),
    ],
)
def test_precision_resolution(tmp_path: Path, setting: str, gpu: bool, cpuinfo: str, policy: str):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    chosen, reason = device.resolve_precision(setting, gpu, device.cpu_flags(path))
    assert chosen == policy
    assert reason  # the log line says why
    if setting != "auto":
        assert "device.precision" in reason


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match=r"device.precision must be one of auto, float32, mixed_bfloat16"):
        device.resolve_precision("float16", False, frozenset())


@pytest.mark.parametrize("setting", ["float32", "mixed_bfloat16"])
def test_configure_sets_the_global_policy_and_describes_it(setting: str):
    chosen = device.configure(setting)
    assert chosen.precision == setting
    assert keras.config.dtype_policy().name == setting
    assert setting in chosen.describe()


def test_configure_auto_follows_this_machines_cpu():
    chosen = device.configure("auto")
    if chosen.kind == "cpu":
        native = device.bf16_flag(device.cpu_flags()) is not None
        assert chosen.precision == ("mixed_bfloat16" if native else "float32")


def bf16_trained(name: str) -> tuple[keras.Model, np.ndarray]:
    """Return model `name` trained 2 epochs under bf16 mixed precision on synthetic digits, and its images."""
    device.configure("mixed_bfloat16")
    x, y = synthetic_digits(120)
    sampler = EpochSampler(x, y, np.arange(90), x[:0], np.zeros(0, np.int32), seed=0)
    settings = FitSettings(
        model=name, epochs=2, batch_size=16, learning_rate=0.003, warmup_epochs=0.5, dropout_conv=0.25,
        dropout_dense=0.5, aug_prob=0.0, label_smoothing=0.0,
    )  # fmt: skip
    keras.utils.set_random_seed(0)
    model, _ = fit(replace(settings, model=name), sampler, (x[90:], y[90:]))
    return model, x


@pytest.mark.parametrize("name", ["dropout_cnn", "bn_cnn"])
def test_a_bf16_model_keeps_float32_outputs_and_reloads_in_safe_mode(tmp_path: Path, name: str):
    model, x = bf16_trained(name)
    assert model.get_layer("scale").compute_dtype == "bfloat16"
    assert model.get_layer("probs").compute_dtype == "float32"  # softmax and loss in float32
    assert all(w.dtype == "float32" for w in model.weights)  # mixed precision keeps float32 variables
    in_memory = predict_probs(model, x)
    model.save(tmp_path / "m.keras")
    same_policy = predict_probs(load_model(str(tmp_path / "m.keras")), x)
    np.testing.assert_allclose(same_policy, in_memory, atol=1e-6)
    keras.mixed_precision.set_global_policy("float32")
    reloaded = load_model(str(tmp_path / "m.keras"))
    assert reloaded.get_layer("scale").compute_dtype == "float32"  # predictions follow device.precision
    in_float32 = predict_probs(reloaded, x)
    # measured: at most 3e-5 (dropout_cnn) and 1.7e-3 (bn_cnn) apart on these images; bf16 keeps 8 bits of mantissa
    np.testing.assert_allclose(in_float32, in_memory, atol=1e-2)
    assert np.mean(in_float32.argmax(1) == in_memory.argmax(1)) >= 0.98


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "float32"])
def test_clear_session_keeps_the_precision_policy(policy: str):
    keras.mixed_precision.set_global_policy(policy)
    device.clear_session()
    assert keras.config.dtype_policy().name == policy
    assert device.configure(policy).precision == policy
