"""The package's layers: a stage (a dvc.yaml `python -m pipeline.<stage>`) stands on pipeline/lib/ alone (plus params
and paths, the settings and the file layout every layer shares); no module imports a stage module; lib/ imports only
lib/, params and paths; the tools import lib/, params and paths. So dvc.yaml's deps of a stage are its own module and
what it really runs (tests/test_dvc_deps.py derives them), and an edit to one stage never reruns another."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

FOUNDATION = {"pipeline", "pipeline.params", "pipeline.paths"}


def stage_modules() -> set[str]:
    """Return the modules dvc.yaml runs as stages (pipeline.train, ...)."""
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    found = {re.match(r"python -m (pipeline\.\w+)", str(s.get("cmd", ""))) for s in doc["stages"].values()}
    return {m.group(1) for m in found if m}


def imported(path: Path) -> set[str]:
    """Return the pipeline modules the source at `path` imports anywhere (a `from pipeline import x` names x)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            names |= {f"{node.module}.{a.name}" if node.module == "pipeline" else node.module for a in node.names}
    return names


def module_name(path: Path) -> str:
    """Return the dotted name of the pipeline source file at `path`."""
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


SOURCES = sorted((REPO / "pipeline").rglob("*.py"))


def test_the_stages_are_found() -> None:
    assert {"pipeline.train", "pipeline.tune", "pipeline.augment", "pipeline.predict"} <= stage_modules()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_stage(path: Path) -> None:
    own = module_name(path)
    assert sorted(imported(path) & (stage_modules() - {own})) == []


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if "lib" in p.parts or "tools" in p.parts], ids=lambda p: str(p.relative_to(REPO))
)
def test_lib_and_tools_import_only_lib_params_and_paths(path: Path) -> None:
    above = {m for m in imported(path) if not m.startswith("pipeline.lib") and m not in FOUNDATION}
    assert sorted(above) == []
