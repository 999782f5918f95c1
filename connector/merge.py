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
  row on the way, and every such delete reaches Yespo.
- A PostgreSQL snapshot row's position is `(0, snapshot LSN)`: below every change streamed after
  the snapshot, whose transaction may have begun before it. Such a row is stale only when its LSN
  is at or below the LSN of the row's applied change or the previous commit LSN before it (that
  change committed after the snapshot point); so a re-snapshot (e.g. after Debezium lost its
  offsets) applies over rows streamed earlier, and a replayed snapshot does not.
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
  applied, not skipped as a replay; the row then keeps `(1, read lsn, change lsn)`, so that a
  replayed read (and the replayed change itself) stays stale. A replay of changes streamed before a
  re-snapshot re-applies them (in order, ending where it was), as it does for `pg`. Rows stored as
  `(0, lsn)` by earlier versions rank as snapshot reads.
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
from connector.models import SNAPSHOT_READ_KINDS, CustomerView, SourcePosition
from connector.routing import CUSTOMERS, RoutedChange

__all__ = ["CustomerState", "MergeOutcome", "RowState", "expire_markers", "merge_change", "view_of"]

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
    """

    customer_key: str
    customer: RowState | None = None
    children: Mapping[str, Mapping[str, RowState]] = msgspec.field(default_factory=dict)
    fingerprint: str | None = None
    groups: tuple[int, ...] = ()
    version: int = 0
    external_id: str | None = None

    def is_empty(self) -> bool:
        """Nothing left worth keeping: no rows and nothing emitted that is still live."""
        return self.customer is None and not any(self.children.values()) and self.fingerprint is None


class MergeOutcome(msgspec.Struct, frozen=True):
    """The state after the change, and whether the change was applied (`reason` says why not)."""

    state: CustomerState
    applied: bool
    reason: str | None = None


def _ranked(change: RoutedChange) -> RoutedChange:
    """A streamed `pg-lsn` change as `(1, lsn)`: above every snapshot read (see the module docstring)."""
    position = change.position
    if position is None or position.kind != "pg-lsn" or change.snapshot or position.parts[0] != 0:
        return change
    return replace(change, position=SourcePosition("pg-lsn", (1, *position.parts[1:])))


def _kept_position(position: SourcePosition | None, row: RowState | None) -> SourcePosition | None:
    """The position a row keeps once `position` applied over `row`.

    A `pg-lsn` change streamed after a snapshot read but begun before it (its LSN below the read's)
    keeps `(1, read lsn, change lsn)`: a replayed read must stay stale. A later change of the row with
    an LSN below the read's can only come from the same transaction (it held the row's lock until it
    committed, after the read; any other transaction's change comes after that commit, above the
    read), whose LSNs grow: it keeps `(1, read lsn, its lsn)` in turn (see `_is_stale`).
    """
    old = row.position if row is not None else None
    if position is not None and old is not None and position.kind == "pg" == old.kind:
        return _kept_pg(position, old)
    if (
        position is None
        or old is None
        or not position.kind == "pg-lsn" == old.kind
        or position.parts[0] != 1
        or len(position.parts) != 2
    ):
        return position
    # the snapshot read's LSN: of the read itself `(0, read)`, or kept `(1, read, lsn)`
    read = old.parts[1] if len(old.parts) == 3 else old.parts[-1] if old.parts[0] == 0 else None
    if read is not None and position.parts[1] < read:
        return SourcePosition("pg-lsn", (1, read, position.parts[1]))
    return position


def _kept_pg(position: SourcePosition, old: SourcePosition) -> SourcePosition:
    """`_kept_position` of a streamed `pg` change `(commit, lsn)`.

    The first transaction streamed after a snapshot has no previous commit: `(lsn, lsn)`
    (`decode.position`). Begun before the snapshot point and committed after it, its parts are all
    below the read's LSN, and a replayed read `(0, read)` would rank above it: it keeps
    `(commit, lsn, read)`, which ranks below its own later changes and every later transaction's
    (their previous commit is above the read), and makes the replayed read stale (`_is_stale`).
    """
    if len(position.parts) != 2:
        return position
    if len(old.parts) == 2 and old.parts[0] == 0:
        read = old.parts[1]  # the snapshot read itself
    elif len(old.parts) == 3:
        read = old.parts[2]  # kept by an earlier change of that same transaction
    else:
        return position
    return SourcePosition("pg", (*position.parts, read)) if max(position.parts) < read else position


def _is_at(position: SourcePosition | None, row_position: SourcePosition | None) -> bool:
    """True when `position` is the change that gave the row `row_position` (see `_kept_position`)."""
    if position == row_position:
        return True
    if position is None or row_position is None or len(row_position.parts) != 3:
        return False
    if row_position.kind == "pg-lsn" == position.kind:
        return position.parts == (1, row_position.parts[2])
    return row_position.kind == "pg" == position.kind and position.parts == row_position.parts[:2]


def _is_stale(change: RoutedChange, row: RowState | None) -> bool:
    position = change.position
    if row is None or position is None or row.position is None:
        return False
    if not position.comparable_with(row.position):
        return False
    if change.snapshot and position.kind in SNAPSHOT_READ_KINDS and position.parts[0] == 0:
        # A change is after the snapshot point when its LSN is, or when the transaction committed
        # before it did (begun before the snapshot, committed after it: LSN below, commit above).
        return position.parts[1] <= max(row.position.parts)
    kept = row.position.parts
    if (
        position.kind == "pg-lsn"
        and len(kept) == 3
        and position.parts[:1] == (1,)
        and len(position.parts) == 2
        and position.parts[1] < kept[1]
    ):
        # the row holds `(1, read, lsn)` of a transaction that straddled the read: a change below
        # the read is of that same transaction, newer when its LSN is above the one applied
        return position.parts[1] <= kept[2]
    return position <= row.position


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
        return RowState(values, _kept_position(position, row)), None
    if change.op == "delete":
        if position is None and (row is None or not row.live):
            return row, "already-deleted"
        return RowState(None, _kept_position(position, row), now_ms), None
    return row, "unknown-op"


def merge_change(state: CustomerState | None, change: RoutedChange, *, now_ms: int) -> MergeOutcome:
    """Fold `change` into `state` (None: a customer not seen before). Never mutates `state`."""
    change = _ranked(change)
    current = state if state is not None else CustomerState(change.customer_key)
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
    )


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
