"""The exclusion list data/exclude_rows.csv: strict parsing (file and line in every error), and training
without its rows: they leave the training rows (with their augmented copies) and nothing else, and predict
scores the rows kept apart."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

from pipeline import augment, ingest, paths, predict, train
from pipeline.lib.competition_csv import InputError
from pipeline.lib.exclusions import append_exclusions, header_text, kept_mask, parse_exclusions, read_exclusions
from pipeline.lib.files import read_json, read_npz
from pipeline.lib.fitting import EpochSampler
from pipeline.lib.metrics import accuracy
from tests.conftest import collect_oof


def test_a_valid_list_parses_to_sorted_rows():
    text = 'row,note\n7,"looks like a 1, labelled 7"\n\n3\n 12 ,ambiguous\n'
    assert parse_exclusions(text, 20).tolist() == [3, 7, 12]
    assert parse_exclusions(header_text(), 20).tolist() == []
    assert parse_exclusions("\ufeffrow,note\n0,x\n", 1).tolist() == [0]  # a BOM from a spreadsheet
    assert kept_mask(5, np.array([1, 3])).tolist() == [True, False, True, False, True]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("row,note\n3,a\nfour,b\n", 3, "row 'four' is not a row index"),
        ("row,note\n3,a\n-1,b\n", 3, "row '-1' is not a row index"),
        ("row,note\n3,a\n2.5\n", 3, "row '2.5' is not a row index"),
        ("row,note\n3,a,extra\n", 2, "expected 'row' or 'row,note', got 3 fields"),
        ('row,note\n3,"unclosed\n', 2, "not a well-formed CSV line"),
        ("row,note\n3,a\n\n20,b\n", 4, "row 20 does not exist: there are 20 training rows (0-19)"),
        ("row,note\n3,a\n5,b\n3,c\n", 4, "row 3 is listed twice (first on line 2)"),
        ("3,a\n", 1, "the header must be 'row,note'"),
        ("", 1, "the header must be 'row,note'"),
    ],
)
def test_bad_lists_name_the_file_and_line(text, line, problem):
    with pytest.raises(InputError) as caught:
        parse_exclusions(text, 20, "data/exclude_rows.csv")
    assert str(caught.value).startswith(f"data/exclude_rows.csv, line {line}: ")
    assert problem in str(caught.value)


def test_append_skips_listed_rows_and_keeps_the_file(tmp_path):
    path = tmp_path / "exclude_rows.csv"
    assert append_exclusions([(4, "a"), (2, "b, c")], 10, path) == [4, 2]  # created with its header
    assert append_exclusions([(2, "again"), (9, "new")], 10, path) == [9]
    assert path.read_text() == 'row,note\n4,a\n2,"b, c"\n9,new\n'
    assert read_exclusions(10, path).tolist() == [2, 4, 9]
    path.write_text("row,note\n4,a\n4,b\n")
    with pytest.raises(InputError, match="line 3: row 4 is listed twice"):
        append_exclusions([(1, "x")], 10, path)
    assert path.read_text() == "row,note\n4,a\n4,b\n"  # nothing appended to a list that is already wrong


@pytest.fixture
def prepared(project):
    """The tiny project after ingest and augment."""
    assert ingest.main([]) == 0
    assert augment.main([]) == 0
    return project


@pytest.mark.parametrize("stage", [train, predict])
def test_stages_refuse_a_bad_list_naming_file_and_line(prepared, capsys, stage):
    paths.EXCLUDE_ROWS.write_text("row,note\n1,a\n60,b\n")  # 60 rows: 0-59
    assert stage.main([]) == 2
    err = capsys.readouterr().err
    assert "data/exclude_rows.csv, line 3: row 60 does not exist" in err


class SpySampler(EpochSampler):
    """The real EpochSampler, recording the training rows and usable augmented copies of every fold built."""

    built: ClassVar[list[tuple[np.ndarray, np.ndarray]]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        drawable = [self.aug_order[s : s + c] for s, c in zip(self.starts, self.counts, strict=True)]
        SpySampler.built.append((self.rows.copy(), np.concatenate(drawable)))


def train_once(monkeypatch, excluded_text: str) -> tuple[list, dict, dict]:
    """Write the exclusion list and train every fold; return the samplers built, the OOF file rows and the fold
    metadata per fold."""
    paths.EXCLUDE_ROWS.write_text(excluded_text)
    SpySampler.built = []
    monkeypatch.setattr(train, "EpochSampler", SpySampler)
    assert train.main([]) == 0
    oof_rows = {k: read_npz(paths.fold_oof("dropout_cnn", k))["rows"] for k in range(3)}
    metas = {k: read_json(paths.fold_meta("dropout_cnn", k)) for k in range(3)}
    return list(SpySampler.built), oof_rows, metas


def test_exclusions_change_training_rows_and_nothing_else(prepared, monkeypatch):
    data, aug = read_npz(paths.TRAIN_NPZ), read_npz(paths.AUGMENTED_NPZ)
    fold = data["fold"]
    chosen = np.sort(np.concatenate([np.flatnonzero(fold == 1)[:2], np.flatnonzero(fold == 2)[:1]]))
    plain, plain_oof, plain_metas = train_once(monkeypatch, header_text())
    listed = header_text() + "".join(f"{r},test\n" for r in chosen)
    sampled, oof_rows, metas = train_once(monkeypatch, listed)
    assert len(sampled) == 3
    for k, ((rows, copies), (plain_rows, plain_copies)) in enumerate(zip(sampled, plain, strict=True)):
        assert np.array_equal(rows, np.setdiff1d(plain_rows, chosen))  # the excluded rows leave training ...
        assert not np.isin(aug["source"][copies], chosen).any()  # ... with every augmented copy of them
        others = plain_copies[~np.isin(aug["source"][plain_copies], chosen)]
        assert np.array_equal(np.sort(copies), np.sort(others))  # every other copy stays
        assert np.array_equal(oof_rows[k], plain_oof[k])  # every row of the fold is still scored
        assert metas[k]["train_rows"] == len(rows)
        assert metas[k]["train_data"] == plain_metas[k]["train_data"]  # the same data: predict accepts the models
    assert predict.main([]) == 0  # predict scores the rows kept apart
    kept, keep = json.loads(paths.PREDICT_JSON.read_text())["kept_rows"], kept_mask(60, chosen)
    assert (kept["rows"], kept["excluded"]) == (57, 3)
    assert kept["oof_accuracy"] == pytest.approx(accuracy(collect_oof("dropout_cnn", 60, 3)[keep], data["y"][keep]))
