"""The bad-input matrix: every row feeds one damaged input to ingest (or to the submission validator)
and checks the exit code, that the message names the file and the line/column, and that every file
already in data/processed/, models/ and submissions/ is byte-identical afterwards.

Columns of each row: case id, how the input is damaged, expected exit code, a regex the message must
match (file, line, column, problem). Exit 0 rows are inputs that must be accepted."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest

from pipeline import ingest
from pipeline.lib import submission_file
from pipeline.lib.competition_csv import parse_test, parse_train
from pipeline.lib.files import read_npz
from tests.conftest import REPO

Damage = Callable[[Path], None]

TRAIN = "data/raw/train.csv"
TEST = "data/raw/test.csv"
ZIP = "data/raw/digit-recognizer.zip"


def read_lines(path: Path) -> list[str]:
    """Return the lines of the text file at `path` without line endings."""
    return path.read_text(encoding="utf-8").splitlines()


def write_lines(path: Path, lines: list[str], end: str = "\n") -> None:
    """Write `lines` to `path`, each followed by `end`."""
    path.write_text("".join(line + end for line in lines), encoding="utf-8", newline="")


def set_cell(name: str, row: int, column: str, value: str) -> Damage:
    """Return a damage that sets `column` of the line after line `row + 1` (file line row + 2) to `value`."""

    def damage(root: Path) -> None:
        lines = read_lines(root / name)
        col = lines[0].split(",").index(column)
        cells = lines[row + 1].split(",")
        cells[col] = value
        lines[row + 1] = ",".join(cells)
        write_lines(root / name, lines)

    return damage


def set_text(name: str, text: str | bytes) -> Damage:
    """Return a damage that replaces file `name` with `text`."""

    def damage(root: Path) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        (root / name).write_bytes(data)

    return damage


def edit_lines(name: str, edit: Callable[[list[str]], list[str]], end: str = "\n") -> Damage:
    """Return a damage that rewrites the lines of file `name` with `edit`."""

    def damage(root: Path) -> None:
        write_lines(root / name, edit(read_lines(root / name)), end)

    return damage


def drop_column(index: int) -> Callable[[list[str]], list[str]]:
    """Return a line edit that removes column `index` from every line."""
    return lambda lines: [",".join(c for i, c in enumerate(line.split(",")) if i != index) for line in lines]


def add_column(name: str, value: str) -> Callable[[list[str]], list[str]]:
    """Return a line edit that appends column `name` (header) with `value` (every data row)."""
    return lambda lines: [lines[0] + "," + name] + [line + "," + value for line in lines[1:]]


def rename_header(old: str, new: str) -> Callable[[list[str]], list[str]]:
    """Return a line edit that renames header column `old` to `new`."""
    return lambda lines: [",".join(new if c == old else c for c in lines[0].split(",")), *lines[1:]]


def swap_header(a: str, b: str) -> Callable[[list[str]], list[str]]:
    """Return a line edit that swaps the names of header columns `a` and `b`."""
    return lambda lines: [",".join({a: b, b: a}.get(c, c) for c in lines[0].split(",")), *lines[1:]]


def swap_train_test(root: Path) -> None:
    """Exchange the contents of train.csv and test.csv."""
    train, test = (root / TRAIN).read_bytes(), (root / TEST).read_bytes()
    (root / TRAIN).write_bytes(test)
    (root / TEST).write_bytes(train)


def zipped(root: Path, members: tuple[str, ...] = ("train.csv", "test.csv")) -> bytes:
    """Return the bytes of a competition zip holding `members` of data/raw/, and remove the loose CSVs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in members:
            zf.writestr(member, (root / "data/raw" / member).read_bytes())
    for member in ("train.csv", "test.csv"):
        (root / "data/raw" / member).unlink()
    return buf.getvalue()


def to_zip(root: Path) -> None:
    """Replace the CSVs by a valid competition zip (accepted)."""
    (root / ZIP).write_bytes(zipped(root))


def truncated_zip(root: Path) -> None:
    """Replace the CSVs by the first half of their zip, as an interrupted download leaves it."""
    data = zipped(root)
    (root / ZIP).write_bytes(data[: len(data) // 2])


def corrupt_zip(root: Path) -> None:
    """Replace the CSVs by their zip with bytes inside the compressed train.csv flipped."""
    data = bytearray(zipped(root))
    for i in range(200, 260):
        data[i] ^= 0x5A
    (root / ZIP).write_bytes(bytes(data))


def zip_without_train(root: Path) -> None:
    """Replace the CSVs by a zip that holds only test.csv."""
    (root / ZIP).write_bytes(zipped(root, ("test.csv",)))


def zip_without_test(root: Path) -> None:
    """Replace the CSVs by a zip that holds only train.csv."""
    (root / ZIP).write_bytes(zipped(root, ("train.csv",)))


def remove_raw(root: Path) -> None:
    """Delete both CSVs: no competition data at all."""
    (root / TRAIN).unlink()
    (root / TEST).unlink()


def insert_line(index: int, line: Callable[[list[str]], str]) -> Callable[[list[str]], list[str]]:
    """Return a line edit that inserts `line(lines)` before line `index` (0-based)."""
    return lambda lines: [*lines[:index], line(lines), *lines[index:]]


TITANIC = (
    "PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked\n"
    '1,0,3,"Braund, Mr. Owen Harris",male,22,1,0,A/5 21171,7.25,,S\n'
)

# (case id, damage, exit code, message regex). Files are named as ingest reads them (data/raw/...).
INGEST_MATRIX: list[tuple[str, Damage, int, str]] = [
    ("train empty file", set_text(TRAIN, ""), 2, r"data/raw/train\.csv: is empty"),
    ("test empty file", set_text(TEST, ""), 2, r"data/raw/test\.csv: is empty"),
    (
        "train header only",
        edit_lines(TRAIN, lambda lines: lines[:1]),
        2,
        r"data/raw/train\.csv, line 2: has a header but no data rows",
    ),
    (
        "test header only",
        edit_lines(TEST, lambda lines: lines[:1]),
        2,
        r"data/raw/test\.csv, line 2: has a header but no data rows",
    ),
    (
        "missing label column (renamed)",
        edit_lines(TRAIN, rename_header("label", "digit")),
        2,
        r"data/raw/train\.csv, line 1: header column 1 is 'digit', expected 'label'",
    ),
    (
        "missing label column (dropped)",
        edit_lines(TRAIN, drop_column(0)),
        2,
        r"data/raw/train\.csv, line 1: has no 'label' column",
    ),
    (
        "columns in the wrong order",
        edit_lines(TRAIN, swap_header("pixel0", "pixel1")),
        2,
        r"data/raw/train\.csv, line 1: header column 2 is 'pixel1', expected 'pixel0' \(wrong order\?\)",
    ),
    (
        "train 784 columns (a pixel missing)",
        edit_lines(TRAIN, drop_column(784)),
        2,
        r"data/raw/train\.csv, line 1: header has 784 columns, expected 785",
    ),
    (
        "train 783 columns",
        edit_lines(TRAIN, lambda lines: drop_column(783)(drop_column(784)(lines))),
        2,
        r"data/raw/train\.csv, line 1: header has 783 columns, expected 785",
    ),
    (
        "train 786 columns",
        edit_lines(TRAIN, add_column("pixel784", "0")),
        2,
        r"data/raw/train\.csv, line 1: header has 786 columns, expected 785",
    ),
    (
        "test 783 columns",
        edit_lines(TEST, drop_column(783)),
        2,
        r"data/raw/test\.csv, line 1: header has 783 columns, expected 784",
    ),
    (
        "test 786 columns",
        edit_lines(TEST, lambda lines: add_column("extra2", "0")(add_column("extra1", "0")(lines))),
        2,
        r"data/raw/test\.csv, line 1: header has 786 columns, expected 784",
    ),
    (
        "one data row with an extra field",
        edit_lines(TRAIN, lambda lines: [*lines[:3], lines[3] + ",7", *lines[4:]]),
        2,
        r"data/raw/train\.csv, line 4: is not a well-formed CSV: .*Expected 785 fields in line 4, saw 786",
    ),
    (
        "every data row with an extra field (an index column)",
        edit_lines(TRAIN, lambda lines: [lines[0]] + [f"{i},{line}" for i, line in enumerate(lines[1:])]),
        2,
        r"data/raw/train\.csv, line 2: data rows have more fields than the header columns",
    ),
    (
        "one data row a field short",
        edit_lines(TRAIN, lambda lines: [*lines[:6], lines[6].rsplit(",", 1)[0], *lines[7:]]),
        2,
        r"data/raw/train\.csv, line 7, column 'pixel783': an empty cell",
    ),
    (
        "non-integer pixel 1.5",
        set_cell(TRAIN, 3, "pixel300", "1.5"),
        2,
        r"data/raw/train\.csv, line 5, column 'pixel300': non-integer value '1\.5'",
    ),
    (
        "non-integer pixel text",
        set_cell(TEST, 0, "pixel5", "abc"),
        2,
        r"data/raw/test\.csv, line 2, column 'pixel5': non-integer value 'abc'",
    ),
    (
        "non-integer pixel 1e2",
        set_cell(TRAIN, 9, "pixel10", "1e2"),
        2,
        r"data/raw/train\.csv, line 11, column 'pixel10': non-integer value '1e2'",
    ),
    (
        "pixel 256",
        set_cell(TRAIN, 7, "pixel400", "256"),
        2,
        r"data/raw/train\.csv, line 9, column 'pixel400': value 256 out of range 0-255",
    ),
    (
        "pixel -1",
        set_cell(TEST, 4, "pixel783", "-1"),
        2,
        r"data/raw/test\.csv, line 6, column 'pixel783': value -1 out of range 0-255",
    ),
    (
        "pixel beyond int64",
        set_cell(TRAIN, 2, "pixel1", "99999999999999999999999"),
        2,
        r"data/raw/train\.csv, line 4, column 'pixel1': value 99999999999999999999999 out of range 0-255",
    ),
    (
        "label 10",
        set_cell(TRAIN, 11, "label", "10"),
        2,
        r"data/raw/train\.csv, line 13, column 'label': label 10 is not a digit 0-9",
    ),
    (
        "label -1",
        set_cell(TRAIN, 0, "label", "-1"),
        2,
        r"data/raw/train\.csv, line 2, column 'label': label -1 is not a digit 0-9",
    ),
    (
        "label 3.0",
        set_cell(TRAIN, 5, "label", "3.0"),
        2,
        r"data/raw/train\.csv, line 7, column 'label': non-integer value '3\.0'",
    ),
    (
        "empty pixel cell",
        set_cell(TRAIN, 20, "pixel42", ""),
        2,
        r"data/raw/train\.csv, line 22, column 'pixel42': an empty cell",
    ),
    (
        "empty label cell",
        set_cell(TRAIN, 1, "label", ""),
        2,
        r"data/raw/train\.csv, line 3, column 'label': an empty cell",
    ),
    (
        "NaN pixel",
        set_cell(TEST, 8, "pixel99", "NaN"),
        2,
        r"data/raw/test\.csv, line 10, column 'pixel99': non-integer value 'NaN'",
    ),
    (
        "duplicated header line in the middle of train",
        edit_lines(TRAIN, insert_line(30, lambda lines: lines[0])),
        2,
        r"data/raw/train\.csv, line 31, column 'label': a repeated header line \('label'\)",
    ),
    (
        "duplicated header line in the middle of test",
        edit_lines(TEST, insert_line(10, lambda lines: lines[0])),
        2,
        r"data/raw/test\.csv, line 11, column 'pixel0': a repeated header line \('pixel0'\)",
    ),
    (
        "blank lines before a bad cell (line numbers still exact)",
        lambda root: (
            edit_lines(TRAIN, insert_line(2, lambda lines: ""))(root),
            edit_lines(TRAIN, insert_line(4, lambda lines: ""))(root),
            set_cell(TRAIN, 7, "pixel3", "300")(root),
        ),
        2,
        r"data/raw/train\.csv, line 9, column 'pixel3': value 300 out of range 0-255",
    ),
    ("not UTF-8 text", set_text(TRAIN, b"\x1f\x8b\x08\x00\xff\xfe" * 50), 2, r"data/raw/train\.csv: is not UTF-8 text"),
    ("truncated zip", truncated_zip, 2, rf"{ZIP}: not a readable zip archive .*download it again"),
    ("corrupt zip", corrupt_zip, 2, rf"{ZIP}: .*(not a readable zip archive|corrupt member).*download it again"),
    ("zip without train.csv", zip_without_train, 2, rf"{ZIP}: no train\.csv in the zip \(it holds \['test\.csv'\]\)"),
    # was "corrupt member test.csv: ...: no test.csv in the zip": a missing member is said as it is
    (
        "zip without test.csv",
        zip_without_test,
        2,
        rf"^ingest: error: {ZIP}: no test\.csv in the zip \(it holds \['train\.csv'\]\)$",
    ),
    ("no raw data at all", remove_raw, 2, r"no competition data: expected data/raw/digit-recognizer\.zip"),
    (
        "wrong competition (Titanic train.csv)",
        set_text(TRAIN, TITANIC),
        2,
        r"data/raw/train\.csv, line 1: is not Digit Recognizer data: header starts 'PassengerId,Survived,",
    ),
    (
        "train and test swapped",
        swap_train_test,
        2,
        r"data/raw/train\.csv, line 1: has no 'label' column: this looks like test\.csv "
        r"\(are train and test swapped\?\)",
    ),
    (
        "test.csv is a copy of train.csv",
        lambda root: (root / TEST).write_bytes((root / TRAIN).read_bytes()),
        2,
        r"data/raw/test\.csv, line 1: has a 'label' column: this looks like train\.csv",
    ),
    # accepted inputs: exit 0, the arrays equal those of the clean CSVs
    ("Windows line endings (accepted)", lambda root: [edit_lines(n, list, "\r\n")(root) for n in (TRAIN, TEST)], 0, ""),
    (
        "UTF-8 BOM (accepted)",
        lambda root: [(root / n).write_bytes(b"\xef\xbb\xbf" + (root / n).read_bytes()) for n in (TRAIN, TEST)],
        0,
        "",
    ),
    ("competition zip instead of CSVs (accepted)", to_zip, 0, ""),
    (
        "test file with the wrong row count (warns, accepted)",
        edit_lines(TEST, lambda lines: lines[:-1]),
        0,
        r"data/raw/test\.csv: 19 rows, but Kaggle scores exactly 20; a submission built from it will be rejected",
    ),
]


def seed_outputs(root: Path) -> None:
    """Fill data/processed, models and submissions with files a bad run must not touch."""
    files = {
        "data/processed/train.npz": b"previous train.npz",
        "data/processed/test.npz": b"previous test.npz",
        "data/processed/augmented.npz": b"previous augmented",
        "data/processed/best_params.json": b'{"params": {}}\n',
        "models/folds/dropout_cnn/fold0.keras": bytes(range(256)) * 4,
        "models/folds/dropout_cnn/fold0.json": b'{"fold": 0}\n',
        "models/oof.npz": b"previous oof",
        "submissions/latest.csv": b"ImageId,Label\n1,7\n",
        "submissions/submission-20240101-000000.csv": b"ImageId,Label\n1,7\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def snapshot(root: Path) -> dict[str, bytes]:
    """Return the bytes of every file under data/processed, models and submissions."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in ("data/processed", "models", "submissions")
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def run_ingest() -> tuple[int, str]:
    """Run ingest in-process; return its exit code and its stderr plus any warnings it raised."""
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, redirect_stderr(err):
        warnings.simplefilter("always")
        code = ingest.main([])
    return code, err.getvalue() + "".join(f"warning: {w.message}\n" for w in caught)


@pytest.mark.parametrize(
    ("damage", "code", "message"), [c[1:] for c in INGEST_MATRIX], ids=[c[0] for c in INGEST_MATRIX]
)
def test_ingest_matrix(project: Path, digits, damage: Damage, code: int, message: str) -> None:
    """Each damaged input gives its exit code and message; failures leave every existing output untouched."""
    seed_outputs(project)
    before = snapshot(project)
    damage(project)
    exit_code, stderr = run_ingest()
    assert exit_code == code, stderr
    assert re.search(message, stderr), f"{message!r} not in {stderr!r}"
    after = snapshot(project)
    if code != 0:
        assert stderr.startswith("ingest: error: ")
        assert after == before
        return
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"data/processed/train.npz", "data/processed/test.npz"}
    train, test = read_npz(project / "data/processed/train.npz"), read_npz(project / "data/processed/test.npz")
    np.testing.assert_array_equal(train["x"], digits[0])
    np.testing.assert_array_equal(train["y"], digits[1])
    assert test["x"].shape[1:] == (28, 28) and len(test["x"]) in (19, 20)


def submission_text(rows: int = 20) -> str:
    """Return a valid submission for `rows` test rows."""
    return "ImageId,Label\n" + "".join(f"{i},{i % 10}\n" for i in range(1, rows + 1))


def edited(edit: Callable[[list[str]], list[str]]) -> bytes:
    """Return a valid submission's bytes with its lines rewritten by `edit`."""
    return ("\n".join(edit(submission_text().splitlines())) + "\n").encode()


def replace_line(index: int, line: str) -> Callable[[list[str]], list[str]]:
    """Return a line edit that replaces line `index` (0-based) with `line`."""
    return lambda lines: [*lines[:index], line, *lines[index + 1 :]]


SUB = "submissions/candidate.csv"

# (case id, submission bytes or None for a missing file, exit code, message regex)
SUBMISSION_MATRIX: list[tuple[str, bytes | None, int, str]] = [
    ("valid", submission_text().encode(), 0, r"is valid \(20 rows\)"),
    ("Windows line endings (accepted)", submission_text().replace("\n", "\r\n").encode(), 0, r"is valid"),
    ("UTF-8 BOM (accepted)", b"\xef\xbb\xbf" + submission_text().encode(), 0, r"is valid"),
    ("missing file", None, 2, rf"{SUB}: does not exist"),
    ("empty file", b"", 2, rf"{SUB}: is empty"),
    ("header only", b"ImageId,Label\n", 2, rf"{SUB}, column 'ImageId': has 0 rows, expected 20"),
    (
        "wrong header",
        edited(replace_line(0, "ImageID,label")),
        2,
        rf"{SUB}, line 1: header is 'ImageID,label', expected 'ImageId,Label'",
    ),
    (
        "duplicated ImageId",
        edited(replace_line(8, "3,7")),
        2,
        rf"{SUB}, line 9, column 'ImageId': ImageId 3 appears twice",
    ),
    (
        "missing ImageId",
        edited(lambda lines: [*lines[:5], *lines[6:]]),
        2,
        rf"{SUB}, column 'ImageId': has 19 rows, expected 20; missing ImageId \[5\]",
    ),
    (
        "ImageId out of range",
        edited(replace_line(20, "21,0")),
        2,
        rf"{SUB}, line 21, column 'ImageId': ImageId '21' is not an integer 1-20",
    ),
    (
        "label 10",
        edited(replace_line(4, "4,10")),
        2,
        rf"{SUB}, line 5, column 'Label': Label '10' is not an integer 0-9",
    ),
    (
        "label -1",
        edited(replace_line(2, "2,-1")),
        2,
        rf"{SUB}, line 3, column 'Label': Label '-1' is not an integer 0-9",
    ),
    (
        "label 2.5",
        edited(replace_line(1, "1,2.5")),
        2,
        rf"{SUB}, line 2, column 'Label': Label '2.5' is not an integer",
    ),
    ("empty label", edited(replace_line(7, "7,")), 2, rf"{SUB}, line 8, column 'Label': Label '' is not an integer"),
    (
        "row with an extra field",
        edited(replace_line(3, "3,3,3")),
        2,
        rf"{SUB}: is not a well-formed CSV: .*Expected 2 fields in line 4, saw 3",
    ),
]


@pytest.mark.parametrize(
    ("content", "code", "message"), [c[1:] for c in SUBMISSION_MATRIX], ids=[c[0] for c in SUBMISSION_MATRIX]
)
def test_submission_matrix(
    project: Path, capsys: pytest.CaptureFixture, content: bytes | None, code: int, message: str
) -> None:
    """Each submission gives its exit code and message from the validator CLI, and changes no file."""
    seed_outputs(project)
    if content is not None:
        (project / SUB).write_bytes(content)
    before = snapshot(project)
    exit_code = submission_file.main([SUB, "--rows", "20"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert exit_code == code, text
    assert re.search(message, text), f"{message!r} not in {text!r}"
    assert snapshot(project) == before


def test_submission_rows_default_to_params(project: Path, capsys: pytest.CaptureFixture) -> None:
    """Without --rows the validator expects ingest.expected_test_rows rows (20 in the test params)."""
    (project / SUB).parent.mkdir(parents=True, exist_ok=True)
    (project / SUB).write_text(submission_text(21))
    assert submission_file.main([SUB]) == 2
    assert "ImageId '21' is not an integer 1-20" in capsys.readouterr().err


def test_clean_inputs_parse(project: Path, digits) -> None:
    """The fixture's untouched CSVs are accepted (the control row of the matrix)."""
    x, y = parse_train((project / TRAIN).read_bytes(), TRAIN)
    np.testing.assert_array_equal(x, digits[0])
    np.testing.assert_array_equal(y, digits[1])
    assert parse_test((project / TEST).read_bytes(), TEST, expected_rows=20).shape == (20, 28, 28)


def run_module(module: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m module` in `cwd` with the repository on the path; return the finished process."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", module], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_ingest_process_exit_code_and_outputs_kept(project: Path) -> None:
    """As a real process, a bad input exits non-zero with the message on stderr and no traceback."""
    seed_outputs(project)
    before = snapshot(project)
    set_cell(TRAIN, 7, "pixel400", "256")(project)
    done = run_module("pipeline.ingest", project)
    assert done.returncode == 2
    assert "data/raw/train.csv, line 9, column 'pixel400': value 256 out of range 0-255" in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(project) == before


def test_ingest_process_warns_on_wrong_test_row_count(project: Path) -> None:
    """As a real process, a test.csv with the wrong row count prints a warning on stderr and exits 0."""
    edit_lines(TEST, lambda lines: lines[:-1])(project)
    done = run_module("pipeline.ingest", project)
    assert done.returncode == 0, done.stderr
    assert "UserWarning: data/raw/test.csv: 19 rows, but Kaggle scores exactly 20" in done.stderr
    assert "19 test rows" in done.stdout


def test_predict_image_on_a_folder_says_it_is_a_folder(project: Path, tmp_path: Path, capsys) -> None:
    # was "no such file" for a folder that exists
    from pipeline import params, paths, predict

    name, folds = params.load("model").name, params.load("train").folds
    for fold in range(folds):
        paths.fold_dir(name, fold).mkdir(parents=True)
        paths.fold_model(name, fold).write_bytes(b"a trained fold model")  # predict --image first checks they exist
    folder = tmp_path / "digits"
    folder.mkdir()
    assert predict.main(["--image", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == f"predict: error: {folder} is a directory, expected an image file: a PNG or JPG holding one digit\n"


def test_augment_with_workers_leaves_no_temporary_file(project: Path, tmp_path: Path, monkeypatch) -> None:
    # was /tmp/augment-*: a killed augment with two workers left its images and memory-mapped copies there for good;
    # the chunks now travel to joblib's workers pickled: no file is written for them anywhere
    import dataclasses
    import tempfile
    import threading
    import time

    from pipeline import params
    from pipeline.lib.transforms import augment

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(system_tmp))
    before = sorted(p for p in project.rglob("*") if p.is_file())
    images = np.random.default_rng(0).integers(0, 255, (4000, 28, 28), dtype=np.uint8)
    cfg = dataclasses.replace(params.load("augment"), chunk_rows=2000)  # 1.6 MB a chunk: joblib would map it to a file
    seen, done = set(), threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(str(p) for p in system_tmp.rglob("*"))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = augment(images, cfg, seed=0, workers=2)
    finally:
        done.set()
        watcher.join()
    assert len(out["x"]) == len(images) * cfg.copies
    assert seen == set() and sorted(p for p in project.rglob("*") if p.is_file()) == before
