"""Keeps TensorFlow's and absl's C++ log lines off stderr unless asked for (DIGIT_VERBOSE=1 or --verbose): sets
TF_CPP_MIN_LOG_LEVEL=3 (unless set), TensorFlow's Python logger to errors, and drops the lines its libraries print while
loading (no setting silences those), passing on all else. pipeline/__init__.py installs it for entry points only."""

from __future__ import annotations

import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager

VERBOSE_ENV = "DIGIT_VERBOSE"
NATIVE_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] .*"
    r"|To enable the following instructions: .*, in other operations, rebuild TensorFlow with .*)$"  # cpu_feature_guard
)


def wants_verbose(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Return whether native logs were asked for: DIGIT_VERBOSE set to a true value, or a non-zero --verbose in argv."""
    if environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    for i, arg in enumerate(argv):
        if arg == "--verbose" or arg.startswith("--verbose="):
            return (arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")) != "0"
    return False


def kept_lines(text: str) -> str:
    """Return `text` without its native log lines (glog/absl format)."""
    return "".join(line for line in text.splitlines(keepends=True) if not NATIVE_LOG.match(line.rstrip("\r\n")))


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the block runs, then pass on all but the native log lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            os.write(2, kept_lines(capture.read().decode("utf-8", errors="replace")).encode("utf-8"))


class QuietFinder:
    """A meta path finder: finds tensorflow as the path finder does, its loading run inside filtered_stderr()."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        """Return the spec of `name` with its loading quieted for tensorflow; None for every other module."""
        spec = importlib.machinery.PathFinder.find_spec(name, path, target) if name == "tensorflow" else None
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module = filtered_stderr()(spec.loader.exec_module)  # a ContextDecorator
        return spec


def install(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> bool:
    """Make TensorFlow quiet in this process and its children unless verbose was asked for; return whether it did."""
    environ = os.environ if environ is None else environ
    if wants_verbose(sys.argv[1:] if argv is None else argv, environ):
        return False
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logger = logging.getLogger("tensorflow")  # TensorFlow's Python warnings (tf.function retracing, ...)
    logger.setLevel(logger.level or logging.ERROR)
    if not any(isinstance(finder, QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, QuietFinder())
    return True
