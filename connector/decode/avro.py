"""Avro in the Confluent wire format: `0x00`, a 4-byte big-endian schema id, Avro binary.

Writer schemas come from a `SchemaLookup` (the registry client). fastavro decodes the binary; the
Debezium logical types it leaves plain (they only carry `connect.name`) are converted by a converter
built once per parsed schema and cached.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

from fastavro import schemaless_reader

from connector.decode.logical import IDENTITY_NAMES, Converter, logical_converter
from connector.decode.rows import array_converter, map_converter, struct_converter
from connector.errors import DecodeError

__all__ = ["MAGIC", "SchemaLookup", "avro_converter", "read_avro", "schema_id_of"]

logger = logging.getLogger(__name__)

MAGIC: Final = 0
_CACHE_LIMIT: Final = 512
_MAX_DEPTH: Final = 32
_READ_ERRORS: Final = (
    EOFError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeDecodeError,
    MemoryError,
)


class SchemaLookup(Protocol):
    """Writer schemas by Confluent schema id (the registry client, or a dict-backed double)."""

    def get(self, schema_id: int) -> Any:
        """The parsed fastavro schema for `schema_id`.

        Raises:
            UnknownSchemaError: the registry does not know the id (the record is poison).
            SchemaRegistryUnavailableError: the registry did not answer (wait and retry).
        """
        ...


# id(parsed schema) -> (parsed schema, (row converter, key-struct converter)); the stored schema keeps
# the id from being reused while the entry lives.
_plans: dict[int, tuple[Any, Converter | None, Converter | None]] = {}


def schema_id_of(raw: bytes, *, what: str) -> int:
    """The schema id of a Confluent-framed key or value.

    Raises:
        DecodeError: not the Confluent wire format (magic byte 0, 4-byte id).
    """
    if len(raw) < 5 or raw[0] != MAGIC:
        raise DecodeError(f"{what} is not in the Confluent Avro wire format")
    return int.from_bytes(raw[1:5], "big")


def avro_converter(schema: Any, named: Mapping[str, Any], depth: int = 0) -> Converter | None:
    """The converter for one (parsed) Avro schema node, or None when fastavro's value is final."""
    if depth > _MAX_DEPTH:
        raise DecodeError("Avro schema is nested too deeply")
    if isinstance(schema, str):
        target = named.get(schema)
        return avro_converter(target, named, depth + 1) if target is not None else None
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return avro_converter(branches[0], named, depth + 1) if len(branches) == 1 else None
    if not isinstance(schema, Mapping):
        return None
    logical = schema.get("logicalType")
    if logical == "uuid":
        return str
    if logical is not None:
        return None  # fastavro converted it already (decimal, date, time-millis, timestamp-millis)
    name = schema.get("connect.name")
    if isinstance(name, str):
        if name in IDENTITY_NAMES:
            return None
        params = schema.get("connect.parameters")
        try:
            conv = logical_converter(name, params if isinstance(params, Mapping) else {})
        except ValueError as exc:
            raise DecodeError("Avro schema has a Decimal without a valid scale") from exc
        if conv is not None:
            return conv
    kind = schema.get("type")
    if kind == "record":
        plan = []
        for field in schema.get("fields", ()):
            conv = avro_converter(field.get("type"), named, depth + 1)
            if conv is not None:
                plan.append((str(field.get("name")), conv, _label(field.get("type"), named)))
        return struct_converter(plan) if plan else None
    if kind == "array":
        item = avro_converter(schema.get("items"), named, depth + 1)
        return array_converter(item) if item is not None else None
    if kind == "map":
        values = avro_converter(schema.get("values"), named, depth + 1)
        return map_converter(values) if values is not None else None
    return None


def _label(schema: Any, named: Mapping[str, Any]) -> str:
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        schema = branches[0] if len(branches) == 1 else "union"
    if isinstance(schema, str):
        schema = named.get(schema, schema)
    if isinstance(schema, Mapping):
        return str(schema.get("connect.name") or schema.get("name") or schema.get("type"))
    return str(schema)


def _row_schema(schema: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(schema, Mapping) and schema.get("type") == "record":
        for field in schema.get("fields", ()):
            if field.get("name") in ("after", "before"):
                return field.get("type")
    return schema


def _plan(schema: Any) -> tuple[Converter | None, Converter | None]:
    entry = _plans.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1], entry[2]
    named = schema.get("__named_schemas", {}) if isinstance(schema, Mapping) else {}
    row = avro_converter(_row_schema(schema, named), named)
    key = avro_converter(schema, named)
    if len(_plans) >= _CACHE_LIMIT:
        _plans.clear()
    _plans[id(schema)] = (schema, row, key)
    return row, key


def read_avro(raw: bytes, lookup: SchemaLookup, *, what: str, as_row: bool) -> tuple[Any, Converter | None]:
    """Decode a Confluent-framed Avro key or value.

    Returns:
        The decoded datum and the converter for it (the row converter when `as_row`, else the
        converter of the whole datum, for keys).

    Raises:
        DecodeError: bad framing, an unknown schema id (`UnknownSchemaError`), or bytes that do not
            match the writer schema.
        SchemaRegistryUnavailableError: the registry did not answer; propagated for the caller.
    """
    schema_id = schema_id_of(raw, what=what)
    schema = lookup.get(schema_id)
    row_conv, key_conv = _plan(schema)
    buffer = io.BytesIO(raw)
    buffer.seek(5)
    try:
        datum = schemaless_reader(buffer, schema, None)
    except _READ_ERRORS:
        raise DecodeError(f"{what} does not match its Avro schema id {schema_id}") from None
    if buffer.tell() != len(raw):
        raise DecodeError(f"{what} has bytes after its Avro datum (schema id {schema_id})")
    return datum, row_conv if as_row else key_conv
