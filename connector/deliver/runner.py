"""How the deliver stage runs its delivery attempts: on a pool of worker threads, or inline (tests).

The loop keeps polling while `MAX_IN_FLIGHT` batches are on the wire; `Runner` is the seam.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Final

__all__ = ["MAX_IN_FLIGHT", "SEND_THREAD_PREFIX", "Runner", "inline_runner"]

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT: Final = 2
"""Batches on the wire at once; only batches without a customer in common overlap."""
SEND_THREAD_PREFIX: Final = "deliver-send"
"""Name prefix of the worker threads that run the delivery attempts."""

Runner = Callable[[Callable[[], None]], "Future[None]"]
"""Runs one delivery attempt and returns its future (a worker thread, or `inline_runner`)."""


def inline_runner(work: Callable[[], None]) -> Future[None]:
    """Run `work` now, in the caller's thread; the returned future is already done (tests)."""
    future: Future[None] = Future()
    try:
        work()
    except BaseException as exc:  # handed to the loop through the future, like a worker's
        future.set_exception(exc)
    else:
        future.set_result(None)
    return future
