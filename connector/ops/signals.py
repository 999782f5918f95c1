"""Signals: a graceful stop for the run loop, and SIGTERM unwinding a one-shot ops command like Ctrl-C.

`GracefulShutdown`: SIGTERM and the first Ctrl-C ask the loop to stop; a second Ctrl-C exits at once. The
run loop checks `stop_requested` between iterations, then commits or aborts its open transaction and
leaves. `sigterm_unwinds`: SIGTERM raises `TerminatedError`, so an ops command (resync, rebuild-state)
aborts its open transaction and leaves the group as it does on Ctrl-C. Handlers can only be installed
from the main thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

__all__ = ["GracefulShutdown", "TerminatedError", "sigterm_unwinds"]

logger = logging.getLogger(__name__)

_Handler = Any  # what signal.signal returns: a callable, SIG_DFL/SIG_IGN or None


class GracefulShutdown:
    """A stop flag set by SIGTERM/SIGINT, usable as a context manager around the run loop.

    - SIGTERM: request a graceful stop (repeats are ignored; the orchestrator escalates to SIGKILL).
    - First SIGINT (Ctrl-C): request a graceful stop.
    - Second SIGINT: raise `KeyboardInterrupt` in the main thread, abandoning the in-flight work
      (`cli.main` turns it into exit code 130).

    Example:
        with GracefulShutdown() as shutdown:
            while not shutdown.stop_requested:
                loop_once()
    """

    def __init__(self) -> None:
        """Create the flag; no handler is installed until `install()` (or `with`)."""
        self._stop = threading.Event()
        self._interrupts = 0
        self._reason: str | None = None
        self._previous: dict[int, _Handler] = {}

    @property
    def stop_requested(self) -> bool:
        """True once a stop was requested (by a signal or `request_stop`)."""
        return self._stop.is_set()

    @property
    def reason(self) -> str | None:
        """What requested the stop (`SIGTERM`, `SIGINT`, or the caller's reason), if anything did."""
        return self._reason

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to stop gracefully (thread-safe; e.g. on a fatal error in another thread)."""
        if not self._stop.is_set():
            self._reason = reason
            logger.info("graceful stop requested", extra={"reason": reason})
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a stop is requested or `timeout` passes; True if a stop was requested."""
        return self._stop.wait(timeout)

    def install(self) -> None:
        """Install the SIGTERM and SIGINT handlers (main thread only), remembering the previous ones.

        Raises:
            ValueError: called from a thread other than the main thread.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers that `install` replaced."""
        while self._previous:
            signum, handler = self._previous.popitem()
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                logger.warning("second interrupt: exiting at once without committing in-flight work")
                raise KeyboardInterrupt
            logger.warning("interrupt: stopping gracefully (press Ctrl-C again to exit at once)")
        self.request_stop(signal.Signals(signum).name)

    def __enter__(self) -> GracefulShutdown:
        self.install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstall()


class TerminatedError(BaseException):
    """SIGTERM arrived while a one-shot command ran (`sigterm_unwinds`); `cli.main` exits 143 (128 + 15).

    A `BaseException`, like the `KeyboardInterrupt` of Ctrl-C, so no `except Exception` stops it and
    every cleanup on the way out runs: the open transaction is aborted (`fenced_transaction`), the
    group fence is closed (the group is left at once instead of after its session timeout).
    """

    exit_code = 128 + signal.SIGTERM


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """In the block, the first SIGTERM raises `TerminatedError` (main thread); later ones are ignored.

    For ops commands that hold a Kafka transaction or a group membership: SIGTERM's default action
    (kubectl delete, docker stop, systemd) kills the process on the spot, leaving the transaction open
    until `transaction.timeout.ms` (read_committed readers of its partitions wait behind it) and the
    group held until the session times out. A repeated SIGTERM must not interrupt that cleanup.
    The previous handler is restored on the way out.

    Raises:
        ValueError: entered from a thread other than the main thread.
    """
    raised = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            logger.warning("SIGTERM again: already stopping")
            return
        raised = True
        logger.warning("SIGTERM: stopping (an open transaction is aborted)")
        raise TerminatedError("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
