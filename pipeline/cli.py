"""Command-line plumbing shared by every `python -m pipeline.<module>`: one parser shape (the module
docstring as the description, kept as written) and one error convention (`<module>: error: <message>`
on stderr and exit code 2 for bad settings, input or storage). Not a stage."""

from __future__ import annotations

import argparse
import sys

from pipeline.secrets import scrub

BAD_INPUT = 2


def stage_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """Return the argument parser of `python -m pipeline.<module>` described by the docstring `doc`."""
    return argparse.ArgumentParser(
        prog=f"python -m pipeline.{module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def fail(module: str, message: object, code: int = BAD_INPUT) -> int:
    """Print `<module>: error: <message>` to stderr, every URL in it masked (pipeline.secrets); return the exit
    code `code`."""
    print(f"{module}: error: {scrub(message)}", file=sys.stderr)
    return code
