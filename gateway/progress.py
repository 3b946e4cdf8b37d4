"""A progress line for long CLI work: rewritten in place on a terminal, periodic in a log.

On a terminal the line is redrawn at most ten times a second; when stderr is a file or a pipe
(cron, CI, `| tee`), a full line is written every `log_every` seconds instead, so logs show
progress without thousands of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """Shows the latest of a series of status texts; `done` ends the line."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        log_every: float = 5.0,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._interval = 0.1 if self._tty else log_every
        self._last = float("-inf")
        self._width = 0

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        if self._tty:
            padding = max(self._width - len(text), 0)
            self._stream.write("\r" + text + " " * padding)
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def done(self, text: str) -> None:
        self.update(text, force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


def rate_and_eta(done: int, total: int, elapsed: float) -> tuple[float, float | None]:
    """Items per second so far and the seconds left at that rate (None until known)."""
    if elapsed <= 0 or done <= 0:
        return 0.0, None
    rate = done / elapsed
    return rate, (total - done) / rate if total >= done else None


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"
