"""Reading the upserts topic: one record's JSON value -> the planner's `PendingRecord`.

The merge stage writes these records; the deliver stage reads them here before planning a batch
(`parse_upsert`) and when it reads a partition's history back (`read_upsert`, which skips what it
cannot read).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from connector.errors import DecodeError
from connector.models import RawRecord, SourcePosition
from connector.sink.batch import PendingRecord, keep_fields_of, segment_id

__all__ = ["parse_upsert", "read_upsert"]

logger = logging.getLogger(__name__)

_Record = PendingRecord[RawRecord]


def _position(source: Any) -> SourcePosition | None:
    """`source.position` of an upserts record (`[kind, part, ...]`), or None when absent or odd."""
    position = source.get("position") if isinstance(source, dict) else None
    if not isinstance(position, list) or len(position) < 2 or not isinstance(position[0], str):
        return None
    if not all(type(part) is int for part in position[1:]):
        return None
    return SourcePosition.from_json(position)


def _inherited_from(value: Mapping[str, Any]) -> str | None:
    """A retiring delete's `inherited_from` (None when absent or not a string)."""
    key = value.get("inherited_from")
    return key if type(key) is str and value.get("retires") is True else None


def _json_type(value: Any) -> str:
    """The JSON type name of a decoded value, for reasons that must not quote the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _blank(value: Any) -> bool:
    """True for an id that addresses no contact: empty or whitespace only (read as absent)."""
    return value is not None and not str(value).strip()


def parse_upsert(raw: RawRecord) -> _Record:
    """An upserts-topic record as the planner needs it.

    The value must be a JSON object with `op` upsert (and a `contact` object) or delete, and a
    `customer_key` (else the record key). A blank (empty or whitespace) `external_customer_id` or
    contact `externalCustomerId` is read as absent, like null: no contact is addressed by it (an
    upsert is then matched on its email or phone, a delete without an id is refused by the
    planner). A value that could not be written again (nested deeper than JSON encoders go) is
    refused too: its request body could never be sent.

    Raises:
        DecodeError: the record cannot be read; `reason` names the field and the type at fault,
            never a value (it goes to the DLQ headers and the audit record).
    """
    if raw.value is None:
        raise DecodeError("value is null (a tombstone)")
    try:
        value: Any = orjson.loads(raw.value)
    except orjson.JSONDecodeError:
        raise DecodeError("value is not valid JSON") from None
    if not isinstance(value, dict):
        raise DecodeError(f"value is {_json_type(value)}, not an object")
    try:
        orjson.dumps(value)  # TypeError when nested too deep (orjson reads 1024 levels, writes 255)
    except TypeError:
        raise DecodeError("value is nested too deep to be sent again") from None
    op = value.get("op")
    if op not in ("upsert", "delete"):
        raise DecodeError(f'op is not "upsert" or "delete" (it is {_json_type(op)})')
    contact = value.get("contact")
    if op == "upsert" and not isinstance(contact, dict):
        raise DecodeError(f"contact of an upsert is {_json_type(contact)}, not an object")
    if isinstance(contact, dict) and _blank(contact.get("externalCustomerId")):
        # sent as it is, "" would ride in a request deduplicated on externalCustomerId with no id
        contact = {k: v for k, v in contact.items() if k != "externalCustomerId"}
    ext = value.get("external_customer_id")
    if isinstance(ext, dict | list):
        raise DecodeError(f"external_customer_id is {_json_type(ext)}, not a string")
    if _blank(ext):
        ext = None
    key = value.get("customer_key")
    if key is None or key == "":
        key = (raw.key or b"").decode("utf-8", "replace")
        if not key:
            raise DecodeError("neither a customer_key nor a record key")
    elif not isinstance(key, str):
        raise DecodeError(f"customer_key is {_json_type(key)}, not a string")
    removed = value.get("groups_removed") or []
    if not isinstance(removed, list):
        raise DecodeError(f"groups_removed is {_json_type(removed)}, not an array")
    groups_removed: list[int] = []
    for i, group in enumerate(removed):
        gid = segment_id(group)  # never int(): it reads 5.9 as 5 and True as 1, another segment
        if gid is None:
            raise DecodeError(f"groups_removed[{i}] is {_json_type(group)}, not a segment id (1..2147483647)")
        groups_removed.append(gid)
    kept = keep_fields_of(value)
    if kept is None:  # unreadable: sent without it, the fields it names would be cleared
        fields = value.get("keep_fields")
        if not isinstance(fields, list):
            raise DecodeError(f"keep_fields is {_json_type(fields)}, not an array of strings")
        i, odd = next((i, f) for i, f in enumerate(fields) if type(f) is not str)
        raise DecodeError(f"keep_fields[{i}] is {_json_type(odd)}, not a string")
    try:
        position = _position(value.get("source"))
    except (ValueError, TypeError):
        position = None
    return PendingRecord(
        customer_key=key,
        ref=raw,
        op=op,
        contact=contact if isinstance(contact, dict) else None,
        external_id=str(ext) if ext is not None else None,
        erase=value.get("erase") is True,
        groups_removed=tuple(groups_removed),
        keep_fields=kept,
        position=position,
        retires=op == "delete" and value.get("retires") is True,
        handover=value.get("handover") is True,
        inherited_from=_inherited_from(value) if op == "delete" else None,
    )


def read_upsert(raw: RawRecord) -> _Record | None:
    """`parse_upsert`, or None when the record cannot be read (the read-back skips it)."""
    try:
        return parse_upsert(raw)
    except DecodeError:
        return None
