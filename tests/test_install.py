"""make install works where Python has no ensurepip (Kaggle's, Colab's, Debian's python3 without python3-venv): .venv is
made without pip and gets pip from the interpreter's own; the gpu extra pins the same TensorFlow and JAX as the CPU
install; requires-python admits the Pythons the project is tested on (docs/notebooks.md)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.conftest import REPO

# A stand-in interpreter: it logs every call, its `-m venv` fails as Python's does without ensurepip (unless
# --without-pip, or the environment says ensurepip is there) after making .venv/bin/python and python3 (copies of this
# script), as Python's does; `-m pip` fails as a Python's without pip (.venv's, until pip is installed into it: the
# file .has-pip beside bin/) and otherwise succeeds without installing anything (FAKE_PIP_FAILS: its `--python` install
# fails, as without network).
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$0 $*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m venv" ]; then
  venv="${@: -1}"
  mkdir -p "$venv/bin"
  cp "$0" "$venv/bin/python"
  cp "$0" "$venv/bin/python3"
  case " $* " in
    *" --without-pip "*) ;;
    *) [ -n "$FAKE_ENSUREPIP" ] || { echo "Error: ... ensurepip ... returned non-zero exit status 1." >&2; exit 1; }
       touch "$venv/.has-pip" ;;
  esac
elif [ "$1 $2" = "-m pip" ]; then
  [ -e "$(dirname "$0")/../.has-pip" ] || { echo "$0: No module named pip" >&2; exit 1; }
  if [ "$3" = "--python" ]; then
    [ -z "$FAKE_PIP_FAILS" ] || { echo "ERROR: No matching distribution found for pip" >&2; exit 1; }
    touch "$(dirname "$4")/../.has-pip"
  fi
fi
exit 0
"""


def make_install(
    tmp_path: Path, target: str, ensurepip: bool, bare: bool = False, **env: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `make TARGET` for real in a copy of the Makefile with the stand-in interpreter as PYTHON (its path, or with
    `bare` the name `python3` found on PATH, as a notebook passes it); return the run and the interpreters' calls, with
    the folder's path written as `.`."""
    for name in ("Makefile", "pyproject.toml"):
        if not (tmp_path / name).exists():  # a second run finds them as the first left them, older than its stamps
            shutil.copy2(REPO / name, tmp_path / name)
    python = tmp_path / "host" / "python3"
    python.parent.mkdir(exist_ok=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    (tmp_path / ".has-pip").touch()  # the host interpreter has pip
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_ENSUREPIP": "1" if ensurepip else "", **env}
    env.pop("MAKEFLAGS", None)
    if bare:
        env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    run = subprocess.run(
        ["make", target, f"PYTHON={'python3' if bare else python}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    calls = log.read_text().replace(f"{tmp_path}/", "./").splitlines() if log.exists() else []
    return run, calls


WITHOUT_ENSUREPIP = [
    "./host/python3 -m venv .venv",  # fails: no ensurepip
    "./host/python3 -m venv --without-pip .venv",
    "./host/python3 -m pip --python .venv/bin/python install --quiet pip",  # pip 22.3+ installs into .venv
    ".venv/bin/python -m pip install --quiet --upgrade pip",
    ".venv/bin/python -m pip install --quiet -e .[dev,jax,dashboard]",
]


def test_without_ensurepip_the_venv_is_made_without_pip_and_gets_pip_from_the_interpreters_own(tmp_path):
    run, calls = make_install(tmp_path, "install", ensurepip=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert calls == WITHOUT_ENSUREPIP
    assert "no ensurepip?" in run.stdout
    assert (tmp_path / ".venv" / ".installed").exists()


def test_a_bare_python3_on_path_is_the_one_used_even_after_venv_made_its_own(tmp_path):
    # `make install PYTHON=python3`, as in a notebook: the failed `python3 -m venv .venv` leaves .venv/bin/python3
    # (without pip), and .venv/bin is first on make's PATH; only the shell's memory of where it found python3 kept the
    # fallback from running that one (a rerun has no such luck: the next test)
    run, calls = make_install(tmp_path, "install", ensurepip=False, bare=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert calls == WITHOUT_ENSUREPIP
    assert (tmp_path / ".venv" / ".installed").exists()


def test_rerunning_after_a_failed_install_finishes_it(tmp_path):
    # the first try fails after a half-made .venv (pip could not be had); running the cell again must finish it. It
    # used to run .venv/bin/python3 (first on PATH): `-m venv` with it, then "No module named pip", every time
    run, calls = make_install(tmp_path, "install", ensurepip=False, bare=True, FAKE_PIP_FAILS="1")
    assert run.returncode != 0 and calls == WITHOUT_ENSUREPIP[:3]
    assert (tmp_path / ".venv" / "bin" / "python3").exists() and not (tmp_path / ".venv" / ".installed").exists()
    again, calls = make_install(tmp_path, "install", ensurepip=False, bare=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert calls == WITHOUT_ENSUREPIP
    assert (tmp_path / ".venv" / ".installed").exists()


def test_with_ensurepip_the_venv_is_pythons_own(tmp_path):
    run, calls = make_install(tmp_path, "install", ensurepip=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert calls == [
        "./host/python3 -m venv .venv",
        ".venv/bin/python -m pip install --quiet --upgrade pip",
        ".venv/bin/python -m pip install --quiet -e .[dev,jax,dashboard]",
    ]


def test_make_install_gpu_adds_the_gpu_extra_to_the_same_venv(tmp_path):
    run, calls = make_install(tmp_path, "install-gpu", ensurepip=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert calls[-2:] == [
        ".venv/bin/python -m pip install --quiet -e .[dev,jax,dashboard]",
        ".venv/bin/python -m pip install --quiet -e .[dev,jax,dashboard,gpu]",
    ]
    assert (tmp_path / ".venv" / ".installed-gpu").exists()
    # installed once: a second make install-gpu (or make run after it) installs nothing
    again, calls_again = make_install(tmp_path, "install-gpu", ensurepip=False)
    assert again.returncode == 0 and calls_again == []


def pins() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Return pyproject.toml's pins, name (without its extras) -> version: the dependencies', each extra's."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def parse(lines: list[str]) -> dict[str, str]:
        return dict(re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)$", line).groups() for line in lines)

    extras = {name: parse(lines) for name, lines in project["optional-dependencies"].items()}
    return parse(project["dependencies"]), extras


def test_the_gpu_extra_pins_the_same_tensorflow_and_jax_with_their_cuda_builds():
    dependencies, extras = pins()
    assert extras["gpu"] == {"tensorflow": dependencies["tensorflow"], "jax": extras["jax"]["jax"]}
    gpu = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert sorted(gpu) == sorted(
        [f"tensorflow[and-cuda]=={dependencies['tensorflow']}", f"jax[cuda12]=={extras['jax']['jax']}"]
    )


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13", f"{sys.version_info.major}.{sys.version_info.minor}"])
def test_requires_python_admits_the_tested_pythons(version):
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(f"{version}.0")
