"""What this process last wrote to each contact, for Yespo's one-minute repeat window (its 409).

Decides whether a 409 to a single-contact write means "delivered" (`RecentWrites.confirmed`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from connector.errors import RetryableDeliveryError
from connector.sink.responses import REPEAT_WINDOW_S

__all__ = ["DELETED", "UNKNOWN", "RecentWrites", "contact_identity"]

logger = logging.getLogger(__name__)


class RecentWrites:
    """The last single-contact write this process made to each contact, for Yespo's repeat window.

    A 409 means "the same request came within a minute", not "this request is in effect": for a
    contact sent A, then B, then A again within the minute, Yespo keeps B. Only `confirmed` tells
    the two apart: a 409 counts as delivered when this process's last write to the contact was this
    very one. Without an entry (a restart, or a partition that moved from another instance, whose
    writes this process never saw) nothing is known, so the write is sent again after the window;
    a revocation empties the memory (`YespoClient.forget_recent_writes`): a partition that leaves
    and comes back may have been written by another instance meanwhile. A write whose answer was
    lost (a timeout, a 5xx) may or may not have applied: the contact's last write is then unknown
    (`unsettled`) until a write of it is answered, and no 409 counts for it, not even one for the
    lost write's own retry (a 409 proves that an identical body came within the minute, not that the
    lost one did: A, B, then A lost, and the retry's 409 may repeat the first A while Yespo keeps
    B). Entries older than two windows are dropped (a 409 cannot be about them), so the memory
    holds at most two minutes of single-mode writes (200 requests/s at most).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._pruned = clock()

    def record(self, contact: str, write: bytes) -> None:
        """`write` (a body digest, or `DELETED`) reached `contact`."""
        now = self._clock()
        with self._lock:
            self._last[contact] = (write, now)
            if now - self._pruned > REPEAT_WINDOW_S:
                self._last = {k: v for k, v in self._last.items() if now - v[1] < 2 * REPEAT_WINDOW_S}
                self._pruned = now

    def unsettled(self, contact: str, failure: RetryableDeliveryError) -> None:
        """A write to `contact` failed without an answer that says whether it applied.

        A timeout or a lost connection, a 408 or a 5xx: a later 409 must not be taken for a repeat of
        the write before it (A, then B lost but applied, then A again: Yespo keeps B). A 429 or a 409
        says Yespo applied nothing: the last write stays what it was.
        """
        if failure.status_code not in (409, 429):
            self.record(contact, UNKNOWN)

    def confirmed(self, contact: str, write: bytes) -> bool:
        """True when this process's last write to `contact` was `write` itself."""
        with self._lock:
            last = self._last.get(contact)
        return last is not None and last[0] == write

    def clear(self) -> None:
        """Forget every write (the contacts may be written by another process from now on)."""
        with self._lock:
            self._last = {}


DELETED: Final = b"delete"
"""The contact's last write was a delete."""
UNKNOWN: Final = b"unknown"
"""The contact's last write is not known (its answer was lost): equal to no body digest (16 bytes)."""


def contact_identity(wire: Mapping[str, Any]) -> str:
    """Which contact a single-contact body addresses: its externalCustomerId, else its channels."""
    ext = wire.get("externalCustomerId")
    if ext:
        return f"ext:{ext}"
    channels = wire.get("channels") or ()
    return "channels:" + ",".join(sorted(str(c.get("value")) for c in channels if isinstance(c, Mapping)))
