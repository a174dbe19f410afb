"""Progress of a long pass (recaption, features, sampling, FID / embedding passes): one helper for every stage.

On a terminal it is a tqdm bar; otherwise (a log file, SLURM's output, CI) it is a log line every ``every_s``
seconds with the count, the rate over the whole pass and, when the total is known, the percentage and the ETA:

    recaption train: 2,400 / 10,000 images (24.0%), 8.1 images/s, ETA 15m38s

Only rank 0 reports (``harness_infra.ranks.is_main``). ``update`` is a counter add and a clock read, so it sits in
per-batch loops without cost. The total may be unknown (None: count and rate only) or change as the pass learns it
(``set_total``, e.g. shards of unknown length estimated from the finished ones).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Optional, TextIO

from tqdm import tqdm

from harness_infra.ranks import is_main

log = logging.getLogger("progress")
EVERY_S = 30.0  # seconds between log lines when the stream is not a terminal


def now_s() -> float:
    """The clock progress is timed with (seconds, monotonic)."""
    return time.monotonic()


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m03s`` / ``4m05s`` / ``6s`` (rounded to the second)."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def on_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (a bar would otherwise bury log lines in carriage returns)."""
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Progress of one pass of ``total`` ``unit``s (None: unknown), described by ``desc``.

    ``stream`` (default ``sys.stderr``) decides bar or log lines; ``enabled`` defaults to rank 0; ``clock`` (seconds,
    monotonic; default ``now_s``) and ``every_s`` (default ``EVERY_S``) set the log lines' timing. Use as a context manager or
    call ``close``; the closing log line says the count, the rate and the time taken."""

    def __init__(
        self,
        desc: str,
        total: Optional[int] = None,
        unit: str = "it",
        every_s: Optional[float] = None,
        enabled: Optional[bool] = None,
        stream: Optional[TextIO] = None,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.every_s = EVERY_S if every_s is None else every_s
        self.clock = now_s if clock is None else clock
        self.enabled = is_main() if enabled is None else enabled
        stream = sys.stderr if stream is None else stream
        self.bar = (
            tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=stream, unit_scale=False)
            if self.enabled and on_terminal(stream)
            else None
        )
        self.count = 0
        self.started = self.last_line = self.clock()
        self.closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_total(self, total: Optional[int]) -> None:
        """The pass's total, once known or better estimated."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            now = self.clock()
            if now - self.last_line >= self.every_s:
                self.last_line = now
                log.info("%s", self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """The log line for the state at ``now``: count (/ total and percentage), rate, ETA."""
        elapsed = max((self.clock() if now is None else now) - self.started, 1e-9)
        rate = self.count / elapsed
        done = f"{self.count:,}"
        if self.total:
            done += f" / {self.total:,} {self.unit}s ({100.0 * self.count / self.total:.1f}%)"
        else:
            done += f" {self.unit}s"
        text = f"{self.desc}: {done}, {rate:.1f} {self.unit}s/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {duration((self.total - self.count) / rate)}"
        return text

    def close(self) -> None:
        """Close the bar, or log the final line (count, rate, time taken) when there were log lines."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.last_line > self.started:
            now = self.clock()
            log.info("%s, done in %s", self.line(now), duration(now - self.started))
