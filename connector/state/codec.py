"""The state topic's record value: `CustomerState` as JSON (the producer compresses it with zstd).

Schema: `schemas/state.schema.json`. `None` (no state) is a Kafka tombstone.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
import orjson

from connector.merge import CustomerState, RowState
from connector.models import SourcePosition

__all__ = ["STATE_FORMAT_VERSION", "decode_state", "encode_state"]

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1


def _row(row: RowState) -> dict[str, Any]:
    out: dict[str, Any] = {"v": row.values, "p": row.position.as_json() if row.position else None}
    if row.deleted_ms is not None:
        out["d"] = row.deleted_ms
    if row.read:
        out["r"] = True
    return out


def _unrow(obj: dict[str, Any]) -> RowState:
    pos = obj.get("p")
    return RowState(
        obj.get("v"), SourcePosition.from_json(pos) if pos else None, obj.get("d"), obj.get("r") is True
    )


def encode_state(state: CustomerState) -> bytes:
    """Serialize one customer's state."""
    return orjson.dumps(
        {
            "fmt": STATE_FORMAT_VERSION,
            "key": state.customer_key,
            "customer": _row(state.customer) if state.customer is not None else None,
            "children": {
                name: {k: _row(r) for k, r in rows.items()} for name, rows in state.children.items()
            },
            "fingerprint": state.fingerprint,
            "groups": list(state.groups),
            "version": state.version,
            "ext": state.external_id,
        }
    )


class _RowRecord(msgspec.Struct, gc=False):
    """A row as `encode_state` writes it (for the typed fast path of `decode_state`)."""

    v: dict[str, Any] | None = None
    p: list[str | int] | None = None
    d: int | None = None
    r: bool = False


class _StateRecord(msgspec.Struct, gc=False):
    """A state record as `encode_state` writes it."""

    fmt: int
    key: str
    customer: _RowRecord | None = None
    children: dict[str, dict[str, _RowRecord]] = {}
    fingerprint: str | None = None
    groups: list[int] = []
    version: int = 0
    ext: str | None = None


_state_decoder: Final = msgspec.json.Decoder(_StateRecord)


def _row_of(record: _RowRecord) -> RowState:
    pos = record.p
    if not pos:
        return RowState(record.v, None, record.d, record.r)
    kind, *parts = pos
    if type(kind) is not str or not all(type(part) is int for part in parts):
        raise _Unusual
    return RowState(record.v, SourcePosition(kind, tuple(parts)), record.d, record.r)  # type: ignore[arg-type]


class _Unusual(Exception):
    """A record the typed path does not take as it is: the lenient path reads it."""


def decode_state(data: bytes) -> CustomerState:
    """Inverse of `encode_state`; raises ValueError on bytes of another format.

    Records as `encode_state` writes them take a typed path (msgspec, in C: about 2.5 times faster,
    which is most of a restore's time); anything else is read by the lenient path below, so both
    accept and refuse the same bytes.
    """
    try:
        record = _state_decoder.decode(data)
        if record.fmt != STATE_FORMAT_VERSION:
            raise ValueError("not a state record of a known format")
        customer = record.customer
        return CustomerState(
            record.key,
            _row_of(customer) if customer is not None else None,
            {name: {k: _row_of(r) for k, r in rows.items()} for name, rows in record.children.items()},
            record.fingerprint,
            tuple(record.groups),
            record.version,
            record.ext,
        )
    except (msgspec.ValidationError, _Unusual):
        return _decode_lenient(data)


def _decode_lenient(data: bytes) -> CustomerState:
    obj = orjson.loads(data)
    if not isinstance(obj, dict) or obj.get("fmt") != STATE_FORMAT_VERSION:
        raise ValueError("not a state record of a known format")
    customer = obj.get("customer")
    children = obj.get("children") or {}
    return CustomerState(
        customer_key=str(obj["key"]),
        customer=_unrow(customer) if customer is not None else None,
        children={name: {k: _unrow(r) for k, r in rows.items()} for name, rows in children.items()},
        fingerprint=obj.get("fingerprint"),
        groups=tuple(int(g) for g in obj.get("groups") or ()),
        version=int(obj.get("version") or 0),
        external_id=obj.get("ext"),
    )
