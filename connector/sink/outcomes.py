"""Per-contact results of Yespo calls, as the deliver loop needs them for commits, DLQ and audit.

Reasons are short, free of customer data and safe to put into DLQ headers, audit records and the
errors that stop the stage: `scrub_reason` masks, on the server's whole text and in this order,
secrets (the API key, its Basic credentials), every value of the contacts a reason is about (names,
addresses, field values, externalCustomerIds, also JSON-escaped or URL-encoded), emails and
phone-like digit runs, and only then cuts the text to 300 characters.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus

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

# each starts where a token starts (the look-behind): a long token without "@" costs one attempt
_EMAIL = re.compile(r"(?<![^\s@\"'<>,;:()\[\]])[^\s@\"'<>,;:()\[\]]+@[^\s@\"'<>,;:()\[\]]+")
# URL-encoded (`%40`), as a server quotes a query string: stops at the query's delimiters
_EMAIL_ENCODED = re.compile(
    r"(?<![^\s@\"'<>,;:()\[\]&?=/])(?:[^\s@\"'<>,;:()\[\]&?=/%]|%[0-9A-Fa-f]{2})+%40"
    r"(?:[^\s@\"'<>,;:()\[\]&?=/%]|%[0-9A-Fa-f]{2})+"
)
_DIGITS = re.compile(r"\+?\d[\d\s\-()]{5,}\d")
_MAX_REASON: Final = 300
_MAX_SCAN: Final = 4096
"""Characters of a server's text that are masked and kept (after whitespace is collapsed)."""
_CUT_GUARD: Final = 256
VALUE_MASK: Final = "<value>"
SECRET_MASK: Final = "<secret>"  # noqa: S105 - the mask, not a secret


def scrub_reason(text: str, *about: Any, secrets: Iterable[str] = ()) -> str:
    """`text` (a server's answer) fit for a DLQ header or an error: nothing of the customer in it.

    In this order: whitespace collapsed; `secrets` masked wherever they appear (any case); every
    text value of `about` (contacts, lists of ids: see `without_values`) masked where it stands as
    a whole word; emails (also `%40`-encoded) and phone-like digit runs masked; at most 300
    characters. Masking before cutting matters: a value cut in two is no longer found whole.

    Only the first 4096 characters are read; when there were more, the end of what is read is
    dropped too, so that a value cut there leaves nothing of itself.
    """
    text = " ".join(text.split())
    cut = len(text) > _MAX_SCAN
    if cut:
        text = text[:_MAX_SCAN]
    text = _without_secrets(text, secrets)
    forms = _value_forms(about)
    text = _mask_forms(text, forms)
    if "@" in text:
        text = _EMAIL.sub("<email>", text)
    if "%40" in text:
        text = _EMAIL_ENCODED.sub("<email>", text)
    text = _DIGITS.sub("<number>", text)
    if cut:
        longest = max(forms, default=0)
        text = text[: max(0, len(text) - max(longest, _CUT_GUARD))].rstrip()
        text = f"{text} ..." if text else "..."
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def without_values(text: str, contact: Mapping[str, Any]) -> str:
    r"""`text` (a server's reason about `contact`) with every text value of the contact masked.

    A server may quote what it refused ("firstName 'Ivan3' is invalid", an address, a push token):
    each value of two characters or more is replaced where it stands as a whole word (any case), so
    the reason keeps its wording but no customer data. Also found: the value with its whitespace
    collapsed, JSON-escaped (non-ASCII as `\uXXXX` or not; as sent, so a line break as `\n`, and
    collapsed; also escaped twice, as a JSON body quoting a JSON-quoted value has it) and
    URL-encoded (`%20` or `+`; a delete sends its externalCustomerId in the query string). Use
    `scrub_reason(text, contact)` on a server's raw text: this alone neither collapses whitespace
    nor masks emails, numbers or secrets.
    """
    return _mask_forms(text, _value_forms((contact,)))


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


def _lower(text: str) -> str:
    """`text` lower-cased character by character, its length kept (positions stay comparable)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(lc := c.lower()) != 1 else lc for c in text)


def _value_forms(about: Iterable[Any]) -> dict[int, dict[str, str]]:
    """The lower-cased forms a server may quote each text value of `about` in, by length.

    Each with its mask: `<email>` or `<number>` for a value that is one (as those masks would have
    it), else `<value>`.
    """
    forms: dict[int, dict[str, str]] = {}
    seen: set[str] = set()
    for value in _texts(tuple(about)):
        if value in seen:
            continue
        seen.add(value)
        plain = " ".join(value.split())  # as `scrub_reason` leaves the text: whitespace collapsed
        if len(plain) < 2:
            continue
        mask = (
            "<email>" if _EMAIL.fullmatch(plain) else "<number>" if _DIGITS.fullmatch(plain) else VALUE_MASK
        )
        # JSON-escaped (non-ASCII as `\uXXXX` or not), of the collapsed and of the raw value: a
        # line break in a JSON body stays `\n`, never whitespace; and escaped twice, as a JSON
        # error body quotes a message that quotes the value JSON-escaped (`\\n`)
        escaped = {
            json.dumps(v, ensure_ascii=ascii_only)[1:-1]
            for v in (plain, value)
            for ascii_only in (True, False)
        }
        twice = {json.dumps(e, ensure_ascii=False)[1:-1] for e in escaped}
        for quoted in (plain, *escaped, *twice, quote(value, safe=""), quote_plus(value, safe="")):
            # as `scrub_reason` leaves the text (whitespace collapsed: runs of spaces, or a
            # U+2028 JSON leaves as it is); `without_values` reads a text as it came
            for form in {quoted, " ".join(quoted.split())}:
                if len(form) >= 2:
                    forms.setdefault(len(form), {})[_lower(form)] = mask
    return forms


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"  # what `\w` matches in a str pattern


def _mask_forms(text: str, forms: Mapping[int, Mapping[str, str]]) -> str:
    r"""`text` with each of `forms` masked where it stands as a whole word (any case), longest first.

    What `re.sub` does with `(?<!\w)(?:form|...)(?!\w)`, without compiling thousands of
    alternatives (a failed segment call is about up to 500 contacts).
    """
    if not forms or not text:
        return text
    low = _lower(text)
    sizes = sorted(forms, reverse=True)
    shortest, n = sizes[-1], len(text)
    out: list[str] = []
    last = i = 0
    while i <= n - shortest:
        if i and _is_word(text[i - 1]):
            i += 1
            continue
        for size in sizes:
            end = i + size
            mask = forms[size].get(low[i:end]) if end <= n else None
            if mask is not None and (end == n or not _is_word(text[end])):
                out += (text[last:i], mask)
                last = i = end
                break
        else:
            i += 1
    out.append(text[last:])
    return "".join(out)


def _without_secrets(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        if secret.lower() in text.lower():
            text = re.sub(re.escape(secret), SECRET_MASK, text, flags=re.IGNORECASE)
    return text


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
