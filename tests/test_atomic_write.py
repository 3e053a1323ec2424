"""The atomic writer (pipeline/lib/files.py) under failure at each step: before, during and after the temporary
write and at the rename, by an error (disk full, permission) or by the process being killed there. Afterwards the
output is the previous file, intact, or the new one, complete: never empty, truncated or a mix."""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipeline.lib import files
from pipeline.lib.files import (
    PARTIAL,
    OutputError,
    read_json,
    read_npz,
    write_bytes,
    write_json,
    write_npz,
    write_npz_set,
    write_text,
    write_with,
)

OLD = b"the previous output, complete\n" * 1000
NEW = b"the new output, complete too\n" * 4000  # larger than OLD: a mix or truncation shows in length and bytes


def disk_full() -> OSError:
    """Return the error a write raises on a full disk."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class HalfWritten(io.FileIO):
    """A file whose writes put half their bytes on disk, then fail as a full disk does."""

    def write(self, data: bytes) -> int:
        """Write the first half of `data`, then raise ENOSPC."""
        super().write(bytes(data)[: len(data) // 2])
        raise disk_full()


def fail_in(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make step `step` of an atomic write raise the error a full disk or a refused operation gives."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise disk_full()

    if step == "create the temporary file":
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    elif step == "write the temporary file":
        monkeypatch.setattr(files, "open", lambda path, mode: HalfWritten(path, "wb"), raising=False)
    elif step == "flush it to disk":
        monkeypatch.setattr(os, "fsync", refuse)
    elif step == "set its mode":
        monkeypatch.setattr(os, "chmod", refuse)
    elif step == "rename it onto the output":
        monkeypatch.setattr(os, "replace", refuse)
    else:
        raise AssertionError(step)


STEPS = [
    "create the temporary file",
    "write the temporary file",
    "flush it to disk",
    "set its mode",
    "rename it onto the output",
]


@pytest.mark.parametrize("step", STEPS)
def test_a_failed_step_keeps_the_previous_file_whole_and_leaves_no_temporary(tmp_path, monkeypatch, step) -> None:
    path = tmp_path / "out" / "latest.csv"
    path.parent.mkdir()
    path.write_bytes(OLD)
    fail_in(monkeypatch, step)
    with pytest.raises(
        OutputError, match=rf"^cannot write {re.escape(str(path))}: No space left on device \(the disk is full"
    ):
        write_bytes(path, NEW)
    monkeypatch.undo()
    assert path.read_bytes() == OLD
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.csv"]


@pytest.mark.parametrize("step", STEPS)
def test_a_failed_first_write_leaves_no_output_at_all(tmp_path, monkeypatch, step) -> None:
    path = tmp_path / "latest.csv"
    fail_in(monkeypatch, step)
    with pytest.raises(OutputError):
        write_bytes(path, NEW)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


WRITERS: dict[str, tuple[Callable[[Path], None], Callable[[Path], bytes]]] = {  # each writer, and its reader
    "write_bytes": (lambda path: write_bytes(path, NEW), Path.read_bytes),
    "write_text": (lambda path: write_text(path, NEW.decode()), lambda path: path.read_text().encode()),
    "write_json": (lambda path: write_json(path, {"new": NEW.decode()}), lambda path: read_json(path)["new"].encode()),
    "write_npz": (
        lambda path: write_npz(path, new=np.frombuffer(NEW, np.uint8)),
        lambda path: read_npz(path)["new"].tobytes(),
    ),
    "write_with": (lambda path: write_with(path, lambda tmp: tmp.write_bytes(NEW), suffix=".bin"), Path.read_bytes),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_keeps_the_previous_file_when_its_rename_fails(tmp_path, monkeypatch, writer) -> None:
    path = tmp_path / "output"
    path.write_bytes(OLD)
    write, read = WRITERS[writer]
    fail_in(monkeypatch, "rename it onto the output")
    with pytest.raises(OutputError):
        write(path)
    monkeypatch.undo()
    assert path.read_bytes() == OLD
    write(path)  # and without the failure, the new output, complete
    assert read(path) == NEW
    assert [p.name for p in tmp_path.iterdir()] == ["output"]


def test_a_writer_that_fails_half_way_keeps_the_previous_file(tmp_path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(OLD)

    def half(tmp: Path) -> None:
        tmp.write_bytes(NEW[: len(NEW) // 2])
        raise disk_full()

    with pytest.raises(OutputError, match="No space left on device"):
        write_with(path, half, suffix=".keras")
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_a_set_of_npz_files_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch) -> None:
    first, second = tmp_path / "train.npz", tmp_path / "test.npz"
    write_npz(first, x=np.zeros(3))
    write_npz(second, x=np.zeros(4))
    calls = []

    def second_write_fails(path: str, mode: str) -> io.FileIO:
        calls.append(path)
        return HalfWritten(path, "wb") if len(calls) == 2 else io.FileIO(path, "wb")

    monkeypatch.setattr(files, "open", second_write_fails, raising=False)
    with pytest.raises(OutputError, match=r"cannot write .*test\.npz"):
        write_npz_set({first: {"x": np.ones(5)}, second: {"x": np.ones(6)}})
    monkeypatch.undo()
    assert len(calls) == 2
    assert read_npz(first)["x"].tolist() == [0.0] * 3 and read_npz(second)["x"].tolist() == [0.0] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.npz", "train.npz"]
    write_npz_set({first: {"x": np.ones(5)}, second: {"x": np.ones(6)}})
    assert read_npz(first)["x"].tolist() == [1.0] * 5 and read_npz(second)["x"].tolist() == [1.0] * 6


# ---------------------------------------------------------------- killed at each step

# A child writes NEW over OLD and is killed (SIGKILL: no cleanup runs) at the step named on its command line.
KILLED_AT = textwrap.dedent(
    """
    import io, os, signal, sys, tempfile
    from pathlib import Path
    from pipeline.lib import files

    path, step, new = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_bytes()

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def then_die(real):
        def call(*args, **kwargs):
            real(*args, **kwargs)
            die()
        return call

    class HalfThenDie(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[: len(data) // 2])
            self.flush()
            die()

    if step == "before the temporary file":
        tempfile.mkstemp = die
    elif step == "after creating the temporary file":
        files.os.close = then_die(os.close)
    elif step == "during the temporary write":
        files.open = lambda p, mode: HalfThenDie(p, "wb")
    elif step == "after the temporary write":
        os.fsync = then_die(os.fsync)
    elif step == "before the rename":
        os.replace = die
    elif step == "after the rename":
        os.replace = then_die(os.replace)
    files.write_bytes(path, new)
    sys.exit(3)  # not killed: the step was never reached
    """
)
KILL_STEPS = {  # the step, and the file the output must then be
    "before the temporary file": OLD,
    "after creating the temporary file": OLD,
    "during the temporary write": OLD,
    "after the temporary write": OLD,
    "before the rename": OLD,
    "after the rename": NEW,
}


@pytest.mark.parametrize("step", list(KILL_STEPS))
def test_a_writer_killed_at_any_step_leaves_the_old_file_or_the_new_one(tmp_path, step) -> None:
    path, new = tmp_path / "out" / "oof.npz", tmp_path / "new"
    path.parent.mkdir()
    path.write_bytes(OLD)
    new.write_bytes(NEW)
    done = subprocess.run([sys.executable, "-c", KILLED_AT, str(path), step, str(new)], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert path.read_bytes() == KILL_STEPS[step]
    for left in path.parent.glob(f".{path.name}.*"):  # a killed writer's temporary file, marked as such
        assert PARTIAL in left.name
        left.unlink()
    assert [p.name for p in path.parent.iterdir()] == ["oof.npz"]
