"""Progress for long stages: a tqdm bar with rate and ETA on a terminal, a few plain lines in a log, a one-line summary
when a stage finishes, and the stage's wall time in reports/timings/<stage>.json (reports/summary.md reads it)."""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TextIO

from tqdm import tqdm

from pipeline import paths
from pipeline.lib.files import write_json

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


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


class LineProgress(AbstractContextManager):
    """A progress counter for logs: a line (count, rate, ETA) per quarter, no carriage return (none: `lines=False`)."""

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

    def __exit__(self, *exc: object) -> None:
        """Finish the counter (nothing to clear in a log)."""


def progress(
    total: int, desc: str, unit: str = "it", stream: TextIO | None = None, lines: bool = True
) -> tqdm | LineProgress:
    """Return a progress bar over `total` units: tqdm on a terminal, else a LineProgress (silent with `lines=False`)."""
    stream = sys.stdout if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, bar_format=BAR_FORMAT, dynamic_ncols=True)
    return LineProgress(total, desc, unit, stream, lines=lines)


def note(message: str, stream: TextIO | None = None) -> None:
    """Print `message` as its own line without breaking any progress bar on screen."""
    tqdm.write(message, file=sys.stdout if stream is None else stream)
    (sys.stdout if stream is None else stream).flush()


def record_timing(stage: str, seconds: float, device: str | None = None) -> None:
    """Write `stage`'s wall seconds (a DVC metric) and its device and finish time to paths.stage_timing/stage_run."""
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(paths.stage_run(stage), {"stage": stage, "device": device, "finished_at": finished})
    write_json(paths.stage_timing(stage), {"seconds": round(float(seconds), 3)})


def finish(stage: str, start: float, device: str | None, result: str, stream: TextIO | None = None) -> float:
    """Record `stage`'s seconds since `start`, print `STAGE: done in T on DEVICE: RESULT`; return them."""
    seconds = time.perf_counter() - start
    record_timing(stage, seconds, device)
    where = f" on {device}" if device else ""
    print(f"{stage}: done in {format_seconds(seconds)}{where}: {result}", file=sys.stdout if stream is None else stream)
    return seconds
