"""pipeline.report (summary.md, confusion.csv, wrong.png, test_grid.png) and pipeline.progress
(progress bars, quiet logs, stage timings)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import augment, ingest, paths, progress, report
from pipeline.files import read_json, write_json, write_npz, write_text
from pipeline.params import ReportParams
from pipeline.submission import submission_csv
from tests.conftest import synthetic_digits

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def confident(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Return probabilities (n, 10) putting `confidence` on `labels` and the rest spread evenly."""
    probs = np.full((len(labels), 10), (1 - confidence) / 9, np.float32)
    probs[np.arange(len(labels)), labels] = confidence
    return probs


@pytest.fixture
def outputs(project: Path) -> dict:
    """Every input of the report stage, written as the pipeline's stages would write them."""
    x, y = synthetic_digits(30)
    fold = np.arange(30) % 3
    x_test, _ = synthetic_digits(12, seed=3)
    write_npz(paths.TRAIN_NPZ, x=x, y=y, fold=fold)
    write_npz(paths.TEST_NPZ, x=x_test)
    predicted = y.astype(np.int64).copy()
    predicted[:4] = (y[:4] + 1) % 10  # four mistakes ...
    probs = confident(predicted)
    probs[0, predicted[0]], probs[1, predicted[1]] = 0.99, 0.6  # ... row 0 the most confident
    write_npz(paths.OOF_NPZ, probs=probs, y=y, fold=fold)
    write_json(
        paths.METRICS_JSON,
        {
            "oof": {"accuracy": 26 / 30, "loss": 0.4},
            "oof_untuned_rows": {"accuracy": 0.85, "loss": 0.45, "rows": 20},
            "folds": {f"fold{k}": {"accuracy": 0.8 + k / 100, "loss": 0.5 - k / 100} for k in range(3)},
        },
    )
    write_json(
        paths.PREDICT_JSON,
        {
            "oof_accuracy": 0.86667,
            "oof_loss": 0.41,
            "oof_tta_accuracy": 0.9,
            "oof_tta_loss": 0.38,
            "tta_gain": 0.03333,
            "tta_views": 2,
            "test_rows": 12,
        },
    )
    write_npz(paths.TEST_PROBS_NPZ, probs=confident(np.arange(12) % 10, 0.8))
    write_json(
        paths.BEST_PARAMS,
        {"study": "s", "params": {"learning_rate": 0.0012345, "batch_size": 64}, "value": 0.97, "trial": 2},
    )
    for k in range(3):
        write_json(
            paths.fold_meta("dropout_cnn", k), {"epochs": 9, "seconds": 61.0 + k, "settings": {"model": "dropout_cnn"}}
        )
    write_text(paths.LATEST_SUBMISSION, submission_csv(np.zeros(12, int)))
    progress.record_timing("train", 125.5, "CPU (x86_64) via tensorflow")
    progress.record_timing("ingest", 3.25, None)
    return {"y": y, "predicted": predicted}


def test_confusion_pairs_and_most_confident_wrong() -> None:
    actual = np.array([3, 3, 3, 5, 5, 1, 1])
    predicted = np.array([8, 8, 3, 3, 5, 7, 1])
    matrix = report.confusion_matrix(actual, predicted)
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
    counts = np.bincount(outputs["y"], minlength=10)
    assert "| train rows | " + " | ".join(map(str, counts)) + " | 30 |" in summary
    assert "Test rows: 12." in summary
    assert "| learning_rate" not in summary and "learning_rate=0.001234" in summary and "batch_size=64" in summary
    assert "| 0 | 10 | 0.80000 | 0.5000 | 9 | 1m01s |" in summary
    assert "| 2 | 10 | 0.82000 | 0.4800 | 9 | 1m03s |" in summary
    assert "| OOF without the fold that scored tuning | 20 | 0.85000 | 0.4500 |" in summary
    assert "| without TTA | 0.86667 | 0.4100 |" in summary and "| with TTA (2 views) | 0.90000 | 0.3800 |" in summary
    assert "TTA gain: +0.03333" in summary
    y, pred = outputs["y"], outputs["predicted"]
    count = int(np.sum((y == y[0]) & (pred == pred[0])))
    assert f"| {y[0]} | {pred[0]} | {count} |" in summary and "4 of 30 out-of-fold predictions are wrong" in summary
    assert "| train | 2m06s | CPU (x86_64) via tensorflow |" in summary and "| ingest | 3.2s | - |" in summary
    assert "No timing recorded for: augment, tune, predict, audit." in summary
    assert "`submissions/latest.csv` (12 rows)" in summary and "python -m pipeline.submit" in summary
    rows = paths.CONFUSION_CSV.read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 31
    assert rows[1:] == [f"{a},{p}" for a, p in zip(y, pred, strict=True)]
    for png in (paths.WRONG_PNG, paths.TEST_GRID_PNG):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert "reports/summary.md" in capsys.readouterr().out


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
        report.confusion_pairs(report.confusion_matrix(outputs["y"], outputs["predicted"]), 10)
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
    assert saved["stage"] == "predict" and saved["seconds"] == pytest.approx(seconds, abs=1e-3)
    assert saved["device"] == "GPU (H100) via jax"
    assert list(report.read_timings()) == ["predict"]


def test_stages_record_their_wall_time(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    timing = json.loads(paths.stage_timing("augment").read_text())
    assert timing["seconds"] > 0 and "workers" in timing["device"]
    out = capsys.readouterr().out
    assert "augment: done in " in out and "\r" not in out
