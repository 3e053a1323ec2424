"""Progress for long stages: a tqdm bar with rate and ETA on a terminal, a few plain lines (or
nothing) when stdout is a log file or CI, a one-line summary when a stage finishes, and the
stage's wall time recorded in reports/timings/<stage>.json for reports/summary.md."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from pipeline import paths
from pipeline.lib.files import write_json

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


def is_terminal(stream: TextIO | None = None) -> bool:
    """Return True when `stream` (default stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_seconds(seconds: float | None) -> str:
    """Return `seconds` as a short duration: 42s, 3m05s or 1h02m (or `-` when unknown)."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LineProgress:
    """A progress counter for logs: one full line (count, rate, ETA) each time another quarter is
    done, never a carriage return; with `lines=False` it prints nothing at all."""

    def __init__(
        self, total: int, desc: str, unit: str, stream: TextIO, lines: bool = True, clock=time.monotonic
    ) -> None:
        self.total, self.desc, self.unit, self.stream, self.lines = max(0, int(total)), desc, unit, stream, lines
        self.n, self.clock, self.start, self.next_mark = 0, clock, clock(), 1

    def update(self, n: int = 1) -> None:
        """Advance the count by `n` and print a line when it crosses the next quarter."""
        self.n += n
        quarters = 4 * self.n // self.total if self.total else 0
        if self.lines and quarters >= self.next_mark:
            self.next_mark = quarters + 1
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """Return the current progress line: count, percent, elapsed, rate and ETA."""
        elapsed = self.clock() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else 0.0
        pct = 100 * self.n // self.total if self.total else 100
        return (
            f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct}%) in {format_seconds(elapsed)}, "
            f"{rate:.3g} {self.unit}/s, ETA {format_seconds(left)}"
        )

    def close(self) -> None:
        """Finish the counter (nothing to clear in a log)."""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    total: int, desc: str, unit: str = "it", stream: TextIO | None = None, lines: bool = True, leave: bool = True
) -> tqdm | LineProgress:
    """Return a progress bar over `total` units: tqdm with rate and ETA on a terminal, else a LineProgress
    (quarter lines, or silent with `lines=False` where the stage already logs each step)."""
    stream = sys.stdout if stream is None else stream
    if is_terminal(stream):
        return tqdm(
            total=total, desc=desc, unit=unit, file=stream, bar_format=BAR_FORMAT, leave=leave, dynamic_ncols=True
        )
    return LineProgress(total, desc, unit, stream, lines=lines)


def silent(total: int = 0) -> LineProgress:
    """Return a progress counter that prints nothing (for callers that want no progress output)."""
    return LineProgress(total, "", "it", sys.stdout, lines=False)


def note(message: str, stream: TextIO | None = None) -> None:
    """Print `message` as its own line without breaking any progress bar on screen."""
    tqdm.write(message, file=sys.stdout if stream is None else stream)
    (sys.stdout if stream is None else stream).flush()


def record_timing(stage: str, seconds: float, device: str | None = None) -> Path:
    """Write `stage`'s wall seconds to reports/timings/<stage>.json (a DVC metric: numbers only) and its device and
    finish time (UTC) to reports/runs/<stage>.json, atomically; return the timing's path."""
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(paths.stage_run(stage), {"stage": stage, "device": device, "finished_at": finished})
    write_json(paths.stage_timing(stage), {"seconds": round(float(seconds), 3)})
    return paths.stage_timing(stage)


def finish(stage: str, start: float, device: str | None, result: str, stream: TextIO | None = None) -> float:
    """Record the wall time since `start` (time.perf_counter) for `stage`, print its one-line summary
    (`stage: done in T on DEVICE: RESULT`), and return the seconds."""
    seconds = time.perf_counter() - start
    record_timing(stage, seconds, device)
    where = f" on {device}" if device else ""
    print(f"{stage}: done in {format_seconds(seconds)}{where}: {result}", file=sys.stdout if stream is None else stream)
    return seconds
