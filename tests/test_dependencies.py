"""pyproject.toml declares every package the pipeline imports, pinned, instead of relying on what other packages
happen to bring (hydra, omegaconf, tqdm, sqlalchemy, PIL and pydantic arrived that way)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.conftest import REPO

# imported only where present, and named by an extra or the GPU machine's own install (docs/gpu.md)
OPTIONAL = {"jax", "torch"}


def imported_packages() -> set[str]:
    """Return the top-level names of every module pipeline/ imports that is neither standard nor the package."""
    names = set()
    for path in (REPO / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"pipeline", "__future__"}


def declared() -> dict[str, str]:
    """Return pyproject.toml's requirements, every extra included: normalised name -> its version specifier."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    found = {}
    for line in lines:
        name, spec = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)$", line).groups()
        found[re.sub(r"[-_.]+", "-", name).lower()] = spec
    return found


def test_every_imported_package_is_declared_and_pinned():
    distributions = packages_distributions()
    wanted = declared()
    missing, unpinned = [], []
    for module in sorted(imported_packages() - OPTIONAL):
        names = [re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [module])]
        match = next((n for n in names if n in wanted), None)
        if match is None:
            missing.append(f"{module} ({', '.join(names)})")
        elif not wanted[match].startswith("=="):
            unpinned.append(match)
    assert not missing, f"imported but not in pyproject.toml: {missing}"
    assert not unpinned, f"declared without a pin: {unpinned}"
