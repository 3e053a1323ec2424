"""Atomic writers: every output is written to a temporary file beside it, then renamed into place."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.lib.cli import StageError

PARTIAL = "partial-"  # marks the temporary files of writes in progress (left behind only by a killed process)
HINTS = {
    errno.ENOSPC: "the disk is full: free some space and rerun",
    errno.EDQUOT: "the disk quota is exhausted: free some space and rerun",
    errno.EFBIG: "the file is larger than this system allows (ulimit -f?)",
    errno.EACCES: "permission denied: make the folder writable and rerun",
    errno.EPERM: "operation not permitted: make the folder writable and rerun",
    errno.EROFS: "the file system is read-only: choose a writable location",
}


class OutputError(RuntimeError):
    """An output could not be written (read-only folder, disk full, ...)."""


class MissingInput(StageError, FileNotFoundError):
    """An input of a stage does not exist; the message names it and the command that makes it."""


def require(path: Path, stage: str) -> Path:
    """Return `path`, or raise MissingInput naming it and `dvc repro <stage>`, the command that makes it."""
    if not Path(path).exists():
        raise MissingInput(f"{path} not found: run `dvc repro {stage}` (or `dvc repro`) first")
    return Path(path)


def output_error(path: Path, exc: OSError) -> OutputError:
    """Return an OutputError naming `path`, the system's reason and what to do about it."""
    hint = HINTS.get(exc.errno or 0)
    return OutputError(f"cannot write {path}: {exc.strerror or exc}" + (f" ({hint})" if hint else ""))


def current_umask() -> int:
    """Return the process's umask, read from /proc/self/status where there is one (leaving it untouched)."""
    status = Path("/proc/self/status")
    found = re.search(r"^Umask:\s*([0-7]+)", status.read_text(), re.MULTILINE) if status.exists() else None
    if found:
        return int(found[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; if the block succeeds, fsync it, give it the mode the umask gives a new
    file (mkstemp makes it 0600) and rename it onto `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{PARTIAL}", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """Read and return the JSON document at `path`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Return `arrays` as the bytes of a compressed .npz file."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write `arrays` to a compressed .npz at `path` atomically."""
    write_bytes(path, npz_bytes(arrays))


def write_npz_set(outputs: dict[Path, dict[str, np.ndarray]]) -> None:
    """Write several .npz files as one change: none is renamed into place before every one is written."""
    with ExitStack() as stack:
        for path, arrays in outputs.items():
            with open(stack.enter_context(atomic_path(path, suffix=".npz")), "wb") as fh:
                fh.write(npz_bytes(arrays))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of the .npz at `path` (pickles refused) into a dict."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Return the SHA-256 of named `arrays`: each one's name, dtype, shape and values, in the order given."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_with(path: Path, writer: Callable[[Path], None], suffix: str) -> None:
    """Call `writer(tmp)` to write a file of type `suffix`, then rename it onto `path` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)
