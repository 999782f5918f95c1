"""JsonConverter input: `{"schema","payload"}` wrappers, Connect JSON schemas -> row converters.

With `schemas.enable=true` every record carries its Connect schema; the converter built from it is
cached by the schema's text, so the schema is interpreted once, not per record. With
`schemas.enable=false` the types come from `source.column_types` (see `DecodeOptions`).
"""

from __future__ import annotations

import decimal
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import orjson

from connector.decode.logical import (
    IDENTITY_NAMES,
    MAX_SCALE,
    Converter,
    DecimalMode,
    ExactFloat,
    InexactNumber,
    logical_converter,
    resolve_alias,
)
from connector.decode.rows import array_converter, map_converter, struct_converter
from connector.errors import DecodeError

__all__ = [
    "JsonDocument",
    "connect_converter",
    "is_text_of",
    "parse_json",
    "payload_offset",
    "plain_numbers",
    "row_converter",
    "row_schema",
    "table_converter",
]

logger = logging.getLogger(__name__)

_CACHE_LIMIT: Final = 512
_MAX_DEPTH: Final = 32
_NO_PLAN: Final = object()
_EXACT_JSON: Final = msgspec.json.Decoder(float_hook=ExactFloat)
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1

JsonDocument = tuple[Any, Converter | None, bool, int]
"""(payload, converter from the embedded schema, whether a schema wrapper was present, payload offset)."""

_row_cache: dict[bytes, Converter | None] = {}
_key_cache: dict[bytes, Converter | None] = {}
_last_row: tuple[bytes, Converter | None] = (b"", None)
_last_key: tuple[bytes, Converter | None] = (b"", None)


def _remember(as_row: bool, key: bytes, conv: Converter | None) -> None:
    global _last_row, _last_key
    if as_row:
        _last_row = (key, conv)
    else:
        _last_key = (key, conv)


def _label(schema: Mapping[str, Any]) -> str:
    name = schema.get("name")
    return str(name) if isinstance(name, str) else str(schema.get("type"))


def connect_converter(schema: Any, depth: int = 0) -> Converter | None:
    """The converter for one Connect JSON schema node, or None when values need no conversion.

    Raises:
        DecodeError: the schema is not a Connect schema.
    """
    if depth > _MAX_DEPTH:
        raise DecodeError("schema is nested too deeply")
    if not isinstance(schema, Mapping):
        raise DecodeError("schema is not a Connect schema")
    name = schema.get("name")
    kind = schema.get("type")
    if isinstance(name, str):
        if name in IDENTITY_NAMES:
            return None
        params = schema.get("parameters")
        try:
            conv = logical_converter(name, params if isinstance(params, Mapping) else {})
        except ValueError as exc:
            raise DecodeError("schema has a Decimal without a valid scale") from exc
        if conv is not None:
            return conv
    if kind == "struct":
        fields = schema.get("fields")
        if not isinstance(fields, list):
            raise DecodeError("schema struct has no fields")
        plan = []
        for field in fields:
            if not isinstance(field, Mapping) or not isinstance(field.get("field"), str):
                raise DecodeError("schema struct field has no name")
            conv = connect_converter(field, depth + 1)
            if conv is not None:
                plan.append((field["field"], conv, _label(field)))
        return struct_converter(plan) if plan else None
    if kind == "array":
        item = connect_converter(schema.get("items"), depth + 1)
        return array_converter(item) if item is not None else None
    if kind == "map":
        values = connect_converter(schema.get("values"), depth + 1)
        return map_converter(values) if values is not None else None
    if kind == "bytes":
        return logical_converter("bytes", {})
    return None


def row_schema(value_schema: Any) -> Any:
    """The schema node of a value's rows: an envelope's `after`/`before` struct, else the value schema."""
    if isinstance(value_schema, Mapping) and value_schema.get("type") == "struct":
        fields = value_schema.get("fields")
        if isinstance(fields, list):
            for field in fields:
                if isinstance(field, Mapping) and field.get("field") in ("after", "before"):
                    if field.get("type") == "struct":
                        return field
                    break
    return value_schema


def row_converter(value_schema: Any) -> Converter | None:
    """Row converter for a value schema: the `after` struct of an envelope, or the flat row itself."""
    return connect_converter(row_schema(value_schema))


def payload_offset(raw: bytes) -> int:
    """Where the payload of a compact `{"schema":{...},"payload":...}` starts (0 when unsure)."""
    if raw.startswith(b'{"schema":{'):
        end = raw.rfind(b',"payload":')
        if end > 0 and raw[end - 1 : end] == b"}":
            return end
    return 0


def parse_json(raw: bytes, *, what: str, as_row: bool, exact: bool = False) -> JsonDocument:
    """Parse one JsonConverter key or value.

    Args:
        raw: the record bytes.
        what: "key" or "value", for the failure reason.
        as_row: build the embedded schema's converter as a value (envelope/row) or as a key struct.
        exact: keep every number exact (the slow re-read after `InexactNumber`): integers of any
            size, other numbers as `ExactFloat`; `plain_numbers` turns what is left back afterwards.

    Returns:
        (payload, converter from the embedded schema or None, whether a schema wrapper was present,
        offset where the payload text starts: 0 when unknown).

    Raises:
        DecodeError: not valid JSON, or an unusable embedded schema.
    """
    try:
        doc = _EXACT_JSON.decode(raw) if exact else orjson.loads(raw)
    except (orjson.JSONDecodeError, msgspec.DecodeError):
        if not exact and _exact_json_ok(raw):
            # valid JSON with a number beyond a double's range (a numeric(1000) column with
            # decimal.format=NUMERIC): the exact re-read keeps it
            raise InexactNumber from None
        raise DecodeError(f"{what} is not valid JSON") from None
    if type(doc) is not dict or len(doc) != 2 or "schema" not in doc or "payload" not in doc:
        return doc, None, False, 0
    schema = doc["schema"]
    if schema is None:
        return doc["payload"], None, True, 0
    # JsonConverter writes compact `{"schema":{...},"payload":...}`: the text before the last
    # `,"payload":` holds the whole schema, so it identifies the schema without re-serializing it.
    start = payload_offset(raw)
    if not start and exact:
        # not JsonConverter's compact text, re-read exactly: the schema may hold `ExactFloat`s and
        # integers beyond 64 bits, which orjson cannot serialize into a cache key. Rare: uncached.
        return doc["payload"], row_converter(schema) if as_row else connect_converter(schema), True, 0
    key = raw[10:start] if start else orjson.dumps(schema)
    # Consecutive records mostly share their schema: comparing with the last one (memcmp) is
    # cheaper than hashing kilobytes of schema text for the dict.
    last = _last_row if as_row else _last_key
    if last[0] == key:
        return doc["payload"], last[1], True, start
    cache = _row_cache if as_row else _key_cache
    conv = cache.get(key, _NO_PLAN)
    if conv is _NO_PLAN:
        conv = row_converter(schema) if as_row else connect_converter(schema)
        if start and not is_text_of(key, schema):
            # a second "schema" member after the payload: orjson kept that one, not the text
            # before `,"payload":`; never cache a converter under another schema's text
            return doc["payload"], conv, True, start
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = conv
    _remember(as_row, key, conv)  # type: ignore[arg-type]
    return doc["payload"], conv, True, start  # type: ignore[return-value]


def is_text_of(text: bytes, schema: Any) -> bool:
    """Whether `text` parses to `schema` (checked once per schema, when it enters the cache)."""
    try:
        return bool(orjson.loads(text) == schema)
    except orjson.JSONDecodeError:
        return False


def plain_numbers(value: Any) -> Any:
    """After an exact re-read: numbers that no Decimal converter took become what orjson gives.

    `ExactFloat` -> `float`, integers beyond 64 bits -> `float`; dicts and lists are changed in place.
    A number beyond a double's range (which orjson refuses) stays exact, as a `Decimal`.

    Raises:
        DecodeError: such a number with an exponent beyond any database's scale.
    """
    cls = type(value)
    if cls is dict:
        for name, item in value.items():
            value[name] = plain_numbers(item)
    elif cls is list:
        value[:] = [plain_numbers(item) for item in value]
    elif cls is ExactFloat or (cls is int and not _INT64_MIN <= value <= _UINT64_MAX):
        return _plain_number(value)
    return value


def _plain_number(value: int | ExactFloat) -> float | decimal.Decimal:
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double's range
        number = math.inf
    if not math.isinf(number):  # JSON has no infinity: this one is a number too big for a double
        return number
    exact = decimal.Decimal(value.text if isinstance(value, ExactFloat) else value)
    exponent = exact.as_tuple().exponent
    if not isinstance(exponent, int) or abs(exponent) > MAX_SCALE:  # beyond: gigabytes of digits
        raise DecodeError("a number beyond a double's range has an exponent out of range")
    return exact


def table_converter(columns: Mapping[str, str], decimal_mode: DecimalMode = "precise") -> Converter | None:
    """Row converter for schemaless JSON from `column -> type name` (`source.column_types`).

    `decimal_mode` is Debezium's `decimal.handling.mode` (`source.decimal_handling_mode`): how the
    Decimal columns read a text (see `logical_converter`).

    Raises:
        DecodeError: an unknown type name or a Decimal without a scale.
    """
    plan = []
    for column, type_name in columns.items():
        name, params = resolve_alias(type_name)
        if name in IDENTITY_NAMES:
            continue
        if name == "org.apache.kafka.connect.data.Decimal" and "scale" not in params:
            raise DecodeError(f"column_types: {column!r} needs a scale (decimal:<scale>)")
        try:
            conv = logical_converter(name, params, decimal_mode=decimal_mode)
        except ValueError:
            raise DecodeError(f"column_types: {column!r} has no valid scale (decimal:<scale>)") from None
        if conv is None:
            raise DecodeError(f"column_types: unknown type {type_name!r} for column {column!r}")
        plan.append((column, conv, name))
    return struct_converter(plan) if plan else None


def _exact_json_ok(raw: bytes) -> bool:
    """True when `raw` is valid JSON for the exact reader (which keeps numbers a double cannot hold)."""
    try:
        _EXACT_JSON.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True
