"""Avro in the Confluent wire format: `0x00`, a 4-byte big-endian schema id, Avro binary.

Writer schemas come from a `SchemaLookup` (the registry client). fastavro decodes the binary; the
Debezium logical types it leaves plain (they only carry `connect.name`) are converted by a converter
built once per parsed schema and cached.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Mapping
from typing import Any, Final, Protocol

from fastavro import parse_schema, schemaless_reader

from connector.decode.logical import IDENTITY_NAMES, Converter, logical_converter
from connector.decode.rows import array_converter, map_converter, struct_converter
from connector.errors import DecodeError

__all__ = ["MAGIC", "SchemaLookup", "avro_converter", "read_avro", "schema_id_of"]

logger = logging.getLogger(__name__)

MAGIC: Final = 0
_DECIMAL: Final = "org.apache.kafka.connect.data.Decimal"
_PARSED_MARKS: Final = frozenset({"__fastavro_parsed", "__named_schemas"})
# Avro time logical types -> the Connect/Debezium type of the same wire value (what JSON reads)
_TIME_LOGICALS: Final = {
    "timestamp-millis": "org.apache.kafka.connect.data.Timestamp",
    "timestamp-micros": "io.debezium.time.MicroTimestamp",
    "time-millis": "org.apache.kafka.connect.data.Time",
    "time-micros": "io.debezium.time.MicroTime",
}
_PLAIN_LOGICALS: Final = frozenset({"decimal", "date", *_TIME_LOGICALS})
"""Logical types read as their plain Avro type and converted here (see `_plain_logicals`)."""
_F32: Final = struct.Struct("<f")
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


# id(parsed schema) -> (parsed schema, schema to read with, row converter, key-struct converter); the
# stored schema keeps the id from being reused while the entry lives.
_plans: dict[int, tuple[Any, Any, Converter | None, Converter | None]] = {}


def schema_id_of(raw: bytes, *, what: str) -> int:
    """The schema id of a Confluent-framed key or value.

    Raises:
        DecodeError: not the Confluent wire format (magic byte 0, 4-byte id).
    """
    if len(raw) < 5 or raw[0] != MAGIC:
        raise DecodeError(f"{what} is not in the Confluent Avro wire format")
    return int.from_bytes(raw[1:5], "big")


def avro_converter(
    schema: Any, named: Mapping[str, Any], depth: int = 0, *, keep_logicals: bool = False
) -> Converter | None:
    """The converter for one (parsed) Avro schema node, or None when fastavro's value is final.

    Decimals are expected as bytes, dates, timestamps and times as numbers (see `_plain_logicals`)
    unless `keep_logicals`: then fastavro made them `Decimal`s, `date`s, `datetime`s and `time`s already.
    """
    if depth > _MAX_DEPTH:
        raise DecodeError("Avro schema is nested too deeply")

    def sub(node: Any) -> Converter | None:
        return avro_converter(node, named, depth + 1, keep_logicals=keep_logicals)

    if isinstance(schema, str):
        if schema == "float":
            return _float32
        target = named.get(schema)
        return sub(target) if target is not None else None
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return sub(branches[0]) if len(branches) == 1 else None
    if not isinstance(schema, Mapping):
        return None
    logical = schema.get("logicalType")
    if logical == "decimal" and not keep_logicals:  # read as bytes: fastavro rounds to `precision`
        try:
            return logical_converter(_DECIMAL, {"scale": schema.get("scale", 0)})
        except ValueError as exc:
            raise DecodeError("Avro schema has a decimal without a valid scale") from exc
    if logical == "date" and not keep_logicals:  # read as an int: fastavro fails on `date 'infinity'`
        return logical_converter("org.apache.kafka.connect.data.Date", {})
    if logical in _TIME_LOGICALS and not keep_logicals:  # read as numbers: fastavro fails on infinity, 24:00
        return logical_converter(_TIME_LOGICALS[logical], {})
    if logical == "uuid":
        return str
    if logical is not None:
        return None  # fastavro converted it already (or, `keep_logicals`, fails on what it cannot)
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
    if kind == "float":
        return _float32
    if kind == "record":
        plan = []
        for field in schema.get("fields", ()):
            conv = sub(field.get("type"))
            if conv is not None:
                plan.append((str(field.get("name")), conv, _label(field.get("type"), named)))
        return struct_converter(plan) if plan else None
    if kind == "array":
        item = sub(schema.get("items"))
        return array_converter(item) if item is not None else None
    if kind == "map":
        values = sub(schema.get("values"))
        return map_converter(values) if values is not None else None
    return None


def _float32(value: Any) -> float:
    """An Avro `float` as the shortest decimal that is the same float32 (what JsonConverter writes).

    fastavro widens the float32 to a double: PostgreSQL `real` 1.1 would read 1.100000023841858.
    """
    if type(value) is not float:
        raise TypeError("expected a float")
    packed = _F32.pack(value)
    for digits in (6, 7, 8):
        candidate = float(f"{value:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return float(f"{value:.9g}") if value == value else value  # 9 digits always round-trip


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
    """An envelope's row schema (its `after`/`before` record), or `schema` itself (an unwrapped row).

    An unwrapped row's own column may be named `after`: only a record is a row (as
    `jsonconv.row_schema` checks for a struct).
    """
    if isinstance(schema, Mapping) and schema.get("type") == "record":
        for field in schema.get("fields", ()):
            if field.get("name") in ("after", "before") and _is_record(field.get("type"), named):
                return field.get("type")
    return schema


def _is_record(schema: Any, named: Mapping[str, Any]) -> bool:
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return len(branches) == 1 and _is_record(branches[0], named)
    if isinstance(schema, str):
        schema = named.get(schema)
    return isinstance(schema, Mapping) and schema.get("type") == "record"


def _without_plain_logicals(node: Any) -> tuple[Any, bool]:
    """A copy of a parsed schema node without its `_PLAIN_LOGICALS`, and whether it had one."""
    if isinstance(node, list):
        items = [_without_plain_logicals(item) for item in node]
        return [item for item, _ in items], any(found for _, found in items)
    if not isinstance(node, Mapping):
        return node, False
    copy: dict[str, Any] = {}
    found = own = node.get("logicalType") in _PLAIN_LOGICALS
    for name, value in node.items():
        if name in _PARSED_MARKS or (own and name == "logicalType"):
            continue
        copy[name], inner = _without_plain_logicals(value)
        found = found or inner
    return copy, found


def _plain_logicals(schema: Any) -> Any:
    """The schema to read with: decimals as bytes (scaled exactly), dates/timestamps/times as numbers.

    fastavro turns decimal bytes into a `Decimal` rounded to the schema's `precision`, in a context
    shared by all threads, and a day count or timestamp beyond year 9999 (PostgreSQL's `infinity`)
    or a time of 24:00:00 into an error; the binary layout is the same either way. The converters
    are the JSON path's (`logical`), so both read the same values alike.
    """
    plain, found = _without_plain_logicals(schema)
    if not found:
        return schema
    try:
        return parse_schema(plain)
    except Exception:  # a schema fastavro parsed once: keep its own reading then
        logger.warning("could not re-parse an Avro schema without its decimal/date/time logical types")
        return None


def _plan(schema: Any) -> tuple[Any, Converter | None, Converter | None]:
    entry = _plans.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1], entry[2], entry[3]
    named = schema.get("__named_schemas", {}) if isinstance(schema, Mapping) else {}
    read_schema = _plain_logicals(schema)
    if read_schema is None:  # fastavro's decimals then: they need no converter
        read_schema = schema
        row = avro_converter(_row_schema(schema, named), named, keep_logicals=True)
        key = avro_converter(schema, named, keep_logicals=True)
    else:
        row = avro_converter(_row_schema(schema, named), named)
        key = avro_converter(schema, named)
    if len(_plans) >= _CACHE_LIMIT:
        _plans.clear()
    _plans[id(schema)] = (schema, read_schema, row, key)
    return read_schema, row, key


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
    read_schema, row_conv, key_conv = _plan(schema)
    buffer = io.BytesIO(raw)
    buffer.seek(5)
    try:
        datum = schemaless_reader(buffer, read_schema, None)
    except _READ_ERRORS:
        raise DecodeError(f"{what} does not match its Avro schema id {schema_id}") from None
    if buffer.tell() != len(raw):
        raise DecodeError(f"{what} has bytes after its Avro datum (schema id {schema_id})")
    return datum, row_conv if as_row else key_conv
