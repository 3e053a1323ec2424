"""Command-line plumbing shared by every `python -m pipeline.<module>`: one parser shape (the module
docstring as the description, kept as written) and one error convention (`<module>: error: <message>`
on stderr and exit code 2 for bad settings, input or storage). Not a stage."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from pipeline.lib.secrets import scrub

BAD_INPUT = 2


class StageError(Exception):
    """An error whose message tells the user all they need (a bad setting, a missing input): a stage prints it as
    one line and exits 2 (see `reports_errors`)."""


def stage_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """Return the argument parser of `python -m pipeline.<module>` described by the docstring `doc`."""
    return argparse.ArgumentParser(
        prog=f"python -m pipeline.{module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def fail(module: str, message: object, code: int = BAD_INPUT) -> int:
    """Print `<module>: error: <message>` to stderr, every URL in it masked (pipeline.lib.secrets); return the exit
    code `code`."""
    print(f"{module}: error: {scrub(message)}", file=sys.stderr)
    return code


def reports_errors(module: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate the main() of `python -m pipeline.<module>`: a StageError raised anywhere in it (settings are read
    before anything is written) becomes one `fail` line and exit code 2 instead of a traceback."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: object, **kwargs: object) -> int:
            try:
                return main(*args, **kwargs)
            except StageError as exc:
                return fail(module, exc)

        return run

    return decorate
