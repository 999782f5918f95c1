"""Map a customer's current rows to a Yespo `Contact`: normalized fields, dropped and kept ones.

Pure: `map_contact(view, mapping)` -> `MappingResult`; what to emit for it is decided in
`connector.emission`.

Null rule (one rule for every field): a column that is null, empty (after trimming), the TOAST marker,
or invalid leaves its field out of the contact; an address whose parts are all absent is left out
whole. The deliver stage lists every managed standard field in `contactFields`, so a field left out is
cleared in Yespo, except the fields in `MappingResult.kept`: their column holds the TOAST marker (a
value Debezium did not send and the state never saw), so Yespo is asked to keep what it has.
Invalid values are reported in `MappingResult.dropped` (path and reason, never the value); they never
block the rest of the contact. See `docs/mapping.md`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from connector.config import ContactMapping
from connector.contact import TEXT_FIELD_MAX_LENGTH, Contact, fingerprint_json
from connector.contact import group_id as contact_group_id
from connector.errors import MappingError
from connector.jsonvalues import UNCHANGED_MARKER
from connector.models import CustomerView
from connector.normalize import (
    Invalid,
    field_text,
    normalize_country,
    normalize_email,
    normalize_language_code,
    normalize_name,
    normalize_phone,
    normalize_text,
    normalize_time_zone,
    scalar_text,
)

__all__ = [
    "UNMATCHABLE",
    "ContactMapper",
    "DroppedField",
    "MappingResult",
    "map_contact",
]

logger = logging.getLogger(__name__)

UNMATCHABLE: Final = "no externalCustomerId and no channel: the contact cannot be matched"
"""`MappingResult.error` for a contact Yespo could not match; the caller dead-letters the record."""

_MAX_CHANNELS_PER_TYPE: Final = 2  # Yespo's limit (spec section 3, "Channels")

_Normalizer = Callable[[str], "str | Invalid"]


@dataclass(frozen=True, slots=True)
class DroppedField:
    """A field left out of the contact because its value was invalid.

    Attributes:
        field: where in the contact: `firstName`, `channels[sms]`, `address.country`, `fields.birthDate`.
        reason: short and free of the value (no PII).
    """

    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (for the audit record)."""
        return {"field": self.field, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class MappingResult:
    """What the mapping made of one customer.

    Attributes:
        contact: the contact; None when the customers row is absent (deleted or not arrived yet) or
            when `error` is set.
        dropped: the fields left out because their values were invalid, in mapping order.
        error: why the contact cannot be matched at all (`UNMATCHABLE`); the caller sends the record
            to the DLQ with this reason.
        fingerprint: `contact.fingerprint()`, computed once by the mapper (None without a contact);
            with `kept` fields it covers them too (a value learned later is a change).
        kept: the fields whose column holds an unknown value (the TOAST marker that the state could
            not fill), in mapping order, as `dropped` names them (`firstName`, `channels[email]`,
            `address.city`, `fields.notes`): left out of the contact, and kept as they are in Yespo.
        contact_json: `contact.to_json()`, key order included, when the mapper built the contact
            (it validates that very dict); never mutate it.
    """

    contact: Contact | None
    dropped: tuple[DroppedField, ...] = ()
    error: str | None = None
    fingerprint: str | None = None
    kept: tuple[str, ...] = ()
    contact_json: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


_ABSENT: Final = MappingResult(None)


def _missing(path: str) -> DroppedField:
    return DroppedField(path, "column missing from the row")


_MISSING: Final = object()


class ContactMapper:
    """Maps `CustomerView`s with one `ContactMapping`, compiled once (column lists, normalizers).

    Build one per mapping and call `map(view)` on the hot path; `map_contact` does this for you.
    """

    __slots__ = (
        "_address",
        "_channels",
        "_ext",
        "_fields",
        "_groups",
        "_names",
        "_scalars",
        "mapping",
    )

    def __init__(self, mapping: ContactMapping) -> None:
        """Compile `mapping`."""
        self.mapping = mapping
        region = mapping.default_phone_region
        validation = mapping.phone_validation
        rules = mapping.name_rules

        def phone(value: str) -> str | Invalid:
            return normalize_phone(value, region, validation)

        def first_name(value: str) -> str | Invalid:
            return normalize_name(value, first_name=True, rules=rules)

        def last_name(value: str) -> str | Invalid:
            return normalize_name(value, first_name=False, rules=rules)

        # Viber is addressed by phone number too (spec section 3: "Phone number (SMS, Viber)").
        channel_normalizers: dict[str, _Normalizer] = {
            "email": normalize_email,
            "sms": phone,
            "viber": phone,
        }
        self._ext = mapping.externalCustomerId
        self._names: tuple[tuple[str, str, _Normalizer], ...] = tuple(
            (attr, column, norm)
            for attr, column, norm in (
                ("firstName", mapping.firstName, first_name),
                ("lastName", mapping.lastName, last_name),
            )
            if column is not None
        )
        self._scalars: tuple[tuple[str, str, _Normalizer], ...] = tuple(
            (attr, column, norm)
            for attr, column, norm in (
                ("languageCode", mapping.languageCode, normalize_language_code),
                ("timeZone", mapping.timeZone, normalize_time_zone),
            )
            if column is not None
        )
        self._channels: tuple[tuple[str, str, str, _Normalizer], ...] = tuple(
            (c.type, c.column, f"channels[{c.type}]", channel_normalizers.get(c.type, normalize_text))
            for c in mapping.channels
        )
        address = mapping.address
        self._address: tuple[tuple[str, str, str, _Normalizer], ...] = (
            ()
            if address is None
            else tuple(
                (part, column, f"address.{part}", normalize_country if part == "country" else normalize_text)
                for part, column in address.model_dump().items()
                if column is not None
            )
        )
        self._fields: tuple[tuple[str, str, str], ...] = tuple(
            (name, column, f"fields.{name}") for name, column in mapping.fields.items()
        )
        groups = mapping.groups
        self._groups = None if groups is None else (groups.child, groups.id, groups.name)

    def map(self, view: CustomerView) -> MappingResult:
        """Map one customer (see the module docstring for the rules).

        Returns:
            The contact and the dropped fields; `contact=None` when the customers row is absent;
            `error=UNMATCHABLE` (and no contact) when there is neither an externalCustomerId nor a
            channel.
        """
        row = view.customer
        if row is None:
            return _ABSENT
        dropped: list[DroppedField] = []
        kept: list[str] = []
        data: dict[str, Any] = {}
        get = row.get

        for attr, column, norm in self._names:
            _put(data, dropped, kept, attr, get(column, _MISSING), norm, attr)

        channels: list[dict[str, str]] = []
        for ctype, column, path, norm in self._channels:
            value = _normalized(dropped, kept, get(column, _MISSING), norm, path)
            if value is None:
                continue
            channel = {"type": ctype, "value": value}
            if channel in channels:
                continue  # two columns with the same address: one channel
            if sum(c["type"] == ctype for c in channels) >= _MAX_CHANNELS_PER_TYPE:
                dropped.append(DroppedField(path, "more than 2 channels of this type"))
                continue
            channels.append(channel)
        if channels:
            data["channels"] = channels

        if self._address:
            address: dict[str, str] = {}
            for part, column, path, norm in self._address:
                _put(address, dropped, kept, part, get(column, _MISSING), norm, path)
            if address:
                data["address"] = address

        if self._fields:
            fields = []
            for name, column, path in self._fields:
                raw = get(column, _MISSING)
                if raw is _MISSING:
                    dropped.append(_missing(path))
                    continue
                text = field_text(raw)
                if text is None:
                    if raw == UNCHANGED_MARKER:
                        kept.append(path)
                    continue
                if isinstance(text, Invalid):
                    dropped.append(DroppedField(path, text.reason))
                    continue
                if len(text) > TEXT_FIELD_MAX_LENGTH:
                    dropped.append(DroppedField(path, "longer than 5000 characters"))
                    continue
                fields.append({"name": name, "value": text})
            if fields:
                data["fields"] = fields

        if self._ext is not None:
            _put(
                data,
                dropped,
                kept,
                "externalCustomerId",
                get(self._ext, _MISSING),
                _external_id,
                "externalCustomerId",
            )

        if self._groups is not None:
            groups = _groups(view.children.get(self._groups[0], ()), self._groups, dropped)
            if groups:
                data["groups"] = groups

        for attr, column, norm in self._scalars:
            _put(data, dropped, kept, attr, get(column, _MISSING), norm, attr)

        if "externalCustomerId" not in data and not channels:
            return MappingResult(None, tuple(dropped), UNMATCHABLE)
        try:
            contact = Contact.model_validate(data)
        except ValidationError as exc:  # a normalizer let through what the model refuses: a bug
            raise MappingError(f"mapped contact failed validation ({exc.error_count()} errors)") from None
        # `data` is `contact.to_json()`: the same keys in the same order (the steps above follow
        # the example's order, groups sorted by id), values as validated (unchanged by the model)
        if not kept:
            return MappingResult(contact, tuple(dropped), None, fingerprint_json(data), (), data)
        # the same contact with a field unknown (kept) or known empty (cleared) differs
        fingerprint = fingerprint_json({**data, _KEPT_KEY: kept})
        return MappingResult(contact, tuple(dropped), None, fingerprint, tuple(kept), data)


_KEPT_KEY: Final = "\x00kept"
"""Where the kept fields join the fingerprinted JSON (no contact key starts with NUL)."""


def _normalized(
    dropped: list[DroppedField], kept: list[str], raw: Any, norm: _Normalizer, path: str
) -> str | None:
    if raw is _MISSING:
        dropped.append(_missing(path))
        return None
    text = scalar_text(raw)
    if text is None:
        if raw == UNCHANGED_MARKER:
            kept.append(path)
        return None
    if not isinstance(text, Invalid):
        text = norm(text)
        if not isinstance(text, Invalid):
            return text
    dropped.append(DroppedField(path, text.reason))
    return None


def _put(
    out: dict[str, Any],
    dropped: list[DroppedField],
    kept: list[str],
    key: str,
    raw: Any,
    norm: _Normalizer,
    path: str,
) -> None:
    value = _normalized(dropped, kept, raw, norm, path)
    if value is not None:
        out[key] = value


def _external_id(text: str) -> str | Invalid:
    if text in ("true", "false"):
        return Invalid("a boolean is not an id")
    return text


_BAD_GROUP_ID: Final = DroppedField("groups", "group id is not an integer from 1 to 2147483647")


def _groups(
    rows: Sequence[Mapping[str, Any]], columns: tuple[str, str, str | None], dropped: list[DroppedField]
) -> list[dict[str, Any]]:
    _, id_column, name_column = columns
    by_id: dict[int, str | None] = {}
    for row in rows:
        raw = row.get(id_column)
        group_id = contact_group_id(raw)
        if group_id is None:
            if scalar_text(raw) is not None:  # a null id is no group; anything else is reported
                dropped.append(_BAD_GROUP_ID)
            continue
        name = None
        if name_column is not None:
            text = scalar_text(row.get(name_column))
            name = text if isinstance(text, str) else None
        if group_id in by_id:  # duplicate rows: keep the same name whatever the row order
            other = by_id[group_id]
            if other is not None and (name is None or other <= name):
                continue
        by_id[group_id] = name
    return [
        {"id": group_id, "name": by_id[group_id]} if by_id[group_id] is not None else {"id": group_id}
        for group_id in sorted(by_id)
    ]


_last_mapper: tuple[ContactMapping, ContactMapper] | None = None


def map_contact(view: CustomerView, mapping: ContactMapping) -> MappingResult:
    """Map one customer's rows to a contact with `mapping` (see `ContactMapper.map`).

    The compiled mapper of the last mapping used is cached, so repeated calls with the same
    `ContactMapping` object cost no recompilation.
    """
    global _last_mapper  # a one-entry cache of compiled mappers
    cached = _last_mapper
    if cached is None or cached[0] is not mapping:
        cached = (mapping, ContactMapper(mapping))
        _last_mapper = cached
    return cached[1].map(view)
