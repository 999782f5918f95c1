"""Re-keying (Kafka Streams' repartition pattern): route each decoded source event to its customer.

Debezium keys each table's topic by that table's own primary key, so a customer's row and its child
rows land on unrelated partitions. The merge stage therefore writes every decoded event to an internal
*changes topic* keyed by the customer key, at partition `partition_for(customer_key, n)` — the
connector's own deterministic hash, never librdkafka's or Java's default partitioner — and merges from
that topic. This module is pure: event in, `RoutedChange`s (or a failure reason) out.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import orjson

from connector.config import Settings
from connector.errors import ConfigError
from connector.jsonvalues import UNCHANGED_MARKER, json_row, json_value
from connector.models import ChangeEvent, Op, RecordRef, SourcePosition

__all__ = [
    "CUSTOMERS",
    "HANDOVER",
    "RoutedChange",
    "Router",
    "RoutingFailure",
    "customer_hash",
    "customer_key_of",
    "decode_change",
    "decode_changes",
    "encode_change",
    "encode_changes",
    "partition_for",
]

logger = logging.getLogger(__name__)

CUSTOMERS = "customers"
"""The source name of the customers table; child tables use their configured `name`."""

HANDOVER = "~handover"
"""The source name of a handover change (`connector.projection`): the contact a customer that left
for another key held, passed to that key by the merge stage (no table: child names cannot start with
`~`)."""


def partition_for(customer_key: str, partitions: int) -> int:
    """The changes/state/upserts partition of a customer: blake2b-64 of the key, modulo `partitions`.

    Deterministic across processes, Python versions and client libraries.
    """
    return customer_hash(customer_key) % partitions


_hashes: dict[str, int] = {}
_HASHES_MAX: Final = 1 << 16


def customer_hash(customer_key: str) -> int:
    """blake2b-64 of the key as an unsigned int, remembered for the last customers seen.

    A customer's events come in runs (its child rows, its updates), and hashing costs more than
    the rest of routing an event; the memo is dropped whole when it reaches 65,536 keys (~9 MB).
    """
    value = _hashes.get(customer_key)
    if value is None:
        digest = hashlib.blake2b(customer_key.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        if len(_hashes) >= _HASHES_MAX:
            _hashes.clear()
        _hashes[customer_key] = value
    return value


def customer_key_of(values: Sequence[Any]) -> str:
    """The customer key string: the value itself for one column, a JSON array for several."""
    if len(values) == 1:
        return _key_text(values[0])
    return orjson.dumps([json_value(v) for v in values]).decode()


def _key_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return orjson.dumps(json_value(value)).decode()


class RoutedChange(
    msgspec.Struct,
    frozen=True,
    omit_defaults=True,
    rename={
        "customer_key": "c",
        "source": "s",
        "row_key": "k",
        "op": "o",
        "row": "r",
        "position": "p",
        "ts_ms": "ts",
        "snapshot": "sn",
        "moved": "m",
        "origin": "src",
        "to": "t",
    },
):
    """One change of one row, addressed to one customer: the changes topic's record.

    Serialized by msgspec as a compact JSON object (the short names above; the position as
    `[kind, [parts]]`, the origin as `[topic, partition, offset]`); decoding is typed, in C.

    Attributes:
        customer_key: the customer this row belongs to.
        source: `CUSTOMERS` or the child table's configured name.
        row_key: identity of the row within the customer (its key columns, JSON-encoded).
        op: "upsert", "delete" or "tombstone" (a Kafka tombstone: no position, see merge).
        row: the row's columns as JSON values (after for upserts, before for deletes; may be None).
        position: source-log position, or None.
        ts_ms: source commit time.
        snapshot: from a snapshot (`r`) event.
        moved: the row moved between customers or row keys. On a delete: it left this customer's
            row key for another (Debezium's `__debezium.newkey` header of a primary-key change, or
            an update that changed its customer or key columns). On an upsert: it came from another
            customer (the `__debezium.oldkey` header of a primary-key change, or such an update).
        origin: the source record.
        to: on a `moved` delete, the customer the row left for, when the event names it (a
            primary-key change's `__debezium.newkey`, or the update's new customer); else None
            (and not written).
    """

    customer_key: str
    source: str
    row_key: str
    op: str
    row: Mapping[str, Any] | None
    position: SourcePosition | None
    ts_ms: int | None
    snapshot: bool
    moved: bool
    origin: RecordRef
    to: str | None = None


_encode: Final = msgspec.json.Encoder().encode
_batch_decoder: Final = msgspec.json.Decoder(list[RoutedChange] | RoutedChange)


def encode_change(change: RoutedChange) -> bytes:
    """Serialize one change (compact JSON object)."""
    return _encode(change)


def encode_changes(changes: list[RoutedChange]) -> bytes:
    """Serialize a batch of changes for one changes-topic record (a JSON array).

    The repartition hop batches: one record carries every change routed to one partition in one
    poll round, so the hop costs a fraction of a Kafka message per event.
    """
    return _encode(changes)


def decode_changes(data: bytes) -> list[RoutedChange]:
    """A changes-topic record (a batch, or a single change) -> its changes, in order.

    Records written before positions were encoded as `[kind, [parts]]` (`[kind, part, part]`)
    are read by the slower legacy path.

    Raises:
        ValueError (msgspec.DecodeError included), KeyError, TypeError, IndexError: foreign bytes.
    """
    try:
        decoded = _batch_decoder.decode(data)
    except msgspec.ValidationError:
        return _legacy_changes(data)
    return decoded if type(decoded) is list else [decoded]  # type: ignore[list-item]


def decode_change(data: bytes) -> RoutedChange:
    """Inverse of `encode_change`. Raises like `decode_changes`, or ValueError for a batch."""
    changes = decode_changes(data)
    if len(changes) != 1:
        raise ValueError("expected one change")
    return changes[0]


def _legacy_changes(data: bytes) -> list[RoutedChange]:
    obj = orjson.loads(data)
    if isinstance(obj, list):
        return [_from_legacy(o) for o in obj]
    return [_from_legacy(obj)]


def _from_legacy(obj: Any) -> RoutedChange:
    pos = obj["p"]
    src = obj["src"]
    row = obj["r"]
    if row is not None and not isinstance(row, dict):
        raise TypeError("row is not an object")
    return RoutedChange(
        customer_key=str(obj["c"]),
        source=str(obj["s"]),
        row_key=str(obj["k"]),
        op=str(obj["o"]),
        row=row,
        position=SourcePosition.from_json(pos) if pos is not None else None,
        ts_ms=obj["ts"],
        snapshot=bool(obj["sn"]),
        moved=bool(obj["m"]),
        origin=RecordRef(str(src[0]), int(src[1]), int(src[2])),
    )


@dataclass(frozen=True, slots=True)
class RoutingFailure:
    """An event that names no customer; `reason` holds no record content."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Source:
    name: str
    key: tuple[str, ...]
    customer_key: tuple[str, ...]
    tombstone_deletes: bool = False


class Router:
    """Routes decoded events of the configured source topics to customers."""

    def __init__(self, settings: Settings) -> None:
        src = settings.source
        key = tuple(src.customers.key)
        if len(key) > 1 and src.children:
            raise ConfigError(
                "a child names its customer by one column, so the customers table needs a "
                "one-column key (source.customers.key) when children are configured",
                key="source.children",
            )
        self._by_topic: dict[str, _Source] = {
            src.customers.topic: _Source(CUSTOMERS, key, key, src.customers.tombstone_deletes)
        }
        for child in src.children:
            self._by_topic[child.topic] = _Source(
                child.name, tuple(child.key), (child.customer_key,), child.tombstone_deletes
            )
        self.partitions = settings.state.partitions

    @property
    def topics(self) -> list[str]:
        """The source topics this router knows."""
        return list(self._by_topic)

    def route(self, event: ChangeEvent) -> list[RoutedChange] | RoutingFailure:
        """The changes for `event` (usually one; two when a child row moves between customers).

        Nothing for a child row inserted, or updated, with a null customer column while it belonged to
        no customer (an orphan, e.g. after `ON DELETE SET NULL`); a failure for a row that names no
        customer otherwise (and for an orphan's delete: see `docs/deploy.md`, REPLICA IDENTITY).
        """
        source = self._by_topic.get(event.ref.topic)
        if source is None:
            return RoutingFailure("topic is not a configured source topic")
        if event.tombstone:
            return self._route_tombstone(event, source)
        after = json_row(event.after)
        before = json_row(event.before)
        key = json_row(event.key) or {}
        if event.op in (Op.CREATE, Op.UPDATE, Op.READ):
            if after is None:
                return RoutingFailure(f"{event.op.value} event has no after row")
            new_owner = _lookup(source.customer_key, after, key)
            if new_owner is None:
                # a child row detached from its customer (customer column set to null) leaves it
                detached = self._leaving(event, source, before)
                if detached:
                    return detached
                # an orphan row (ON DELETE SET NULL, a guest order) belongs to no customer: inserted
                # so, or updated while it already was. An update without `before` (REPLICA IDENTITY
                # DEFAULT) may just have left one, which nobody can tell: a failure, as a delete's
                if _orphan(source.customer_key, after) and (
                    event.op is not Op.UPDATE or (before is not None and _orphan(source.customer_key, before))
                ):
                    return []
                return RoutingFailure("customer key column missing or null")
            row_key = _lookup(source.key, after, key)
            if row_key is None:
                return RoutingFailure("row key column missing or null")
            if before is not None and event.op is Op.UPDATE and UNCHANGED_MARKER in after.values():
                after = _fill_unchanged(after, before)
            changes = self._leaving(event, source, before, new_owner, row_key)
            changes.append(
                self._change(
                    event,
                    source,
                    new_owner,
                    row_key,
                    "upsert",
                    after,
                    moved=_moved_in(event, source, new_owner, changes),
                )
            )
            return changes
        if event.op is Op.DELETE:
            row = before or {}
            owner = _lookup(source.customer_key, row, key) or _lookup(source.customer_key, key, {})
            if owner is None:
                # an orphan's delete cannot be told from one under REPLICA IDENTITY DEFAULT, whose
                # `before` has nulls in place of every non-key column: a failure
                return RoutingFailure("customer key column missing or null")
            row_key = _lookup(source.key, key, row) or _lookup(source.key, row, {})
            if row_key is None:
                return RoutingFailure("row key column missing or null")
            return [
                self._change(
                    event,
                    source,
                    owner,
                    row_key,
                    "delete",
                    before,
                    moved=event.new_key is not None,
                    to=_new_owner(event, source),
                )
            ]
        return RoutingFailure(f"op {event.op.value} is not routed")

    def _leaving(
        self,
        event: ChangeEvent,
        source: _Source,
        before: Mapping[str, Any] | None,
        new_owner: list[Any] | None = None,
        row_key: list[Any] | None = None,
    ) -> list[RoutedChange]:
        """The delete on the old owner when an update moves the row away from it.

        Away: to another customer or row key, or (no `new_owner`: the customer column was nulled)
        out of any customer.
        """
        if before is None or event.op is not Op.UPDATE:
            return []
        old_owner = _lookup(source.customer_key, before, {})
        old_row_key = _lookup(source.key, before, {})
        if old_owner is None or old_row_key is None:
            return []
        if new_owner is not None and old_owner == new_owner and old_row_key == row_key:
            return []
        to = customer_key_of(new_owner) if new_owner is not None else None
        return [self._change(event, source, old_owner, old_row_key, "delete", before, moved=True, to=to)]

    def _route_tombstone(self, event: ChangeEvent, source: _Source) -> list[RoutedChange] | RoutingFailure:
        key = json_row(event.key) or {}
        owner = _lookup(source.customer_key, key, {})
        row_key = _lookup(source.key, key, {})
        if owner is None or row_key is None:
            if source.tombstone_deletes:
                # the tombstone is the delete itself: dropping it would keep the row alive
                return RoutingFailure("tombstone key names no customer (delete not routable)")
            return []  # the `d` before it did the delete: nothing to route
        if source.tombstone_deletes:
            # The delete itself (positionless, see merge); a primary-key change's keeps its header.
            moved = event.new_key is not None
            return [
                self._change(
                    event, source, owner, row_key, "delete", None, moved=moved, to=_new_owner(event, source)
                )
            ]
        return [self._change(event, source, owner, row_key, "tombstone", None)]

    def _change(
        self,
        event: ChangeEvent,
        source: _Source,
        owner: list[Any],
        row_key: list[Any],
        op: str,
        row: Mapping[str, Any] | None,
        *,
        moved: bool = False,
        to: str | None = None,
    ) -> RoutedChange:
        return RoutedChange(
            customer_key=customer_key_of(owner),
            source=source.name,
            row_key=orjson.dumps(row_key).decode(),
            op=op,
            row=row,
            position=event.position,
            ts_ms=event.ts_ms,
            snapshot=event.snapshot,
            moved=moved,
            origin=event.ref,
            to=to,
        )


def _new_owner(event: ChangeEvent, source: _Source) -> str | None:
    """The customer a primary-key change's delete leaves for (its `__debezium.newkey`), if named."""
    if event.new_key is None:
        return None
    owner = _lookup(source.customer_key, json_row(event.new_key) or {}, {})
    return customer_key_of(owner) if owner is not None else None


def _moved_in(event: ChangeEvent, source: _Source, owner: list[Any], leaving: list[RoutedChange]) -> bool:
    """Whether an upsert for `owner` brings a row from another customer.

    From a primary-key change's create (its `__debezium.oldkey` header names another customer, or no
    customer: the customer column is not in the key), or from an update that moved the row (the
    delete on the old owner, `leaving`, comes first).
    """
    if leaving:
        return leaving[0].customer_key != customer_key_of(owner)
    if event.old_key is None:
        return False
    old_owner = _lookup(source.customer_key, json_row(event.old_key) or {}, {})
    return old_owner is None or old_owner != owner


def _fill_unchanged(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """`after` with each TOAST-unchanged value taken from `before` where it holds the value.

    With REPLICA IDENTITY FULL `before` carries what the WAL left out of `after`; a row that moves to
    another customer has no earlier copy in the new owner's state to keep it from.
    """
    filled = dict(after)
    for col, value in after.items():
        if value == UNCHANGED_MARKER:
            old = before.get(col)
            # None: not sent (REPLICA IDENTITY USING INDEX fills other columns with null); a real
            # NULL is never TOASTed, so it cannot be the value the WAL left out
            if old is not None and old != UNCHANGED_MARKER:
                filled[col] = old
    return filled


def _orphan(columns: Sequence[str], row: Mapping[str, Any]) -> bool:
    """The row carries its customer column(s), one of them null: a child row of no customer."""
    return all(col in row for col in columns) and any(row[col] is None for col in columns)


def _lookup(
    columns: Sequence[str], primary: Mapping[str, Any], fallback: Mapping[str, Any]
) -> list[Any] | None:
    values = []
    for col in columns:
        value = primary.get(col)
        if value is None:
            value = fallback.get(col)
        if value is None:
            return None
        values.append(value)
    return values
