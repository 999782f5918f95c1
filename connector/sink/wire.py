"""Wire translation: a contact in the "Add/Update" example shape -> Yespo's official `Contact` JSON.

Pure: address `city/postalCode/addressLine` -> `town/postcode/address` (`region` stays, `country` goes
to a configured custom field or is dropped), custom fields by name -> `{"id", "value": str}`, channel
types lower-cased (`webPush` -> `webpush`), phone numbers digits only, `groups` left out (segments are
set with attach/detach). Also derives the bulk envelope (`contactFields`, `customFieldsIDs`) from config.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import re
import unicodedata
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from connector.config import CONTACT_ZONE, ContactMapping
from connector.errors import MappingError
from connector.sink.fieldtypes import fit_field_value

__all__ = [
    "ADDRESS_KEYS",
    "CHANNEL_CONTACT_FIELD",
    "CHANNEL_TYPES",
    "BulkEnvelope",
    "WireTranslator",
    "dedupe_for",
    "managed_contact_fields",
]

logger = logging.getLogger(__name__)

CHANNEL_TYPES: Final[Mapping[str, str]] = {
    "email": "email",
    "sms": "sms",
    "viber": "viber",
    "webPush": "webpush",
    "webpush": "webpush",
    "mobilePush": "mobilepush",
    "mobilepush": "mobilepush",
    "appInbox": "appinbox",
    "appinbox": "appinbox",
    "widget": "widget",
    "inapp": "inapp",
}
"""Example-shape channel type -> official `Channel.type`. Anything else has no official type."""

_PHONE_TYPES: Final = frozenset({"sms", "viber"})

CHANNEL_CONTACT_FIELD: Final[Mapping[str, str]] = {
    "email": "email",
    "sms": "sms",
    "webpush": "webpush",
    "mobilepush": "mobilepush",
}
"""Official channel types that `contactFields` can name (the others have no entry in its enum)."""

ADDRESS_KEYS: Final[Mapping[str, str]] = {
    "addressLine": "address",
    "city": "town",
    "region": "region",
    "postalCode": "postcode",
}
"""Example-shape address key -> official `Address` key (`country` has none)."""

_HEAD: Final = ("externalCustomerId", "firstName", "lastName")
_TAIL: Final = ("languageCode", "timeZone")
_ADDRESS_ITEMS: Final = tuple(ADDRESS_KEYS.items())
_CHANNEL_EXTRAS: Final = ("device", "webPushSubscription")


def managed_contact_fields(mapping: ContactMapping) -> tuple[str, ...]:
    """The bulk `contactFields`: exactly the standard fields the connector's mapping writes.

    Listed fields that a contact does not carry are cleared by Yespo; unlisted fields are untouched.
    """
    fields: list[str] = []
    if mapping.externalCustomerId is not None:
        fields.append("externalCustomerId")
    if mapping.firstName is not None:
        fields.append("firstName")
    if mapping.lastName is not None:
        fields.append("lastName")
    for channel in mapping.channels:
        name = CHANNEL_CONTACT_FIELD.get(CHANNEL_TYPES.get(channel.type, ""))
        if name is not None and name not in fields:
            fields.append(name)
    if mapping.address is not None:
        for key, official in ADDRESS_KEYS.items():
            if getattr(mapping.address, key) is not None:
                fields.append(official)
    if mapping.languageCode is not None:
        fields.append("languageCode")
    if mapping.timeZone is not None:
        fields.append("timeZone")
    return tuple(fields)


def _text(value: Any) -> str | None:
    if type(value) is str:  # the common case first: mapped contacts hold strings
        return value if value != "" else None
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    return text if text != "" else None


_NON_DIGITS = re.compile(r"[^0-9]+")


def _digits_only(value: str) -> str:
    """`value` with everything but digits removed (sms values: Yespo wants ASCII digits only).

    Digits of other scripts (Arabic-Indic 380) become ASCII digits, which regex `[0-9]` alone would drop.
    """
    if value.isascii():
        if value.isdigit():
            return value
        if value[:1] == "+" and (rest := value[1:]).isdigit():  # E.164, as the mapping writes it
            return rest
        return _NON_DIGITS.sub("", value)
    return "".join(str(unicodedata.decimal(ch)) for ch in value if ch.isdecimal())


def _seen(channels: list[dict[str, Any]], ctype: str, value: str) -> bool:
    for wire in channels:  # noqa: SIM110 - a loop: any() would build a generator per channel
        if wire["value"] == value and wire["type"] == ctype:
            return True
    return False


def _has_field(fields: list[dict[str, Any]], field_id: int) -> bool:
    for field in fields:  # noqa: SIM110 - a loop: any() would build a generator per contact
        if field["id"] == field_id:
            return True
    return False


_TIMED_KINDS: Final = frozenset({"DATE", "DATETIME"})


@functools.lru_cache(maxsize=1024)
def _zone_named(name: str) -> dt.tzinfo | None:
    """The IANA zone `name`, or None when there is none of that name."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # malformed, unknown (ZoneInfoNotFoundError), a directory
        return None


@dataclass(frozen=True, slots=True)
class WireTranslator:
    """Translate example-shape contacts with resolved custom-field ids.

    Attributes:
        field_ids: custom-field name -> Yespo id (every name the mapping can emit).
        country_field_id: the custom field that receives `address.country`; None drops the country.
        field_types: Yespo id -> catalog type (DATE, NUMBER, ...): each value is fitted to its type
            (`connector.sink.fieldtypes`), one that cannot fit is left out and reported once per
            field and reason (a warning naming the field, never the value).
        datetime_zone: the time zone a timestamp is written in for a DATETIME or DATE field
            (`yespo.datetime_zone`): "contact" for the contact's own `timeZone` (UTC when it has
            none, or one Python does not know), else an IANA zone name.
    """

    field_ids: Mapping[str, int]
    country_field_id: int | None = None
    field_types: Mapping[int, str] = dataclasses.field(default_factory=dict)
    datetime_zone: str = CONTACT_ZONE
    _reported: set[tuple[int, str]] = dataclasses.field(default_factory=set, repr=False, compare=False)

    def contact(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """One contact in the official `Contact` shape (keys with no value are left out).

        Raises:
            MappingError: the contact is not a mapping, or names a custom field without an id.
        """
        # The hot path of bulk delivery: exact-type checks first (contacts arrive as JSON dicts and
        # strings), the general conversions (`_text`, ABC checks) only for anything else.
        if type(contact) is not dict and not isinstance(contact, Mapping):
            raise MappingError("contact is not a JSON object")
        get = contact.get
        out: dict[str, Any] = {}
        for key in _HEAD:
            value = get(key)
            if value is not None and (text := value if type(value) is str else _text(value)):
                out[key] = text
        out["channels"] = self._channels(get("channels"))
        fields = self._fields(get("fields"), get("timeZone"))
        address = get("address")
        if address is not None and (type(address) is dict or isinstance(address, Mapping)):
            wire_address: dict[str, str] = {}
            for key, official in _ADDRESS_ITEMS:
                value = address.get(key)
                if value is not None and (text := value if type(value) is str else _text(value)):
                    wire_address[official] = text
            if wire_address:
                out["address"] = wire_address
            country = _text(address.get("country"))
            country_id = self.country_field_id
            if country is not None and country_id is not None:
                if fields and _has_field(fields, country_id):  # the address's country wins
                    fields = [f for f in fields if f["id"] != country_id]
                fields.append({"id": country_id, "value": country})
        if fields:
            out["fields"] = fields
        for key in _TAIL:
            value = get(key)
            if value is not None and (text := value if type(value) is str else _text(value)):
                out[key] = text
        return out

    def _channels(self, channels: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not isinstance(channels, list):
            return out
        for channel in channels:
            if type(channel) is not dict and not isinstance(channel, Mapping):
                continue
            raw_type = channel.get("type")
            ctype = CHANNEL_TYPES.get(raw_type if type(raw_type) is str else str(raw_type))
            if ctype is None:
                raise MappingError(f"channel type {raw_type!r} has no official type")
            value = channel.get("value")
            if value is None or not (value := value if type(value) is str else _text(value)):
                continue
            if ctype in _PHONE_TYPES and not (value := _digits_only(value)):
                continue
            if out and _seen(out, ctype, value):
                continue  # a duplicate (e.g. the same number written two ways)
            wire: dict[str, Any] = {"type": ctype, "value": value}
            if len(channel) > 2:  # more than type and value: look for the extras
                for extra in _CHANNEL_EXTRAS:
                    found = channel.get(extra)
                    if found is not None and isinstance(found, Mapping):
                        wire[extra] = dict(found)
            out.append(wire)
        return out

    def kept_fields(self, paths: Iterable[str]) -> tuple[frozenset[str], frozenset[int]]:
        """The `contactFields` names and custom-field ids that `keep_fields` paths stand for.

        `firstName`, `lastName`, `externalCustomerId`, `languageCode`, `timeZone` name themselves;
        `channels[<type>]` its official channel field (every channel of that type is then left as it
        is; types `contactFields` cannot name have none); `address.<part>` its official key, and
        `address.country` the country field; `fields.<name>` that custom field's id. Paths that name
        nothing the connector writes are ignored.
        """
        names: set[str] = set()
        ids: set[int] = set()
        for path in paths:
            if path in _HEAD or path in _TAIL:
                names.add(path)
            elif path.startswith("channels[") and path.endswith("]"):
                official = CHANNEL_CONTACT_FIELD.get(CHANNEL_TYPES.get(path[9:-1], ""))
                if official is not None:
                    names.add(official)
            elif path.startswith("address."):
                part = path[8:]
                if part in ADDRESS_KEYS:
                    names.add(ADDRESS_KEYS[part])
                elif part == "country" and self.country_field_id is not None:
                    ids.add(self.country_field_id)
            elif path.startswith("fields."):
                field_id = self.field_ids.get(path[7:])
                if field_id is not None:
                    ids.add(field_id)
        return frozenset(names), frozenset(ids)

    def _zone(self, contact_zone: Any) -> dt.tzinfo:
        name = contact_zone if self.datetime_zone == CONTACT_ZONE else self.datetime_zone
        return (_zone_named(name) if type(name) is str and name else None) or dt.UTC

    def _fields(self, fields: Any, contact_zone: Any = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not isinstance(fields, list):
            return out
        ids = self.field_ids
        for field in fields:
            if type(field) is not dict and not isinstance(field, Mapping):
                continue
            name = field.get("name")
            if name is None and isinstance(field.get("id"), int):
                fid: int = field["id"]  # already official
            else:
                found = ids.get(name if type(name) is str else str(name))
                if found is None:
                    raise MappingError(f"custom field {name!r} has no Yespo field id")
                fid = found
            value = field.get("value")
            if value is not None and (text := value if type(value) is str else _text(value)):
                kind = self.field_types.get(fid) if self.field_types else None
                if kind is not None:
                    if kind in _TIMED_KINDS:
                        fitted, reason = fit_field_value(kind, text, self._zone(contact_zone))
                    else:
                        fitted, reason = fit_field_value(kind, text)
                    if fitted is None:
                        self._report(fid, name, reason or "")
                        continue
                    text = fitted
                out.append({"id": fid, "value": text})
        return out

    def _report(self, fid: int, name: Any, reason: str) -> None:
        if (fid, reason) not in self._reported:
            self._reported.add((fid, reason))
            logger.warning(
                "custom-field value does not fit its Yespo field type and is left out",
                extra={"field": str(name) if name is not None else str(fid), "reason": reason},
            )


@dataclass(frozen=True, slots=True)
class BulkEnvelope:
    """The fixed part of every `POST /api/v1/contacts` body the connector sends.

    Attributes:
        contact_fields: `contactFields`, from `managed_contact_fields`.
        custom_field_ids: `customFieldsIDs`, the ids of every managed custom field.
        dedupe_on: `dedupeOn`. Yespo looks a contact that carries an externalCustomerId up by it and
            ignores `dedupeOn` (rule 1 of yespo-contacts-api.md §6); only for contacts without one
            does it say what to match on: see `dedupe_for`.
    """

    contact_fields: tuple[str, ...]
    custom_field_ids: tuple[int, ...]
    dedupe_on: str = "externalCustomerId"

    def keeping(self, names: frozenset[str], ids: frozenset[int]) -> BulkEnvelope:
        """This envelope without the standard fields `names` and custom fields `ids` (Yespo keeps them)."""
        if not names and not ids:
            return self
        return BulkEnvelope(
            tuple(f for f in self.contact_fields if f not in names),
            tuple(i for i in self.custom_field_ids if i not in ids),
            self.dedupe_on,
        )

    def deduping_on(self, dedupe_on: str) -> BulkEnvelope:
        """This envelope with `dedupeOn` = `dedupe_on`.

        Matched on a channel, the contacts carry no externalCustomerId: listed in `contactFields`,
        it would clear the id of the Yespo contact they matched (listed but absent means cleared), so
        it is left out.
        """
        if dedupe_on == self.dedupe_on:
            return self
        fields = self.contact_fields
        if dedupe_on != "externalCustomerId":
            fields = tuple(f for f in fields if f != "externalCustomerId")
        return BulkEnvelope(fields, self.custom_field_ids, dedupe_on)

    def body(self, contacts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The bulk request body for already-translated `contacts`."""
        return {
            "contacts": list(contacts),
            "dedupeOn": self.dedupe_on,
            "contactFields": list(self.contact_fields),
            "customFieldsIDs": list(self.custom_field_ids),
            "restoreDeleted": True,
        }


def dedupe_for(wire: Mapping[str, Any]) -> str:
    """The `dedupeOn` a translated contact needs: how Yespo is to find the contact it updates.

    A contact with an externalCustomerId is found by it whatever `dedupeOn` says (rule 1). For one
    without, Yespo matches on the media channel `dedupeOn` names (rule 2): its email, else its phone.
    `dedupeOn: "externalCustomerId"` names no channel, and what Yespo does with such a contact is not
    documented. A contact with neither an id nor an email or phone keeps it (nothing documented
    matches it: each write may create a new Yespo contact; README, "What the deliver stage
    guarantees").
    """
    if wire.get("externalCustomerId") is not None:
        return "externalCustomerId"
    types = {c.get("type") for c in wire.get("channels") or () if isinstance(c, Mapping) and c.get("value")}
    if "email" in types:
        return "email"
    if "sms" in types:
        return "sms"
    return "externalCustomerId"
