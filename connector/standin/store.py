"""The stand-in's in-memory Yespo account: contacts, soft delete/erase, segments, catalog, import sessions.

Semantics follow yespo-contacts-api.md §4-§6. Where Yespo is undocumented the stand-in chooses:
- bulk without `contactFields` writes every standard field (absent ones are cleared); with it, only
  the listed ones (listed but absent: cleared) of an existing contact: it lists "the fields to be
  updated", so a contact the request creates gets every field it carries. Channel types
  `contactFields` cannot name (viber, appinbox, ...) are replaced when the contact carries that type,
  else kept.
- `customFieldsIDs` gates custom fields (listed but absent: cleared); without it a new contact gets
  every field sent and an existing one none.
- single `POST /contact` merges: fields present overwrite, absent ones are kept; custom fields sent
  are set.
- `address` keys the official `Address` lacks (`city`, `country`, `postalCode`, ...) are dropped, by
  single and bulk writes alike, as a deserializer ignoring unknown properties would: the schema
  does not forbid them (no `additionalProperties: false`), so they are no 400, and never read back.
- bulk with a `dedupeOn` that names no channel (`externalCustomerId`) and a contact without an
  externalCustomerId: nothing matches it, a new contact is created each time (rule 2 matches such a
  contact on the channel `dedupeOn` names; here it names none). A contact *with* an unknown
  externalCustomerId still takes over a contact without one that shares its email or phone (rules 3
  and 5).
Thread-safe: every public method holds one lock.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from connector.standin.matching import ContactIndex
from connector.standin.records import (
    ADDRESS_PARTS,
    DEFAULT_CUSTOM_FIELDS,
    NAMEABLE_CHANNELS,
    STANDARD_SCALARS,
    BulkRequest,
    BulkResult,
    FieldDef,
    StoredContact,
    channel_key,
)
from connector.standin.rules import NO_CHANNEL, field_value_problem
from connector.standin.segments import Segments
from connector.standin.sessions import ImportSessions

__all__ = ["ContactStore"]

logger = logging.getLogger(__name__)

_ALL_STANDARD: Final = frozenset(
    {*STANDARD_SCALARS, *ADDRESS_PARTS, *NAMEABLE_CHANNELS, "externalCustomerId", "ordersInfo"}
)
_DEDUPE_CHANNELS: Final = {
    "email": ("email",),
    "sms": ("sms",),
    "push": ("mobilepush", "webpush"),
    "email_or_sms": ("email", "sms"),
}
"""The channel types a channel `dedupeOn` matches on (and reports as the import's `dedupeValue`)."""


class ContactStore:
    """The account. `fields` is the custom-field catalog; `groups` preset segments (id -> name)."""

    def __init__(
        self,
        fields: Iterable[FieldDef] = DEFAULT_CUSTOM_FIELDS,
        groups: Mapping[int, str] | None = None,
        *,
        auto_create_groups: bool = True,
    ) -> None:
        self._lock = threading.RLock()
        self.catalog: tuple[FieldDef, ...] = tuple(fields)
        self._field_types = {f.id: f.type for f in self.catalog}
        self._preset_groups = dict(groups or {})
        self.auto_create_groups = auto_create_groups
        self.reset()

    def reset(self) -> None:
        """Forget every contact, session and auto-created segment."""
        with self._lock:
            self._idx = ContactIndex()
            self._segments = Segments(self._preset_groups)
            self._seq = itertools.count(1)
            self.sessions = ImportSessions()

    # -- writes -----------------------------------------------------------------------------------

    def _write_standard(
        self, c: StoredContact, contact: Mapping[str, Any], listed: frozenset[str] | None, keep: str | None
    ) -> None:
        writable_names = _ALL_STANDARD if listed is None else listed
        if keep is not None:
            writable_names = writable_names - {keep}

        for name in STANDARD_SCALARS:
            if name in writable_names:
                value = contact.get(name)
                if value is None:
                    c.scalars.pop(name, None)
                else:
                    c.scalars[name] = value
        if "externalCustomerId" in writable_names and (
            contact.get("externalCustomerId") is not None or listed
        ):
            self._idx.set_external_id(c, contact.get("externalCustomerId"))
        address = contact.get("address") or {}
        for part in ADDRESS_PARTS:
            if part in writable_names:
                if address.get(part) is None:
                    c.address.pop(part, None)
                else:
                    c.address[part] = address[part]
        incoming = contact.get("channels") or []
        sent_types = {ch["type"] for ch in incoming}
        named = {t for t in NAMEABLE_CHANNELS if t in writable_names}
        replace = named | (sent_types - set(NAMEABLE_CHANNELS))
        replace.discard(keep or "")
        self._idx.unindex(c)
        kept = [ch for ch in c.channels if ch["type"] not in replace]
        c.channels = kept + [dict(ch) for ch in incoming if ch["type"] in replace]
        self._idx.index(c)

    def _merge_single(self, c: StoredContact, contact: Mapping[str, Any]) -> None:
        for name in STANDARD_SCALARS:
            if contact.get(name) is not None:
                c.scalars[name] = contact[name]
        if contact.get("externalCustomerId") is not None:
            self._idx.set_external_id(c, contact["externalCustomerId"])
        address = contact.get("address") or {}
        for part in ADDRESS_PARTS:  # only the official `Address` keys: others are dropped, as in bulk
            if address.get(part) is not None:
                c.address[part] = address[part]
        incoming = contact.get("channels") or []
        sent_types = {ch["type"] for ch in incoming}
        self._idx.unindex(c)
        c.channels = [ch for ch in c.channels if ch["type"] not in sent_types] + [dict(ch) for ch in incoming]
        self._idx.index(c)
        for f in contact.get("fields") or ():
            c.fields[f["id"]] = f["value"]

    def field_problem(self, contact: Mapping[str, Any]) -> str | None:
        """Why the contact's custom fields are unacceptable, or None.

        An unknown id, or a value breaking the documented rules of its field's catalog type (length,
        int32, date formats: `rules.field_value_problem`). Every sent value is checked, also one a bulk
        would not write (its id not in `customFieldsIDs`): the contact as sent is invalid.
        """
        for f in contact.get("fields") or ():
            fid = f.get("id")
            kind = self._field_types.get(fid)
            if kind is None:
                return "fields: unknown additional field id"
            value = f.get("value")
            if value is None:  # the OpenAPI's ContactField requires nothing; what Yespo does is undocumented
                return f"fields: field {fid} without a value"
            if (problem := field_value_problem(kind, value)) is not None:
                return f"fields: the value of field {fid} {problem}"
        return None

    # -- operations -------------------------------------------------------------------------------

    def upsert_single(self, contact: Mapping[str, Any]) -> tuple[int, bool]:
        """`POST /api/v1/contact` (validated contact): (contact id, created)."""
        with self._lock:
            c, _, _ = self._idx.match(contact, ("email", "sms"))
            created = c is None
            if c is None:
                c = self._idx.new()
            c.deleted = False
            self._merge_single(c, contact)
            c.seq = next(self._seq)
            return c.id, created

    def update_by_id(self, contact_id: int, contact: Mapping[str, Any]) -> bool:
        """`PUT /api/v1/contact/{id}`: merge like the single add; restores a deleted contact.

        Raises:
            ValueError: the body's externalCustomerId belongs to another contact (the call fails).
        """
        with self._lock:
            c = self._idx.contacts.get(contact_id)
            if c is None:
                return False
            ext = contact.get("externalCustomerId")
            if ext is not None and self._idx.by_ext.get(ext, c.id) != c.id:
                raise ValueError("externalCustomerId belongs to another contact")
            c.deleted = False
            self._merge_single(c, contact)
            c.seq = next(self._seq)
            return True

    def apply_bulk(self, request: BulkRequest, problems: Mapping[int, str]) -> BulkResult:
        """Apply a bulk request; `problems` are per-contact rule violations found beforehand."""
        kinds = _DEDUPE_CHANNELS.get(request.dedupe_on, ("email", "sms"))
        # Rule 8: the dedupeOn field of a contact matched on a channel is never updated (an
        # externalCustomerId match ignores dedupeOn: rule 1); see below for externalCustomerId
        keep = request.dedupe_on if request.dedupe_on in ("email", "sms", "externalCustomerId") else None
        mapping: list[tuple[str, int]] = []
        failed = [(i, reason) for i, reason in problems.items()]
        skipped = 0
        with self._lock:
            add = [self._segments.ensure(n) for n in request.group_names]
            drop = [g for n in request.group_names_exclude if (g := self._segments.by_name(n)) is not None]
            for i, contact in enumerate(request.contacts):
                if i in problems:
                    continue
                if not contact.get("channels"):  # "at least one channel", new contact or not
                    failed.append((i, NO_CHANNEL))
                    continue
                on_channel = False
                if request.dedupe_on == "id" and contact.get("externalCustomerId") is None:
                    found = self._idx.contacts.get(contact.get("id", -1))
                    c, was_deleted = found, bool(found and found.deleted)
                elif contact.get("externalCustomerId") is None and request.dedupe_on not in _DEDUPE_CHANNELS:
                    c, was_deleted = None, False  # nothing to match on: a new contact (module docstring)
                else:
                    c, was_deleted, on_channel = self._idx.match(contact, kinds)
                if c is not None and was_deleted:
                    if not request.restore_deleted:
                        skipped += 1
                        continue
                    c.deleted = False
                created = c is None
                if c is None:
                    c = self._idx.new()
                # Rule 8: the field that matched the contact is never updated. A contact matched on a
                # channel takes the request's externalCustomerId when it had none (rules 3 and 5:
                # `_match` only picks such contacts then); without one in the request, it keeps its own.
                kept = keep if on_channel else None
                if kept == "externalCustomerId" and contact.get("externalCustomerId") is not None:
                    kept = None
                # `contactFields` lists the fields to be *updated*: a new contact gets all it carries
                # (else it could lose its channels and externalCustomerId, and a repeat would not find it).
                listed = None if created else request.contact_fields
                self._write_standard(c, contact, listed, kept)
                incoming = {f["id"]: f.get("value") for f in contact.get("fields") or ()}
                if request.custom_field_ids is None:
                    ids: Iterable[int] = incoming if created else ()
                else:
                    ids = request.custom_field_ids
                for fid in ids:
                    if incoming.get(fid) is None:
                        c.fields.pop(fid, None)
                    else:
                        c.fields[fid] = str(incoming[fid])
                c.groups.update(g.id for g in add)
                c.groups.difference_update(g.id for g in drop)
                c.seq = next(self._seq)
                mapping.append((_dedupe_value(request.dedupe_on, contact, c), c.id))
        return BulkResult(tuple(mapping), tuple(sorted(failed)), skipped)

    def delete_external(self, external_id: str, *, erase: bool) -> bool:
        """Delete by externalCustomerId; False if no such contact."""
        with self._lock:
            cid = self._idx.by_ext.get(external_id)
            if cid is None:
                return False
            self._delete(self._idx.contacts[cid], erase)
            return True

    def delete_id(self, contact_id: int, *, erase: bool) -> bool:
        """Delete by Yespo id; False if no such contact."""
        with self._lock:
            c = self._idx.contacts.get(contact_id)
            if c is None:
                return False
            self._delete(c, erase)
            return True

    def _delete(self, c: StoredContact, erase: bool) -> None:
        if erase:
            self._idx.unindex(c)
            self._idx.set_external_id(c, None)
            del self._idx.contacts[c.id]
        else:
            c.deleted = True
            c.seq = next(self._seq)

    def get(self, contact_id: int) -> dict[str, Any] | None:
        """A live contact in the official shape, or None."""
        with self._lock:
            c = self._idx.contacts.get(contact_id)
            return None if c is None or c.deleted else self._render(c)

    def search(
        self,
        *,
        external_id: str | None = None,
        email: str | None = None,
        sms: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        start: int = 1,
        max_rows: int = 500,
    ) -> tuple[list[dict[str, Any]], int]:
        """Live contacts matching every given criterion: (the page, the total count)."""
        with self._lock:
            hits = [c for c in self._idx.contacts.values() if not c.deleted]
            if external_id is not None:
                hits = [c for c in hits if c.external_id == external_id]
            for kind, value in (("email", email), ("sms", sms)):
                if value is not None:
                    key = channel_key(kind, value)
                    hits = [
                        c
                        for c in hits
                        if any(channel_key(ch["type"], ch["value"]) == key for ch in c.channels)
                    ]
            for name, value in (("firstName", first_name), ("lastName", last_name)):
                if value is not None:
                    hits = [c for c in hits if c.scalars.get(name, "").lower() == value.lower()]
            hits.sort(key=lambda c: c.id)
            page = hits[start - 1 : start - 1 + max_rows]
            return [self._render(c) for c in page], len(hits)

    def _render(self, c: StoredContact) -> dict[str, Any]:
        out: dict[str, Any] = {"id": c.id}
        if c.external_id is not None:
            out["externalCustomerId"] = c.external_id
        out.update(c.scalars)
        out["channels"] = [dict(ch) for ch in c.channels]
        if c.address:
            out["address"] = dict(c.address)
        if c.fields:
            out["fields"] = [{"id": fid, "value": v} for fid, v in sorted(c.fields.items())]
        out["groups"] = [
            {"id": g.id, "name": g.name, "type": g.type}
            for gid in sorted(c.groups)
            if (g := self._segments.get(gid)) is not None
        ]
        return out

    # -- segments ---------------------------------------------------------------------------------

    def groups(self, name: str | None = None) -> list[dict[str, Any]]:
        """Segments, optionally those whose name contains `name` (case-insensitive)."""
        with self._lock:
            return self._segments.listing(name)

    def modify_group(
        self,
        group_id: int,
        *,
        attach: bool,
        contact_ids: Sequence[int] | None,
        external_ids: Sequence[str] | None,
    ) -> tuple[int, int] | None:
        """Attach/detach contacts: (changed, unknown ids); None if the segment does not exist.

        A detach without ids empties the segment (documented Yespo behaviour).
        """
        with self._lock:
            if self._segments.get(group_id) is None:
                if not self.auto_create_groups:
                    return None
                self._segments.create(group_id)
            if not attach and not contact_ids and not external_ids:
                members = [c for c in self._idx.contacts.values() if group_id in c.groups]
                for c in members:
                    c.groups.discard(group_id)
                return len(members), 0
            targets: list[StoredContact] = []
            unknown = 0
            found = [self._idx.contacts.get(cid) for cid in contact_ids or ()]
            for ext in external_ids or ():
                xid = self._idx.by_ext.get(ext)
                found.append(self._idx.contacts.get(xid) if xid is not None else None)
            for candidate in found:
                if candidate is not None and not candidate.deleted:
                    targets.append(candidate)
                else:
                    unknown += 1
            for c in targets:
                (c.groups.add if attach else c.groups.discard)(group_id)
            return len(targets), unknown

    # -- import sessions --------------------------------------------------------------------------

    def new_session(self) -> str:
        """A STARTED import session; returns its id."""
        with self._lock:
            return self.sessions.new()

    def set_session(self, sid: str, status: str, mapping: Sequence[tuple[str, int]] = ()) -> bool:
        """Move a session to `status` (IMPORTING, FINISHED, ERROR), recording the mapping.

        False, and nothing changes, for a session the store no longer knows (a `reset`, or evicted).
        """
        with self._lock:
            return self.sessions.set(sid, status, mapping)

    def run_import(self, sid: str, request: BulkRequest, problems: Mapping[int, str]) -> BulkResult | None:
        """Apply the import of session `sid` and finish the session, in one step under the lock.

        None, and nothing applied, when the store no longer knows the session: a `reset` since the
        request came in (its contacts must not reappear in the fresh store).
        """
        with self._lock:
            if sid not in self.sessions:
                return None
            result = self.apply_bulk(request, problems)
            self.sessions.set(sid, "FINISHED", result.mapping)
            return result

    def session(self, sid: str) -> dict[str, Any] | None:
        """A copy of the session's status body, or None."""
        with self._lock:
            return self.sessions.get(sid)

    # -- inspection -------------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Every contact (deleted ones flagged), fields by id, segment ids; plus the segments."""
        with self._lock:
            contacts = []
            for c in sorted(self._idx.contacts.values(), key=lambda c: c.id):
                contacts.append(
                    {
                        "id": c.id,
                        "externalCustomerId": c.external_id,
                        "deleted": c.deleted,
                        **c.scalars,
                        "channels": [dict(ch) for ch in c.channels],
                        "address": dict(c.address),
                        "fields": {str(k): v for k, v in sorted(c.fields.items())},
                        "groups": sorted(c.groups),
                    }
                )
            return {"count": len(contacts), "contacts": contacts, "groups": self.groups()}


def _dedupe_value(dedupe_on: str, contact: Mapping[str, Any], c: StoredContact) -> str:
    """The import-status `dedupeValue` of a written contact: the value of its `dedupeOn` field.

    `ImportSessionStatus.mapping` keys each contact id by "a contact field used to determine
    uniqueness". For a channel `dedupeOn` that is the channel's value (as the request sent it, else
    the stored one: rule 8 keeps the matched one), for `externalCustomerId` the id and for `id` the
    Yespo id. A contact without that value (say no email under `dedupeOn=email`) falls back to its
    externalCustomerId, then its Yespo id.
    """
    for kind in _DEDUPE_CHANNELS.get(dedupe_on, ()):
        for channels in (contact.get("channels") or (), c.channels):
            value = next((ch["value"] for ch in channels if ch["type"] == kind and ch.get("value")), None)
            if value is not None:
                return str(value)
    if dedupe_on == "id":
        return str(c.id)
    return c.external_id or str(c.id)
