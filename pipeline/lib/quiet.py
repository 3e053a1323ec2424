"""Keeps TensorFlow's and absl's C++ log lines off stderr unless asked for (DIGIT_VERBOSE=1, or --verbose on the
command line): sets TF_CPP_MIN_LOG_LEVEL=3 before TensorFlow loads (a TF_CPP_MIN_LOG_LEVEL already set is kept)
and TensorFlow's Python logger to errors only, and drops the lines its libraries print while they load, before
absl's logging starts, which no setting silences (`WARNING: All log messages before absl::InitializeLog() ...`,
`I0000 ... port.cc:153] oneDNN custom operations ...`). Everything else written to stderr meanwhile (Python
warnings, errors) is passed on. Not a stage: pipeline/__init__.py installs it for entry points only, so every
`python -m pipeline.<module>` is quiet before it imports Keras."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from types import ModuleType

VERBOSE_ENV = "DIGIT_VERBOSE"
QUIETED = ("tensorflow",)  # top-level packages whose loading is filtered
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
        if arg == "--verbose":
            following = argv[i + 1] if i + 1 < len(argv) else ""
            return following != "0"
        if arg.startswith("--verbose="):
            return arg.split("=", 1)[1] != "0"
    return False


def is_native_log(line: str) -> bool:
    """Return whether `line` is one of the C++ log lines (glog/absl format) that quiet mode drops."""
    return NATIVE_LOG.match(line.rstrip("\r\n")) is not None


def kept_lines(text: str) -> str:
    """Return `text` without its native log lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_native_log(line))


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
            rest = kept_lines(capture.read().decode("utf-8", errors="replace"))
            if rest:
                os.write(2, rest.encode("utf-8"))


class QuietLoader(importlib.abc.Loader):
    """Wraps a package's loader so that executing the package runs inside filtered_stderr()."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        """Return the wrapped loader's module (or None for the default)."""
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Execute `module` with the native log lines of its loading dropped."""
        with filtered_stderr():
            self.loader.exec_module(module)


class QuietFinder(importlib.abc.MetaPathFinder):
    """Finds the packages in QUIETED through the other finders and wraps their loaders in QuietLoader (once)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        """Return the spec of `name` with a QuietLoader, for the packages in QUIETED; None for every other module."""
        if name not in QUIETED:
            return None
        others = [finder for finder in sys.meta_path if not isinstance(finder, QuietFinder)]
        for finder in others:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                spec.loader = QuietLoader(spec.loader)
                return spec
        return None


def install(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> bool:
    """Make TensorFlow quiet in this process and its children unless verbose was asked for; return whether it did."""
    environ = os.environ if environ is None else environ
    if wants_verbose(sys.argv[1:] if argv is None else argv, environ):
        return False
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    python_logger = logging.getLogger("tensorflow")  # TensorFlow's Python warnings (tf.function retracing, ...)
    if python_logger.level == logging.NOTSET:
        python_logger.setLevel(logging.ERROR)
    if not any(isinstance(finder, QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, QuietFinder())
    return True
