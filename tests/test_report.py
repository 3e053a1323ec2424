"""pipeline.report (summary.md, confusion.csv, wrong.png, test_grid.png) and pipeline.lib.progress
(progress bars, quiet logs, stage timings)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import confusion_matrix

from pipeline import augment, ingest, paths, predict, report, train, tune
from pipeline.lib import progress
from pipeline.lib.files import read_json, read_npz, write_json
from pipeline.lib.metrics import accuracy
from pipeline.params import ReportParams
from tests.conftest import collect_oof, synthetic_digits, test_csv_text, tiny_params, train_csv_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def confident(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Return probabilities (n, 10) putting `confidence` on `labels` and the rest spread evenly."""
    probs = np.full((len(labels), 10), (1 - confidence) / 9, np.float32)
    probs[np.arange(len(labels)), labels] = confidence
    return probs


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project after ingest, augment, tune (one trial), train and predict, each run as `dvc repro` runs it:
    the report reads what the stages really wrote, not files written for the test."""
    root = tmp_path_factory.mktemp("ran")
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "train.csv").write_text(train_csv_text(*synthetic_digits(60)))
    (raw / "test.csv").write_text(test_csv_text(synthetic_digits(20, seed=1)[0]))
    doc = tiny_params()
    doc["tune"].update(trials=1, epochs=1)
    (root / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for stage in (ingest, augment, tune, train, predict):
            assert stage.main([]) == 0, stage.__name__
    return root


@pytest.fixture
def outputs(ran: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the ran project as the cwd; its OOF labels and predicted classes."""
    shutil.copytree(ran, tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    oof = read_npz(paths.OOF_TTA_NPZ)  # the submission's OOF predictions, as predict wrote them
    return {"y": oof["y"], "predicted": oof["probs"].argmax(axis=1)}


def test_confusion_pairs_and_most_confident_wrong() -> None:
    actual = np.array([3, 3, 3, 5, 5, 1, 1])
    predicted = np.array([8, 8, 3, 3, 5, 7, 1])
    matrix = confusion_matrix(actual, predicted, labels=range(10))
    assert matrix.sum() == 7 and matrix[3, 8] == 2 and matrix[5, 5] == 1
    assert report.confusion_pairs(matrix, 2) == [(3, 8, 2), (1, 7, 1)]
    assert report.confusion_pairs(matrix, 10) == [(3, 8, 2), (1, 7, 1), (5, 3, 1)]
    probs = confident(predicted, 0.5)
    probs[5, 7], probs[0, 8] = 0.95, 0.7
    assert report.most_confident_wrong(probs, actual, 2).tolist() == [5, 0]
    assert report.confusion_csv(actual[:2], predicted[:2]) == "actual,predicted\n3,8\n3,8\n"


def test_report_writes_summary_confusion_and_grids(outputs: dict, capsys: pytest.CaptureFixture) -> None:
    assert report.main([]) == 0
    summary = paths.SUMMARY_MD.read_text()
    data, test_x = read_npz(paths.TRAIN_NPZ), read_npz(paths.TEST_NPZ)["x"]
    tta, tuned = read_json(paths.PREDICT_JSON), {**read_json(paths.BEST_PARAMS), **read_json(paths.TUNE_JSON)}
    counts = np.bincount(outputs["y"], minlength=10)
    assert "| train rows | " + " | ".join(map(str, counts)) + f" | {len(data['y'])} |" in summary
    assert f"Test rows: {len(test_x)}." in summary
    values = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned["params"].items()]
    assert f"best trial {tuned['trial']} of {tuned['finished_trials']} finished" in summary
    assert all(value in summary for value in values) and values
    metas = [read_json(paths.fold_meta("dropout_cnn", fold)) for fold in range(3)]
    for fold, meta in enumerate(metas):
        row = f"| {fold} | {int(np.sum(data['fold'] == fold))} | {meta['accuracy']:.5f} | {meta['loss']:.4f} |"
        assert f"{row} {meta['epochs']} | {progress.format_seconds(meta['seconds'])} |" in summary
    assert f"| **all (OOF)** | 60 | **{tta['oof_accuracy']:.5f}** | {tta['oof_loss']:.4f} |" in summary
    untuned = data["fold"] != tuned["scored_fold"]  # the rows of the folds tuning did not score on
    oof = collect_oof("dropout_cnn", 60, 3)  # train's fold files: model.name's OOF probabilities without TTA
    right = accuracy(oof[untuned], data["y"][untuned])
    row = f"| OOF without the fold that scored tuning | {int(untuned.sum())} | {right:.5f} |"
    assert row in summary
    assert f"| without TTA | {tta['oof_accuracy']:.5f} | {tta['oof_loss']:.4f} |" in summary
    assert f"| with TTA ({tta['tta_views']} views) | {tta['oof_tta_accuracy']:.5f} |" in summary
    assert f"TTA gain: {tta['tta_gain']:+.5f}" in summary
    y, pred = outputs["y"], outputs["predicted"]
    assert f"{int(np.sum(y != pred))} of {len(y)} out-of-fold predictions are wrong" in summary
    headline = f"submission's predictions **{tta['oof_tta_accuracy']:.5f}** (model.name, TTA views averaged"
    assert headline in summary  # one model: its OOF TTA accuracy
    for stage in ("ingest", "augment", "tune", "train", "predict"):  # each recorded its own wall time
        assert re.search(rf"^\| {stage} \| [0-9.hms]+ \| ", summary, re.MULTILINE), stage
    assert f"`submissions/latest.csv` ({len(test_x)} rows)" in summary and "python -m pipeline.tools.submit" in summary
    rows = paths.CONFUSION_CSV.read_text().splitlines()
    assert rows[0] == "actual,predicted" and rows[1:] == [f"{a},{p}" for a, p in zip(y, pred, strict=True)]
    for png in (paths.WRONG_PNG, paths.TEST_GRID_PNG):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert "reports/summary.md" in capsys.readouterr().out


def test_report_shows_timings_and_the_missing_ones(outputs: dict) -> None:
    for stage in ("augment", "tune", "predict"):
        paths.stage_timing(stage).unlink()
    progress.record_timing("train", 125.5, "CPU (x86_64) via tensorflow")
    progress.record_timing("ingest", 3.25, None)
    assert report.main([]) == 0
    summary = paths.SUMMARY_MD.read_text()
    assert "| train | 2m06s | CPU (x86_64) via tensorflow |" in summary and "| ingest | 3s | - |" in summary
    assert "No timing recorded for: augment, tune, predict, audit." in summary


def test_report_sizes_come_from_report_params(outputs: dict) -> None:
    from PIL import Image

    def confusion_rows() -> int:
        text = paths.SUMMARY_MD.read_text()
        section = text[text.index("## Confusions") : text.index("## Wall time")]
        return sum(1 for line in section.splitlines() if line.startswith("| ")) - 1  # minus the header

    report.write_reports(report.gather(), ReportParams(wrong_images=2, test_images=4, confusion_pairs=1))
    small = Image.open(paths.TEST_GRID_PNG).size
    assert confusion_rows() == 1
    report.write_reports(report.gather(), ReportParams(wrong_images=24, test_images=12, confusion_pairs=10))
    assert Image.open(paths.TEST_GRID_PNG).size[0] > small[0]  # 8 columns instead of 4
    assert confusion_rows() == len(
        report.confusion_pairs(confusion_matrix(outputs["y"], outputs["predicted"], labels=range(10)), 10)
    )


def test_report_names_the_missing_stage(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert report.main([]) == 2
    assert "data/processed/train.npz not found: run `dvc repro ingest`" in capsys.readouterr().err


def test_report_names_an_input_from_an_older_version(outputs: dict, capsys: pytest.CaptureFixture) -> None:
    write_json(paths.PREDICT_JSON, {"oof_accuracy": 0.9})  # written before predict.json had its loss figures
    before = paths.SUMMARY_MD.exists()
    assert report.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("report: error: an input lacks the entry 'oof_loss'") and "rerun `dvc repro`" in err
    assert paths.SUMMARY_MD.exists() == before


def test_line_progress_prints_quarters_with_rate_and_eta_and_no_carriage_returns() -> None:
    ticks = iter(range(0, 100, 2))
    out = io.StringIO()
    bar = progress.LineProgress(8, "predict", "img", out, clock=lambda: next(ticks))
    for _ in range(8):
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[1] for line in lines] == ["2/8", "4/8", "6/8", "8/8"]
    assert lines[0] == "predict: 2/8 img (25%) in 2s, 1 img/s, ETA 6s"
    assert lines[-1].endswith("ETA 0s")


def test_progress_is_a_tqdm_bar_on_a_terminal_and_quiet_in_logs() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    with progress.progress(4, "train", unit="fold", stream=tty) as bar:
        bar.update(4)
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue() and "fold/s" in tty.getvalue()
    log = io.StringIO()
    with progress.progress(4, "train", unit="fold", stream=log, lines=False) as bar:
        bar.update(4)
    assert log.getvalue() == ""


def test_finish_prints_the_summary_line_and_records_the_timing(project: Path) -> None:
    out = io.StringIO()
    seconds = progress.finish("predict", 0.0, "GPU (H100) via jax", "OOF accuracy 0.99", stream=out)
    assert out.getvalue().startswith("predict: done in ")
    assert out.getvalue().rstrip().endswith("on GPU (H100) via jax: OOF accuracy 0.99")
    saved = read_json(paths.stage_timing("predict"))
    assert saved == {"seconds": pytest.approx(seconds, abs=1e-3)}  # a DVC metric: numbers only (dvc exp show)
    run = read_json(paths.stage_run("predict"))
    assert run["stage"] == "predict" and run["device"] == "GPU (H100) via jax" and run["finished_at"]
    assert list(report.read_timings()) == ["predict"]


def test_stages_record_their_wall_time(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    assert json.loads(paths.stage_timing("augment").read_text())["seconds"] > 0
    assert "workers" in json.loads(paths.stage_run("augment").read_text())["device"]
    out = capsys.readouterr().out
    assert "augment: done in " in out and "\r" not in out


def test_an_ensemble_summary_lists_what_each_member_adds() -> None:
    members = {"dropout_cnn": 0.9954, "bn_lite": 0.9957}
    predict_json = {
        "weights": {"dropout_cnn": 0.4, "bn_lite": 0.6},
        "oof_blend_accuracy": 0.9962,
        "oof_blend_accuracy_in_sample": 0.9963,
        "models": {m: {"oof_tta_accuracy": a} for m, a in members.items()},
        "without": {"dropout_cnn": {"oof_blend_accuracy": 0.9957, "member_gain": 0.0005},
                    "bn_lite": {"oof_blend_accuracy": 0.9954, "member_gain": 0.0008}},
    }  # fmt: skip
    text = report.blend_line(predict_json, "log_loss", {"dropout_cnn": 30.0, "bn_lite": 20.0})
    assert "(weights chosen by OOF log_loss)" in text
    assert "| dropout_cnn | 0.99540 | 0.99570 | +0.00050 | 30.0 | +0.00100 |" in text  # +0.0005 in half an hour
    assert "| bn_lite | 0.99570 | 0.99540 | +0.00080 | 20.0 | +0.00240 |" in text
    assert "| bn_lite | 0.99570 | 0.99540 | +0.00080 | ? | ? |" in report.blend_line(predict_json, "log_loss")
    assert report.blend_line({**predict_json, "weights": {"bn_lite": 1.0}}, "log_loss") == ""
