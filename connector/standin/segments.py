"""The stand-in account's segments (Yespo groups): preset ones, and those bulk writes or attach calls create.

Not locked: the store (`store.py`) calls it under its own lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector.standin.records import Group

__all__ = ["Segments"]


class Segments:
    """Segments by id; `preset` (id -> name) are there from the start and after every reset."""

    def __init__(self, preset: Mapping[int, str]) -> None:
        self._by_id = {gid: Group(gid, name) for gid, name in preset.items()}

    def get(self, group_id: int) -> Group | None:
        """The segment with this id, or None."""
        return self._by_id.get(group_id)

    def by_name(self, name: str) -> Group | None:
        """The segment with exactly this name, or None."""
        return next((g for g in self._by_id.values() if g.name == name), None)

    def ensure(self, name: str) -> Group:
        """The segment named `name`, created with the next free id if there is none (bulk `groupNames`)."""
        found = self.by_name(name)
        if found is not None:
            return found
        gid = max([*self._by_id, 0]) + 1
        self._by_id[gid] = Group(gid, name)
        return self._by_id[gid]

    def create(self, group_id: int) -> Group:
        """A new segment with this id (attach/detach to an unknown id, when the account creates them)."""
        group = self._by_id[group_id] = Group(group_id, f"Segment {group_id}")
        return group

    def listing(self, name: str | None = None) -> list[dict[str, Any]]:
        """Segments by id, optionally those whose name contains `name` (case-insensitive)."""
        return [
            {"id": g.id, "name": g.name, "type": g.type}
            for g in sorted(self._by_id.values(), key=lambda g: g.id)
            if name is None or name.lower() in g.name.lower()
        ]
