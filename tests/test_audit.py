"""Audit: cleanlab finds planted label flips in out-of-fold probabilities; the stage writes the issue table,
grid and summary; --accept appends the top issues to the exclusion list."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from pipeline import audit, paths, report
from pipeline.lib.exclusions import header_text, read_exclusions
from pipeline.lib.files import write_npz
from pipeline.lib.metrics import scores
from pipeline.params import AuditParams
from tests.conftest import synthetic_digits

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CFG = AuditParams(filter_by="prune_by_noise_rate", rank_by="self_confidence", grid_images=24)


def planted(n: int, flips: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return synthetic images, their true labels, the given labels with `flips` rows relabelled to another
    digit, and the flipped rows."""
    x, y = synthetic_digits(n, seed=seed)
    true = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, flips, replace=False))
    given = true.copy()
    given[rows] = (true[rows] + rng.integers(1, 10, flips)) % 10
    return x, true, given, rows


def oof_probs(x: np.ndarray, labels: np.ndarray, folds: int = 3) -> np.ndarray:
    """Return out-of-fold class probabilities of a logistic regression on each image's row brightness, trained
    on the given (partly wrong) `labels` as the pipeline's fold models are."""
    features = x[:, :, 6:22].mean(axis=2) / 255.0
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    return cross_val_predict(LogisticRegression(max_iter=500), features, labels, cv=cv, method="predict_proba")


def test_planted_label_flips_are_found_with_their_true_labels():
    x, true, given, flipped = planted(300, 8)
    probs = oof_probs(x, given)
    issues = audit.find_issues(probs, given, CFG)
    table = audit.issue_table(issues, probs, given, np.arange(300) % 3, np.array([flipped[0]]))
    assert sorted(table["row"]) == flipped.tolist()  # every flip, and no clean row
    assert table["suggested_label"].tolist() == true[table["row"]].tolist()
    assert table["given_label"].tolist() == given[table["row"]].tolist()
    assert np.all(np.diff(table["self_confidence"]) >= 0)  # ranked: the least likely given label first
    assert table["self_confidence"].tolist() == pytest.approx(probs[table["row"], given[table["row"]]], abs=1e-6)
    assert table["fold"].tolist() == (table["row"] % 3).tolist()
    assert table["excluded"].tolist() == (table["row"] == flipped[0]).tolist()


def test_clean_labels_give_no_issue():
    x, true, _, _ = planted(300, 0)
    probs = oof_probs(x, true)
    assert len(audit.find_issues(probs, true, CFG)) == 0


@pytest.fixture
def audited(project):
    """The tiny project with train.npz holding 6 planted flips and predict's OOF TTA probabilities of them."""
    x, true, given, flipped = planted(120, 6, seed=2)
    folds = np.arange(120) % 3
    write_npz(paths.TRAIN_NPZ, x=x, y=given.astype(np.uint8), fold=folds)
    probs = oof_probs(x, given).astype(np.float32)
    write_npz(paths.OOF_TTA_NPZ, probs=probs, y=given.astype(np.uint8), fold=folds)
    paths.EXCLUDE_ROWS.write_text(header_text())
    return {"true": true, "given": given, "flipped": flipped, "probs": probs}


def test_audit_stage_writes_issues_grid_and_summary(audited, capsys):
    assert audit.main([]) == 0
    table = pd.read_csv(paths.LABEL_ISSUES_CSV)
    assert list(table.columns) == audit.COLUMNS
    assert sorted(table["row"]) == audited["flipped"].tolist()
    assert table["suggested_label"].tolist() == audited["true"][table["row"]].tolist()
    assert paths.LABEL_ISSUES_PNG.read_bytes()[:8] == PNG_MAGIC
    summary = json.loads(paths.AUDIT_JSON.read_text())
    assert (summary["issues"], summary["excluded"], summary["rows"]) == (6, 0, 120)
    assert summary["kept_rows"] == {"rows": 120, **scores(audited["probs"], audited["given"])}
    assert "6 likely label issues" in capsys.readouterr().out
    section = report.audit_section(summary, CFG)
    assert "**6** likely label issues" in section and "(label_issues.png)" in section
    assert "No row is excluded" in section


def test_accept_appends_the_top_issues_once_then_the_audit_scores_the_rows_kept(audited, capsys):
    assert audit.main([]) == 0
    ranked = pd.read_csv(paths.LABEL_ISSUES_CSV)["row"].tolist()
    assert audit.main(["--accept", "2"]) == 0
    assert read_exclusions(120).tolist() == sorted(ranked[:2])
    lines = paths.EXCLUDE_ROWS.read_text().splitlines()
    assert lines[0] == "row,note" and lines[1].startswith(
        f"{ranked[0]},cleanlab: given {audited['given'][ranked[0]]} -> suggested "
    )
    assert audit.main(["--accept", "2"]) == 0  # the same top 2: nothing new
    assert audit.main(["--accept", "4"]) == 0
    assert read_exclusions(120).tolist() == sorted(ranked[:4])
    assert "appended 2 rows" in capsys.readouterr().out.splitlines()[-1]

    # the retrained models: better probabilities; the audit scores them on the rows kept
    kept = np.ones(120, bool)
    kept[ranked[:4]] = False
    better = np.eye(10, dtype=np.float32)[audited["given"]] * 0.9 + 0.01
    write_npz(paths.OOF_TTA_NPZ, probs=better, y=audited["given"].astype(np.uint8), fold=np.arange(120) % 3)
    assert audit.main([]) == 0
    summary = json.loads(paths.AUDIT_JSON.read_text())
    assert summary["excluded"] == 4 and summary["issues_excluded"] == 0  # the better model disputes no label
    assert summary["kept_rows"] == {"rows": 116, **scores(better[kept], audited["given"][kept])}
    section = report.audit_section(summary, CFG)
    assert "4 rows are excluded" in section and "on the other 116 rows" in section
    assert f"{summary['kept_rows']['accuracy']:.5f}, {summary['kept_rows']['loss']:.4f}" in section
    assert "`dvc metrics diff`" in section  # DVC compares runs: no copy of an earlier run's probabilities


def test_accept_needs_an_audit_and_bad_settings_are_named(project, capsys):
    x, y = synthetic_digits(30)
    write_npz(paths.TRAIN_NPZ, x=x, y=y, fold=np.arange(30) % 3)
    assert audit.main(["--accept", "3"]) == 2
    assert "reports/label_issues.csv: does not exist: run `dvc repro audit`" in capsys.readouterr().err
    doc = yaml.safe_load(paths.PARAMS.read_text())
    doc["audit"]["filter_by"] = "by_magic"
    paths.PARAMS.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert audit.main([]) == 2
    assert "params.yaml audit.filter_by: got 'by_magic', expected one of" in capsys.readouterr().err
