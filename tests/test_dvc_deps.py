"""dvc.yaml declares, for every stage run as `python -m pipeline.<module>`, exactly the pipeline modules that
module imports, transitively (the package's __init__.py included): a change to any of them is a change
`dvc repro` must see, and a module it does not import is no dependency. Imports are read from the source
with ast, so imports inside functions (a stage's lazily imported helpers) count too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline import paths
from tests.conftest import REPO

STAGE_CMD = re.compile(r"^python -m pipeline\.(\w+)(\s|$)")


def files_of(dotted: str) -> set[str]:
    """Return the source files (relative to the repository) that importing pipeline module `dotted` runs: every
    package __init__.py on its way and the module itself; empty when `dotted` names no module (a function)."""
    parts = dotted.split(".")
    found = {"/".join(parts[:i]) + "/__init__.py" for i in range(1, len(parts))}
    for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if (REPO / candidate).is_file():
            return found | {candidate}
    return set()


def is_main_block(node: ast.AST) -> bool:
    """Return whether `node` is a module's `if __name__ == "__main__":` block (run only as `python -m` itself)."""
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test)


def pipeline_imports(path: Path, own: bool = True) -> set[str]:
    """Return the source files of the pipeline modules the source file at `path` imports anywhere in it (in its
    `__main__` block only when it is the module run, `own`)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    body = [n for n in tree.body if own or not is_main_block(n)]
    for node in (inner for top in body for inner in ast.walk(top)):
        if isinstance(node, ast.Import):
            found |= {f for a in node.names if a.name.startswith("pipeline.") for f in files_of(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "pipeline":
            found |= files_of(node.module) | {f for a in node.names for f in files_of(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            pytest.fail(f"{path}: relative import of {node.module}: import pipeline modules by name")
    return found


def module_closure(module: str) -> set[str]:
    """Return the files of pipeline module `module` and of every pipeline module it imports, transitively."""
    seen: set[str] = set()
    own = files_of(f"pipeline.{module}")
    todo = sorted(own)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(pipeline_imports(REPO / name, own=name in own) - seen)
    return seen


def stages() -> dict[str, tuple[str, list[str]]]:
    """Return every dvc.yaml stage whose command is `python -m pipeline.<module>`: its module and its deps."""
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    found = {}
    for name, stage in doc["stages"].items():
        match = STAGE_CMD.match(str(stage.get("cmd", "")))
        if match:
            found[name] = (
                match.group(1),
                [str(next(iter(d))) if isinstance(d, dict) else str(d) for d in stage.get("deps", [])],
            )
    return found


def test_every_pipeline_stage_is_checked() -> None:
    """The check below sees the pipeline's stages (a dvc.yaml whose commands it cannot read would pass vacuously)."""
    assert {"settings", "ingest", "augment", "tune", "train", "predict", "report"} <= set(stages())


def test_every_stage_waits_for_the_settings_check_and_every_output_is_restorable() -> None:
    """Stage `settings` tracks every key of params.yaml and writes one file that every other stage depends on first,
    so a bad setting stops `dvc repro` before DVC removes any other stage's outputs; every output is DVC-cached, so
    `dvc checkout` brings back the last good ones after any failure."""
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    checked = str(paths.SETTINGS_CHECKED)
    assert doc["settings"]["params"] == [{"params.yaml": None}]  # the whole file, not a list of its sections
    assert doc["settings"]["outs"] == [checked]
    for name, stage in doc.items():
        if name != "settings":
            assert stage["deps"][0] == checked, f"stage {name!r} does not depend first on {checked}"
        for out in stage.get("outs", []) + stage.get("metrics", []):
            options = next(iter(out.values())) if isinstance(out, dict) else {}
            tune_record = out == {str(paths.BEST_PARAMS): {"cache": False}}  # tune writes it from its study
            assert tune_record or options.get("cache", True), (
                f"stage {name!r}: {out} is not DVC-cached (lost after a failure)"
            )


@pytest.mark.parametrize("stage", sorted(stages()))
def test_stage_deps_are_exactly_the_modules_it_imports(stage: str) -> None:
    module, deps = stages()[stage]
    declared = {d for d in deps if d.startswith("pipeline/")}
    expected = module_closure(module)
    assert not sorted(expected - declared), f"dvc.yaml stage {stage!r} misses deps {sorted(expected - declared)}"
    assert not sorted(declared - expected), (
        f"dvc.yaml stage {stage!r} declares modules it never imports {sorted(declared - expected)}"
    )


def test_the_import_reader_follows_every_form_of_import(tmp_path: Path) -> None:
    """Control: each way of importing a pipeline module is seen, in a function body too; other imports are not."""
    source = tmp_path / "probe.py"
    source.write_text(
        "import os\nimport pipeline.paths\nfrom pipeline.lib import files, cli\nfrom pipeline.params import load\n"
        "def later():\n    from pipeline import train\n    from pipeline.lib.models import build_model\n"
    )
    expected = ["__init__", "paths", "lib/__init__", "lib/files", "lib/cli", "params", "train", "lib/models"]
    assert pipeline_imports(source) == {f"pipeline/{name}.py" for name in expected}
