"""The merge stage's run loop: route, merge, map; commit everything in ONE Kafka transaction.

State writes, upserts, DLQ records and the consumed offsets commit together (KIP-447).

Two kinds of input share one consumer (group `kafka.group_id`) and one transactional producer:

1. source records (Debezium topics) -> decode -> route -> changes topic (keyed and partitioned by
   customer key; the repartition step).
2. changes records -> merge into the customer's state -> map -> state topic (+ upserts topic when the
   contact changed), both at the changes record's partition number.

State changes are buffered in a `StateTransaction` and reach the local store only after the Kafka
commit succeeded. On assignment a changes partition is paused until its state partition is restored
from the compacted state topic (read_committed, earliest -> end). The changes topic has no retention:
the stage deletes what it has merged and committed (`_purge_merged`), as Kafka Streams does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.dlq import dlq_record, limit_text, record_size
from connector.errors import KafkaError, MappingError, SchemaRegistryUnavailableError, StateError
from connector.gctune import collector_tuning
from connector.kafka.clients import (
    consumer_config,
    default_instance_id,
    kafka_errors,
    produce,
    producer_config,
    to_raw,
    translate,
)
from connector.kafka.topics import batch_size_for, ensure_topics, record_limit, topic_limits
from connector.merge import CustomerState, expire_markers, merge_change
from connector.metrics import Metrics
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from connector.projection import Projector, upsert_records
from connector.routing import (
    CUSTOMERS,
    RoutedChange,
    Router,
    RoutingFailure,
    decode_changes,
    encode_change,
    partition_for,
)
from connector.state.codec import encode_state
from connector.state.recovery import MIN_CALL_S, Restorer
from connector.state.store import MemoryStore, StateStore, StateTransaction

__all__ = ["Decoder", "MergeStage", "MergeStats", "new_instance_id"]

logger = logging.getLogger(__name__)

Decoder = Callable[[RawRecord], Any]
"""RawRecord -> ChangeEvent | DecodeFailure | an ignored marker (anything else is counted as ignored)."""

STAGE = "merge"

_MAX_CHANGES_PER_RECORD = 500
"""Changes per changes-topic record at most; their bytes are capped by `message.max.bytes` too."""

_ABORT_TIMEOUT_S = 30.0
"""Seconds one `abort_transaction` call may take."""


_ODD_VALUE: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, UnicodeError)
"""What a value of odd shape raises in the pure steps (decode, route, merge, encode): its record
goes to the DLQ with the exception's name (never its text, which may quote the value)."""

_SEND_OFFSETS_TIMEOUT_S: Final = 15.0
"""How long `send_offsets_to_transaction` may wait (a rebalancing group holds it: time out, abort)."""

_COMMIT_TIMEOUT_S: Final = 60.0
"""The longest one `commit_transaction` attempt waits (less when the step's deadline is nearer)."""

_RESUME_ON_CLOSE_S: Final = 30.0
"""How long `close` resumes a commit whose outcome stayed unknown (the stage stopped on it)."""

_COMMITTED_TIMEOUT_S: Final = 10.0
"""The longest one read of the assignment's committed offsets (`Consumer.committed`) waits."""

_PURGE_INTERVAL_S: Final = 60.0
"""How often the changes records merged and committed are deleted (Kafka Streams'
`repartition.purge.interval.ms`): one DeleteRecords request per interval, not per commit."""

_PURGE_TIMEOUT_S: Final = 30.0
"""How long one DeleteRecords request may take (it runs in the background; the loop never waits)."""


@dataclass(slots=True)
class _Dirty:
    """A customer changed in the open transaction: its committed state before, the changes applied."""

    before: CustomerState | None
    change: RoutedChange
    moved: bool
    applied: list[RoutedChange] = field(default_factory=list)


@dataclass(slots=True)
class _Outgoing:
    """Encoded changes waiting for one changes-topic record (a JSON array of them)."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 2


@dataclass
class MergeStats:
    """Counters of what the stage did (also fed to Prometheus)."""

    source_records: int = 0
    routed: int = 0
    ignored: int = 0
    changes: int = 0
    applied: int = 0
    unmapped_changes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    upserts: int = 0
    deletes: int = 0
    dlq: int = 0
    commits: int = 0
    aborts: int = 0
    rebalances: int = 0
    restored_records: int = 0


class MergeStage:
    """One process's share of the merge stage. `run()` loops until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        projector: Projector,
        decoder: Decoder,
        store: StateStore | None = None,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        metrics: Metrics | None = None,
        create_topics: bool = False,
        on_tick: Callable[[], None] | None = None,
        purge_interval_s: float = _PURGE_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self._projector = projector
        self._decode = decoder
        self._store = store or MemoryStore()
        self._txn = StateTransaction(self._store)
        self._router = Router(settings)
        self._clock = clock
        self._wall_ms = wall_ms
        self._metrics = metrics
        self._create_topics = create_topics
        self._on_tick = on_tick
        self.stats = MergeStats()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.instance_id = instance_id or default_instance_id()
        kafka = settings.kafka
        self.transactional_id = f"{kafka.transactional_id_prefix}-{kafka.group_id}-{self.instance_id}"
        self._changes_topic = settings.state.changes_topic
        self._state_topic = settings.state.topic
        self._upserts_topic = settings.output.upserts_topic
        self._dlq_topic = settings.output.dlq_topic
        self._partitions = settings.state.partitions
        self._source_topics = set(self._router.topics)
        self._commit_interval = kafka.commit_interval_ms / 1000.0
        self._commit_max = kafka.commit_max_records
        self._ttl_ms = int(settings.state.delete_marker_ttl_hours * 3600 * 1000)
        self._in_txn = False
        self._txn_started = 0.0
        self._txn_records = 0
        self._offsets: dict[tuple[str, int], int] = {}
        # the offsets this member committed since its assignment: a transaction that consumed nothing
        # (the delete-marker sweep) sends them again, so that a member the group has dropped is fenced
        self._committed: dict[tuple[str, int], int] = {}
        self._routed: dict[int, _Outgoing] = {}
        self._max_bytes = kafka.message_max_bytes  # changes, state and upserts records
        self._dlq_max_bytes = kafka.message_max_bytes  # both lowered by the topics' own limits at start
        self._value_limit = self._max_bytes - record_size(None, None)  # for a value without key
        self._topic_limits: dict[str, int] = {}  # max.message.bytes read at start-up
        self._admin: AdminClient | None = None
        self._dirty: dict[tuple[int, str], _Dirty] = {}
        self._assigned: list[TopicPartition] = []
        self._restorer: Restorer | None = None
        self._inject_aborts = 0
        # test hook: (customers merged, upserts written) of each transaction an injected abort ended
        self.injected_aborts: list[tuple[int, int]] = []
        self._rewind_pending = False
        self._rewound: set[int] = set()  # restoring changes partitions sought back in this poll batch
        self._abort_pending = False
        self._abort_failing_since: float | None = None  # clock time of the first failed abort in a row
        self._abort_error: KafkaError | None = None  # why the last abort failed (None: it succeeded)
        self._commit_failing_since: float | None = None  # when the first failed commit in a row began
        self._commit_failed_at = 0.0  # when the last failed commit ended
        # a commit_transaction that timed out: librdkafka resumes it on the next commit_transaction
        # call and refuses every other transactional call until then (`close` resumes it)
        self._commit_unresolved = False
        self._closing = False
        self._transaction_timeout_s = kafka.transaction_timeout_ms / 1000
        # what the blocking calls of one step may take in all (send_offsets, commit and abort attempts,
        # committed offsets, restore reads): the loop must poll again within max.poll.interval.ms (a
        # fifth and 15 s kept for the work between the calls). What does not fit waits for the next step.
        self._step_budget_s = max(5.0, 0.8 * kafka.max_poll_interval_ms / 1000 - _SEND_OFFSETS_TIMEOUT_S)
        self._deadline = math.inf  # the current step's (set by `step` and `close`)
        # the longest one blocking call may wait: the loop ticks (`_tick`) before each, so /healthz
        # (observability.liveness_timeout_s) stays alive through a commit retried on a slow broker
        # and the stall watchdog (observability.stall_exit_s) sees only a call that does not return
        watched = [settings.observability.liveness_timeout_s, settings.observability.stall_exit_s]
        self._wait_cap_s = max(MIN_CALL_S, min(w for w in watched if w > 0) / 2)
        self._stopping_error: StateError | None = None  # a fatal error met inside a rebalance callback
        self._last_sweep = clock()
        self._expiring: deque[tuple[int, str]] = deque()  # expired markers a sweep has yet to write
        self._purge_interval_s = purge_interval_s
        self._last_purge = clock()
        self._purges: dict[int, tuple[int, Future[Any]]] = {}  # partition -> (offset, request) in flight
        self._purged: dict[int, int] = {}  # changes partition -> the offset its records are deleted below
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish: the open transaction is committed, then the clients close."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """True when every assigned changes partition is restored."""
        return self._ready.is_set()

    def inject_abort(self, count: int = 1) -> None:
        """Test hook (off unless called): the next `count` transactions that merged customers abort.

        Each aborts through the real abort path after writing its state records, upserts and routed
        changes, just before its offsets would be sent; `injected_aborts` then lists, per injected
        abort, how many customers it had merged and how many upserts it had written.
        """
        with self._lock:
            self._inject_aborts += count

    def start(self) -> None:
        """Check topics, create the clients, init transactions, subscribe."""
        conf = self.settings.kafka.as_librdkafka()
        admin = AdminClient(conf)
        ensure_topics(admin, self.settings, create=self._create_topics)
        self._admin = admin
        batch = self._apply_topic_limits(topic_limits(admin, [*self._data_topics, self._dlq_topic]))
        self._producer = Producer(
            producer_config(self.settings, transactional_id=self.transactional_id, **batch)
        )
        with kafka_errors():
            self._producer.init_transactions(30)
        extra: dict[str, Any] = {}
        if self._metrics is not None:
            extra = {"statistics.interval.ms": 5000, "stats_cb": self._metrics.update_from_librdkafka_stats}
        self._consumer = Consumer(consumer_config(self.settings, self.settings.kafka.group_id, **extra))
        self._restorer = Restorer(self.settings, self._store, clock=self._clock)
        topics = [*sorted(self._source_topics), self._changes_topic]
        self._consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
        logger.info(
            "merge stage started",
            extra={"transactional_id": self.transactional_id, "topics": topics},
        )

    @property
    def _data_topics(self) -> list[str]:
        return [self._changes_topic, self._state_topic, self._upserts_topic]

    def _apply_topic_limits(self, limits: Mapping[str, int]) -> dict[str, Any]:
        """Fit every write under its topic's `max.message.bytes` too; returns producer overrides.

        A DLQ topic with a lower limit than the producer's would otherwise refuse a copy, and the
        transaction holding it would abort again at every retry (a stall).
        """
        producer_limit = self.settings.kafka.message_max_bytes
        self._topic_limits = dict(limits)
        self._max_bytes = record_limit(producer_limit, limits, self._data_topics)
        self._dlq_max_bytes = record_limit(producer_limit, limits, [self._dlq_topic])
        self._value_limit = self._max_bytes - record_size(None, None)
        return batch_size_for(min(self._max_bytes, self._dlq_max_bytes))

    def run(self) -> None:
        """Start, loop until stopped, then commit what is open and close.

        The garbage collector is tuned while the loop runs (`connector.gctune`), and restored state
        is frozen once a restore completes: a full collection would otherwise walk every customer
        (measured 0.45 s per 200k customers).
        """
        self.start()
        try:
            with collector_tuning.applied():
                while not self._stop.is_set():
                    self.step()
        finally:
            self.close()

    def close(self) -> None:
        """Commit (or abort) the open transaction and close the clients."""
        self._closing = True  # an abort that fails now is logged, not raised (see `_abort_quietly`)
        self._deadline = self._clock() + self._step_budget_s  # the revocation in consumer.close() too
        try:
            if self._commit_unresolved:
                self._resume_commit()
            elif self._in_txn:
                try:
                    self._commit()
                except StateError:
                    if not self._commit_unresolved:
                        raise
                    # its outcome unknown: librdkafka refuses an abort (_CONFLICT) until the commit is
                    # resumed, so an abort would leave the transaction open until its timeout
                    self._resume_commit()
            elif self._abort_pending:  # left by the last step: end it, or readers wait for its timeout
                self._abort_quietly()
        except (KafkaError, StateError) as exc:
            logger.warning("final commit failed; aborting", extra={"error": str(exc)})
            self._abort_quietly()
        finally:
            if self._restorer is not None:
                self._restorer.close()
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._producer is not None:
                producer, self._producer = self._producer, None
                try:
                    producer.flush(10)
                except KafkaException as exc:  # e.g. a fatal producer: must not hide why we stop
                    logger.warning("producer not flushed on close", extra={"error": str(translate(exc))})

    # -- the loop --------------------------------------------------------------------------------

    def step(self) -> None:
        """One poll -> process -> maybe-commit round.

        Its blocking calls, those of the rebalance callbacks run inside the poll included, share one
        deadline, `_step_budget_s` from its start: what does not fit before it (an abort, the seek back
        to the committed offsets, a restore read, a commit not yet started) is left pending for the
        next step, so the loop polls again within `kafka.max_poll_interval_ms`.
        """
        consumer, producer = self._clients()
        self._tick()
        self._deadline = self._clock() + self._step_budget_s
        try:
            msgs = consumer.consume(num_messages=1000, timeout=0.05)
        except KafkaException as exc:
            raise translate(exc) from exc
        if self._stopping_error is not None:
            raise self._stopping_error
        if self._abort_pending and not self._finish_abort():
            # out of time, or the abort failed again: what was fetched is read again once it ends
            if msgs:
                self._rewind_pending = True
            return
        if self._rewind_pending:
            # an abort could not read the committed offsets yet: what was fetched is read again later
            self._rewind()
            return
        latest: dict[tuple[str, int], int] = {}
        self._rewound.clear()
        try:
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaError(f"consumer error: {err.name()}", fatal=True)
                    logger.warning("consumer error", extra={"error": err.name()})
                    continue
                self._handle(msg, producer)
                latest[(str(msg.topic()), int(msg.partition() or 0))] = msg.timestamp()[1]
            self._flush_routed(producer)
        except SchemaRegistryUnavailableError as exc:
            logger.warning("schema registry unavailable; rolling back and waiting", extra={"error": str(exc)})
            self._abort_and_rewind()
            time.sleep(max(0.0, self._time_left(2.0)))
            return
        except (KafkaException, KafkaError) as exc:
            self._roll_back(exc)
            return
        if self._metrics is not None:
            for (topic, partition), ts in latest.items():
                self._metrics.record_consumed(topic, partition, ts)
        if self._in_txn:
            now = self._clock()
            if (
                now - self._txn_started >= self._commit_interval or self._txn_records >= self._commit_max
            ) and self._deadline - now >= self._step_budget_s / 2:
                # (a commit started late in the step could run out of time once decided, its outcome
                # unknown: it waits for the next step, which starts with the whole budget)
                self._commit_or_recover()
        if self._restorer is not None and self._restorer.pending:
            self._restore_step()
        if self._metrics is not None:  # librdkafka's statistics freeze a paused partition's end
            restoring = self._restorer.restoring() if self._restorer is not None else ()
            self._metrics.track_paused(consumer, [TopicPartition(self._changes_topic, p) for p in restoring])
        if not self._abort_pending and (self._expiring or self._clock() - self._last_sweep > 60):
            try:
                self._sweep()
            except (KafkaException, KafkaError) as exc:
                self._roll_back(exc)
        if self._admin is not None and self._clock() - self._last_purge >= self._purge_interval_s:
            self._purge_merged(self._admin)

    def _tick(self) -> None:
        """Report the loop alive (`on_tick`: /healthz and the stall watchdog).

        At the start of each step and before each blocking call of a step (sending the offsets, each
        commit and abort attempt, reading the committed offsets), each of which waits at most
        `_wait_cap_s`: a step that retries a commit on a slow broker for minutes is alive (each call
        returned), one stuck in a call that ignores its timeout (librdkafka#5456) stops ticking.
        """
        if self._on_tick is not None:
            self._on_tick()

    def _roll_back(self, exc: KafkaException | KafkaError) -> None:
        """A client call failed inside the open transaction: abort it and read its input again.

        E.g. a produce refused because the transaction became abortable (a request failed while the
        broker was away). Fatal errors (fenced, ...) stop the stage.
        """
        if isinstance(exc, KafkaError):
            if exc.fatal:
                raise exc
            error = exc
        else:
            error = translate(exc)
            if error.fatal:
                raise error from exc
        logger.warning("transaction failed; rolling back", extra={"error": str(error)})
        self._abort_and_rewind(error)

    def _check_refused_size(self, error: KafkaError) -> None:
        """After the broker refused a record as too large: stop if a topic's limit was lowered.

        Writes are fitted under the limits read at start-up (batch sizes included, which a running
        producer cannot change); a topic's `max.message.bytes` lowered since would make the same
        transaction abort at every retry. Stopping lets the restart read the new limits.

        Raises:
            StateError: a topic's `max.message.bytes` is now below the one read at start-up.
        """
        if error.code != "MSG_SIZE_TOO_LARGE" or self._admin is None:
            return
        timeout = self._time_left(10.0)
        if timeout < MIN_CALL_S:
            logger.warning("topic limits not read: out of time in this step (read at the next refusal)")
            return
        topics = [*self._data_topics, self._dlq_topic]
        try:
            now = topic_limits(self._admin, topics, timeout=timeout)
        except KafkaError as exc:
            logger.warning("topic limits not readable", extra={"error": str(exc)})
            return
        producer_limit = self.settings.kafka.message_max_bytes
        for topic in topics:  # only a limit that binds below the producer's counts
            before = record_limit(producer_limit, self._topic_limits, [topic])
            after = record_limit(producer_limit, now, [topic])
            if after < before:
                raise StateError(
                    f"topic {topic}: max.message.bytes is now {after} (was {before} at start-up) and the "
                    "broker refused a record as too large; stopping so that the restart applies it"
                )

    def _clients(self) -> tuple[Consumer, Producer]:
        if self._consumer is None or self._producer is None:
            raise StateError("merge stage is not started")
        return self._consumer, self._producer

    def _time_left(self, cap: float = math.inf) -> float:
        """Seconds until the step's deadline, at most `cap`: the timeout of the next blocking call."""
        return min(cap, self._deadline - self._clock())

    def _begin(self, producer: Producer) -> None:
        if not self._in_txn:
            # an abort that failed earlier must end first (`step` finishes it before anything else)
            if self._abort_pending and not self._finish_abort():
                raise KafkaError("the previous transaction is not aborted yet", retriable=True)
            with kafka_errors():
                producer.begin_transaction()
            self._in_txn = True
            self._txn_started = self._clock()
            self._txn_records = 0

    def _handle(self, msg: Any, producer: Producer) -> None:
        topic = msg.topic()
        partition = msg.partition()
        if (
            topic == self._changes_topic
            and self._restorer is not None
            and self._restorer.is_restoring(partition)
        ):
            # fetched before the pause took effect: re-read it after the restore. Once per partition
            # and poll batch, at its first (lowest) offset: the last seek wins, and seeking again at
            # each record would skip all but the batch's last.
            if partition not in self._rewound:
                self._rewound.add(partition)
                self._consumer.seek(TopicPartition(topic, partition, msg.offset()))  # type: ignore[union-attr]
            return
        self._begin(producer)
        if topic == self._changes_topic:
            self._merge(msg, producer)
        elif topic in self._source_topics:
            self._route(msg, producer)
        self._offsets[(topic, partition)] = msg.offset() + 1
        self._txn_records += 1

    def _route(self, msg: Any, producer: Producer) -> None:
        self.stats.source_records += 1
        raw = to_raw(msg)
        try:
            result = self._decode(raw)
        except _ODD_VALUE as exc:  # the decoder's own failures are `DecodeFailure`s: a safety net
            self._dead_letter(
                producer, raw, "DecodeError", f"the record cannot be decoded ({type(exc).__name__})"
            )
            return
        if isinstance(result, DecodeFailure):
            self._dead_letter(producer, raw, result.error_class, result.reason)
            return
        if not isinstance(result, ChangeEvent):
            self.stats.ignored += 1
            return
        limit = self._value_limit
        encoded: list[tuple[str, bytes]] = []
        try:
            routed = self._router.route(result)
            if isinstance(routed, RoutingFailure):
                self._dead_letter(producer, raw, "RoutingError", routed.reason)
                return
            for change in routed:
                data = encode_change(change)
                if len(data) > limit:
                    reason = f"routed change of {len(data)} bytes is {limit_text(self._max_bytes)}"
                    self._dead_letter(producer, raw, "MergeError", reason)
                    return
                encoded.append((change.customer_key, data))
        except _ODD_VALUE as exc:  # e.g. a JSON value nested too deep to convert
            self._dead_letter(
                producer, raw, "RoutingError", f"the event cannot be routed ({type(exc).__name__})"
            )
            return
        for customer_key, data in encoded:
            target = partition_for(customer_key, self._partitions)
            buf = self._routed.get(target)
            if buf is None:
                buf = self._routed[target] = _Outgoing()
            elif buf.size + len(data) > limit or len(buf.parts) >= _MAX_CHANGES_PER_RECORD:
                self._flush_partition(producer, target)
                buf = self._routed[target] = _Outgoing()
            buf.parts.append(data)
            buf.size += len(data) + 1
        self.stats.routed += len(encoded)
        if self._metrics is not None:
            self._metrics.events.labels(table=result.table, op=result.op.value).inc()

    def _flush_partition(self, producer: Producer, partition: int) -> None:
        buf = self._routed.pop(partition, None)
        if buf is not None and buf.parts:
            # the same bytes as `encode_changes` of the list: a JSON array of the encoded changes
            value = b"[" + b",".join(buf.parts) + b"]"
            produce(producer, self._changes_topic, value=value, partition=partition)

    def _flush_routed(self, producer: Producer) -> None:
        """Write the buffered routed changes: one changes-topic record per target partition."""
        for partition in list(self._routed):
            self._flush_partition(producer, partition)

    def _merge(self, msg: Any, producer: Producer) -> None:
        partition = msg.partition()
        try:
            changes = decode_changes(msg.value())
        except _ODD_VALUE:
            self._dead_letter(producer, to_raw(msg), "MergeError", "changes record is not readable")
            return
        for change in changes:
            self._merge_one(msg, change, partition, producer)

    def _merge_one(self, msg: Any, change: RoutedChange, partition: int, producer: Producer) -> None:
        """Merge one change into the transaction's state (`msg`: the changes record carrying it)."""
        self.stats.changes += 1
        key = change.customer_key
        state = self._txn.get(partition, key)
        try:
            outcome = merge_change(state, change, now_ms=self._wall_ms())
        except (*_ODD_VALUE, AttributeError) as exc:
            # a change no router of ours wrote (a malformed position, ...), or a state of odd shape
            # (restore refuses one, but a crash here would come back at every restart)
            reason = f"the change cannot be merged ({type(exc).__name__})"
            self._dead_letter(producer, _change_record(key, change), "MergeError", reason)
            return
        if not outcome.applied:
            reason = outcome.reason or "skipped"
            self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
            if self._metrics is not None and reason == "stale":
                self._metrics.stale_events_skipped.labels(table=change.source).inc()
            return
        self.stats.applied += 1
        # Buffer the new state; the customer is projected once, when the transaction commits.
        self._txn.put(partition, key, outcome.state)
        dirty = self._dirty.get((partition, key))
        moved = change.moved if change.source == CUSTOMERS else False
        if dirty is None:
            self._dirty[(partition, key)] = _Dirty(state, change, moved, [change])
        else:
            dirty.change = change
            dirty.applied.append(change)
            if change.source == CUSTOMERS:
                dirty.moved = moved

    def _project_dirty(self, producer: Producer) -> None:
        """Map each customer changed in this transaction once; write its state and maybe an upsert.

        A customer whose state or contact record would exceed `message.max.bytes` is folded again from
        its committed state, change by change: the changes that would make its state too large go to
        the DLQ with the reason, the others apply. If the record still does not fit (the contact), all
        its changes of this transaction go to the DLQ and it keeps its committed state.
        """
        for (partition, key), dirty in self._dirty.items():
            state = self._txn.get(partition, key)
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
                self._dead_letter(producer, _change_record(key, change), "MergeError", reason)
            self._txn.put(partition, key, dirty.before)
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
            else:
                projection = self._projector.project(state, moved=dirty.moved)
                new_state = projection.state
                if new_state is not None and new_state.is_empty():
                    new_state = None
                state_value = encode_state(new_state) if new_state is not None else None
                upsert_values = [orjson.dumps(r) for r in upsert_records(projection, change)]
        except (*_ODD_VALUE, AttributeError, MappingError) as exc:
            return f"the customer's state or contact cannot be written ({type(exc).__name__})"
        sizes = [record_size(key_bytes, v) for v in (state_value, *upsert_values)]
        if max(sizes) > self._max_bytes:
            return False
        if projection is None:
            self.stats.unmapped_changes += 1
        else:
            if projection.error is not None:
                self._dead_letter(producer, _change_record(key, change), "MappingError", projection.error)
            for emitted, upsert_value in zip(projection.emissions(), upsert_values, strict=True):
                produce(producer, self._upserts_topic, key=key_bytes, value=upsert_value, partition=partition)
                if emitted.op == "upsert":
                    self.stats.upserts += 1
                    if self._metrics is not None:
                        self._metrics.upserts_emitted.inc()
                else:
                    self.stats.deletes += 1
                    if self._metrics is not None:
                        self._metrics.deletes_emitted.inc()
        self._produce_state(producer, partition, key, key_bytes, state_value, new_state)
        return True

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
            except (*_ODD_VALUE, AttributeError) as exc:  # a value the state record cannot carry
                reason = f"the change holds a value the state record cannot carry ({type(exc).__name__})"
                self._dead_letter(producer, _change_record(change.customer_key, change), "MergeError", reason)
                continue
            if record_size(key_bytes, value) > self._max_bytes:
                reason = self._too_large(key_bytes, value)
                self._dead_letter(producer, _change_record(change.customer_key, change), "MergeError", reason)
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
        return f"{what} {limit_text(self._max_bytes)} with this change: it is not applied"

    def _write_state(self, producer: Producer, partition: int, key: str, state: CustomerState | None) -> None:
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
        self._txn.put(partition, key, state)

    def _dead_letter(self, producer: Producer, raw: RawRecord, error_class: str, reason: str) -> None:
        dead = dlq_record(DecodeFailure(raw, reason, error_class, STAGE), max_bytes=self._dlq_max_bytes)
        produce(producer, self._dlq_topic, key=dead.key, value=dead.value, headers=list(dead.headers))
        self.stats.dlq += 1
        logger.warning(
            "record dead-lettered",
            extra={"topic": raw.topic, "partition": raw.partition, "offset": raw.offset, "reason": reason},
        )
        if self._metrics is not None:
            self._metrics.dlq_records.labels(stage=STAGE, reason=error_class).inc()

    # -- transactions ----------------------------------------------------------------------------

    def _commit(self, *, commit_attempts: int = 1) -> None:
        """Commit the open transaction: project, flush, send the offsets, commit.

        Raises:
            KafkaError: the transaction was not committed and can be aborted (a failure before the
                commit, or a commit that must abort), or a fatal client error.
            StateError: `commit_transaction` kept failing without an answer (`commit_attempts`
                tries): the outcome is unknown, so neither the local state nor the consumer
                positions can be trusted; the stage must stop (a restart restores them from Kafka).
        """
        consumer, producer = self._clients()
        merged, emitted = len(self._dirty), self.stats.upserts + self.stats.deletes  # for `inject_abort`
        started = self._clock()
        with kafka_errors():
            # Step 1: project the customers changed in this transaction (state + upserts).
            self._project_dirty(producer)
            # Step 2: write the routed changes still buffered.
            self._flush_routed(producer)
        with self._lock:  # the test hook (`inject_abort`): only a transaction that merged customers
            inject = self._inject_aborts > 0 and merged > 0
            if inject:
                self._inject_aborts -= 1
        if inject:
            # the records reach the broker first (an abort purges those still queued), as they do
            # when a crash ends a transaction: the abort must undo writes that are in the log
            producer.flush(max(0.0, self._time_left(10.0)))
            self.injected_aborts.append((merged, self.stats.upserts + self.stats.deletes - emitted))
            raise KafkaError("injected abort", txn_requires_abort=True)
        # Step 3: the consumed offsets join the transaction; Step 4: commit it.
        # Nothing consumed (a sweep-only transaction): the committed offsets again, a no-op for the
        # group that fences a member it has dropped (KIP-447 checks the member's generation). Every
        # transaction sends some: one without would commit even if the group had dropped this member.
        sent = self._offsets or self._committed
        if not sent:
            raise KafkaError(
                "the transaction has no offsets to send, so the group could not fence it",
                txn_requires_abort=True,
            )
        offsets = [TopicPartition(t, p, o) for (t, p), o in sent.items()]
        # A group being rebalanced (e.g. our session expired while the broker was away) holds this
        # call until the rebalance ends, which needs this thread to poll: time out, abort.
        self._tick()
        with kafka_errors():
            producer.send_offsets_to_transaction(
                offsets,
                consumer.consumer_group_metadata(),
                max(0.0, min(_SEND_OFFSETS_TIMEOUT_S, self._wait_cap_s, self._deadline - started)),
            )
        # From here the commit may be decided without us hearing of it: only commit_transaction may
        # be repeated (librdkafka resumes the same commit). Aborting could drop state that committed.
        # The attempts share what is left of the step (at most the step's budget), so the loop polls
        # again within max.poll.interval.ms.
        # (at least a quarter of the budget: a long projection above must not leave them a second each)
        # Each attempt waits at most `_wait_cap_s` and the loop ticks before it: the retries of a
        # commit on a slow broker keep /healthz alive (each attempt returned).
        budget = max(self._time_left(self._step_budget_s), self._step_budget_s / 4)
        cap = min(_COMMIT_TIMEOUT_S, self._wait_cap_s)
        attempt_s = min(cap, max(1.0, budget / commit_attempts - 0.2 * commit_attempts))
        for attempt in range(commit_attempts):
            self._tick()
            try:
                with kafka_errors():
                    producer.commit_transaction(attempt_s)
                break
            except KafkaError as exc:
                if exc.txn_requires_abort or exc.fatal:
                    raise
                if not exc.retriable or attempt == commit_attempts - 1:
                    self._commit_unresolved = True
                    raise StateError(
                        f"transaction commit outcome unknown ({exc}); stopping, a restart restores "
                        "the state from Kafka"
                    ) from exc
                time.sleep(0.2 * (attempt + 1))
        self._txn.commit()
        self._committed.update(self._offsets)
        self._offsets.clear()
        self._in_txn = False
        self._commit_failing_since = None
        self.stats.commits += 1
        if self._metrics is not None:
            self._metrics.transaction_commit_duration.observe(self._clock() - started)

    def _resume_commit(self) -> None:
        """On close, resume a commit whose outcome stayed unknown, until the step's deadline.

        The stage stopped on it (`_commit`); left alone, the transaction would stay open on the
        broker until `kafka.transaction_timeout_ms` (or until this transactional.id starts again),
        holding back every read_committed reader of its partitions, the restore of the partitions'
        next owner included. Nothing is applied to the local store: the process is stopping, and a
        restart restores the state from Kafka whatever the outcome.
        """
        producer = self._producer
        if producer is None:
            return
        # bounded: a broker still away would hold the stop (and the restart that also ends it)
        self._deadline = min(self._deadline, self._clock() + _RESUME_ON_CLOSE_S)
        attempt = 0
        while (timeout := self._time_left(min(_COMMIT_TIMEOUT_S, self._wait_cap_s))) >= MIN_CALL_S:
            attempt += 1
            self._tick()
            try:
                with kafka_errors():
                    producer.commit_transaction(timeout)
            except KafkaError as exc:
                if exc.retriable and not (exc.txn_requires_abort or exc.fatal):
                    time.sleep(max(0.0, min(0.2 * attempt, self._deadline - self._clock())))
                    continue
                logger.warning("resumed commit failed", extra={"error": str(exc)})
                self._commit_unresolved = False
                if exc.txn_requires_abort:
                    self._abort_quietly()
                return
            self._commit_unresolved = False
            self._in_txn = False
            logger.info(
                "the commit whose outcome was unknown completed on close", extra={"attempts": attempt}
            )
            return
        logger.warning(
            "commit outcome still unknown on close: the broker aborts the transaction after "
            "kafka.transaction_timeout_ms unless it committed, or when this transactional.id starts again"
        )

    def _commit_or_recover(self) -> None:
        """Commit; a transaction that was not committed is aborted and its input read again.

        Aborting is always safe before the commit is decided: the buffered state is dropped and every
        partition goes back to its committed offset. A fatal error (e.g. fenced) stops the stage, and
        so do commits failing in a row for `kafka.transaction_timeout_ms`: the producer is wedged (seen
        after a 50 s broker hang: each `send_offsets_to_transaction` timed out with its request to the
        transaction coordinator queued, never sent, while the aborts succeeded). A restart starts a
        new producer.
        """
        started = self._clock()
        try:
            self._commit(commit_attempts=5)
        except KafkaError as exc:
            if exc.fatal:
                raise StateError(f"transaction commit failed: {exc}") from exc
            logger.warning("transaction must abort", extra={"error": str(exc)})
            now = self._clock()
            since = self._commit_failing_since
            if since is None or started - self._commit_failed_at > self._transaction_timeout_s:
                since = self._commit_failing_since = started  # a new row (long quiet since the last)
            self._commit_failed_at = now
            self._abort_and_rewind(exc)
            failing = now - since
            if failing >= self._transaction_timeout_s and since < started:  # two failures at least
                raise StateError(
                    f"transactions have failed to commit for {failing:.0f} s ({exc}); stopping so "
                    "that a restart starts a new producer"
                ) from exc

    def _abort_quietly(self) -> None:
        """Abort the open transaction (retrying until the step's deadline) and drop what it buffered.

        An abort not done by the deadline leaves `_abort_pending`: the next step tries again before
        anything else (`_finish_abort`).

        Raises:
            StateError: (not while closing) aborts have kept failing for `kafka.transaction_timeout_ms`: the
                producer is wedged (seen after a 50 s broker hang: its request to the transaction
                coordinator stayed queued, never sent, each abort timing out). The broker has aborted
                the transaction itself by then; a restart starts a new producer.
        """
        wedged: StateError | None = None
        if self._producer is not None and (self._in_txn or self._abort_pending):
            self._abort_pending = True  # until an abort succeeds: the next step tries again
            for attempt in range(3):
                timeout = self._time_left(min(_ABORT_TIMEOUT_S, self._wait_cap_s))
                if timeout < MIN_CALL_S:
                    logger.info("abort left for the next step: the step is out of time")
                    break
                self._tick()
                try:
                    self._producer.abort_transaction(timeout)
                    self._abort_pending = False
                    self._abort_failing_since = None
                    self._abort_error = None
                    break
                except KafkaException as exc:
                    error = self._abort_error = translate(exc)
                    logger.warning("abort failed", extra={"error": str(error)})
                    now = self._clock()
                    if self._abort_failing_since is None:
                        self._abort_failing_since = now
                    failing = now - self._abort_failing_since
                    if not self._closing and failing >= self._transaction_timeout_s:
                        wedged = StateError(
                            f"the producer could not abort its transaction for {failing:.0f} s ({error}); "
                            "stopping so that a restart starts a new producer"
                        )
                        break
                    if not error.retriable:
                        break  # fatal: the next step stops the stage (`_finish_abort`)
                    time.sleep(max(0.0, min(0.5 * (attempt + 1), self._deadline - now)))
        self._txn.abort()
        self._offsets.clear()
        self._routed.clear()
        self._dirty.clear()
        self._in_txn = False
        if wedged is not None:
            raise wedged

    def _finish_abort(self) -> bool:
        """Try again an abort that an earlier call could not end; True once no abort is pending.

        Raises:
            KafkaError: the abort failed with a fatal error (e.g. fenced): the stage stops.
            StateError: aborts have kept failing for `kafka.transaction_timeout_ms` (`_abort_quietly`).
        """
        self._abort_quietly()
        if self._abort_pending and self._abort_error is not None and self._abort_error.fatal:
            raise self._abort_error
        return not self._abort_pending

    def _abort_and_rewind(self, cause: KafkaError | None = None) -> None:
        """Abort, drop the buffered state, seek every assigned partition back to its committed offset.

        Raises:
            StateError: `cause` is the broker refusing a record as too large, after a topic's limit
                was lowered (`_check_refused_size`), or the producer is wedged (`_abort_quietly`).
        """
        self._abort_quietly()
        self.stats.aborts += 1
        self._rewind_pending = True
        self._rewind()
        if cause is not None:
            self._check_refused_size(cause)

    def _rewind(self) -> None:
        """Seek every assigned partition to its committed offset (`_rewind_pending` until done).

        The group may be rebalancing (the session expired while the broker was away) and the committed
        offsets unreadable until this consumer polls again, or the step out of time: then the stage
        polls, drops what it fetched, and tries again; a new assignment starts at the committed
        offsets anyway.
        """
        consumer, _ = self._clients()
        if not self._assigned:
            self._rewind_pending = False
            return
        committed = self._read_committed()
        if committed is None:
            return
        self._rewind_pending = False
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                # not yet fetching: the assignment's committed offset applies anyway
                logger.debug("seek after abort failed", extra={"error": str(translate(exc))})

    def _read_committed(self) -> list[TopicPartition] | None:
        """The assigned partitions' committed offsets (within the step's deadline); None: not now.

        They are what this member would send again to be fenced (`_committed`), so they are kept.
        """
        consumer, _ = self._clients()
        timeout = self._time_left(min(_COMMITTED_TIMEOUT_S, self._wait_cap_s))
        if timeout < MIN_CALL_S:
            logger.info("committed offsets left for the next step: the step is out of time")
            return None
        self._tick()
        try:
            with kafka_errors():
                committed: list[TopicPartition] = consumer.committed(self._assigned, timeout=timeout)
        except KafkaError as exc:
            if exc.fatal:
                raise
            # e.g. _TIMED_OUT (which librdkafka does not flag retriable) while the group rebalances
            logger.warning("committed offsets not readable yet; retrying", extra={"error": str(exc)})
            return None
        failed = [tp for tp in committed if tp.error is not None]
        if failed:
            # an offset not read is not "none committed": seeking to the start would re-read it all
            logger.warning(
                "committed offsets not readable yet; retrying", extra={"error": str(failed[0].error)}
            )
            return None
        for tp in committed:
            if tp.offset >= 0:
                self._committed.setdefault((tp.topic, tp.partition), tp.offset)
        return committed

    def _fencing_offsets_known(self) -> bool:
        """True once a transaction that consumes nothing has offsets to send (see `_commit`).

        Until this member's first commit in an assignment, they are read from the group: the
        assignment's committed offsets (a partition with none cannot serve).
        """
        if not self._committed and self._assigned:
            self._read_committed()
        return bool(self._committed)

    # -- rebalances and restore ------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="assigned").inc()
        self._assigned = list(partitions)
        self._rewind_pending = False  # a new assignment starts at the committed offsets
        self._commit_failing_since = None  # failed commits in a row count within one assignment
        consumer.assign(partitions)
        changes = [tp.partition for tp in partitions if tp.topic == self._changes_topic]
        if changes and self._restorer is not None:
            consumer.pause([TopicPartition(self._changes_topic, p) for p in changes])
            self._restorer.begin(changes)
            self._ready.clear()
        elif self._restorer is None or not self._restorer.pending:
            self._ready.set()
        logger.info("partitions assigned", extra={"changes_partitions": changes, "count": len(partitions)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self._commit_failing_since = None
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="revoked").inc()
        if self._in_txn:
            try:
                # two attempts of at most `_wait_cap_s` each (30 s by default): the loop ticks between
                self._commit(commit_attempts=2)
            except StateError as exc:
                # outcome unknown: only commit_transaction may be repeated now (librdkafka refuses an
                # abort while the commit can resume): stop at the next step, close() resumes it
                logger.warning("commit on revoke: outcome unknown; stopping", extra={"error": str(exc)})
                self._stopping_error = exc
            except KafkaError as exc:
                # the partitions' state is dropped below: whatever the outcome, it is restored from Kafka
                logger.warning("commit on revoke failed; aborting", extra={"error": str(exc)})
                if exc.fatal:
                    # the producer is unusable (fenced, ...): the stage stops at its next step (an
                    # exception raised here would be lost inside the client's rebalance callback)
                    self._stopping_error = StateError(f"transaction commit failed on revocation: {exc}")
                self._abort_quietly()
        for tp in partitions:
            if tp.topic == self._changes_topic:
                self._store.drop_partition(tp.partition)
                self._txn.drop_partition(tp.partition)
                for k in [k for k in self._dirty if k[0] == tp.partition]:
                    del self._dirty[k]
                if self._restorer is not None:
                    self._restorer.cancel(tp.partition)
                if self._metrics is not None:  # another replica holds these customers now
                    with contextlib.suppress(KeyError):
                        self._metrics.state_customers.remove(str(tp.partition))
        self._assigned = []
        self._committed.clear()
        self._expiring.clear()
        self._ready.clear()

    def _restore_step(self) -> None:
        consumer, _ = self._clients()
        assert self._restorer is not None
        done = self._restorer.step(deadline=self._deadline)
        for p in done:
            consumer.resume([TopicPartition(self._changes_topic, p)])
        self.stats.restored_records = self._restorer.records
        if done:
            collector_tuning.freeze_now()
        if self._metrics is not None:  # one observation per restored partition
            for seconds in self._restorer.drain_durations():
                self._metrics.restore_duration.observe(seconds)
        if not self._restorer.pending:
            self._ready.set()
            if self._metrics is not None:
                for tp in self._assigned:
                    if tp.topic == self._changes_topic:
                        count = sum(1 for _ in self._store.items(tp.partition))
                        self._metrics.state_customers.labels(partition=str(tp.partition)).set(count)

    def _sweep(self) -> None:
        """Tombstone customers whose delete markers expired (state.delete_marker_ttl_hours).

        It may run while a transaction is open: customers changed in it are left to the commit's
        projection, which writes their whole state; the others are read through the transaction.
        A transaction it opens sends offsets too, so that a member the group dropped is fenced: until
        the assignment's committed offsets are known (`_fencing_offsets_known`) it writes nothing and
        tries again at the next sweep.

        A pass writes until the transaction holds `kafka.commit_max_records` records: a mass delete
        expiring at once must not make one transaction outlive `kafka.transaction_timeout_ms` (the
        producer would be fenced, at every restart again). The keys left wait in `_expiring`; the
        next step commits and sweeps on from there, not a minute later.
        """
        _, producer = self._clients()
        now = self._wall_ms()
        if not self._expiring:
            self._last_sweep = self._clock()
            self._expiring = self._expired_keys(now)
        pending = self._expiring
        sweepable = self._sweepable_partitions()
        while pending:
            if self._in_txn and self._txn_records >= self._commit_max:
                return  # the rest after this transaction's commit
            partition, key = pending.popleft()
            if partition not in sweepable or (partition, key) in self._dirty:
                continue  # revoked or restoring; or changed in the open transaction (written at commit)
            # what this transaction already wrote for the key (an earlier sweep), else the store
            state = self._txn.get(partition, key)
            if state is None:
                continue
            try:
                expired = expire_markers(state, now_ms=now, ttl_ms=self._ttl_ms)
            except (*_ODD_VALUE, AttributeError):  # a state record of odd shape: left as it is
                continue
            if expired is state:
                continue  # changed since the scan
            if not self._in_txn and not self._fencing_offsets_known():
                logger.info("delete-marker sweep postponed: the committed offsets are not known yet")
                pending.clear()
                return
            self._begin(producer)
            self._write_state(producer, partition, key, expired)
            self._txn_records += 1

    def _purge_merged(self, admin: AdminClient) -> None:
        """Delete the changes records merged and committed (Kafka Streams' repartition-topic purge).

        The changes topic has no retention (`internal_topics`): once a change is routed its source
        offset is committed, so its record is the only copy until merged. Each owned changes partition
        is deleted below the offset committed for it (`_committed`: this member's committed
        transactions, or the group's committed offset for its assignment), never beyond, and only
        when that moved on. The request runs in the background; its failure (e.g. no DELETE ACL on
        the topic, the broker away) is logged and the next interval asks again: never fatal.
        """
        self._last_purge = self._clock()
        if self._changes_topic in self._source_topics:
            return  # a source topic playing the changes topic's role: its records are not ours to delete
        for partition, (offset, request) in list(self._purges.items()):
            if not request.done():
                return  # still in flight: no second request on top of it
            del self._purges[partition]
            error = request.exception(0)
            if error is None:
                self._purged[partition] = max(offset, self._purged.get(partition, 0))
                continue
            logger.warning(
                "merged changes not deleted; retried at the next purge (deleting records needs the "
                "DELETE operation on state.changes_topic)",
                extra={
                    "topic": self._changes_topic,
                    "partition": partition,
                    "error": str(translate(error) if isinstance(error, KafkaException) else error),
                },
            )
        owned = {tp.partition for tp in self._assigned if tp.topic == self._changes_topic}
        below = {
            p: offset
            for (topic, p), offset in self._committed.items()
            if topic == self._changes_topic and p in owned and offset > self._purged.get(p, 0)
        }  # an offset > 0 only: OFFSET_END (-1) would delete the whole partition
        if not below:
            return
        try:
            requests = admin.delete_records(
                [TopicPartition(self._changes_topic, p, o) for p, o in sorted(below.items())],
                request_timeout=_PURGE_TIMEOUT_S,
            )
        except (KafkaException, ValueError) as exc:
            logger.warning("merged changes not deleted; retried at the next purge", extra={"error": str(exc)})
            return
        for tp, request in requests.items():
            self._purges[tp.partition] = (below[tp.partition], request)
        logger.debug("deleting merged changes", extra={"topic": self._changes_topic, "below": below})

    def _sweepable_partitions(self) -> set[int]:
        """The assigned changes partitions that are not restoring."""
        return {
            tp.partition
            for tp in self._assigned
            if tp.topic == self._changes_topic
            and not (self._restorer and self._restorer.is_restoring(tp.partition))
        }

    def _expired_keys(self, now: int) -> deque[tuple[int, str]]:
        """(partition, key) of every customer with an expired delete marker (read, nothing written)."""
        found: deque[tuple[int, str]] = deque()
        for partition in sorted(self._sweepable_partitions()):
            held = 0
            for key, _ in self._store.items(partition):  # writes go to the transaction, not the store
                held += 1
                if (partition, key) in self._dirty:
                    continue  # changed in the open transaction: projected and written at commit
                state = self._txn.get(partition, key)
                if state is None:
                    continue
                try:
                    expired = expire_markers(state, now_ms=now, ttl_ms=self._ttl_ms)
                except (*_ODD_VALUE, AttributeError):  # a state record of odd shape: left as it is
                    logger.warning("state record not swept", extra={"partition": partition})
                    continue
                if expired is not state:
                    found.append((partition, key))
            if self._metrics is not None:  # customers held (committed), refreshed with each sweep
                self._metrics.state_customers.labels(partition=str(partition)).set(held)
        return found


def _change_record(customer_key: str, change: RoutedChange) -> RawRecord:
    """The DLQ copy of a change: it names the source record; its value is the change (the row as decoded)."""
    origin = change.origin
    return RawRecord(
        origin.topic, origin.partition, origin.offset, customer_key.encode(), encode_change(change)
    )


def new_instance_id() -> str:
    """A random instance id (tests running several instances in one process)."""
    return uuid.uuid4().hex[:12]
