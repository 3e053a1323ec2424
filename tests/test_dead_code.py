"""No dead code in the pipeline: every function, class, method, constant and variable defined in pipeline/
is used by pipeline/ itself (vulture, a dead-code finder reading the source). A helper only tests call
belongs in the tests. The few names used from outside are listed below with who uses them."""

from __future__ import annotations

import keras
from vulture import Vulture

from tests.conftest import REPO

# Names used by code that is not the pipeline's own, so vulture cannot see them called.
USED_FROM_OUTSIDE = {
    "_save_model": "keras.callbacks.BackupAndRestore calls it (lib/fitting.AtomicBackup overrides how it saves)",
    "isolation_level": "pysqlite reads it: None (tune.leave_begin_to_sqlalchemy) means it emits no BEGIN of its own",
    **{hook: "Keras calls a callback's hooks" for hook in dir(keras.callbacks.Callback) if hook.startswith("on_")},
}


def unused_code() -> list[str]:
    """Return `file:line name (kind)` of everything vulture finds defined in pipeline/ and never used there."""
    finder = Vulture()
    finder.scavenge([str(REPO / "pipeline")])
    return [
        f"{item.filename.relative_to(REPO)}:{item.first_lineno} {item.name} ({item.typ})"
        for item in finder.get_unused_code(min_confidence=60)
        if item.name not in USED_FROM_OUTSIDE
    ]


def test_nothing_in_the_pipeline_is_defined_and_never_used() -> None:
    assert unused_code() == []


def test_the_finder_sees_an_unused_function(tmp_path) -> None:
    """Control: a function nobody calls is found, one that is called is not."""
    source = tmp_path / "probe.py"
    source.write_text("def used():\n    return 1\n\n\ndef unused():\n    return 2\n\n\nprint(used())\n")
    finder = Vulture()
    finder.scavenge([str(source)])
    assert [item.name for item in finder.get_unused_code(min_confidence=60)] == ["unused"]
