"""Client-side rate limit for Yespo calls: a token bucket on an injected monotonic clock.

`acquire_delay()` never blocks, so the deliver loop can keep polling Kafka while it waits; `acquire()`
is the blocking convenience for callers that may sleep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["RateLimiter"]

logger = logging.getLogger(__name__)

_ONE = 1.0 - 1e-9
"""A full token, with slack for float error (a wait of exactly the computed delay must suffice)."""


class RateLimiter:
    """Token bucket: `rate_per_s` tokens a second, at most `burst` stored.

    With `burst=1` (the default) requests are paced evenly, which keeps any sliding one-second window
    at or below `rate_per_s + 1` requests: set the rate a little below the server's limit.
    Thread-safe.
    """

    def __init__(self, rate_per_s: float, clock: Callable[[], float], *, burst: float = 1.0) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()

    @property
    def rate_per_s(self) -> float:
        """The configured rate."""
        return self._rate

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def acquire_delay(self) -> float:
        """Take a token if one is available and return 0.0; otherwise take nothing.

        Returns:
            0.0 when the caller may send now (a token was taken), else the seconds until a token
            will be available; call again after waiting.
        """
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= _ONE:
                self._tokens = max(0.0, self._tokens - 1.0)
                return 0.0
            return (1.0 - self._tokens) / self._rate

    def peek_delay(self) -> float:
        """Seconds until a token is available (0.0: now), without taking one."""
        with self._lock:
            self._refill(self._clock())
            return 0.0 if self._tokens >= _ONE else (1.0 - self._tokens) / self._rate

    def acquire(self, sleep: Callable[[float], None]) -> float:
        """Block (through `sleep`) until a token is taken.

        Returns:
            The total seconds slept.
        """
        waited = 0.0
        while True:
            delay = self.acquire_delay()
            if delay <= 0.0:
                return waited
            sleep(delay)
            waited += delay
