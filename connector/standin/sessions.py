"""The stand-in account's bulk import sessions: STARTED -> IMPORTING -> FINISHED (or ERROR), with the mapping.

Not locked: the store (`store.py`) calls it under its own lock.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["MAX_SESSIONS", "ImportSessions"]

MAX_SESSIONS: Final = 10_000
"""Import sessions remembered (the oldest are forgotten; their status then answers 404)."""


class ImportSessions:
    """Import sessions by id, the body `GET /api/v1/importstatus/{id}` answers for each."""

    def __init__(self) -> None:
        self._by_id: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, sid: object) -> bool:
        return sid in self._by_id

    def new(self) -> str:
        """A STARTED session; returns its id. Past `MAX_SESSIONS` the oldest is forgotten."""
        sid = uuid.uuid4().hex
        self._by_id[sid] = {"status": "STARTED", "timestamp": _now(), "mapping": []}
        if len(self._by_id) > MAX_SESSIONS:  # dicts keep insertion order: drop the oldest
            del self._by_id[next(iter(self._by_id))]
        return sid

    def set(self, sid: str, status: str, mapping: Sequence[tuple[str, int]] = ()) -> bool:
        """Move a session to `status`, recording the mapping; False, and no change, for an unknown id."""
        session = self._by_id.get(sid)
        if session is None:
            return False
        session["status"] = status
        session["timestamp"] = _now()
        if mapping:
            session["mapping"] = [{"dedupeValue": v, "contactId": cid} for v, cid in mapping]
        return True

    def get(self, sid: str) -> dict[str, Any] | None:
        """A copy of the session's status body, or None."""
        found = self._by_id.get(sid)
        return None if found is None else {**found, "mapping": list(found["mapping"])}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
