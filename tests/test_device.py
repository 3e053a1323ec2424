"""The device plan, on CPU with the device lists of the GPUs Kagglers train on: precision by compute capability
(float32 on a P100, float16 mixed precision on a V100 or T4, bf16 from an A100, L4 or H100; bf16 on a CPU only where
it computes bf16 natively), params.yaml's device.precision overriding it; XLA; tuning workers spread over the GPUs
with their memory shares (checked by jax's own reader of them); the CLI. Then the GPU-only code paths that do run on
a CPU: a fit under mixed_float16 with Keras' loss scaling, weight averaging and XLA, reloaded under every policy."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import device as cli
from pipeline.lib import device
from pipeline.lib.device import Gpu, Hardware, plan_devices, process_env
from pipeline.lib.fitting import EpochSampler, fit, predict_probs
from pipeline.lib.members import FitSettings
from pipeline.lib.models import load_model
from tests.conftest import synthetic_digits

X86_BF16 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile avx512_bf16\n"
X86_PLAIN = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve sve2 bf16 i8mm\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32\n"

P100 = Gpu("Tesla P100-PCIE-16GB", (6, 0), 16.0)
V100 = Gpu("Tesla V100-SXM2-16GB", (7, 0), 16.0)
T4 = Gpu("Tesla T4", (7, 5), 15.0)
L4 = Gpu("NVIDIA L4", (8, 9), 22.5)
A100 = Gpu("NVIDIA A100-SXM4-40GB", (8, 0), 40.0)
H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0), 80.0)
PLAIN_FLAGS = frozenset({"sse2", "avx2", "avx512f"})
BF16_FLAGS = frozenset({"sse2", "avx2", "amx_bf16"})


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
    plan = plan_devices(Hardware("tensorflow", (), device.cpu_flags(path)))
    assert plan.precision == ("mixed_bfloat16" if flag else "float32")
    assert (f"native bf16: {flag}" if flag else "no native bf16") in plan.reasons["precision"]


def test_cpu_flags_of_a_machine_without_proc_cpuinfo_are_empty(tmp_path: Path):
    assert device.cpu_flags(tmp_path / "absent") == frozenset()


# ---------------------------------------------------------------- the plan, machine by machine (TensorFlow)

# machine: (GPUs, CPU flags, policy, XLA, GPU of each of the tuning workers at 2 per GPU)
MACHINES = {
    "Kaggle P100": ((P100,), PLAIN_FLAGS, "float32", True, [0, 0]),
    "Colab T4": ((T4,), PLAIN_FLAGS, "mixed_float16", True, [0, 0]),
    "Kaggle 2 x T4": ((T4, T4), PLAIN_FLAGS, "mixed_float16", True, [0, 1, 0, 1]),
    "V100": ((V100,), PLAIN_FLAGS, "mixed_float16", True, [0, 0]),
    "L4": ((L4,), PLAIN_FLAGS, "mixed_bfloat16", True, [0, 0]),
    "A100": ((A100,), PLAIN_FLAGS, "mixed_bfloat16", True, [0, 0]),
    "H100": ((H100,), BF16_FLAGS, "mixed_bfloat16", True, [0, 0]),
    "P100 + T4 (the slower decides)": ((T4, P100), PLAIN_FLAGS, "float32", True, [0, 1, 0, 1]),
    "no GPU, CPU with AMX": ((), BF16_FLAGS, "mixed_bfloat16", False, [None] * 3),
    "no GPU, plain CPU": ((), PLAIN_FLAGS, "float32", False, [None] * 3),
    "no GPU, Arm with BF16": ((), frozenset({"asimd", "bf16"}), "mixed_bfloat16", False, [None] * 3),
}


@pytest.mark.parametrize("machine", MACHINES)
def test_the_plan_of_each_machine(machine: str):
    gpus, flags, policy, xla, worker_gpus = MACHINES[machine]
    hardware = Hardware("tensorflow", gpus, flags, cores=4, machine="x86_64")
    plan = plan_devices(hardware, "auto", workers_per_gpu=2, workers_cpu=3)
    assert plan.precision == policy
    assert plan.jit_compile is xla
    assert [w.gpu for w in plan.tune_workers] == worker_gpus
    assert set(plan.reasons) == {"precision", "xla", "tune"} and all(plan.reasons.values())
    assert policy in plan.describe() and plan.reasons["precision"] in plan.describe()
    if gpus:
        assert gpus[0].name in plan.describe() and "/physical_device" not in plan.describe()
        assert f"compute capability {min(g.capability for g in gpus)[0]}." in plan.reasons["precision"]
    for worker in plan.tune_workers:
        if worker.gpu is None:
            assert worker.env == {} and worker.memory_fraction is None
            continue
        # two workers per GPU: each on its own GPU alone, capped at its share of that GPU's memory in MB
        assert worker.env["CUDA_VISIBLE_DEVICES"] == str(worker.gpu)
        assert worker.memory_fraction == 0.45
        megabytes = int(worker.env[device.TF_MEMORY_ENV])
        assert megabytes == int(0.45 * gpus[worker.gpu].memory_gib * 1024)


@pytest.mark.parametrize(
    ("setting", "gpus", "flags", "policy"),
    [
        ("float32", (H100,), BF16_FLAGS, "float32"),
        ("mixed_bfloat16", (T4,), PLAIN_FLAGS, "mixed_bfloat16"),
        ("mixed_float16", (), PLAIN_FLAGS, "mixed_float16"),
        ("mixed_float16", (A100,), PLAIN_FLAGS, "mixed_float16"),
        ("float32", (), BF16_FLAGS, "float32"),
    ],
)
def test_an_explicit_precision_wins_and_says_what_auto_would_do(setting, gpus, flags, policy):
    plan = plan_devices(Hardware("tensorflow", gpus, flags), setting)
    auto = plan_devices(Hardware("tensorflow", gpus, flags), "auto").precision
    assert plan.precision == policy
    assert "device.precision" in plan.reasons["precision"]
    assert (f"auto would choose {auto}" in plan.reasons["precision"]) == (auto != policy)


def test_jax_caps_memory_by_the_current_name():
    plan = plan_devices(Hardware("jax", (T4, T4)), "auto", workers_per_gpu=3)
    assert plan.jit_compile and plan.precision == "mixed_float16"
    assert [w.gpu for w in plan.tune_workers] == [0, 1, 0, 1, 0, 1]
    for worker in plan.tune_workers:
        assert worker.env == {"CUDA_VISIBLE_DEVICES": str(worker.gpu), "XLA_CLIENT_MEM_FRACTION": "0.30"}


def test_pytorch_runs_without_xla_and_without_a_memory_cap():
    plan = plan_devices(Hardware("torch", (T4,)), "auto", workers_per_gpu=2)
    assert not plan.jit_compile and "torch" in plan.reasons["xla"]
    assert [w.env for w in plan.tune_workers] == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2
    assert "cannot be capped" in plan.reasons["tune"]


def test_tensorflow_without_the_gpus_memory_lets_it_grow_and_says_so():
    plan = plan_devices(Hardware("tensorflow", (Gpu("Tesla T4", (7, 5), None),)), "auto", workers_per_gpu=2)
    assert [w.env for w in plan.tune_workers] == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2
    assert "cannot be capped" in plan.reasons["tune"]


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 5, 9])
def test_workers_spread_over_the_gpus_split_each_ones_memory(workers: int):
    plan = plan_devices(Hardware("jax", (T4, T4)), "auto", workers=workers)
    assert len(plan.tune_workers) == workers
    for gpu in (0, 1):
        mine = [w for w in plan.tune_workers if w.gpu == gpu]
        assert abs(len(mine) - workers / 2) <= 0.5  # round-robin: as even as it gets
        shares = [float(w.env.get("XLA_CLIENT_MEM_FRACTION", 1.0)) for w in mine]
        assert len(mine) < 2 or (len(set(shares)) == 1 and sum(shares) <= device.SHARED_MEMORY)
        assert len(mine) != 1 or shares == [1.0]  # a worker alone on its GPU is not capped


# ---------------------------------------------------------------- a child's environment: the user's settings win


def jax_gpu_options(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict:
    """Return the options jax's GPU client would be created with in a process whose environment is `env`."""
    from jaxlib import xla_client

    for name in device.JAX_MEMORY_ENVS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dict(xla_client.generate_pjrt_gpu_plugin_options())


@pytest.mark.parametrize(
    ("user", "fraction"),
    [({}, 0.45), ({"XLA_CLIENT_MEM_FRACTION": "0.2"}, 0.2), ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3"}, 0.3)],
)
def test_a_jax_workers_memory_share_reaches_jax_without_clashing_with_the_users(user, fraction, monkeypatch):
    worker = plan_devices(Hardware("jax", (T4,)), "auto", workers_per_gpu=2).tune_workers[1]
    env = process_env({"PATH": "/bin", **user}, worker.env)
    assert env["PATH"] == "/bin" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert jax_gpu_options(env, monkeypatch)["memory_fraction"] == pytest.approx(fraction)  # jax raises on both


def test_a_gpu_index_maps_through_the_users_own_visible_devices():
    assert process_env({"CUDA_VISIBLE_DEVICES": "2,3"}, {"CUDA_VISIBLE_DEVICES": "1"})["CUDA_VISIBLE_DEVICES"] == "3"
    assert process_env({"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "1"})["CUDA_VISIBLE_DEVICES"] == "1"
    assert process_env({}, {"CUDA_VISIBLE_DEVICES": "0"}) == {"CUDA_VISIBLE_DEVICES": "0"}


def test_a_users_tensorflow_memory_cap_is_kept():
    worker = plan_devices(Hardware("tensorflow", (T4,)), "auto", workers_per_gpu=2).tune_workers[0]
    assert process_env({device.TF_MEMORY_ENV: "1000"}, worker.env)[device.TF_MEMORY_ENV] == "1000"
    assert process_env({}, worker.env)[device.TF_MEMORY_ENV] == worker.env[device.TF_MEMORY_ENV]


# ---------------------------------------------------------------- python -m pipeline.device


@pytest.mark.parametrize(
    ("assumed", "policy", "gpus"),
    [
        (["Tesla T4,7.5,15", "Tesla T4,7.5,15"], "mixed_float16", {0, 1}),
        (["Tesla P100-PCIE-16GB,6.0,16"], "float32", {0}),
        (["NVIDIA H100 80GB HBM3,9.0,80"], "mixed_bfloat16", {0}),
    ],
)
def test_the_cli_plans_for_assumed_gpus(project: Path, capsys, assumed: list[str], policy: str, gpus: set[int]):
    argv = ["--json", "--precision", "auto", *[arg for gpu in assumed for arg in ("--assume", gpu)]]
    assert cli.main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["precision"] == policy and plan["jit_compile"] is (keras.backend.backend() != "torch")
    assert [g["name"] for g in plan["gpus"]] == [a.rsplit(",", 2)[0] for a in assumed]
    assert plan["gpus"][0]["capability"] == assumed[0].split(",")[1]
    assert {w["gpu"] for w in plan["tune_workers"]} == gpus and "train_envs" not in plan


def test_the_cli_says_why_and_refuses_a_malformed_gpu(project: Path, capsys):
    assert cli.main(["--assume", "Tesla T4,7.5,15", "--precision", "float32"]) == 0
    out = capsys.readouterr().out
    assert "assumed GPU (Tesla T4)" in out and "float32" in out and "auto would choose mixed_float16" in out
    assert "train      one unit per process, on GPU 0" in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--assume", "Tesla T4,7.5"])
    assert exit_.value.code == 2 and "NAME,CC,GiB" in capsys.readouterr().err


def fake_nvidia_smi(folder: Path, rows: str) -> None:
    """Put an `nvidia-smi` in `folder` that lists `rows` (name, MiB) as the real one's CSV query does."""
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{rows}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_a_gpu_that_nvidia_smi_lists_and_the_backend_misses_is_a_warning(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: nothing to say
    hardware = Hardware("tensorflow", ())
    assert device.nvidia_smi_gpus() is None and device.unseen_gpus(hardware) is None
    fake_nvidia_smi(tmp_path, "Tesla T4, 15360\\nTesla T4, 15360\\n")
    assert device.nvidia_smi_gpus() == [("Tesla T4", 15.0), ("Tesla T4", 15.0)]
    warning = device.unseen_gpus(hardware)
    assert warning and "2 GPU(s) (Tesla T4, Tesla T4)" in warning and "tensorflow sees 0" in warning
    assert device.unseen_gpus(Hardware("tensorflow", (T4, T4))) is None


def test_this_machines_plan_is_what_the_backend_reports(project: Path, capsys):
    assert cli.main(["--json", "--precision", "auto"]) == 0  # the test profile pins float32
    plan = json.loads(capsys.readouterr().out)
    hardware = device.detect()
    assert plan["backend"] == keras.backend.backend() and len(plan["gpus"]) == len(hardware.gpus)
    if not hardware.gpus:
        assert plan["jit_compile"] is False and all(w["gpu"] is None for w in plan["tune_workers"])
        native = bool(device.cpu_flags() & device.BF16_CPU_FLAGS)
        assert plan["precision"] == ("mixed_bfloat16" if native else "float32")


# ---------------------------------------------------------------- configure: the plan applied to this process


@pytest.mark.parametrize("setting", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_configure_sets_the_global_policy_and_describes_it(setting: str):
    chosen = device.configure(setting)
    assert chosen.precision == setting
    assert keras.config.dtype_policy().name == setting
    assert setting in chosen.describe()


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16", "float32"])
def test_clear_session_keeps_the_precision_policy(policy: str):
    keras.mixed_precision.set_global_policy(policy)
    device.clear_session()
    assert keras.config.dtype_policy().name == policy
    assert device.configure(policy).precision == policy


# ---------------------------------------------------------------- fits under mixed precision, reloaded


SETTINGS = FitSettings(
    model="dropout_cnn", epochs=2, batch_size=16, learning_rate=0.003, warmup_epochs=0.5, dropout_conv=0.25,
    dropout_dense=0.5, aug_prob=0.0, label_smoothing=0.0,
)  # fmt: skip


def trained(name: str, plan: device.DevicePlan, **changes: object) -> tuple[keras.Model, list[dict], np.ndarray]:
    """Return model `name` trained under `plan` (its policy set globally) on synthetic digits, its history and its
    images."""
    keras.mixed_precision.set_global_policy(plan.precision)
    x, y = synthetic_digits(120)
    sampler = EpochSampler(x, y, np.arange(90), x[:0], np.zeros(0, np.int32), seed=0)
    keras.utils.set_random_seed(0)
    model, history = fit(replace(SETTINGS, model=name, **changes), sampler, (x[90:], y[90:]), plan)
    return model, history, x


@pytest.mark.parametrize("name", ["dropout_cnn", "bn_cnn"])
def test_a_bf16_model_keeps_float32_outputs_and_reloads_in_safe_mode(tmp_path: Path, name: str):
    model, _, x = trained(name, plan_devices(Hardware(keras.backend.backend(), ()), "mixed_bfloat16"))
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


@pytest.fixture(scope="module")
def t4_fit() -> tuple[keras.Model, list[dict], np.ndarray]:
    """A model trained for three epochs on the plan of a T4 with this backend (mixed_float16, XLA on), weight
    averaging on."""
    before = keras.config.dtype_policy().name
    plan = plan_devices(Hardware(keras.backend.backend(), (T4,)), "auto")
    assert plan.precision == "mixed_float16" and plan.jit_compile == (keras.backend.backend() != "torch")
    keras.mixed_precision.set_global_policy(plan.precision)
    x, y = synthetic_digits(120)
    sampler = EpochSampler(x, y, np.arange(90), x[:0], np.zeros(0, np.int32), seed=0)
    keras.utils.set_random_seed(0)
    model, history = fit(replace(SETTINGS, epochs=3, ema_momentum=0.9), sampler, (x[90:], y[90:]), plan)
    keras.mixed_precision.set_global_policy(before)
    return model, history, x


def test_mixed_float16_scales_the_loss_and_trains_under_xla(t4_fit):
    model, history, _ = t4_fit
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras added loss scaling
    assert model.get_layer("scale").compute_dtype == "float16" and model.get_layer("probs").compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    assert len(history) == 3 and all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in history)
    assert history[-1]["val_accuracy"] > 0.5, history  # the bar position is easy to learn, also in float16


def test_weight_averaging_reaches_through_the_loss_scale_wrapper(t4_fit):
    model, _, _ = t4_fit
    optimizer = model.optimizer.inner_optimizer
    assert optimizer.use_ema
    assert not model.optimizer.use_ema  # the wrapper's own flag: reading it turned averaging off
    returned = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)  # the averages, once more
    averaged = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    for got, want in zip(returned, averaged, strict=True):
        np.testing.assert_array_equal(got, want)  # fit returned the averaged weights


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_a_float16_model_reloads_under_any_policy(tmp_path: Path, t4_fit, policy: str):
    model, _, x = t4_fit
    keras.mixed_precision.set_global_policy("mixed_float16")
    in_memory = predict_probs(model, x)
    model.save(tmp_path / "m.keras")
    keras.mixed_precision.set_global_policy(policy)
    reloaded = load_model(str(tmp_path / "m.keras"))
    assert reloaded.get_layer("scale").compute_dtype == keras.mixed_precision.Policy(policy).compute_dtype
    probs = predict_probs(reloaded, x)
    np.testing.assert_allclose(probs, in_memory, atol=2e-2)  # float16 keeps 11 bits of mantissa, bf16 8
    assert np.mean(probs.argmax(1) == in_memory.argmax(1)) >= 0.98


def test_jit_compile_runs_on_this_cpu_with_tensorflow(t4_fit):
    model, history, _ = t4_fit
    if keras.backend.backend() != "tensorflow":
        pytest.skip("jit_compile is TensorFlow's XLA switch")
    assert model.jit_compile and len(history) == 3  # trained with XLA, as on a GPU
