"""Progress of long ops commands: a rich bar on a terminal, periodic log lines otherwise.

`ProgressReporter` is the seam; `LogProgress` (here, clock injected) and the CLI's rich bar implement it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["LogProgress", "ProgressReporter"]

logger = logging.getLogger(__name__)


class ProgressReporter(Protocol):
    """Progress of a long operation (a rich bar on a TTY, periodic log lines otherwise)."""

    def start(self, total: int, description: str) -> None:
        """Begin; `total` units are expected."""
        ...

    def advance(self, n: int = 1) -> None:
        """`n` more units done."""
        ...

    def finish(self) -> None:
        """The operation ended."""
        ...

    def close(self) -> None:
        """Stop reporting, finished or not (a failed operation); safe to call twice."""
        ...


class LogProgress:
    """Logs `<description>: done/total (percent)` at most every `interval_s` seconds, and at the end."""

    def __init__(
        self,
        *,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        """Report through `log` (default: this module's logger) using the injected `clock`."""
        self._interval = interval_s
        self._clock = clock
        self._log = log or logger
        self._total = 0
        self._done = 0
        self._description = ""
        self._last = 0.0
        self.lines = 0

    def start(self, total: int, description: str) -> None:  # noqa: D102
        self._total, self._done, self._description = total, 0, description
        self._last = self._clock()
        self._emit("started")

    def advance(self, n: int = 1) -> None:  # noqa: D102
        self._done += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._emit("progress")

    def finish(self) -> None:  # noqa: D102
        self._emit("finished")

    def close(self) -> None:
        """Nothing to stop: lines are written as they come."""

    def _emit(self, event: str) -> None:
        percent = 100.0 if self._total <= 0 else min(100.0, 100.0 * self._done / self._total)
        self.lines += 1
        self._log.info(
            f"{self._description} {event}",
            extra={"done": self._done, "total": self._total, "percent": round(percent, 1)},
        )
