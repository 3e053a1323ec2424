"""The pipeline in a notebook: its commands run in a Jupyter kernel's environment (ipykernel gives every `!` command
MPLBACKEND=module://matplotlib_inline.backend_inline, which .venv may not be able to load), a rerun whose stages
DVC finds cached still leaves the submission in a Kaggle notebook's working folder, and, marked slow, the notebooks
themselves (notebooks/kaggle.ipynb, notebooks/colab.ipynb) executed in a real kernel as a user runs them."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

INLINE = "module://matplotlib_inline.backend_inline"  # what ipykernel exports to every `!` command
# a backend this matplotlib does not know, as the inline one is where matplotlib_inline is not installed (a .venv
# without ipykernel): matplotlib refuses it when imported, whatever this .venv holds
UNKNOWN = "no_such_backend"
MISSING = "module://no_such_backend_inline"  # a module that does not exist: named in the matplotlibrc


def kernel_env(tmp_path: Path, backend: str) -> dict[str, str]:
    """Return this environment with MPLBACKEND=`backend` and a matplotlibrc naming a backend that does not exist."""
    rc = tmp_path / "mplrc"
    rc.mkdir(exist_ok=True)
    (rc / "matplotlibrc").write_text(f"backend: {MISSING}\n")
    return {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": backend, "MATPLOTLIBRC": str(rc)}


@pytest.mark.parametrize("backend", [INLINE, UNKNOWN])
def test_an_entry_point_that_imports_keras_ignores_the_callers_backend(tmp_path, backend):
    # `!.venv/bin/python -m pipeline.device` in a notebook: `import keras` raised "Key backend: ... is not a valid
    # value for backend"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.device"], env=kernel_env(tmp_path, backend), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "ValueError" not in done.stderr


def test_a_plotting_stage_and_its_workers_ignore_the_callers_backend(project, tmp_path_factory):
    # `!make quick` stopped at augment, the first stage that draws (reports/augmentations.png), in two workers
    settings = yaml.safe_load((project / "params.yaml").read_text())
    settings["augment"]["workers"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    env = kernel_env(tmp_path_factory.mktemp("rc"), UNKNOWN)
    for stage in ("ingest", "augment"):
        done = subprocess.run(
            [sys.executable, "-m", f"pipeline.{stage}"], cwd=project, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    assert (project / "reports" / "augmentations.png").read_bytes().startswith(b"\x89PNG")


def test_a_plotting_call_outside_an_entry_point_ignores_the_callers_backend(tmp_path):
    code = (
        "import numpy as np; from pathlib import Path; from pipeline.lib import plots; "
        "plots.image_grid(np.zeros((2, 28, 28), np.uint8), ['a', 'b'], Path('grid.png'), 'two')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=kernel_env(tmp_path, UNKNOWN), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")


STAGE = """stages:
  predict:
    cmd: mkdir -p submissions && cp labels.txt submissions/latest.csv
    deps: [labels.txt]
    outs: [submissions/latest.csv]
"""


def dvc_project(folder: Path) -> Path:
    """Make a git repository with DVC in `folder` holding one stage that writes submissions/latest.csv."""
    folder.mkdir()
    (folder / "dvc.yaml").write_text(STAGE)
    (folder / "labels.txt").write_text("ImageId,Label\n1,7\n2,1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=folder, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=folder, check=True)
    subprocess.run([*git, "add", "-A"], cwd=folder, check=True)
    subprocess.run([*git, "commit", "-qm", "stage"], cwd=folder, check=True)
    return folder


def repro(folder: Path, kaggle_root: Path) -> subprocess.CompletedProcess:
    """Run `python -m pipeline.tools.repro` (make run's and make quick's last step) in `folder`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DIGIT_KAGGLE_ROOT": str(kaggle_root)}
    cmd = [sys.executable, "-m", "pipeline.tools.repro"]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_a_cached_rerun_still_leaves_the_submission_in_the_notebooks_working_folder(tmp_path):
    # the notebook's submission.csv was written by predict alone: a rerun that DVC found cached left none
    folder = dvc_project(tmp_path / "project")
    working = tmp_path / "kaggle" / "working"
    working.mkdir(parents=True)
    first = repro(folder, tmp_path / "kaggle")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'predict'" in first.stdout
    latest = (folder / "submissions" / "latest.csv").read_bytes()
    assert (working / "submission.csv").read_bytes() == latest
    (working / "submission.csv").unlink()  # a fresh notebook session: the working folder is empty again
    again = repro(folder, tmp_path / "kaggle")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Running stage" not in again.stdout  # everything cached
    assert (working / "submission.csv").read_bytes() == latest
    assert f"-> {working / 'submission.csv'}" in again.stdout


def test_outside_a_notebook_nothing_is_published_and_dvc_does_not_ask_to_git_add_dvc_lock(tmp_path):
    folder = dvc_project(tmp_path / "project")
    done = repro(folder, tmp_path / "no-kaggle")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Running stage 'predict'" in done.stdout and (folder / "dvc.lock").exists()
    assert "git add" not in done.stdout + done.stderr  # dvc.lock is never committed here (README)
    assert "autostage" not in done.stdout + done.stderr
    assert not (tmp_path / "no-kaggle").exists()


@pytest.mark.parametrize("target", ["run", "quick"])
def test_make_run_and_quick_end_with_the_step_that_publishes_the_submission(target):
    recipe = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert recipe.strip().splitlines()[-1].endswith("/python -m pipeline.tools.repro")


# ---- the notebooks themselves, executed in a real Jupyter kernel (nbclient + ipykernel), as a user runs them ----

NOTEBOOKS = REPO / "notebooks"
# a run shrunk the way a user would shrink it (SET=...): the quick profile on 3,000 training rows, one epoch, no TTA;
# every one of the 28,000 test rows is predicted, so the submission is a full one
SHRINK = (
    "ingest.max_train_rows=3000 augment.copies=1 tune.epochs=1 tune.max_train_rows=1000 tune.max_val_rows=500 "
    "train.epochs=1 train.monitor_rows=null predict.tta_views=0"
)
TEST_ROWS = 28000
LARGE = 5 * 2**20  # the working folder is saved with a Kaggle notebook: nothing near this size belongs there
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"


def competition_zip() -> Path | None:
    """Return the competition zip: $DIGIT_ZIP, else ../shared/data/digit-recognizer.zip beside the checkout."""
    candidates = [os.environ.get("DIGIT_ZIP"), REPO.parent / "shared" / "data" / "digit-recognizer.zip"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def require_zip() -> Path:
    """Return the competition zip, or skip (fail where DIGIT_REQUIRE_ZIP=1, as in CI) naming how to provide it."""
    found = competition_zip()
    if found is None:
        reason = "set DIGIT_ZIP=/path/to/digit-recognizer.zip (or put it in ../shared/data/) to execute the notebooks"
        if os.environ.get("DIGIT_REQUIRE_ZIP") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def pyenv_python(version: str) -> Path:
    """Return pyenv's python`version` (e.g. 3.11), or skip when this machine has none."""
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no Python {version} under {PYENV}")
    return found[-1]


def python_without_ensurepip(python: Path, prefix: Path) -> Path:
    """Return a Python at `prefix` that is `python` without ensurepip (as Colab's, Debian's without python3-venv):
    its binary and shared library copied, its standard library linked entry by entry, less ensurepip."""
    home = python.parent.parent
    version = python.name.removeprefix("python")
    (prefix / "bin").mkdir(parents=True)
    target = prefix / "bin" / python.name
    target.write_bytes(python.read_bytes())
    target.chmod(0o755)
    for lib in home.glob("lib/libpython*"):
        (prefix / "lib" / lib.name).parent.mkdir(parents=True, exist_ok=True)
        (prefix / "lib" / lib.name).symlink_to(lib)
    stdlib = prefix / "lib" / f"python{version}"
    stdlib.mkdir(parents=True)
    for entry in (home / "lib" / f"python{version}").iterdir():
        if entry.name != "ensurepip":
            (stdlib / entry.name).symlink_to(entry)
    return target


def host_bin(folder: Path, python: Path) -> Path:
    """Return `folder` holding `python3` (and `python`) -> `python`: the notebook's interpreter, by its bare name."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        (folder / name).symlink_to(python)
    return folder


def kernel_environment(bin_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """Return a notebook kernel's environment: the system's PATH after `bin_dir` (no .venv, no pyenv shims), a fresh
    HOME, pip's cache shared with this machine's, no variable of this project's or Kaggle's unless in `extra`."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache")
    cache = os.environ.get("PIP_CACHE_DIR") or str(user_cache / "pip")  # this user's, not the tests' HOME's
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MPLBACKEND", "MATPLOTLIBRC", "PYENV_VERSION", "CONDA_PREFIX")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("KAGGLE_", "DIGIT_", "PYTEST"))}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.update(PATH=f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME=str(home))
    env.update(PIP_CACHE_DIR=cache, **extra)
    home.mkdir(parents=True, exist_ok=True)
    return env


def checkout(folder: Path) -> Path:
    """Return a git repository at `folder` holding this working tree's files (tracked and new, not ignored) in one
    commit: what the notebooks clone (a fresh clone of the repository in CI, the work in progress elsewhere)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if name == "dvc.lock" or not source.is_file():  # dvc.lock: this machine's record, never committed
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(source.read_bytes())
        (folder / name).chmod(source.stat().st_mode & 0o777)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the working tree"]):
        subprocess.run([*git, *args], cwd=folder, check=True)
    return folder


def execute(name: str, cwd: Path, env: dict[str, str], **overrides: object) -> object:
    """Execute notebooks/`name`.ipynb in a real kernel started in `cwd` with `env`, its parameters cell followed by
    one setting `overrides` (as papermill injects them); return the executed notebook."""
    import nbclient
    import nbformat

    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{key} = {value!r}" for key, value in overrides.items())
    book.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(
        book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env, cwd=str(cwd))
    print(f"{name}.ipynb, seconds per code cell:", seconds_per_cell(book))  # shown by pytest -s or on a failure
    return book


def seconds_per_cell(book: object) -> list[float]:
    """Return how long each code cell of the executed `book` took (nbclient's timing metadata)."""
    from datetime import datetime

    spans = []
    for cell in book.cells:
        timing = cell.metadata.get("execution", {}) if cell.cell_type == "code" else {}
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[k]) for k in ("iopub.execute_input", "shell.execute_reply"))
            spans.append(round((end - start).total_seconds(), 1))
    return spans


def outputs(book: object) -> str:
    """Return every stream the notebook's cells printed."""
    return "".join(o.get("text", "") for c in book.cells if c.cell_type == "code" for o in c.outputs)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Return every path under `folder` (itself included) with its mode and, for a file, its digest."""
    import hashlib

    found = {".": (folder.stat().st_mode, "")}
    for path in sorted(folder.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(folder))] = (path.stat().st_mode, digest)
    return found


def kaggle_input(root: Path, zip_path: Path) -> Path:
    """Lay out a Kaggle notebook's read-only input under `root`: the competition's CSVs from `zip_path`."""
    import zipfile

    folder = root / "input" / "digit-recognizer"
    folder.mkdir(parents=True)
    (root / "working").mkdir()
    with zipfile.ZipFile(zip_path) as archive:
        for member in archive.namelist():
            if member.endswith(".csv"):
                (folder / Path(member).name).write_bytes(archive.read(member))
                (folder / Path(member).name).chmod(0o444)
    folder.chmod(0o555)
    (root / "input").chmod(0o555)
    return folder


def assert_valid_submission(path: Path) -> None:
    """Assert that `path` is a full submission: ImageId,Label, ids 1..28000 in order, labels 0-9."""
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageId,Label"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(i) for i, _ in rows] == list(range(1, TEST_ROWS + 1))
    assert {label for _, label in rows} <= set("0123456789")


@pytest.mark.slow
def test_the_kaggle_notebook_runs_as_written_and_a_rerun_gives_the_submission_back(tmp_path):
    zip_path = require_zip()
    root = tmp_path / "kaggle"
    folder = kaggle_input(root, zip_path)
    before = snapshot(root / "input")
    try:
        # Kaggle's image: Python 3.11 as python3, the variables its notebooks set; ipykernel adds MPLBACKEND
        bin_dir = host_bin(tmp_path / "bin", pyenv_python("3.11"))
        env = kernel_environment(
            bin_dir,
            tmp_path / "home",
            DIGIT_KAGGLE_ROOT=str(root),
            KAGGLE_KERNEL_RUN_TYPE="Interactive",
            KAGGLE_URL_BASE="https://www.kaggle.com",
        )
        overrides = {"REPO_URL": str(checkout(tmp_path / "repo")), "TARGET": "quick", "SET": SHRINK}
        book = execute("kaggle", root / "working", env, INSTALL="install", **overrides)
        printed = outputs(book)
        submission = root / "working" / "submission.csv"
        assert_valid_submission(submission)
        clone = root / "temp" / "digit-pipeline"
        assert submission.read_bytes() == (clone / "submissions" / "latest.csv").read_bytes()
        assert f"from the Kaggle notebook input {folder}" in printed
        assert "no fold is recorded" not in printed and "git add" not in printed and "Traceback" not in printed
        written = sum(p.stat().st_size for p in (root / "working").rglob("*") if p.is_file())
        assert written < LARGE, sorted((root / "working").rglob("*"))
        # a new session: the working folder starts empty; DVC finds every stage cached and runs none
        submission.unlink()
        again = outputs(execute("kaggle", root / "working", env, INSTALL="install", **overrides))
        assert "Running stage" not in again
        assert submission.read_bytes() == (clone / "submissions" / "latest.csv").read_bytes()
        assert snapshot(root / "input") == before  # the input, read-only on Kaggle, untouched: bytes and modes
    finally:
        for path in (root / "input", folder):
            path.chmod(0o755)


@pytest.mark.slow
def test_the_colab_notebook_runs_with_a_python3_without_ensurepip(tmp_path):
    zip_path = require_zip()
    python = python_without_ensurepip(pyenv_python("3.11"), tmp_path / "python")
    assert subprocess.run([str(python), "-c", "import ensurepip"], capture_output=True).returncode != 0
    content = tmp_path / "content"
    content.mkdir()
    env = kernel_environment(host_bin(tmp_path / "bin", python), tmp_path / "home", DIGIT_KAGGLE_ROOT="/nonexistent")
    overrides = {"REPO_URL": str(checkout(tmp_path / "repo")), "TARGET": "quick", "SET": SHRINK}
    book = execute("colab", content, env, INSTALL="install", ZIP=str(zip_path), DRY_RUN=True, **overrides)
    printed = outputs(book)
    assert "venv failed (no ensurepip?)" in printed
    clone = content / "digit-pipeline"
    assert_valid_submission(clone / "submissions" / "latest.csv")
    assert f"submit: submissions/latest.csv is valid ({TEST_ROWS} rows)" in printed
    assert "Traceback" not in printed and "git add" not in printed
