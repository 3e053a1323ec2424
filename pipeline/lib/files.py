"""Atomic writers: every output is written to a temporary file beside it, then renamed into place."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
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
    reason = exc.strerror or str(exc)
    hint = HINTS.get(exc.errno or 0)
    return OutputError(f"cannot write {path}: {reason}" + (f" ({hint})" if hint else ""))


def remove_partials(folder: Path, name: str = "*") -> list[Path]:
    """Delete the temporary files a killed writer of `name` (a glob) left in `folder`; return them."""
    stale = sorted(Path(folder).glob(f".{name}.{PARTIAL}*")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def current_umask() -> int:
    """Return the process's umask (from /proc/self/status where there is one, which leaves it untouched)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode() -> int:
    """Return the mode a plain new file gets under the current umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path`, with the mode the umask gives a new file,
    only if the block succeeds (mkstemp makes the temporary file 0600)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{PARTIAL}", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise output_error(path, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (fsynced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """Read and return the JSON document at `path`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write `arrays` to a compressed .npz at `path` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def write_npz_set(outputs: dict[Path, dict[str, np.ndarray]]) -> None:
    """Write several .npz files as one change: all are renamed into place only after every one is written,
    so a failure keeps every previous file."""
    with ExitStack() as stack:
        for path, arrays in outputs.items():
            tmp = stack.enter_context(atomic_path(path, suffix=".npz"))
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            try:
                with open(tmp, "wb") as fh:
                    fh.write(buf.getvalue())
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise output_error(path, exc) from exc


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
