"""The stand-in's per-contact rules beyond the OpenAPI schema (documented in yespo-contacts-api.md §3).

At least one channel and at most two of one type, email and phone syntax, Yespo's name rules, IANA
time zones, and the custom-field value rules by catalog type. Messages never contain the offending
value (they end up in responses that clients may log).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import unicodedata
import zoneinfo
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["NO_CHANNEL", "contact_problem", "field_value_problem", "name_problem"]

logger = logging.getLogger(__name__)

# used with fullmatch: `$` would let a trailing newline through
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
# ASCII digits only: `\d` would also take other scripts' digits, which no phone number is written in
_PHONE: Final = re.compile(r"\+?[0-9]{5,16}")
_INNER: Final = frozenset(
    "-'\u2019"
    # the other apostrophes Yespo's name rules list (yespo-openapi.json, the file-import description)
    "\u02bc`\u00b4\u02b9\u02bb\u02bd\u02be\u02bf\u02c8\u02ca\u02ee\u0384\u055a\u1fbd\u1fbf"
    "\u201b\u2032\u2035\ua78b\ua78c\uff07"
)
NO_CHANNEL: Final = "channels: at least one channel is required"
"""The refusal of a contact whose `channels` list is empty (spec section 3, "Channels")."""
_TEXT_LIMITS: Final = {"TEXTFIELD": 1000, "TEXTAREA": 5000}
"""Characters a text input / text area takes (spec section 3, S7)."""
# ASCII digits only, the sign allowed as Java's Integer.parseInt allows it: Python's int() would
# also take blanks, underscores and other scripts' digits, which a Yespo number field does not.
_INT32_TEXT: Final = re.compile(r"[+-]?[0-9]+")
# The date inputs spec section 1 lists (S7): yyyy-MM-dd, dd/MM/yyyy, dd.MM.yyyy, dd.MM.yy.
_DATES: Final = (
    re.compile(r"(?P<y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})"),
    re.compile(r"(?P<d>[0-9]{2})/(?P<m>[0-9]{2})/(?P<y>[0-9]{4})"),
    re.compile(r"(?P<d>[0-9]{2})\.(?P<m>[0-9]{2})\.(?P<y>[0-9]{4}|[0-9]{2})"),
)
_DATETIME: Final = re.compile(
    r"(?P<y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})T(?P<hh>[0-9]{2}):(?P<mm>[0-9]{2})"
)


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def name_problem(name: str, *, first: bool) -> str | None:
    """Why `name` breaks Yespo's name rules, or None. A blank name (plugins send " ") is allowed."""
    text = name.strip()
    if not text:
        return None
    if len(text) > 40:
        return "longer than 40 characters"
    if text.isalpha() and (text.isascii() or _INNER.isdisjoint(text)):
        return None  # one word of letters only: no rule below can object (the common case)
    if sum(ch.isdigit() for ch in text) > 3:
        return "more than 3 digits"
    if not any(ch.isalpha() for ch in text):
        return "made only of digits or special characters"
    words = text.split()
    for word in words:
        last = len(word) - 1
        for i, ch in enumerate(word):
            if ch in _INNER:  # before the letter test: some apostrophes are letters (U+02BC, ...)
                if i in (0, last):
                    return "an apostrophe or hyphen may only be inside a word"
                continue
            if ch.isalnum():
                continue
            if unicodedata.category(ch)[0] == "M" and i > 0:
                continue  # a combining mark belongs to the character before it (Hindi vowel signs)
            if ch != "." or i != last or len(word) > 4:
                if ch == ".":
                    return "a dot may only end a word of 3 characters or fewer"
                return "characters other than letters, digits, ' - ."
    if first:
        long_words = sum(1 for w in words if len(w.rstrip(".")) > 3)
        if long_words > 3 or len(words) - long_words > 3:
            return "too many words"
    return None


def _year(text: str) -> int:
    """A 2-digit year as `strptime`'s %y reads it (69-99: 1900s, else 2000s); it only decides 29.02."""
    year = int(text)
    if len(text) > 2:
        return year
    return year + (1900 if year >= 69 else 2000)


def _calendar(found: re.Match[str]) -> bool:
    """Whether the matched parts name a real day (and time): the formats alone allow 2023-02-29."""
    parts = found.groupdict()
    try:
        dt.datetime(
            _year(parts["y"]),
            int(parts["m"]),
            int(parts["d"]),
            int(parts.get("hh") or 0),
            int(parts.get("mm") or 0),
        )
    except ValueError:
        return False
    return True


def _number_problem(value: str) -> str | None:
    if not _INT32_TEXT.fullmatch(value):
        return "is not an integer"
    if not -(2**31) <= int(value) < 2**31:
        return "is out of the int32 range"
    return None


def _date_problem(value: str) -> str | None:
    for form in _DATES:
        if (found := form.fullmatch(value)) is not None:
            return None if _calendar(found) else "is not a calendar date"
    return "is not a date (yyyy-MM-dd, dd/MM/yyyy, dd.MM.yyyy or dd.MM.yy)"


def _datetime_problem(value: str) -> str | None:
    found = _DATETIME.fullmatch(value)
    if found is None:
        return "is not a date-time (yyyy-MM-ddTHH:mm)"
    return None if _calendar(found) else "is not a calendar date and time"


_VALUE_RULES: Final = {"NUMBER": _number_problem, "DATE": _date_problem, "DATETIME": _datetime_problem}


def field_value_problem(kind: str, value: str) -> str | None:
    """Why `value` does not fit a custom field of catalog type `kind`, or None.

    The documented rules (spec section 3): text input at most 1000 characters, text area 5000, number
    int32, date and date-time in their fixed formats and real calendar days. Types without a documented
    rule (COMBOBOX, DECIMAL, TAGS, ...) take any string. The text types, the common case, cost one len().
    """
    limit = _TEXT_LIMITS.get(kind)
    if limit is not None:
        return None if len(value) <= limit else f"is longer than {limit} characters"
    rule = _VALUE_RULES.get(kind)
    return None if rule is None else rule(value)


def contact_problem(contact: Mapping[str, Any]) -> str | None:
    """The first rule `contact` (already schema-valid) breaks, or None.

    "At least one channel" (S1 `BaseContact`, `ContactUpdate`) holds for every write, also one that
    updates an existing contact: an empty `channels` list is refused. An absent one is for the
    schema to judge (`Contact` requires it; `ContactUpdate` does not).
    """
    channels = contact.get("channels")
    if channels is not None and not channels:
        return NO_CHANNEL
    counts: dict[str, int] = {}
    for channel in channels or ():
        ctype = channel.get("type")
        if ctype is None:  # the OpenAPI's Channel requires nothing; a channel is a type and a value
            return "channels: a channel without a type"
        counts[ctype] = counts.get(ctype, 0) + 1
        if counts[ctype] > 2:
            return f"channels: at most two channels of type {ctype}"
        value = channel.get("value")
        if not value:
            return f"channels: a {ctype} channel without a value"
        if ctype == "email" and not _EMAIL.fullmatch(value):
            return "channels: invalid email address"
        if ctype in ("sms", "viber") and not _PHONE.fullmatch(value):
            return "channels: invalid phone number (international format, digits only)"
    for key, first in (("firstName", True), ("lastName", False)):
        value = contact.get(key)
        if value is not None and (problem := name_problem(value, first=first)) is not None:
            return f"{key}: {problem}"
    zone = contact.get("timeZone")
    if zone and _zones() and zone not in _zones():
        return "timeZone: not an IANA time zone"
    return None
