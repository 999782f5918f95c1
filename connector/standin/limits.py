"""The stand-in's request limits: the per-second rate windows (429) and the duplicate-request window (409).

Thread-safe: the HTTP server calls them from its request threads.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Callable

__all__ = ["DuplicateWindow", "SlidingWindow"]


class SlidingWindow:
    """At most `limit` requests in any trailing second (None: unlimited)."""

    def __init__(self, limit: float | None, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def admit(self) -> bool:
        """Record a request and say whether it is within the limit (refused ones are not recorded)."""
        if self.limit is None:
            return True
        with self._lock:
            now = self._clock()
            while self._times and self._times[0] <= now - 1.0:
                self._times.popleft()
            if len(self._times) >= self.limit:
                return False
            self._times.append(now)
            return True

    def clear(self) -> None:
        """Forget the window."""
        with self._lock:
            self._times.clear()


class DuplicateWindow:
    """Single writes seen in the last `seconds`, by target and body bytes."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def claim(self, target: str, raw: bytes) -> bytes | None:
        """Enter a single write into the window: its key, or None if it repeats one (409).

        The spec lists 409 "Repeated request within 1 minute" for `POST /contact` and
        `PUT /contact/{id}`. The key is the target and the body bytes: the same body sent to another
        contact, or as an add, is another request. A write that then fails is `release`d, so that
        retrying it gets the failure again, not a 409 that clients take for success.
        """
        digest = hashlib.sha256(target.encode() + b"\n" + raw).digest()
        now = self._clock()
        with self._lock:
            if now - self._seen.get(digest, -1e18) < self.seconds:
                return None
            if len(self._seen) > 100_000:
                self._seen = {k: t for k, t in self._seen.items() if now - t < self.seconds}
            self._seen[digest] = now
        return digest

    def release(self, digest: bytes) -> None:
        """Forget a claimed write that was not applied."""
        with self._lock:
            self._seen.pop(digest, None)

    def clear(self) -> None:
        """Forget the window."""
        with self._lock:
            self._seen.clear()
