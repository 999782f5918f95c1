"""The state topic's record value: `CustomerState` as JSON (the producer compresses it with zstd).

Schema: `schemas/state.schema.json`. `None` (no state) is a Kafka tombstone.
"""

from __future__ import annotations

import logging
from typing import Any

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


def decode_state(data: bytes) -> CustomerState:
    """Inverse of `encode_state`; raises ValueError on bytes of another format."""
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
