"""Render decoded column values as JSON values, the one place that decides their text form.

Dates become `YYYY-MM-DD`, timestamps ISO 8601 in UTC (`...Z`), decimals strings, bytes base64,
UUIDs strings, and the TOAST `UNCHANGED` marker the string `UNCHANGED_MARKER`. The state topic, the
changes topic, `decode` output and the mapping all see values in this form.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from connector.models import UNCHANGED, Unchanged

__all__ = ["UNCHANGED_MARKER", "from_json_value", "json_row", "json_value"]

UNCHANGED_MARKER: Final = "__debezium_unavailable_value"
"""How an unchanged (TOAST) value is written in JSON: Debezium's own placeholder text."""


def json_value(value: Any) -> Any:
    """One decoded value as a JSON value (see the module docstring)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Unchanged):
        return UNCHANGED_MARKER
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        text = value.astimezone(dt.UTC).isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


_NATIVE = frozenset({str, int, float, bool, type(None)})

_native_json_row: Callable[[dict[str, Any], Callable[[Any], Any]], dict[str, Any]] | None
try:  # the same loop in C (connector/decode/_speedups.c), when the extension is built
    from connector.decode._speedups import json_row as _native_json_row
except ImportError:  # pragma: no cover - a source checkout without the build step
    _native_json_row = None


def json_row(row: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A whole row as JSON values (None stays None).

    A row whose values are all JSON-native already (the common schemaless case) is returned as it is,
    not copied: rows are never mutated after decoding.
    """
    if row is None:
        return None
    if _native_json_row is not None and type(row) is dict:
        return _native_json_row(row, json_value)
    return _json_row(row)


def _json_row(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """`json_row` in Python (any Mapping)."""
    native = _NATIVE
    for v in row.values():
        if type(v) not in native:
            return {k: json_value(v) for k, v in row.items()}
    return row


def from_json_value(value: Any) -> Any:
    """Inverse for the only value whose meaning changes: the unchanged marker back to `UNCHANGED`."""
    if value == UNCHANGED_MARKER:
        return UNCHANGED
    return value
