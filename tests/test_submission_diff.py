"""The submission diff (pipeline/lib/submission_file.py), shared by predict (reports/submission_diff.json and .png),
report (a line in summary.md) and submit (printed before uploading; --compare FILE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import paths, predict, report
from pipeline.lib.competition_csv import InputError
from pipeline.lib.submission_file import (
    compare_submissions,
    describe_diff,
    diff_with_previous,
    previous_submission,
    submission_csv,
)
from pipeline.tools import submit
from tests.conftest import synthetic_digits

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = np.arange(20) % 10


def write(path: Path, labels: np.ndarray) -> Path:
    """Write the submission of `labels` to `path` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(submission_csv(labels))
    return path


def test_identical_files_differ_nowhere(tmp_path):
    diff = compare_submissions(write(tmp_path / "a.csv", LABELS), write(tmp_path / "b.csv", LABELS))
    assert (diff["rows"], diff["changed"], diff["changed_ids"], diff["changes"]) == (20, 0, [], {})
    assert diff["old_counts"] == diff["new_counts"] == {str(d): 2 for d in range(10)}
    assert describe_diff(diff) == f"0 of 20 labels changed since {tmp_path / 'a.csv'}"


def test_one_changed_row_is_found_with_the_counts(tmp_path):
    new = LABELS.copy()
    new[6] = 3  # ImageId 7: 6 -> 3
    diff = compare_submissions(write(tmp_path / "old.csv", LABELS), write(tmp_path / "new.csv", new))
    assert (diff["changed"], diff["changed_ids"], diff["changes"]) == (1, [7], {"6->3": 1})
    assert (diff["old_counts"]["6"], diff["new_counts"]["6"]) == (2, 1)
    assert (diff["old_counts"]["3"], diff["new_counts"]["3"]) == (2, 3)
    line = describe_diff(diff)
    assert line.startswith("1 of 20 labels changed since ") and "6→3 x1" in line
    assert "3: 2→3" in line and "6: 2→1" in line


def test_rows_in_another_order_are_compared_by_image_id(tmp_path):
    text = submission_csv(LABELS).splitlines()
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join([text[0], *reversed(text[1:])]) + "\n")
    assert compare_submissions(write(tmp_path / "a.csv", LABELS), shuffled)["changed"] == 0


def test_another_length_or_header_is_refused_naming_the_file(tmp_path):
    new = write(tmp_path / "new.csv", LABELS)
    short = write(tmp_path / "short.csv", LABELS[:19])
    with pytest.raises(InputError, match=r"short\.csv: has 19 rows but .*new\.csv has 20"):
        compare_submissions(short, new)
    header = tmp_path / "header.csv"
    header.write_text(submission_csv(LABELS).replace("ImageId,Label", "Id,Label"))
    with pytest.raises(InputError, match=r"header\.csv, line 1: header is 'Id,Label'"):
        compare_submissions(header, new)
    with pytest.raises(InputError, match=r"header\.csv, line 1: header"):
        compare_submissions(new, header)  # the new file is named just the same
    with pytest.raises(InputError, match=r"gone\.csv: does not exist"):
        compare_submissions(tmp_path / "gone.csv", new)


def test_previous_submission_is_the_newest_older_copy(tmp_path):
    folder = tmp_path / "submissions"
    first = write(folder / "submission-20260101-000000.csv", LABELS)
    assert previous_submission(first, folder) is None
    assert diff_with_previous(first, folder) == {
        "old": None,
        "new": str(first),
        "rows": 20,
        "changed": None,
        "new_counts": {str(d): 2 for d in range(10)},
    }
    assert describe_diff(diff_with_previous(first, folder)).startswith("first submission: nothing to compare")
    second = write(folder / "submission-20260102-000000.csv", (LABELS + 1) % 10)
    third = write(folder / "submission-20260103-000000.csv", LABELS)
    assert previous_submission(third, folder) == second
    assert previous_submission(second, folder) == first
    latest = write(folder / "latest.csv", LABELS)  # a copy of the newest: compared with the one before it
    assert previous_submission(latest, folder) == second
    assert diff_with_previous(latest, folder)["changed"] == 20


@pytest.fixture
def stamped(project):
    """The tiny project with a first and a second timestamped submission; the second changes 3 test rows."""
    x_test, _ = synthetic_digits(20, seed=1)
    old = write(paths.SUBMISSIONS_DIR / "submission-20260101-000000.csv", LABELS)
    new_labels = LABELS.copy()
    new_labels[[2, 9, 15]] = [7, 1, 0]
    probs = np.full((20, 10), 0.02, np.float32)
    probs[np.arange(20), new_labels] = 0.82
    new = write(paths.SUBMISSIONS_DIR / "submission-20260102-000000.csv", new_labels)
    write(paths.LATEST_SUBMISSION, new_labels)
    return {"old": old, "new": new, "x": x_test, "probs": probs}


def test_predict_writes_the_diff_json_and_grid(stamped):
    diff = predict.write_diff(stamped["new"], stamped["x"], stamped["probs"], limit=2)
    assert json.loads(paths.SUBMISSION_DIFF_JSON.read_text()) == diff
    assert (diff["old"], diff["changed"], diff["changed_ids"]) == (str(stamped["old"]), 3, [3, 10, 16])
    assert paths.SUBMISSION_DIFF_PNG.read_bytes()[:8] == PNG_MAGIC  # what it shows: the test below
    assert predict.diff_title(diff, 2).startswith("2 of the 3 test images whose label changed since submission-2026")
    assert describe_diff(diff).startswith("3 of 20 labels changed since ")
    first = predict.write_diff(stamped["old"], stamped["x"], stamped["probs"], limit=2)
    assert first["old"] is None and predict.diff_title(first, 0) == "First submission: nothing to compare with"


def shown_rows(png: Path, values: np.ndarray) -> set[int]:
    """Return the test rows whose image (all its pixels `values[row]`) fills an area of the grid `png`: drawn dark on
    light (gray_r), a pixel value v shows as the gray 255 - v."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    gray = rgb[(rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])][:, 0]
    return {row for row, v in enumerate(values) if np.sum(np.abs(gray - (255 - int(v))) <= 1) >= 5000}  # ~18,000 each


@pytest.mark.parametrize(("limit", "rows"), [(2, {2, 9}), (5, {2, 9, 15})])
def test_the_diff_grid_shows_the_changed_test_images(stamped, limit, rows):
    values = np.arange(5, 205, 10, dtype=np.uint8)  # test row i is one flat gray: every pixel 5 + 10 i
    x = np.repeat(values, 28 * 28).reshape(20, 28, 28)
    predict.write_diff(stamped["new"], x, stamped["probs"], limit=limit)  # ImageIds 3, 10 and 16 changed
    assert shown_rows(paths.SUBMISSION_DIFF_PNG, values) == rows  # ImageId i is test row i - 1
    width, height = Image.open(paths.SUBMISSION_DIFF_PNG).size
    assert 150 <= height <= 300 and width >= 150 * len(rows)  # one row of images (110 dpi): a row is 1.65 inch


def test_predict_records_a_previous_file_it_cannot_compare(stamped, capsys):
    write(stamped["old"], LABELS[:12])  # the previous run had 12 test rows
    diff = predict.write_diff(stamped["new"], stamped["x"], stamped["probs"], limit=5)
    assert diff["changed"] is None and "has 12 rows but" in diff["error"]
    assert "predict: warning:" in capsys.readouterr().err
    assert f"Against the previous submission: not compared with {stamped['old']} (" in report.submission_section(
        paths.LATEST_SUBMISSION, 20, diff
    )


def test_report_quotes_the_diff(stamped):
    diff = predict.write_diff(stamped["new"], stamped["x"], stamped["probs"], limit=5)
    section = report.submission_section(paths.LATEST_SUBMISSION, 20, diff)
    assert f"Against the previous submission: {describe_diff(diff)} ([submission_diff.png](submission_diff.png))." in (
        section
    )


def test_submit_shows_the_diff_and_compares_with_any_earlier_file(stamped, tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    assert submit.main(["-m", "x", "--rows", "20", "--dry-run"], env={}, home=home) == 0
    out = capsys.readouterr().out
    assert f"submit: 3 of 20 labels changed since {stamped['old']}" in out
    earlier = ["--compare", "submission-20260102-000000.csv"]  # a name in submissions/: the same labels
    assert submit.main(["-m", "x", "--rows", "20", "--dry-run", *earlier], env={}, home=home) == 0
    assert "submit: 0 of 20 labels changed since submissions/submission-20260102-000000.csv" in capsys.readouterr().out
    assert submit.main(["-m", "x", "--rows", "20", "--dry-run", "--compare", "nope.csv"], env={}, home=home) == 1
    err = capsys.readouterr().err
    assert "cannot compare: nope.csv: does not exist; the latest earlier submissions: submission-20260101" in err
    write(tmp_path / "other.csv", LABELS[:10])
    assert (
        submit.main(
            ["-m", "x", "--rows", "20", "--dry-run", "--compare", str(tmp_path / "other.csv")], env={}, home=home
        )
        == 1
    )
    assert "other.csv: has 10 rows but submissions/latest.csv has 20" in capsys.readouterr().err
