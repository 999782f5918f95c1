"""Per-contact results of Yespo calls, as the deliver loop needs them for commits, DLQ and audit.

Reasons are short, free of customer data (`scrub_reason` masks emails and phone-like digit runs that a
server might echo; `without_values` masks every value of the contact a reason is about: names,
addresses, field values) and safe to put into DLQ headers and audit records.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

__all__ = [
    "BulkOutcome",
    "ContactOutcome",
    "ImportStatus",
    "Outcome",
    "scrub_reason",
    "without_values",
]

logger = logging.getLogger(__name__)

_EMAIL = re.compile(r"[^\s@\"'<>,;:()\[\]]+@[^\s@\"'<>,;:()\[\]]+")
_DIGITS = re.compile(r"\+?\d[\d\s\-()]{5,}\d")
_MAX_REASON = 300


def scrub_reason(text: str) -> str:
    """`text` with emails and phone-like numbers masked, whitespace collapsed, at most 300 chars."""
    text = _EMAIL.sub("<email>", text)
    text = _DIGITS.sub("<number>", text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key != "type":  # a channel's type ("email", "sms"): a word of the reasons, not data
                yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)


def without_values(text: str, contact: Mapping[str, Any]) -> str:
    """`text` (a server's reason about `contact`) with every text value of the contact masked.

    A server may quote what it refused ("firstName 'Ivan3' is invalid", an address, a push token):
    each value of two characters or more is replaced where it stands as a whole word (any case), so
    the reason keeps its wording but no customer data.
    """
    forms: set[str] = set()
    for value in _texts(contact):
        plain = " ".join(value.split())  # as `scrub_reason` leaves the reason: whitespace collapsed
        if len(plain) >= 2:
            # also as a server may quote it inside JSON: escaped, non-ASCII as \uXXXX or not
            forms.update((plain, json.dumps(plain)[1:-1], json.dumps(plain, ensure_ascii=False)[1:-1]))
    values = sorted(forms, key=len, reverse=True)
    if not values or not text:
        return text
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(v)}(?!\w)" for v in values), flags=re.IGNORECASE)
    return pattern.sub("<value>", text)


# Frozen msgspec Structs, not dataclasses: one per contact of a bulk call, cheap to build and
# untracked by the garbage collector (gc=False: they hold only scalars and tuples of each other).
class Outcome(msgspec.Struct, frozen=True, gc=False):
    """The result of one single-contact call (add/update, delete, group attach/detach).

    Attributes:
        ok: the call's effect is in place (including the "already done" cases: a 409 repeat, a 404 on
            delete).
        status_code: the HTTP status of the answer.
        contact_id: Yespo's contact id, when the answer carried one.
        reason: why it is not ok, or which benign case made it ok ("duplicate", "not found").
    """

    ok: bool
    status_code: int | None
    contact_id: int | None = None
    reason: str | None = None


class ContactOutcome(msgspec.Struct, frozen=True, gc=False):
    """The result for one contact of a bulk call.

    Attributes:
        index: position of the contact in the list passed to the client.
        external_id: its externalCustomerId (None when the contact had none).
        ok: True unless Yespo rejected this contact.
        status_code: 200 for a contact accepted or listed in `failedContacts`; 400 for a contact that
            a whole-request 400 was isolated to; None for a contact never sent (translation failure).
        reason: the (scrubbed) error for a failed contact.
    """

    index: int
    external_id: str | None
    ok: bool
    status_code: int | None
    reason: str | None = None


class BulkOutcome(msgspec.Struct, frozen=True, gc=False):
    """Every contact's result of one (possibly split) bulk delivery, in input order.

    Attributes:
        contacts: one entry per input contact, `contacts[i].index == i`.
        session_ids: the `asyncSessionId` of each accepted request (poll with `import_status`).
        error_messages: `errorMessage` texts of accepted requests (scrubbed).
        requests: how many HTTP requests were made (more than 1 after isolating bad contacts).
        unattributed_failures: `failedContacts` entries that matched no input contact.
    """

    contacts: tuple[ContactOutcome, ...]
    session_ids: tuple[str, ...] = ()
    error_messages: tuple[str, ...] = ()
    requests: int = 1
    unattributed_failures: int = 0

    @property
    def failed(self) -> tuple[ContactOutcome, ...]:
        """The contacts Yespo rejected."""
        return tuple(c for c in self.contacts if not c.ok)

    @property
    def succeeded(self) -> tuple[ContactOutcome, ...]:
        """The contacts Yespo accepted."""
        return tuple(c for c in self.contacts if c.ok)


class ImportStatus(msgspec.Struct, frozen=True, gc=False):
    """`GET /api/v1/importstatus/{id}`: STARTED, IMPORTING, FINISHED or ERROR.

    Attributes:
        status: the session status as Yespo spells it.
        timestamp: when the status was set (ISO 8601), if given.
        description: Yespo's optional description (scrubbed).
        mapping: `(dedupeValue, contactId)` pairs of created or updated contacts.
    """

    status: str
    timestamp: str | None = None
    description: str | None = None
    mapping: tuple[tuple[str, int], ...] = ()

    @property
    def finished(self) -> bool:
        """FINISHED or ERROR: the session will not change any more."""
        return self.status in ("FINISHED", "ERROR")

    @property
    def failed(self) -> bool:
        """The import ended in ERROR."""
        return self.status == "ERROR"
