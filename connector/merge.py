"""Fold one routed change into a customer's state: pure, the state is passed in and returned.

A customer's state is the set of current rows that make it up (the customers row and child rows),
each with the source position it was last changed at. Deriving the contact from current rows makes the
result independent of how the customers and child topics interleave. Rules:

- An event at or before the row's applied position is skipped (Debezium replays at-least-once).
- A delete leaves a marker with its position so a stale replay cannot resurrect the row; markers
  expire after `delete_marker_ttl_hours` (`expire_markers`), after which the key can be tombstoned.
- Snapshot rows (and other positionless events) apply as upserts. Over a positioned row they keep
  its position and mark the row `read`: a replayed suffix of the topic (Debezium replays
  at-least-once) then re-applies the upserts up to that position, the last one ending the replay,
  and skips the deletes among them. Keeping the position alone made those replayed upserts stale
  and the read's older values won; dropping it let replayed deletes (and tombstones) delete the
  row on the way, and every such delete reaches Yespo. The cost: such a replay passes through the
  older values again, so the contacts they map to are sent again, in order, before the current one
  (the end state is right; nothing here tells a replayed change from a new one without a position).
- A PostgreSQL snapshot row's position is `(0, snapshot LSN)`: below every change streamed after
  the snapshot, whose transaction may have begun before it. A blocking snapshot's reads carry the
  streaming offset (`sequence = [last commit C, LSN]`: Debezium reuses it for on-demand snapshots)
  and rank as `(0, C)`: every change streamed after the pause has a previous commit at or above C.
  Such a row is stale only when its LSN is at or below the LSN of the row's applied change or the
  previous commit LSN before it (that change committed after the snapshot point); so a re-snapshot
  (e.g. after Debezium lost its offsets) applies over rows streamed earlier, and a replayed snapshot
  does not. The row keeps `(0, read LSN, floor)`, the floor being the LSN of the last change streamed
  to it before (0 when none is known). Below the read's LSN only a transaction that straddled the
  read applies: it wrote the row after that last change (above the floor) and, for `pg`, is the
  first transaction streamed after an initial snapshot or a re-snapshot, without a previous commit
  (`(lsn, lsn)`); it keeps `(lsn, lsn, read LSN)`. Anything else below the read is history from
  before it, re-delivered by a merge replay or a re-send, and stale. Reads stored as `(0, lsn)` by
  earlier versions compare as they did.
- A positionless snapshot row (an incremental snapshot read) on a delete marker is a replay and
  is skipped: Debezium never emits one for a key that changed during its read window.
- A delete without a position (a tombstone on a topic whose deletes arrive only as tombstones,
  `tombstone_deletes`) leaves a marker without a position: every later event applies, so a replay
  that re-delivers the delete and then the row's re-creation ends with the row alive.
- An unchanged TOAST value (`UNCHANGED_MARKER`) keeps the previous value. When the state has none
  (the row, or that column, was never seen: e.g. Debezium started with `snapshot.mode=no_data`, or the
  source topic's retention dropped the snapshot), the marker itself is kept: the value is unknown,
  which is not the same as NULL. The mapping then asks Yespo to keep the field as it is
  (`keep_fields` in the upsert record) instead of clearing it.
- Positions of kind `pg-lsn` (unwrapped records with `__lsn`, envelopes without `sequence`) are the
  change's LSN alone, `(0, lsn)`, for snapshot reads and streamed changes alike. Merge ranks them as
  it ranks `pg` pairs: a streamed change as `(1, lsn)`, above every snapshot read, so a change whose
  transaction began before the snapshot point and committed after it (its LSN below the read's) is
  applied, not skipped as a replay, when its LSN is above the read's floor; the row then keeps
  `(1, read lsn, change lsn)`, so that a replayed read (and the replayed change itself) stays
  stale. Changes from before a re-snapshot, replayed, are at or below the floor: stale. Rows stored
  as `(0, lsn)` by earlier versions rank as snapshot reads.
- A Kafka tombstone carries no position: it deletes a row only when that row has no position either
  (unwrapped topics without `__lsn`); rows with positions are deleted by their `d` events, so a replayed
  tombstone can never delete a newer re-created row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec.structs import replace

from connector.jsonvalues import UNCHANGED_MARKER
from connector.models import SNAPSHOT_READ_KINDS, CustomerView, SourcePosition, older
from connector.routing import CUSTOMERS, HANDOVER, RoutedChange

__all__ = [
    "CustomerState",
    "Inherited",
    "MergeOutcome",
    "RowState",
    "expire_markers",
    "merge_change",
    "view_of",
]

logger = logging.getLogger(__name__)


class RowState(msgspec.Struct, frozen=True):
    """One row: its values (None once deleted), its last applied position, when it was deleted.

    `read`: the values come from a positionless read (an incremental snapshot row) taken after the
    changes up to `position`; a replay of those changes re-applies their upserts, skips their deletes.
    """

    values: Mapping[str, Any] | None
    position: SourcePosition | None
    deleted_ms: int | None = None
    read: bool = False

    @property
    def live(self) -> bool:
        """True unless the row is a delete marker."""
        return self.values is not None


class Inherited(msgspec.Struct, frozen=True):
    """The contact another customer key left live in Yespo when its customers row moved to this key.

    Passed on by the merge stage (a `HANDOVER` change, see `connector.projection`) and kept until the
    projection settles it: this key's contact takes it over (same externalCustomerId), retires it
    (another id) or deletes it (this key holds no contact after the move).

    Attributes:
        external_id: the contact's externalCustomerId.
        groups: its group ids (a retired or deleted contact's segments are detached).
        position: the source position of the primary-key change (None when it had none).
        origin: the old key (`RoutedChange.row_key` of the handover).
    """

    external_id: str
    groups: tuple[int, ...]
    position: SourcePosition | None
    origin: str


class CustomerState(msgspec.Struct, frozen=True):
    """Everything the connector keeps about one customer (one record of the state topic).

    Attributes:
        customer_key: the key.
        customer: the customers row (or its delete marker), None before it arrives.
        children: child name -> row key -> row.
        fingerprint: hash of the last emitted contact; None when nothing is live in Yespo.
        groups: group ids of the last emitted contact.
        version: how many upserts/deletes were emitted for this customer (the next one is version+1).
        external_id: externalCustomerId of the last emitted contact (a later delete needs it).
        inherited: a contact an old key of this customer left live, not yet settled (`Inherited`).
    """

    customer_key: str
    customer: RowState | None = None
    children: Mapping[str, Mapping[str, RowState]] = msgspec.field(default_factory=dict)
    fingerprint: str | None = None
    groups: tuple[int, ...] = ()
    version: int = 0
    external_id: str | None = None
    inherited: Inherited | None = None

    def is_empty(self) -> bool:
        """Nothing left worth keeping: no rows, nothing emitted that is still live, nothing inherited."""
        return (
            self.customer is None
            and not any(self.children.values())
            and self.fingerprint is None
            and self.inherited is None
        )


class MergeOutcome(msgspec.Struct, frozen=True):
    """The state after the change, and whether the change was applied (`reason` says why not)."""

    state: CustomerState
    applied: bool
    reason: str | None = None


def _ranked(change: RoutedChange) -> RoutedChange:
    """The position merge ranks `change` at (see the module docstring).

    A streamed `pg-lsn` change ranks as `(1, lsn)`, above every snapshot read. A `pg` snapshot read
    that carries a previous commit (a blocking snapshot: Debezium reads with the streaming offset,
    `sequence = [C, L]`) ranks as `(0, C)`, a read like any other.
    """
    position = change.position
    if position is None or position.kind not in SNAPSHOT_READ_KINDS:
        return change
    if len(position.parts) != 2:
        # `decode.position` writes two; the stage dead-letters the change (a MergeError)
        raise ValueError("a PostgreSQL position has two parts")
    first, lsn = position.parts
    if position.kind == "pg" and change.snapshot and first != 0:
        return replace(change, position=SourcePosition("pg", (0, first)))
    if position.kind == "pg-lsn" and not change.snapshot and first == 0:
        return replace(change, position=SourcePosition("pg-lsn", (1, lsn)))
    return change


def _read_lsn(position: SourcePosition) -> int | None:
    """The LSN of the snapshot read that a row's `position` follows, None for none.

    A read: `(0, read, floor)` (`(0, read)` in states written before reads kept a floor). A change
    kept just after one (`_kept_position`): `pg` `(lsn, lsn, read)`, `pg-lsn` `(1, read, lsn)`.
    """
    parts = position.parts
    if parts[0] == 0:
        return parts[1]
    if len(parts) == 3:
        return parts[2] if position.kind == "pg" else parts[1]
    return None


def _floor(position: SourcePosition) -> int:
    """An LSN at or above the one of the last change streamed to a row (0 when none is known).

    A transaction that straddles a later snapshot read of the row (it wrote the row before the
    snapshot point and committed after it) wrote it after that change committed: above this LSN.
    """
    parts = position.parts
    if parts[0] == 0:  # a snapshot read: the floor it kept
        return parts[2] if len(parts) == 3 else 0
    if position.kind == "pg":
        return max(parts[:2])  # the previous commit and the change: both below its commit
    return parts[-1]


def _kept_position(change: RoutedChange, row: RowState | None) -> SourcePosition | None:
    """The position a row keeps once the (ranked) `change` applied over `row`.

    A snapshot read keeps the floor of the row's last streamed change: `(0, read, floor)`. A change
    streamed after a read but begun before it (its LSN below the read's; for `pg` only the first
    transaction after a snapshot, which has no previous commit: `(lsn, lsn)`) keeps the read's LSN,
    `pg` `(lsn, lsn, read)`, `pg-lsn` `(1, read, lsn)`, so that a replayed read stays stale (see
    `_is_stale`). A later change of the row with an LSN below the read's can only come from that
    same transaction (it held the row's lock until it committed, after the read), whose LSNs grow:
    it keeps the read's LSN in turn.
    """
    position = change.position
    if position is None or position.kind not in SNAPSHOT_READ_KINDS:
        return position
    old = row.position if row is not None else None
    if old is not None and not position.comparable_with(old):
        old = None
    first, lsn = position.parts
    if change.snapshot and first == 0:
        return SourcePosition(position.kind, (0, lsn, 0 if old is None else _floor(old)))
    read = None if old is None else _read_lsn(old)
    if read is None or lsn >= read:
        return position
    if position.kind == "pg-lsn":
        return SourcePosition("pg-lsn", (1, read, lsn))
    return SourcePosition("pg", (lsn, lsn, read)) if first == lsn else position


def _is_at(position: SourcePosition | None, row_position: SourcePosition | None) -> bool:
    """True when `position` is the change that gave the row `row_position` (see `_kept_position`)."""
    if position == row_position:
        return True
    if position is None or row_position is None or len(row_position.parts) != 3:
        return False
    if position.kind not in SNAPSHOT_READ_KINDS or not position.comparable_with(row_position):
        return False
    if row_position.parts[0] == 0 or position.kind == "pg":
        return position.parts == row_position.parts[:2]
    return position.parts == (1, row_position.parts[2])


def _is_stale(change: RoutedChange, row: RowState | None) -> bool:
    position = change.position
    if row is None or position is None or row.position is None:
        return False
    if not position.comparable_with(row.position):
        return False
    if position.kind not in SNAPSHOT_READ_KINDS:
        return position <= row.position
    applied = row.position.parts
    first, lsn = position.parts
    if change.snapshot and first == 0:
        # A change is after the snapshot point when its LSN is, or when the transaction committed
        # before it did (begun before the snapshot, committed after it: LSN below, commit above).
        return lsn <= max(applied)
    read = _read_lsn(row.position)
    if read is None or (lsn if position.kind == "pg-lsn" else max(first, lsn)) >= read:
        return position <= row.position
    if len(applied) == 2:
        return position <= row.position  # `(0, lsn)` of an earlier version: compared as before
    # Below the LSN of the read the row follows: a transaction that straddled the read (it wrote
    # the row after the row's last change before the read), or history from before the read,
    # re-delivered (a merge replay, or a re-send, over a re-snapshot or a blocking snapshot).
    if position.kind == "pg-lsn":
        return lsn <= applied[2]  # the read's floor, or the straddler's LSN applied after it
    if first != lsn:
        # A previous commit below the read: committed before the snapshot point. Every change
        # streamed after a read has one at or above it, except the first transaction after an
        # initial snapshot or a re-snapshot, which has none: `(lsn, lsn)`.
        return True
    return lsn <= applied[2] if applied[0] == 0 else position <= row.position


def _merge_values(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Mapping[str, Any]:
    if UNCHANGED_MARKER not in new.values():
        return new  # rows are never mutated once decoded: share it
    merged = dict(new)
    for col, value in new.items():
        if value == UNCHANGED_MARKER:
            # a column the state never held stays unknown (the marker), unlike a known NULL
            merged[col] = old.get(col, UNCHANGED_MARKER) if old is not None else UNCHANGED_MARKER
    return merged


def _apply(change: RoutedChange, row: RowState | None, now_ms: int) -> tuple[RowState | None, str | None]:
    """The row after `change`, or (row, reason) when the change is skipped."""
    if change.op == "tombstone":
        if row is not None and row.live and row.position is None:
            return RowState(None, None, now_ms), None
        return row, "tombstone"
    position = change.position
    if row is not None and row.read and _is_stale(change, row):
        # A replay of the changes up to the read row's position: its upserts re-apply in order (the
        # one at the row's position ends the replay), its deletes are skipped (the row was live
        # after them; deleting would reach Yespo).
        if change.op != "upsert" or change.row is None:
            return row, "stale"
        values = _merge_values(row.values, change.row)
        return RowState(values, row.position, None, not _is_at(position, row.position)), None
    if _is_stale(change, row):
        return row, "stale"
    if position is None and change.snapshot and row is not None and not row.live:
        # An incremental-snapshot row never follows its row's delete in a clean stream (Debezium
        # drops a key that changed during the read window): on a delete marker it is a replay.
        return row, "stale"
    if change.op == "upsert":
        if change.row is None:
            return row, "empty"
        old = row.values if row is not None else None
        values = _merge_values(old, change.row)
        if position is None and row is not None and row.position is not None:
            # A positionless read over a positioned row: keep the position, mark the row `read`.
            return RowState(values, row.position, None, True), None
        return RowState(values, _kept_position(change, row)), None
    if change.op == "delete":
        if position is None and (row is None or not row.live):
            return row, "already-deleted"
        return RowState(None, _kept_position(change, row), now_ms), None
    return row, "unknown-op"


def merge_change(state: CustomerState | None, change: RoutedChange, *, now_ms: int) -> MergeOutcome:
    """Fold `change` into `state` (None: a customer not seen before). Never mutates `state`."""
    change = _ranked(change)
    current = state if state is not None else CustomerState(change.customer_key)
    if change.source == HANDOVER:
        return _inherit(current, change)
    if change.source == CUSTOMERS:
        row, reason = _apply(change, current.customer, now_ms)
        if reason is not None:
            return MergeOutcome(current, False, reason)
        return MergeOutcome(_with(current, row, current.children), True)
    rows = current.children.get(change.source, {})
    row, reason = _apply(change, rows.get(change.row_key), now_ms)
    if reason is not None:
        return MergeOutcome(current, False, reason)
    new_rows = dict(rows)
    if row is None:
        new_rows.pop(change.row_key, None)
    else:
        new_rows[change.row_key] = row
    children = dict(current.children)
    children[change.source] = new_rows
    return MergeOutcome(_with(current, current.customer, children), True)


def _with(
    state: CustomerState, customer: RowState | None, children: Mapping[str, Mapping[str, RowState]]
) -> CustomerState:
    return CustomerState(
        state.customer_key,
        customer,
        children,
        state.fingerprint,
        state.groups,
        state.version,
        state.external_id,
        state.inherited,
    )


def _inherit(state: CustomerState, change: RoutedChange) -> MergeOutcome:
    """Keep the contact a `HANDOVER` change passes on (`Inherited`), for the projection to settle.

    Refused when the row is not the handover's shape (a `MergeError` for the stage: the DLQ). One
    inherited contact at a time: a later one replaces the earlier only when it is newer in the source
    log (a key that moved twice in a row before settling keeps the last move's contact).
    """
    row = change.row
    if row is None or change.op != "handover":
        raise ValueError("a handover change carries the inherited contact")
    external_id = row["ext"]
    groups = row["groups"]
    if type(external_id) is not str or not all(type(g) is int for g in groups):
        raise TypeError("a handover names a contact by its externalCustomerId and group ids")
    held = state.inherited
    if (
        held is not None
        and held.position is not None
        and change.position is not None
        and not older(held.position, change.position)
    ):
        return MergeOutcome(state, False, "stale")
    inherited = Inherited(external_id, tuple(groups), change.position, change.row_key)
    return MergeOutcome(replace(state, inherited=inherited), True)


def view_of(state: CustomerState) -> CustomerView:
    """The live rows of `state`, as the mapping step sees them (children sorted by row key)."""
    customer = state.customer.values if state.customer is not None and state.customer.live else None
    children = {
        name: [rows[k].values for k in sorted(rows) if rows[k].values is not None]
        for name, rows in state.children.items()
    }
    return CustomerView(state.customer_key, customer, children)  # type: ignore[arg-type]


def expire_markers(state: CustomerState, *, now_ms: int, ttl_ms: int) -> CustomerState | None:
    """Drop delete markers older than `ttl_ms`; None when nothing is left (tombstone the key)."""

    def keep(row: RowState | None) -> bool:
        return row is not None and (row.live or row.deleted_ms is None or now_ms - row.deleted_ms < ttl_ms)

    customer = state.customer if keep(state.customer) else None
    children = {name: {k: r for k, r in rows.items() if keep(r)} for name, rows in state.children.items()}
    children = {name: rows for name, rows in children.items() if rows}
    if customer is state.customer and children == state.children:
        result = state
    else:
        result = _with(state, customer, children)
    return None if result.is_empty() else result
