"""Every atomic write ends with the mode the umask gives a new file (mkstemp's 0600 made outputs private)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline import paths
from pipeline.lib import files
from pipeline.lib.plots import save_figure

WRITERS: dict[str, Callable[[Path], None]] = {
    "write_bytes": lambda p: files.write_bytes(p, b"x"),
    "write_text": lambda p: files.write_text(p, "ImageId,Label\n1,7\n"),
    "write_json": lambda p: files.write_json(p, {"a": 1}),
    "write_npz": lambda p: files.write_npz(p, a=np.zeros(3)),
    "write_npz_set": lambda p: files.write_npz_set({p: {"a": np.zeros(3)}}),
    "write_with": lambda p: files.write_with(p, lambda tmp: Path(tmp).write_bytes(b"y"), suffix=".bin"),
}


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for the test; restore it afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def mode(path: Path) -> int:
    """Return the permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, writer, mask, expected):
    # finding 3: submissions/latest.csv, reports/*.png and summary.md were 0600 under umask 022
    umask(mask)
    assert files.current_umask() == mask
    target = tmp_path / "out" / f"file-{writer}"
    WRITERS[writer](target)
    assert mode(target) == expected
    WRITERS[writer](target)  # a rewrite too
    assert mode(target) == expected


def test_a_report_figure_and_the_submission_are_readable_by_others(project, umask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    umask(0o022)
    fig = plt.figure()
    save_figure(fig, paths.AUGMENTATIONS_PNG)
    files.write_text(paths.LATEST_SUBMISSION, "ImageId,Label\n1,7\n")
    for path in (paths.AUGMENTATIONS_PNG, paths.LATEST_SUBMISSION):
        assert mode(path) == 0o644, path
