"""Fault injection for the Yespo stand-in: failing requests, throttling, latency, outages, failed imports.

State only; `server.py` applies it to every API request (admin endpoints under `/_standin/` are never
affected). Times come from an injected monotonic clock.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["FaultReply", "Faults", "OutageMode"]

logger = logging.getLogger(__name__)

OutageMode = Literal["refuse", "503"]


@dataclass(frozen=True, slots=True)
class FaultReply:
    """The answer an injected fault imposes on a request."""

    status: int
    text: str
    retry_after: float | None = None


class Faults:
    """The currently injected faults. Thread-safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.injected = 0
        self.clear()

    def clear(self) -> None:
        """Remove every fault (an outage in "refuse" mode is ended by the server)."""
        with self._lock:
            self._fail_count = 0
            self._fail_status = 500
            self._throttle_until = -math.inf
            self._retry_after: float | None = None
            self._latency = 0.0
            self._outage_until = -math.inf
            self._import_errors = 0
            self._poison: frozenset[str] = frozenset()

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next `count` API requests with `status` (default 500)."""
        if count < 0 or not 400 <= status <= 599:
            raise ValueError("count >= 0 and a 4xx/5xx status")
        with self._lock:
            self._fail_count = count
            self._fail_status = status

    def fail_imports(self, count: int = 0, external_ids: Iterable[str] = ()) -> None:
        """End bulk imports in ERROR, nothing of them applied.

        The next `count` imports fail, and every import that holds a contact whose externalCustomerId
        is in `external_ids` (until `clear`).
        """
        if count < 0:
            raise ValueError("count >= 0")
        if isinstance(external_ids, str | bytes):  # one id, not its characters
            raise ValueError("external_ids is a list of strings")
        poison = frozenset(external_ids)
        if not all(isinstance(ext, str) for ext in poison):
            raise ValueError("external_ids is a list of strings")
        with self._lock:
            self._import_errors = count
            self._poison = poison

    def import_fails(self, external_ids: Iterable[object]) -> bool:
        """Whether the import of contacts with these externalCustomerIds ends in ERROR (uses a count)."""
        with self._lock:
            if self._poison and not self._poison.isdisjoint(external_ids):
                self.injected += 1
                return True
            if self._import_errors > 0:
                self._import_errors -= 1
                self.injected += 1
                return True
        return False

    def throttle(self, seconds: float, retry_after: float | None = None) -> None:
        """Answer 429 for `seconds`, with a `Retry-After` header when `retry_after` is given.

        The header carries whole seconds, a fraction rounded up.

        Raises:
            ValueError: `retry_after` is negative or not finite.
        """
        if retry_after is not None and not 0 <= retry_after < math.inf:
            raise ValueError("retry_after must be a finite number >= 0")
        with self._lock:
            self._throttle_until = self._clock() + seconds
            self._retry_after = retry_after

    def latency(self, seconds: float) -> None:
        """Delay every API request by `seconds` (0 removes the delay)."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        with self._lock:
            self._latency = seconds

    @property
    def added_latency(self) -> float:
        """The configured per-request delay."""
        return self._latency

    def outage_503(self, seconds: float | None) -> None:
        """Answer 503 to every API request for `seconds` (None: until `clear`)."""
        with self._lock:
            self._outage_until = math.inf if seconds is None else self._clock() + seconds

    def reply(self) -> FaultReply | None:
        """The fault to impose on the API request now arriving, or None (consumes a fail-next)."""
        with self._lock:
            now = self._clock()
            if now < self._outage_until:
                self.injected += 1
                return FaultReply(503, "Service Unavailable")
            if self._fail_count > 0:
                self._fail_count -= 1
                self.injected += 1
                return FaultReply(self._fail_status, "Injected failure")
            if now < self._throttle_until:
                self.injected += 1
                return FaultReply(429, "Too many requests", self._retry_after)
        return None
