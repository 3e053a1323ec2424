"""The benchmark's table: every figure present beside its reference, ratios positive (no timing assertions)."""

from __future__ import annotations

import json
import math
import zipfile

import keras
import numpy as np

from pipeline import paths
from pipeline.lib.device import Gpu, Hardware, plan_devices
from pipeline.tools import bench


def test_bench_core_measures_every_figure_with_a_reference(project):
    raw = project / "data" / "raw"
    zipped = project / "digits.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(raw / "train.csv", "train.csv")
        zf.write(raw / "test.csv", "test.csv")
    setup = bench.setup_from_params(epochs=2, device=None)
    logs = []
    table = bench.run_bench(32, zipped, setup, stages=("ingest", "augment"), log=logs.append)
    figures = [r["figure"] for r in table]
    assert figures[:2] == ["training", "inference + TTA"]
    assert figures[2:6] == [
        "training, bf16",
        "training, bf16, CPU time",
        "inference, bf16",
        "inference, bf16, CPU time",
    ]
    assert {table[k]["reference_name"] for k in range(2, 6)} == {"float32"}
    assert table[3]["unit"] == table[5]["unit"] == "images/CPU-s"
    assert figures[6].startswith("augmentation (")
    assert figures[7:] == ["ingest (parse + validate)", "peak memory: ingest", "peak memory: augment"]
    for r in table:
        assert r["value"] > 0 and r["reference"] > 0, r
        assert r["ratio"] == r["value"] / r["reference"]
        assert r["unit"] and r["reference_name"] and r["note"]
    assert "60 + 20 rows" in table[7]["note"]
    assert table[8]["value"] >= table[8]["reference"]  # a peak is never below the level it started from
    assert logs
    text = bench.format_table(table)
    assert all(f in text for f in figures)


def test_missing_zip_skips_the_ingest_row_with_a_note(project, tmp_path):
    skipped = bench.bench_ingest(tmp_path / "absent.zip")
    assert "skipped" in skipped["note"]
    assert math.isnan(skipped["value"])
    assert json.loads(json.dumps(bench.json_safe([skipped])))[0]["value"] is None
    assert "skipped" in bench.format_table([skipped])


def test_main_writes_the_table_to_reports(project):
    assert bench.main(["--rows", "32", "--aug-rows", "40", "--epochs", "1", "--stages"]) == 0
    report = json.loads(paths.BENCH_JSON.read_text())
    assert [r["figure"] for r in report["table"]][:2] == ["training", "inference + TTA"]
    assert report["rows"] == 32


def test_precision_rows_time_the_plans_policy_on_the_pipelines_path(project):
    # the plan of a T4 with this backend: float16 mixed precision against float32, both through fitting.fit with
    # XLA on (TensorFlow, JAX), as on the GPU, on this CPU
    plan = plan_devices(Hardware(keras.backend.backend(), (Gpu("Tesla T4", (7, 5), 15.0),)), "auto")
    setup = bench.setup_from_params(epochs=2, device=plan)
    x, y = bench.bench_images(32, 0)
    aug = {"x": x[:8], "source": np.arange(8, dtype=np.int32)}
    training, *rows = bench.bench_training(setup, x, y, aug, repeats=1)[0]
    assert training["figure"] == "training" and training["value"] > 0 and training["reference_name"] == "bare model.fit"
    assert [r["figure"] for r in rows] == [
        "training, float16", "training, float16, CPU time", "inference, float16", "inference, float16, CPU time",
    ]  # fmt: skip
    for r in rows:
        assert r["value"] > 0 and r["reference"] > 0 and r["reference_name"] == "float32", r
        assert "the plan chose mixed_float16 (compute capability 7.5" in r["note"]
        assert ("XLA on" if plan.jit_compile else "XLA off") in r["note"]
    assert rows[0]["note"].startswith("fitting.fit") and rows[2]["note"].startswith("fitting.predict_probs")
    assert bench.mixed_policy(None) == "mixed_bfloat16"  # without a plan (or where it chose float32): bf16
