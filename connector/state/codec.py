"""The state topic's record value: `CustomerState` as JSON (the producer compresses it with zstd).

Schema: `schemas/state.schema.json`. `None` (no state) is a Kafka tombstone.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
import orjson

from connector.merge import CustomerState, Inherited, RowState
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


def encode_state(state: CustomerState) -> bytes:
    """Serialize one customer's state (`inh` only when something is inherited)."""
    record = {
        "fmt": STATE_FORMAT_VERSION,
        "key": state.customer_key,
        "customer": _row(state.customer) if state.customer is not None else None,
        "children": {name: {k: _row(r) for k, r in rows.items()} for name, rows in state.children.items()},
        "fingerprint": state.fingerprint,
        "groups": list(state.groups),
        "version": state.version,
        "ext": state.external_id,
    }
    inherited = state.inherited
    if inherited is not None:
        position = inherited.position.as_json() if inherited.position is not None else None
        record["inh"] = {
            "ext": inherited.external_id,
            "groups": list(inherited.groups),
            "p": position,
            "from": inherited.origin,
        }
    return orjson.dumps(record)


class _RowRecord(msgspec.Struct, gc=False):
    """A row as `encode_state` writes it (for the typed fast path of `decode_state`)."""

    v: dict[str, Any] | None = None
    p: list[str | int] | None = None
    d: int | None = None
    r: bool = False


class _InheritedRecord(msgspec.Struct, gc=False, rename={"origin": "from"}):
    """An inherited contact as `encode_state` writes it."""

    ext: str
    groups: list[int]
    p: list[str | int] | None
    origin: str


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
    inh: _InheritedRecord | None = None


_state_decoder: Final = msgspec.json.Decoder(_StateRecord)


def _row_of(record: _RowRecord) -> RowState:
    pos = record.p
    if not pos:
        return RowState(record.v, None, record.d, record.r)
    kind, *parts = pos
    if type(kind) is not str or not all(type(part) is int for part in parts):
        raise _Unusual
    return RowState(record.v, SourcePosition(kind, tuple(parts)), record.d, record.r)  # type: ignore[arg-type]


def _inherited_of(record: _InheritedRecord) -> Inherited:
    return Inherited(record.ext, tuple(record.groups), _position_of(record.p), record.origin)


def _position_of(pos: list[Any] | None) -> SourcePosition | None:
    """A position as written (`[kind, parts...]`), None for none; `_Unusual` for another shape."""
    if not pos:
        return None
    kind, *parts = pos
    if type(kind) is not str or not all(type(part) is int for part in parts):
        raise _Unusual
    return SourcePosition(kind, tuple(parts))


class _Unusual(Exception):
    """A record the typed path does not take as it is: the lenient path reads it."""


def decode_state(data: bytes) -> CustomerState:
    """Inverse of `encode_state`; raises ValueError on bytes of another format or of another shape.

    Records as `encode_state` writes them take a typed path (msgspec, in C: about 2.5 times faster,
    which is most of a restore's time). A record it refuses is read again by the lenient path below,
    which checks the same types field by field in Python and refuses it too, naming the field: both
    accept and refuse the same bytes (a property test checks it), so a restored state is always
    well-typed (row values an object, marker times and versions integers, ...), which the merge
    stage relies on.
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
            _inherited_of(record.inh) if record.inh is not None else None,
        )
    except (msgspec.ValidationError, _Unusual):
        return _decode_lenient(data)


_MISSING: Final = object()
_NONE: Final = type(None)


def _field(
    obj: dict[str, Any], name: str, where: str, kinds: tuple[type, ...], default: Any = _MISSING
) -> Any:
    """`obj[name]` if its type is exactly one of `kinds` (as msgspec checks: a bool is no int)."""
    value = obj.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ValueError(f"{where}.{name}: missing")
        return default
    if type(value) not in kinds:
        raise ValueError(f"{where}.{name}: a {type(value).__name__} is not allowed here")
    return value


def _unrow(obj: Any, where: str) -> RowState:
    if type(obj) is not dict:
        raise ValueError(f"{where}: a {type(obj).__name__} is not a row")
    values = _field(obj, "v", where, (dict, _NONE), None)
    pos = _field(obj, "p", where, (list, _NONE), None)
    deleted_ms = _field(obj, "d", where, (int, _NONE), None)
    read = _field(obj, "r", where, (bool,), False)
    if not pos:
        return RowState(values, None, deleted_ms, read)
    kind, *parts = pos
    if type(kind) is not str or not all(type(part) is int for part in parts):
        raise ValueError(f"{where}.p: not a position (a kind, then integers)")
    return RowState(values, SourcePosition(kind, tuple(parts)), deleted_ms, read)


def _uninherit(obj: dict[str, Any] | None) -> Inherited | None:
    if obj is None:
        return None
    groups = _field(obj, "groups", "$.inh", (list,))
    if not all(type(g) is int for g in groups):
        raise ValueError("$.inh.groups: not a list of integers")
    try:
        position = _position_of(_field(obj, "p", "$.inh", (list, _NONE)))
    except _Unusual:
        raise ValueError("$.inh.p: not a position (a kind, then integers)") from None
    external_id = _field(obj, "ext", "$.inh", (str,))
    return Inherited(external_id, tuple(groups), position, _field(obj, "from", "$.inh", (str,)))


def _decode_lenient(data: bytes) -> CustomerState:
    """The typed path's reading in Python, field by field: what it refuses raises ValueError naming why.

    It parses with msgspec too (untyped), so numbers, strings and repeated keys read as they do there.
    """
    obj = msgspec.json.decode(data)
    if type(obj) is not dict:
        raise ValueError("not a state record of a known format")
    fmt = _field(obj, "fmt", "$", (int,))
    key = _field(obj, "key", "$", (str,))
    customer = _field(obj, "customer", "$", (dict, _NONE), None)
    children = _field(obj, "children", "$", (dict,), {})
    rows: dict[str, dict[str, RowState]] = {}
    for name, by_key in children.items():
        if type(by_key) is not dict:
            raise ValueError(f"$.children.{name}: a {type(by_key).__name__} is not an object")
        rows[name] = {k: _unrow(r, f"$.children.{name}[...]") for k, r in by_key.items()}
    groups = _field(obj, "groups", "$", (list,), [])
    if not all(type(g) is int for g in groups):
        raise ValueError("$.groups: not a list of integers")
    state = CustomerState(
        customer_key=key,
        customer=_unrow(customer, "$.customer") if customer is not None else None,
        children=rows,
        fingerprint=_field(obj, "fingerprint", "$", (str, _NONE), None),
        groups=tuple(groups),
        version=_field(obj, "version", "$", (int,), 0),
        external_id=_field(obj, "ext", "$", (str, _NONE), None),
        inherited=_uninherit(_field(obj, "inh", "$", (dict, _NONE), None)),
    )
    if fmt != STATE_FORMAT_VERSION:
        raise ValueError("not a state record of a known format")
    return state
