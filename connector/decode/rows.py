"""Row-level building blocks: struct/array/map converters and the TOAST placeholder in all its forms.

A row converter is built once per schema (or per configured table) and applied to every row; it
mutates the freshly parsed dict in place. A value that cannot be converted raises `ColumnError`, whose
reason names the column and the type, never the value.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any, Final

import orjson

from connector.decode.logical import Converter
from connector.errors import DecodeError
from connector.models import UNCHANGED

__all__ = [
    "DEFAULT_PLACEHOLDER",
    "ColumnError",
    "ToastForms",
    "array_converter",
    "map_converter",
    "placeholder_bytes",
    "struct_converter",
]

logger = logging.getLogger(__name__)

DEFAULT_PLACEHOLDER: Final = "__debezium_unavailable_value"

_HEX_PLACEHOLDER: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+")


def placeholder_bytes(placeholder: str) -> bytes:
    """The bytes Debezium makes of `unavailable.value.placeholder`.

    As `PostgresConnectorConfig.getUnavailableValuePlaceholder` (Debezium 3.6.1): a `hex:` prefix
    means the rest is hex-encoded octets, anything else is the text's bytes (UTF-8).

    Raises:
        ValueError: a `hex:` placeholder without pairs of hex digits after the prefix (Debezium
            reads an odd count out of bounds and a non-hex digit as -1: no placeholder it writes).
    """
    if placeholder.startswith("hex:"):
        digits = placeholder[4:]
        if not _HEX_PLACEHOLDER.fullmatch(digits):
            raise ValueError("a hex: placeholder needs pairs of hex digits after 'hex:'")
        return bytes.fromhex(digits)
    return placeholder.encode("utf-8")


_CONVERSION_ERRORS: Final = (ValueError, TypeError, ArithmeticError, KeyError, AttributeError, IndexError)


class ColumnError(DecodeError):
    """A column value does not fit its declared type; the reason names column and type only."""

    def __init__(self, column: str, type_label: str) -> None:
        # Names come from the schema, which travels with JSON records: keep the reason short.
        super().__init__(f"column {column[:64]!r} is not a valid {type_label[:64]}")
        self.column = column
        self.type_label = type_label


def struct_converter(fields: Sequence[tuple[str, Converter, str]]) -> Converter:
    """Convert the listed fields of a struct in place; other fields are left as they are.

    `fields` holds (field name, converter, type label for error messages). `None` and `UNCHANGED`
    values are never passed to a converter.
    """
    plan = tuple(fields)

    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError("expected a struct")
        for name, conv, label in plan:
            item = value.get(name)
            if item is None or item is UNCHANGED:
                continue
            try:
                value[name] = conv(item)
            except ColumnError:
                raise
            except _CONVERSION_ERRORS as exc:
                raise ColumnError(name, label) from exc
        return value

    return convert


def array_converter(item: Converter) -> Converter:
    """Convert every non-null element of a list."""

    def convert(value: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError("expected an array")
        return [None if v is None else item(v) for v in value]

    return convert


def map_converter(item: Converter) -> Converter:
    """Convert every non-null value of a map (JSON object or Avro map)."""

    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError("expected a map")
        return {k: None if v is None else item(v) for k, v in value.items()}

    return convert


def _java_name_uuid(data: bytes) -> str:
    """Java's `UUID.nameUUIDFromBytes`: MD5, version 3, IETF variant."""
    digest = bytearray(hashlib.md5(data, usedforsecurity=False).digest())
    digest[6] = (digest[6] & 0x0F) | 0x30
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


class ToastForms:
    """Every form Debezium gives the unavailable-value placeholder (spec section 3.3).

    Checked against Debezium 3.6.1's `UnchangedToastedPlaceholder` and `PostgresValueConverter`:
    besides the spec's table, bytea[] arrives as `[placeholder bytes]` (base64 in JSON) and hstore
    in the default `hstore.handling.mode=json` as the JSON text of the placeholder map.

    `substitute(row)` replaces placeholders with `UNCHANGED`. Its pre-check is one C-level pass:
    the row's values against the set of hashable forms (text, base64 text, raw bytes); only a row
    holding a list or map value (arrays, JSON maps) is walked value by value.
    """

    __slots__ = (
        "_b64_list",
        "_bytes",
        "_bytes_list",
        "_dict",
        "_ints",
        "_scalars",
        "_strings",
        "_text_list",
        "_uuid_list",
    )

    def __init__(self, placeholder: str = DEFAULT_PLACEHOLDER) -> None:
        # UnchangedToastedPlaceholder: the bytes, and `new String(bytes)` for text columns (the
        # JVM's default charset: UTF-8 from Java 18, and on Java 17 under a UTF-8 locale)
        raw = placeholder_bytes(placeholder)
        text = raw.decode("utf-8", errors="replace")
        b64 = base64.b64encode(raw).decode("ascii")
        # hstore in hstore.handling.mode=json (the default): the placeholder map as Jackson writes it
        hstore_json = orjson.dumps({text: text}).decode("utf-8")
        self._strings = frozenset({text, b64, hstore_json})
        self._scalars = self._strings | {raw}  # every hashable form: the texts and the raw bytes
        self._bytes = raw
        self._text_list = [text]
        self._b64_list = [b64]  # bytea[] (UNCHANGED_BINARY_ARRAY_TOAST_VALUE) in JSON
        self._bytes_list = [raw]  # ... and in Avro
        self._ints = [b - 256 if b > 127 else b for b in raw]  # Java's (int) of a signed byte
        self._uuid_list = [_java_name_uuid(raw)]
        self._dict = {text: text}

    @property
    def scalars(self) -> frozenset[str | bytes]:
        """Every hashable form: the texts and the raw bytes."""
        return self._scalars

    @property
    def list_forms(self) -> tuple[list[Any], ...]:
        """Every list form (arrays holding the placeholder)."""
        return (self._text_list, self._ints, self._b64_list, self._uuid_list, self._bytes_list)

    @property
    def map_form(self) -> dict[str, str]:
        """The hstore map form."""
        return self._dict

    def in_row(self, row: dict[str, Any]) -> bool:
        """True when some value of `row` is the placeholder, in any form."""
        try:
            return not self._scalars.isdisjoint(row.values())
        except TypeError:  # an unhashable (list or map) value: look at each value
            scalars = self._scalars
            for value in row.values():
                cls = value.__class__
                if cls is list or cls is dict:
                    if self.is_placeholder(value):
                        return True
                elif value in scalars:
                    return True
            return False

    def is_placeholder(self, value: Any) -> bool:
        """True for the placeholder in any of its forms."""
        cls = value.__class__
        if cls is str:
            return value in self._strings
        if cls is bytes:
            return bool(value == self._bytes)
        if cls is list:
            return bool(
                value == self._text_list
                or value == self._ints
                or value == self._b64_list
                or value == self._uuid_list
                or value == self._bytes_list
            )
        if cls is dict:
            return bool(value == self._dict)
        return False

    def substitute(self, row: dict[str, Any]) -> dict[str, Any]:
        """Replace placeholder values of `row` with `UNCHANGED`, in place."""
        if not self.in_row(row):
            return row
        for name, value in row.items():
            if value is not None and self.is_placeholder(value):
                row[name] = UNCHANGED
        return row
