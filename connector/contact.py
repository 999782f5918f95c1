"""The Yespo contact in the "Add/Update a Contact" example's shape: the mapping step's output.

`Contact` is the schema source of `schemas/contact.schema.json` (`python -m connector.contact --schema`
prints it). `to_json()` is the canonical form carried on the upserts topic; `fingerprint()` hashes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from connector.config.contact import ChannelType

__all__ = [
    "NAME_MAX_LENGTH",
    "TEXT_FIELD_MAX_LENGTH",
    "Address",
    "Channel",
    "Contact",
    "ContactField",
    "Group",
    "contact_json_schema",
    "fingerprint_json",
    "group_id",
]

logger = logging.getLogger(__name__)

NAME_MAX_LENGTH: Final = 40
"""Yespo's limit for `firstName` and `lastName` (spec section 3, "Names")."""

TEXT_FIELD_MAX_LENGTH: Final = 5000
"""Yespo's largest custom-field text (a text area; a text input takes 1000)."""

MAX_GROUP_ID: Final = 2**31 - 1
"""Segment ids are int32 (`GroupDto.id`, the attach/detach path)."""

_INTEGER: Final = re.compile(r"-?[0-9]{1,19}")

_Frozen = ConfigDict(frozen=True, extra="forbid")


def group_id(raw: Any) -> int | None:
    """A Yespo segment id written as a whole number (int, integral float or digits), 1..2^31-1; else None.

    The one reading of a group id, for the mapping (rows -> contact) and the deliver stage (upsert
    records, possibly written by hand). Never `int()` alone: it truncates 5.9 to 5 and reads True as
    1, which names another segment.
    """
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif (isinstance(raw, str) and _INTEGER.fullmatch(raw.strip())) or (
        isinstance(raw, float) and raw.is_integer()
    ):
        value = int(raw)
    else:
        return None
    return value if 0 < value <= MAX_GROUP_ID else None


class Channel(BaseModel):
    """One communication channel: `email` (lower-cased), `sms` (E.164 with `+`), `webPush`, ..."""

    model_config = _Frozen

    type: ChannelType
    value: str = Field(min_length=1)


class Address(BaseModel):
    """The address parts of the example; `country` is an ISO 3166-1 alpha-2 code."""

    model_config = _Frozen

    city: str | None = Field(default=None, min_length=1)
    region: str | None = Field(default=None, min_length=1)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    postalCode: str | None = Field(default=None, min_length=1)
    addressLine: str | None = Field(default=None, min_length=1)


class ContactField(BaseModel):
    """A custom field by name; the value is always a string (dates `YYYY-MM-DD`, booleans `true`)."""

    model_config = _Frozen

    name: str = Field(min_length=1)
    value: str = Field(min_length=1, max_length=TEXT_FIELD_MAX_LENGTH)


class Group(BaseModel):
    """A static segment the contact belongs to."""

    model_config = _Frozen

    id: int
    name: str | None = Field(default=None, min_length=1)


class Contact(BaseModel):
    """A Yespo contact in the "Add/Update" example's shape.

    Absent means "no value": a field that is None (or an empty list) is omitted from `to_json()`, and
    the deliver stage clears it in Yespo (see `docs/mapping.md`). Frozen; build it with
    `model_validate` (or let `connector.mapping` build it from a customer's rows).
    """

    model_config = _Frozen

    firstName: str | None = Field(default=None, min_length=1, max_length=NAME_MAX_LENGTH)
    lastName: str | None = Field(default=None, min_length=1, max_length=NAME_MAX_LENGTH)
    channels: tuple[Channel, ...] = ()
    address: Address | None = None
    fields: tuple[ContactField, ...] = ()
    externalCustomerId: str | None = Field(default=None, min_length=1)
    groups: tuple[Group, ...] = ()
    languageCode: str | None = Field(default=None, min_length=2)
    timeZone: str | None = Field(default=None, min_length=1)

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON form: keys in the example's order, None and empty lists omitted.

        Channels and fields keep their order (the mapping's config order); groups are sorted by id.
        """
        out: dict[str, Any] = {}
        if self.firstName is not None:
            out["firstName"] = self.firstName
        if self.lastName is not None:
            out["lastName"] = self.lastName
        if self.channels:
            out["channels"] = [{"type": c.type, "value": c.value} for c in self.channels]
        if self.address is not None:
            address = {k: v for k, v in self.address.__dict__.items() if v is not None}
            if address:
                out["address"] = address
        if self.fields:
            out["fields"] = [{"name": f.name, "value": f.value} for f in self.fields]
        if self.externalCustomerId is not None:
            out["externalCustomerId"] = self.externalCustomerId
        if self.groups:
            out["groups"] = [
                {"id": g.id, "name": g.name} if g.name is not None else {"id": g.id}
                for g in sorted(self.groups, key=_group_id)
            ]
        if self.languageCode is not None:
            out["languageCode"] = self.languageCode
        if self.timeZone is not None:
            out["timeZone"] = self.timeZone
        return out

    def fingerprint(self) -> str:
        """A stable hash of `to_json()`: equal contacts give equal fingerprints across processes."""
        return fingerprint_json(self.to_json())

    @property
    def group_ids(self) -> tuple[int, ...]:
        """The ids of the contact's groups, sorted."""
        return tuple(sorted(g.id for g in self.groups))


def _group_id(group: Group) -> int:
    return group.id


def fingerprint_json(contact_json: Mapping[str, Any]) -> str:
    """The fingerprint of a contact's JSON form (`Contact.fingerprint` without rebuilding the dict)."""
    data = orjson.dumps(contact_json, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _OmittedNotNull(GenerateJsonSchema):
    """Optional fields are omitted, never null, in `to_json()`: say so in the schema."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", ...) in (None, []):
            json_schema.pop("default")
        return json_schema


def contact_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `Contact.to_json()`, as committed in `schemas/`."""
    schema = Contact.model_json_schema(schema_generator=_OmittedNotNull, mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "contact.schema.json",
        **schema,
    }


def _main(argv: list[str]) -> int:
    if argv != ["--schema"]:
        sys.stderr.write("usage: python -m connector.contact --schema\n")
        return 2
    sys.stdout.write(json.dumps(contact_json_schema(), indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
