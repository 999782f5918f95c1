"""The stand-in account's contacts and their indexes (externalCustomerId, channels); the matching rules.

Which stored contact a written contact updates (yespo-contacts-api.md §4 rules 1-6). Not locked: the
store (`store.py`) calls it under its own lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from connector.standin.records import StoredContact, channel_key

__all__ = ["ContactIndex"]


class ContactIndex:
    """Every stored contact by Yespo id, deleted ones included, indexed by externalCustomerId and channel.

    A caller that changes a contact's channels calls `unindex` before and `index` after; its
    externalCustomerId changes only through `set_external_id`.
    """

    def __init__(self) -> None:
        self.contacts: dict[int, StoredContact] = {}
        self.by_ext: dict[str, int] = {}
        self._by_channel: dict[tuple[str, str], set[int]] = {}
        self._ids = itertools.count(1000)

    def unindex(self, c: StoredContact) -> None:
        """Drop the contact's current channels from the channel index."""
        for ch in c.channels:
            ids = self._by_channel.get(channel_key(ch["type"], ch["value"]))
            if ids is not None:
                ids.discard(c.id)

    def index(self, c: StoredContact) -> None:
        """Enter the contact's current channels into the channel index."""
        for ch in c.channels:
            self._by_channel.setdefault(channel_key(ch["type"], ch["value"]), set()).add(c.id)

    def set_external_id(self, c: StoredContact, ext: str | None) -> None:
        """Give the contact this externalCustomerId (None: none), keeping the index true."""
        if c.external_id == ext:
            return
        if c.external_id is not None and self.by_ext.get(c.external_id) == c.id:
            del self.by_ext[c.external_id]
        c.external_id = ext
        if ext is not None:
            self.by_ext[ext] = c.id

    def _by_channels(self, contact: Mapping[str, Any], kinds: Sequence[str]) -> list[StoredContact]:
        found: dict[int, StoredContact] = {}
        for ch in contact.get("channels") or ():
            if ch["type"] in kinds:
                for cid in self._by_channel.get(channel_key(ch["type"], ch["value"]), ()):
                    c = self.contacts[cid]
                    if not c.deleted:
                        found[cid] = c
        return list(found.values())

    def match(
        self, contact: Mapping[str, Any], kinds: Sequence[str]
    ) -> tuple[StoredContact | None, bool, bool]:
        """The contact a write updates: (contact or None to create one, found deleted, matched on a channel).

        By externalCustomerId first (a deleted one too), else among live contacts sharing a channel
        of `kinds`.
        """
        ext = contact.get("externalCustomerId")
        if ext is not None:
            cid = self.by_ext.get(ext)
            if cid is not None:
                c = self.contacts[cid]
                return c, c.deleted, False
        candidates = self._by_channels(contact, kinds)
        if ext is not None:
            # Rules 5/6: only a contact without an externalCustomerId may take the request's id.
            candidates = [c for c in candidates if c.external_id is None]
        if not candidates:
            return None, False, False
        # Rule 4: the most recently updated one.
        return max(candidates, key=lambda c: c.seq), False, True

    def new(self) -> StoredContact:
        """A new, empty contact with the next Yespo id."""
        c = StoredContact(next(self._ids))
        self.contacts[c.id] = c
        return c
