"""Domain values shared by the pipeline steps: raw records, change events, positions, failures.

Everything here is a frozen `msgspec.Struct` (or an enum): immutable like a frozen dataclass, hashable
where it matters, free of I/O, and about twenty times cheaper to build than a frozen dataclass (every
consumed record creates several of them, so this is the decode hot path). Row values inside a
`ChangeEvent` are Python values (`date`, `datetime`, `Decimal`, `str`, ...) or the `UNCHANGED` marker;
`connector.jsonvalues` renders them as JSON. Copy with a change: `msgspec.structs.replace`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

__all__ = [
    "SNAPSHOT_READ_KINDS",
    "UNCHANGED",
    "ChangeEvent",
    "CustomerView",
    "DecodeFailure",
    "Op",
    "RawRecord",
    "RecordRef",
    "SourcePosition",
    "Unchanged",
    "older",
    "same_point",
]


class Unchanged:
    """Marker for a column whose value Debezium did not send (unchanged TOAST): keep the old value."""

    __slots__ = ()
    _instance: Unchanged | None = None

    def __new__(cls) -> Unchanged:  # noqa: D102 - a singleton
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()


class Op(enum.StrEnum):
    """Debezium operation codes."""

    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"
    TRUNCATE = "t"
    MESSAGE = "m"


class RecordRef(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """Where a record was read from: enough to find it again, nothing of its content."""

    topic: str
    partition: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


class RawRecord(msgspec.Struct, frozen=True, gc=False):
    """A consumed Kafka record, detached from `confluent_kafka.Message` (which tests cannot build)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None

    @property
    def ref(self) -> RecordRef:
        """The record's topic/partition/offset."""
        return RecordRef(self.topic, self.partition, self.offset)

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, or None."""
        found: bytes | None = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


class SourcePosition(msgspec.Struct, frozen=True, order=True, gc=False, array_like=True):
    """A comparable position in the source database's log, for "is this event older than state?".

    `kind` says which log the numbers come from; positions of different kinds are never compared
    (`comparable_with`). PostgreSQL: `parts = (commit LSN of the previous transaction, LSN of this
    change)` from `source.sequence` (raw `lsn` alone is not monotonic across transactions); without a
    previous commit LSN the first part is 0 for snapshot reads and the change's own LSN for streamed
    changes (merge compares a snapshot row by its LSN alone); an unwrapped record with only `__lsn`
    gives `(0, lsn)` under kind `pg-lsn`. MySQL: `(binlog file number, pos, row)`.
    """

    kind: str
    parts: tuple[int, ...]

    def comparable_with(self, other: SourcePosition) -> bool:
        """True when both positions come from the same kind of log."""
        return self.kind == other.kind

    def as_json(self) -> list[Any]:
        """JSON-ready form: `[kind, part, part, ...]`."""
        return [self.kind, *self.parts]

    @classmethod
    def from_json(cls, value: list[Any]) -> SourcePosition:
        """Inverse of `as_json`."""
        return cls(str(value[0]), tuple(map(int, value[1:])))


SNAPSHOT_READ_KINDS: Final = frozenset({"pg", "pg-lsn"})
"""Position kinds whose snapshot reads are `(0, lsn)`: beside a streamed change only the LSNs compare
(as tuples, a snapshot read would rank below every streamed change)."""


def same_point(position: SourcePosition, other: SourcePosition) -> bool:
    """True when both are one point of one source log (the halves of one split event)."""
    return position.comparable_with(other) and position.parts == other.parts


def older(position: SourcePosition, than: SourcePosition) -> bool:
    """True when `position` is known to come before `than` in one source log.

    PostgreSQL snapshot reads are `(0, snapshot LSN)` (and every `pg-lsn` position is `(0, lsn)`):
    beside one of those only the LSNs are compared. As tuples, a re-snapshot's rows (taken after
    Debezium lost its offsets) would rank below every change streamed before it. The first
    transaction streamed after a snapshot ranks above the read, whatever its LSN.
    """
    if not position.comparable_with(than):
        return False
    a, b = position.parts, than.parts
    if position.kind in SNAPSHOT_READ_KINDS and (a[0] == 0 or b[0] == 0):
        # The first transaction streamed after a snapshot has no previous commit: `(lsn, lsn)`
        # (`decode.position`). Its LSN below a read's, it began before the snapshot point and
        # committed after it: newer than the read (as `merge` ranks it).
        if a[0] == 0 and b[0] == b[-1] != 0 and b[-1] < a[-1]:
            return True
        if b[0] == 0 and a[0] == a[-1] != 0 and a[-1] < b[-1]:
            return False
        return a[-1] < b[-1]
    return position < than


class ChangeEvent(msgspec.Struct, frozen=True):
    """One normalized Debezium change of one row.

    Attributes:
        table: `schema.table` (PostgreSQL) or `db.table` (MySQL).
        op: the operation. A Kafka tombstone is `op=DELETE` with `tombstone=True` and no rows.
        key: the key columns (from the record key; for unwrapped deletes possibly from the row).
        before: the old row, when Debezium sent one.
        after: the new row; values may be `UNCHANGED` (TOAST placeholder).
        position: where in the source log the change happened; None for positionless events
            (incremental snapshot rows, tombstones, unwrapped records without `__lsn`).
        ts_ms: commit time in the source database, ms since the epoch.
        snapshot: True for snapshot (`r`) rows.
        tx_id: the source transaction id, when known.
        tombstone: True for a Kafka tombstone (null value).
        ref: the Kafka record this came from.
        old_key / new_key: from the `__debezium.oldkey` / `__debezium.newkey` headers of a
            primary-key change.
    """

    table: str
    op: Op
    key: Mapping[str, Any]
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    position: SourcePosition | None
    ts_ms: int | None
    ref: RecordRef
    snapshot: bool = False
    tx_id: str | None = None
    tombstone: bool = False
    old_key: Mapping[str, Any] | None = None
    new_key: Mapping[str, Any] | None = None

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The row that describes the entity after this event: `after`, else `before`."""
        return self.after if self.after is not None else self.before


class DecodeFailure(msgspec.Struct, frozen=True):
    """A record that could not be decoded: `reason` is short and free of record content."""

    record: RawRecord
    reason: str
    error_class: str = "DecodeError"
    stage: str = "decode"
    details: Mapping[str, Any] = msgspec.field(default_factory=dict)


class CustomerView(msgspec.Struct, frozen=True):
    """The current rows that make up one customer, as the mapping step sees them.

    Values are JSON values (`connector.jsonvalues`). Deleted rows are absent: `customer` is None when
    the customers row is deleted (or has not arrived yet); `children[name]` lists the live rows of
    child table `name` (config `source.children[].name`), in a deterministic order.
    """

    customer_key: str
    customer: Mapping[str, Any] | None
    children: Mapping[str, Sequence[Mapping[str, Any]]] = msgspec.field(default_factory=dict)
