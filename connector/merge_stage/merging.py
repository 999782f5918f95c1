"""The merge stage's merge and projection side: changes records -> the customers' state -> records.

Each change is merged into its customer's state, buffered in the open transaction; at commit each
customer changed is projected once: one state record (+ upserts when the contact changed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Producer

from connector.dlq import limit_text, record_size
from connector.errors import MappingError
from connector.kafka.clients import produce, to_raw
from connector.merge import CustomerState, merge_change
from connector.merge_stage.dead_letters import ODD_VALUE, DeadLetters, change_record
from connector.merge_stage.limits import RecordLimits
from connector.merge_stage.stats import MergeStats
from connector.metrics import Metrics
from connector.projection import (
    Projection,
    Projector,
    adopted_rows,
    customer_leaves,
    handover_change,
    hands_over,
    newest_change,
    upsert_records,
)
from connector.routing import CUSTOMERS, RoutedChange, decode_changes, encode_changes, partition_for
from connector.state.codec import encode_state
from connector.state.store import StateStore, StateTransaction

__all__ = ["Merger"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Dirty:
    """A customer changed in the open transaction: its committed state before, the changes applied."""

    before: CustomerState | None
    change: RoutedChange
    moved: bool
    applied: list[RoutedChange] = field(default_factory=list)
    shifted: bool = False  # a row moved in or out (see `connector.projection`)


class Merger:
    """Merges changes into the customers' state and writes their state and upserts records.

    State changes are buffered in a `StateTransaction` (`txn`) and reach the local store only when
    the stage's Kafka transaction committed (`commit`); an abort drops them (`abort`). A customer is
    projected once per transaction, at commit (`project_dirty`), however many changes it took.

    Args:
        store: the local state store (committed state).
        state_topic: `state.topic` (written at the changes record's partition number).
        upserts_topic: `output.upserts_topic` (likewise).
        changes_topic: `state.changes_topic`, where a customer that left for another key hands its
            contact over (`connector.projection.handover_change`), at the new key's partition.
        partitions: its partition count (`state.partitions`).
        projector: state -> contact projection.
        wall_ms: wall-clock milliseconds (merge positions, delete markers).
        limits: the stage's record limits (read at each write: they are set at start).
        dead_letters: where changes that cannot be merged or written go.
        stats: counts changes, applied, skipped, unmapped changes, upserts and deletes.
        metrics: counts stale changes, upserts and deletes, when given.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        state_topic: str,
        upserts_topic: str,
        changes_topic: str,
        partitions: int,
        projector: Projector,
        wall_ms: Callable[[], int],
        limits: RecordLimits,
        dead_letters: DeadLetters,
        stats: MergeStats,
        metrics: Metrics | None,
    ) -> None:
        self.txn = StateTransaction(store)
        self._state_topic = state_topic
        self._upserts_topic = upserts_topic
        self._changes_topic = changes_topic
        self._partitions = partitions
        self._projector = projector
        self._wall_ms = wall_ms
        self._limits = limits
        self._dead_letter = dead_letters.write
        self._stats = stats
        self._metrics = metrics
        self._dirty: dict[tuple[int, str], _Dirty] = {}

    @property
    def dirty_count(self) -> int:
        """How many customers the open transaction changed (projected at its commit)."""
        return len(self._dirty)

    def is_dirty(self, partition: int, key: str) -> bool:
        """True if the open transaction changed this customer: its commit writes its whole state."""
        return (partition, key) in self._dirty

    def commit(self) -> None:
        """The Kafka transaction committed: its buffered state reaches the local store."""
        self.txn.commit()

    def abort(self) -> None:
        """The Kafka transaction aborted: drop its buffered state and the customers changed in it."""
        self.txn.abort()
        self._dirty.clear()

    def drop_partition(self, partition: int) -> None:
        """Forget a revoked changes partition's buffered state (its store partition is the caller's)."""
        self.txn.drop_partition(partition)
        for k in [k for k in self._dirty if k[0] == partition]:
            del self._dirty[k]

    def merge(self, msg: Any, producer: Producer) -> None:
        """Merge every change of one changes record (an unreadable record goes to the DLQ)."""
        partition = msg.partition()
        try:
            changes = decode_changes(msg.value())
        except ODD_VALUE:
            self._dead_letter(producer, to_raw(msg), "MergeError", "changes record is not readable")
            return
        for change in changes:
            self.merge_one(msg, change, partition, producer)

    def merge_one(self, msg: Any, change: RoutedChange, partition: int, producer: Producer) -> None:
        """Merge one change into the transaction's state (`msg`: the changes record carrying it)."""
        self._stats.changes += 1
        key = change.customer_key
        state = self.txn.get(partition, key)
        try:
            outcome = merge_change(state, change, now_ms=self._wall_ms())
        except (*ODD_VALUE, AttributeError) as exc:
            # a change no router of ours wrote (a malformed position, ...), or a state of odd shape
            # (restore refuses one, but a crash here would come back at every restart)
            reason = f"the change cannot be merged ({type(exc).__name__})"
            self._dead_letter(producer, change_record(key, change), "MergeError", reason)
            return
        if not outcome.applied:
            reason = outcome.reason or "skipped"
            self._stats.skipped[reason] = self._stats.skipped.get(reason, 0) + 1
            if self._metrics is not None and reason == "stale":
                self._metrics.stale_events_skipped.labels(table=change.source).inc()
            return
        self._stats.applied += 1
        # Buffer the new state; the customer is projected once, when the transaction commits.
        self.txn.put(partition, key, outcome.state)
        dirty = self._dirty.get((partition, key))
        # the customers row left for another key: its delete is not emitted (`Projector.project`)
        moved = customer_leaves(change)
        if dirty is None:
            self._dirty[(partition, key)] = dirty = _Dirty(state, change, moved, [change])
        else:
            dirty.change = change
            dirty.applied.append(change)
            if change.source == CUSTOMERS:
                dirty.moved = moved
        if change.moved:
            dirty.shifted = True

    def project_dirty(self, producer: Producer) -> None:
        """Map each customer changed in this transaction once; write its state and maybe an upsert.

        A customer whose state or contact record would exceed `message.max.bytes` is folded again from
        its committed state, change by change: the changes that would make its state too large go to
        the DLQ with the reason, the others apply. If the record still does not fit (the contact), all
        its changes of this transaction go to the DLQ and it keeps its committed state.
        """
        for (partition, key), dirty in self._dirty.items():
            state = self.txn.get(partition, key)
            if state is None:
                continue
            key_bytes = key.encode()
            written = self._project_one(producer, partition, key, key_bytes, dirty, state)
            if written is True:
                continue
            shrunk = self._refold(producer, key_bytes, dirty)
            if (
                shrunk is not None
                and self._project_one(producer, partition, key, key_bytes, dirty, shrunk) is True
            ):
                continue
            reason = written if isinstance(written, str) else self._too_large(key_bytes, None)
            for change in dirty.applied:
                self._dead_letter(producer, change_record(key, change), "MergeError", reason)
            self.txn.put(partition, key, dirty.before)
        self._dirty.clear()

    def _project_one(
        self,
        producer: Producer,
        partition: int,
        key: str,
        key_bytes: bytes,
        dirty: _Dirty,
        state: CustomerState,
    ) -> bool | str:
        """Write `state` (and maybe an upsert) for one customer: True, or False if too large.

        A value the encoders refuse (nested deeper than 255 levels, an integer beyond 64 bits) or a
        state the mapping cannot read fails the projection before anything is written: the reason
        is returned instead.
        """
        change = dirty.change
        try:  # the pure part: nothing is written until it has passed
            if dirty.before is not None and not self._projector.affects_contact(dirty.before, state, change):
                # e.g. only updated_at changed: the state moves on (positions), the contact cannot
                projection = None
                new_state: CustomerState | None = state
                state_value: bytes | None = encode_state(state)
                upsert_values: list[bytes] = []
                passed = None
            else:
                applied = dirty.applied
                adopted = adopted_rows(applied) if dirty.shifted else None
                projection = self._projector.project(state, moved=dirty.moved, adopted=adopted)
                new_state = projection.state
                if new_state is not None and new_state.is_empty():
                    new_state = None
                state_value = encode_state(new_state) if new_state is not None else None
                handover = dirty.shifted and hands_over(applied)
                upsert_values = [
                    orjson.dumps(r)
                    for r in upsert_records(projection, newest_change(applied), handover=handover)
                ]
                passed = self._handover(projection, applied)
        except (*ODD_VALUE, AttributeError, MappingError) as exc:
            return f"the customer's state or contact cannot be written ({type(exc).__name__})"
        sizes = [record_size(key_bytes, v) for v in (state_value, *upsert_values)]
        if passed is not None:
            sizes.append(record_size(passed[0], passed[2]))
        if max(sizes) > self._limits.max_bytes:
            return False
        if projection is None:
            self._stats.unmapped_changes += 1
        else:
            if projection.error is not None:
                self._dead_letter(producer, change_record(key, change), "MappingError", projection.error)
            for emitted, upsert_value in zip(projection.emissions(), upsert_values, strict=True):
                produce(producer, self._upserts_topic, key=key_bytes, value=upsert_value, partition=partition)
                if emitted.op == "upsert":
                    self._stats.upserts += 1
                    if self._metrics is not None:
                        self._metrics.upserts_emitted.inc()
                else:
                    self._stats.deletes += 1
                    if self._metrics is not None:
                        self._metrics.deletes_emitted.inc()
        if passed is not None:
            handover_key, handover_partition, handover_value = passed
            produce(
                producer,
                self._changes_topic,
                key=handover_key,
                value=handover_value,
                partition=handover_partition,
            )
            self._stats.handovers += 1
        self._produce_state(producer, partition, key, key_bytes, state_value, new_state)
        return True

    def _handover(
        self, projection: Projection, applied: list[RoutedChange]
    ) -> tuple[bytes, int, bytes] | None:
        """The changes record (key, partition, value) that passes `projection.handover` on, if any."""
        if projection.handover is None:
            return None
        leaving = next((c for c in reversed(applied) if customer_leaves(c)), None)
        change = handover_change(leaving, projection.handover) if leaving is not None else None
        if change is None:
            # the event did not name the new key: its projection cannot settle this contact
            logger.warning(
                "a customer left for a key the event does not name: its contact is not handed over",
                extra={
                    "topic": leaving.origin.topic,
                    "partition": leaving.origin.partition,
                    "offset": leaving.origin.offset,
                }
                if leaving is not None
                else None,
            )
            return None
        to = change.customer_key
        return to.encode(), partition_for(to, self._partitions), encode_changes([change])

    def _refold(self, producer: Producer, key_bytes: bytes, dirty: _Dirty) -> CustomerState | None:
        """Fold the transaction's changes again from the committed state, skipping those that overflow.

        Each change that would make the state record exceed `message.max.bytes` is dead-lettered;
        `dirty` is left with the changes kept. Returns the state they make (None: none kept).
        """
        state = dirty.before
        kept: list[RoutedChange] = []
        now = self._wall_ms()
        for change in dirty.applied:
            try:
                outcome = merge_change(state, change, now_ms=now)
                if not outcome.applied:
                    continue
                value = encode_state(outcome.state)
            except (*ODD_VALUE, AttributeError) as exc:  # a value the state record cannot carry
                reason = f"the change holds a value the state record cannot carry ({type(exc).__name__})"
                self._dead_letter(producer, change_record(change.customer_key, change), "MergeError", reason)
                continue
            if record_size(key_bytes, value) > self._limits.max_bytes:
                reason = self._too_large(key_bytes, value)
                self._dead_letter(producer, change_record(change.customer_key, change), "MergeError", reason)
                continue
            state = outcome.state
            kept.append(change)
        dirty.applied = kept
        if not kept:
            return None
        dirty.change = kept[-1]
        return state

    def _too_large(self, key: bytes, value: bytes | None) -> str:
        """The DLQ reason for a change that would make a customer's record too large (no content)."""
        if value is None:
            what = "the customer's state or contact record would be"
        else:
            what = f"the customer's state record would be {record_size(key, value)} bytes,"
        return f"{what} {limit_text(self._limits.max_bytes)} with this change: it is not applied"

    def write_state(self, producer: Producer, partition: int, key: str, state: CustomerState | None) -> None:
        """Write a customer's whole state record (None: a tombstone) in the open transaction and buffer it."""
        key_bytes = key.encode()
        value = encode_state(state) if state is not None else None
        self._produce_state(producer, partition, key, key_bytes, value, state)

    def _produce_state(
        self,
        producer: Producer,
        partition: int,
        key: str,
        key_bytes: bytes,
        value: bytes | None,
        state: CustomerState | None,
    ) -> None:
        produce(producer, self._state_topic, key=key_bytes, value=value, partition=partition)
        self.txn.put(partition, key, state)
