"""Kaggle Notebooks: the competition's CSVs are read from <root>/input/digit-recognizer/ and the submission is also
written to <root>/working/submission.csv, with the root (/kaggle) moved by DIGIT_KAGGLE_ROOT for the test."""

from __future__ import annotations

import shutil

import numpy as np

from pipeline import ingest, paths, predict
from pipeline.lib.files import read_npz
from pipeline.tools import download


def kaggle_layout(root, project):
    """Move the project's CSVs into a Kaggle notebook's layout under `root`; return its input folder."""
    folder = root / "input" / "digit-recognizer"
    folder.mkdir(parents=True)
    (root / "working").mkdir()
    for name in ("train.csv", "test.csv"):
        shutil.move(project / paths.RAW_DIR / name, folder / name)
    return folder


def test_a_notebooks_input_is_copied_into_data_raw_and_ingested(project, tmp_path_factory, monkeypatch, capsys):
    root = tmp_path_factory.mktemp("kaggle")
    monkeypatch.setenv(paths.KAGGLE_ROOT_ENV, str(root))
    monkeypatch.setenv("HOME", str(root))  # no Kaggle credentials: only the notebook's input can help
    folder = kaggle_layout(root, project)
    assert not download.have_data()
    assert download.main([]) == 0
    assert f"from the Kaggle notebook input {folder}" in capsys.readouterr().out
    for name in ("train.csv", "test.csv"):
        assert (project / paths.RAW_DIR / name).read_bytes() == (folder / name).read_bytes()
    assert ingest.main([]) == 0
    assert len(read_npz(paths.TRAIN_NPZ)["y"]) == 60 and len(read_npz(paths.TEST_NPZ)["x"]) == 20


def test_without_the_layout_getdata_still_explains_how_to_get_the_data(project, tmp_path_factory, monkeypatch, capsys):
    root = tmp_path_factory.mktemp("no-kaggle")
    monkeypatch.setenv(paths.KAGGLE_ROOT_ENV, str(root))
    monkeypatch.setenv("HOME", str(root))
    for name in ("train.csv", "test.csv"):
        (project / paths.RAW_DIR / name).unlink()
    assert download.main([]) == 2
    err = capsys.readouterr().err
    assert "kaggle competitions download" in err
    # every way, as it works in a notebook's `!` cell (each runs in a shell of its own: no `export`)
    assert "KAGGLE_API_TOKEN" in err and "%env KAGGLE_API_TOKEN=" in err
    assert ".venv/bin/python -m pipeline.tools.download --zip PATH" in err
    assert "add the Digit Recognizer competition as the notebook's input" in err
    assert "export" not in err and "~/Downloads" not in err


def test_the_submission_also_goes_where_a_notebook_submits_it(project, tmp_path_factory, monkeypatch):
    labels = np.arange(20) % 10
    root = tmp_path_factory.mktemp("kaggle")
    monkeypatch.setenv(paths.KAGGLE_ROOT_ENV, str(root))
    predict.write_submission(labels, "20260101-000000")  # no working/ folder: not a notebook
    assert not paths.kaggle_submission().exists()
    (root / "working").mkdir()
    predict.write_submission(labels, "20260101-000001")
    assert paths.kaggle_submission() == root / "working" / "submission.csv"
    assert paths.kaggle_submission().read_bytes() == paths.LATEST_SUBMISSION.read_bytes()


def test_the_root_defaults_to_kaggles_own(monkeypatch):
    monkeypatch.delenv(paths.KAGGLE_ROOT_ENV, raising=False)
    assert paths.kaggle_input().as_posix() == "/kaggle/input/digit-recognizer"
    assert paths.kaggle_submission().as_posix() == "/kaggle/working/submission.csv"
