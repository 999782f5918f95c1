"""Row-level building blocks: struct/array/map converters and the TOAST placeholder in all its forms.

A row converter is built once per schema (or per configured table) and applied to every row; it
mutates the freshly parsed dict in place. A value that cannot be converted raises `ColumnError`, whose
reason names the column and the type, never the value.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Final

from connector.decode.logical import Converter
from connector.errors import DecodeError
from connector.models import UNCHANGED

__all__ = [
    "DEFAULT_PLACEHOLDER",
    "ColumnError",
    "ToastForms",
    "array_converter",
    "map_converter",
    "struct_converter",
]

logger = logging.getLogger(__name__)

DEFAULT_PLACEHOLDER: Final = "__debezium_unavailable_value"

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


def _zigzag_varints(values: Sequence[int]) -> bytes:
    out = bytearray()
    for v in values:
        n = (v << 1) ^ (v >> 63)
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


class ToastForms:
    """Every form Debezium gives the unavailable-value placeholder (spec section 3.3).

    `maybe_in(raw)` is a cheap substring pre-check on the record bytes (JSON or Avro); only when it
    hits does `substitute(row)` walk the row and replace placeholders with `UNCHANGED`.
    """

    __slots__ = (
        "_avro_markers",
        "_bytes",
        "_dict",
        "_ints",
        "_json_markers",
        "_strings",
        "_text_list",
        "_uuid_list",
    )

    def __init__(self, placeholder: str = DEFAULT_PLACEHOLDER) -> None:
        raw = placeholder.encode("utf-8")
        b64 = base64.b64encode(raw).decode("ascii")
        name_uuid = _java_name_uuid(raw)
        ints = list(raw)
        self._strings = frozenset({placeholder, b64})
        self._bytes = raw
        self._text_list = [placeholder]
        self._ints = ints
        self._uuid_list = [name_uuid]
        self._dict = {placeholder: placeholder}
        json_ints = ",".join(str(i) for i in ints[:8]).encode("ascii")
        uuid_text = name_uuid.encode("ascii")
        self._json_markers = (raw, b64[:24].encode("ascii"), json_ints, uuid_text)
        self._avro_markers = (raw, _zigzag_varints(ints[:8]), uuid_text)

    def maybe_in(self, raw: bytes, *, avro: bool = False, start: int = 0) -> bool:
        """True when record bytes `raw` may hold a placeholder (false positives are fine, misses not).

        JSON and Avro spell the binary and integer-array forms differently; `avro` picks the set.
        `start` skips a prefix that cannot hold row values (the schema of a JSON schema wrapper).
        """
        for marker in self._avro_markers if avro else self._json_markers:
            if raw.find(marker, start) >= 0:
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
            return bool(value == self._text_list or value == self._ints or value == self._uuid_list)
        if cls is dict:
            return bool(value == self._dict)
        return False

    def substitute(self, row: dict[str, Any]) -> dict[str, Any]:
        """Replace placeholder values of `row` with `UNCHANGED`, in place."""
        for name, value in row.items():
            if value is not None and self.is_placeholder(value):
                row[name] = UNCHANGED
        return row
