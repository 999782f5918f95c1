"""The stand-in's per-contact rules beyond the OpenAPI schema (documented in yespo-contacts-api.md §3).

At most two channels of one type, email and phone syntax, Yespo's name rules, IANA time zones.
Messages never contain the offending value (they end up in responses that clients may log).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
import zoneinfo
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["contact_problem", "name_problem"]

logger = logging.getLogger(__name__)

_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_PHONE: Final = re.compile(r"^\+?\d{5,16}$")
_INNER: Final = frozenset(
    "-'\u2019"
    # the other apostrophes Yespo's name rules list (yespo-openapi.json, the file-import description)
    "\u02bc`\u00b4\u02b9\u02bb\u02bd\u02be\u02bf\u02c8\u02ca\u02ee\u0384\u055a\u1fbd\u1fbf"
    "\u201b\u2032\u2035\ua78b\ua78c\uff07"
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


def contact_problem(contact: Mapping[str, Any]) -> str | None:
    """The first rule `contact` (already schema-valid) breaks, or None."""
    counts: dict[str, int] = {}
    for channel in contact.get("channels") or ():
        ctype = channel.get("type")
        counts[ctype] = counts.get(ctype, 0) + 1
        if counts[ctype] > 2:
            return f"channels: at most two channels of type {ctype}"
        value = channel.get("value")
        if not value:
            return f"channels: a {ctype} channel without a value"
        if ctype == "email" and not _EMAIL.match(value):
            return "channels: invalid email address"
        if ctype in ("sms", "viber") and not _PHONE.match(value):
            return "channels: invalid phone number (international format, digits only)"
    for key, first in (("firstName", True), ("lastName", False)):
        value = contact.get(key)
        if value is not None and (problem := name_problem(value, first=first)) is not None:
            return f"{key}: {problem}"
    zone = contact.get("timeZone")
    if zone and _zones() and zone not in _zones():
        return "timeZone: not an IANA time zone"
    return None
