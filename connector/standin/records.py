"""The stand-in account's records: catalog fields, segments, stored contacts, bulk requests and results.

Plain values shared by the store (`store.py`), its segments (`segments.py`) and the endpoints (`routes.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "ADDRESS_PARTS",
    "DEFAULT_CUSTOM_FIELDS",
    "NAMEABLE_CHANNELS",
    "STANDARD_SCALARS",
    "BulkRequest",
    "BulkResult",
    "FieldDef",
    "Group",
    "StoredContact",
    "channel_key",
]

STANDARD_SCALARS: Final = ("firstName", "lastName", "contactKey", "languageCode", "timeZone")
ADDRESS_PARTS: Final = ("address", "town", "region", "postcode")
NAMEABLE_CHANNELS: Final = ("email", "sms", "mobilepush", "webpush")


@dataclass(frozen=True, slots=True)
class FieldDef:
    """A custom field of the account's catalog."""

    id: int
    name: str
    type: str = "TEXTFIELD"


DEFAULT_CUSTOM_FIELDS: Final = (
    FieldDef(101, "birthDate", "DATE"),
    FieldDef(102, "loyaltyLevel", "TEXTFIELD"),
    FieldDef(103, "country", "TEXTFIELD"),
)


@dataclass(slots=True)
class Group:
    """A segment."""

    id: int
    name: str
    type: str = "Static"


@dataclass(slots=True)
class StoredContact:
    """One contact as the account holds it."""

    id: int
    external_id: str | None = None
    scalars: dict[str, str] = field(default_factory=dict)
    channels: list[dict[str, Any]] = field(default_factory=list)
    address: dict[str, str] = field(default_factory=dict)
    fields: dict[int, str] = field(default_factory=dict)
    groups: set[int] = field(default_factory=set)
    deleted: bool = False
    seq: int = 0


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """The parts of a bulk body the store applies."""

    contacts: Sequence[Mapping[str, Any]]
    dedupe_on: str
    contact_fields: frozenset[str] | None = None
    custom_field_ids: frozenset[int] | None = None
    restore_deleted: bool = False
    group_names: tuple[str, ...] = ()
    group_names_exclude: tuple[str, ...] = ()
    field_id: int | None = None


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What applying a bulk request did."""

    mapping: tuple[tuple[str, int], ...]
    failed: tuple[tuple[int, str], ...]
    skipped_deleted: int


_NON_DIGITS: Final = re.compile(r"[^0-9]+")  # ASCII digits, as the phone rule (`\D` is Unicode)


def channel_key(ctype: str, value: str) -> tuple[str, str]:
    """A channel as the account matches it: emails trimmed and lower-cased, phone numbers as digits."""
    if ctype == "email":
        return ctype, value.strip().lower()
    if ctype == "sms" or ctype == "viber":
        return ctype, _NON_DIGITS.sub("", value)
    return ctype, value
