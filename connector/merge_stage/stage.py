"""The merge stage's run loop: poll, hand each record to its side, commit when due, restore on assignment.

`MergeStage` owns the clients, the loop and the rebalance callbacks; routing (`repartition`), merging
(`merging`), the transaction (`transactions`, `positions`) and the sweep (`sweep`) are its collaborators.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import KafkaError, SchemaRegistryUnavailableError, StateError
from connector.gctune import collector_tuning, weak_method
from connector.kafka.clients import (
    admin_config,
    consumer_config,
    default_instance_id,
    kafka_errors,
    producer_config,
    translate,
)
from connector.kafka.topics import ensure_topics, topic_limits
from connector.merge_stage.budget import StepBudget
from connector.merge_stage.dead_letters import DeadLetters
from connector.merge_stage.handles import StageHandles
from connector.merge_stage.limits import RecordLimits
from connector.merge_stage.merging import Merger
from connector.merge_stage.positions import Positions
from connector.merge_stage.repartition import Decoder, Repartitioner
from connector.merge_stage.stats import MergeStats
from connector.merge_stage.sweep import PURGE_INTERVAL_S, Sweeper
from connector.merge_stage.transactions import SEND_OFFSETS_TIMEOUT_S, TransactionControl
from connector.metrics import Metrics
from connector.projection import Projector
from connector.routing import Router
from connector.state.recovery import MIN_CALL_S, Restorer
from connector.state.store import MemoryStore, StateStore

__all__ = ["MergeStage", "new_instance_id"]

logger = logging.getLogger(__name__)


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
        purge_interval_s: float = PURGE_INTERVAL_S,
    ) -> None:
        self.settings = settings
        self._store = store or MemoryStore()
        router = Router(settings)
        self._clock = clock
        self._metrics = metrics
        self._create_topics = create_topics
        self.stats = MergeStats()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.instance_id = instance_id or default_instance_id()
        kafka = settings.kafka
        self.transactional_id = f"{kafka.transactional_id_prefix}-{kafka.group_id}-{self.instance_id}"
        self._changes_topic = settings.state.changes_topic
        self._source_topics = set(router.topics)
        self._commit_interval = kafka.commit_interval_ms / 1000.0
        self._commit_max = kafka.commit_max_records
        self._limits = RecordLimits(settings)
        # clients, restorer and assignment: the collaborators below reach them through `handles`, so
        # that none of them holds the stage (no reference cycle: see handles.py)
        self._handles = handles = StageHandles()
        self._rewound: set[int] = set()  # restoring changes partitions sought back in this poll batch
        # what the blocking calls of one step may take in all (send_offsets, commit and abort attempts,
        # committed offsets, restore reads): the loop must poll again within max.poll.interval.ms (a
        # fifth and 15 s kept for the work between the calls). What does not fit waits for the next step.
        step_budget_s = max(5.0, 0.8 * kafka.max_poll_interval_ms / 1000 - SEND_OFFSETS_TIMEOUT_S)
        # the longest one blocking call may wait: the loop ticks (`StepBudget.tick`) before each, so
        # /healthz (observability.liveness_timeout_s) stays alive through a commit retried on a slow
        # broker and the stall watchdog (observability.stall_exit_s) sees only a call that does not return
        watched = [settings.observability.liveness_timeout_s, settings.observability.stall_exit_s]
        wait_cap_s = max(MIN_CALL_S, min(w for w in watched if w > 0) / 2)
        self._budget = StepBudget(clock=clock, step_s=step_budget_s, wait_cap_s=wait_cap_s, on_tick=on_tick)
        self._stopping_error: StateError | None = None  # a fatal error met inside a rebalance callback
        dead_letters = DeadLetters(settings.output.dlq_topic, self._limits, self.stats, metrics)
        self._repartitioner = Repartitioner(
            changes_topic=self._changes_topic,
            partitions=settings.state.partitions,
            decoder=decoder,
            router=router,
            limits=self._limits,
            dead_letters=dead_letters,
            stats=self.stats,
            metrics=metrics,
        )
        self._merger = Merger(
            store=self._store,
            state_topic=settings.state.topic,
            upserts_topic=settings.output.upserts_topic,
            changes_topic=settings.state.changes_topic,
            partitions=settings.state.partitions,
            projector=projector,
            wall_ms=wall_ms,
            limits=self._limits,
            dead_letters=dead_letters,
            stats=self.stats,
            metrics=metrics,
        )
        limits, budget = self._limits, self._budget
        self._positions = Positions(clients=handles.clients, assigned=lambda: handles.assigned, budget=budget)
        self._transactions = TransactionControl(
            clients=handles.clients,
            producer=lambda: handles.producer,
            positions=self._positions,
            budget=self._budget,
            merger=self._merger,
            repartitioner=self._repartitioner,
            stats=self.stats,
            metrics=metrics,
            transaction_timeout_s=kafka.transaction_timeout_ms / 1000,
            check_refused=lambda error: limits.check_refused_size(error, handles.admin, budget),
        )
        self._sweeper = Sweeper(
            changes_topic=self._changes_topic,
            source_topics=self._source_topics,
            store=self._store,
            merger=self._merger,
            transactions=self._transactions,
            positions=self._positions,
            clients=handles.clients,
            assigned=lambda: handles.assigned,
            restoring=handles.restoring,
            clock=clock,
            wall_ms=wall_ms,
            ttl_ms=int(settings.state.delete_marker_ttl_hours * 3600 * 1000),
            commit_max=self._commit_max,
            purge_interval_s=purge_interval_s,
            metrics=metrics,
        )

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
        self._transactions.inject_abort(count)

    @property
    def injected_aborts(self) -> list[tuple[int, int]]:
        """Test hook: (customers merged, upserts written) of each transaction an injected abort ended."""
        return self._transactions.injected_aborts

    def start(self) -> None:
        """Check topics, create the clients, init transactions, subscribe."""
        admin = AdminClient(admin_config(self.settings))
        ensure_topics(admin, self.settings, create=self._create_topics)
        self._admin = admin
        batch = self._limits.apply(topic_limits(admin, self._limits.topics))
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
        # the consumer calls back into the stage: weak methods, or a stage dropped without `close()`
        # would be cyclic and freed by the collector, on whatever thread it runs (gctune.py)
        self._consumer.subscribe(
            topics, on_assign=weak_method(self._on_assign), on_revoke=weak_method(self._on_revoke)
        )
        logger.info(
            "merge stage started",
            extra={"transactional_id": self.transactional_id, "topics": topics},
        )

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
        self._budget.start()  # the revocation in consumer.close() too
        try:
            self._transactions.close()
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
        deadline (`StepBudget`), the step budget from its start: what does not fit before it (an
        abort, the seek back to the committed offsets, a restore read, a commit not yet started) is
        left pending for the next step, so the loop polls again within `kafka.max_poll_interval_ms`.
        """
        consumer, producer = self._handles.clients()
        transactions = self._transactions
        self._budget.tick()
        self._budget.start()
        try:
            msgs = consumer.consume(num_messages=1000, timeout=0.05)
        except KafkaException as exc:
            raise translate(exc) from exc
        if self._stopping_error is not None:
            raise self._stopping_error
        if transactions.abort_pending and not transactions.finish_abort():
            # out of time, or the abort failed again: what was fetched is read again once it ends
            if msgs:
                self._positions.rewind_pending = True
            return
        if self._positions.rewind_pending:
            # an abort could not read the committed offsets yet: what was fetched is read again later
            self._positions.rewind()
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
            self._repartitioner.flush_routed(producer)
        except SchemaRegistryUnavailableError as exc:
            logger.warning("schema registry unavailable; rolling back and waiting", extra={"error": str(exc)})
            transactions.abort_and_rewind()
            time.sleep(max(0.0, self._budget.time_left(2.0)))
            return
        except (KafkaException, KafkaError) as exc:
            self._roll_back(exc)
            return
        if self._metrics is not None:
            for (topic, partition), ts in latest.items():
                self._metrics.record_consumed(topic, partition, ts)
        if transactions.in_txn:
            now = self._clock()
            if (
                now - transactions.txn_started >= self._commit_interval
                or transactions.txn_records >= self._commit_max
            ) and self._budget.deadline - now >= self._budget.step_s / 2:
                # (a commit started late in the step could run out of time once decided, its outcome
                # unknown: it waits for the next step, which starts with the whole budget)
                transactions.commit_or_recover()
        if self._restorer is not None and self._restorer.pending:
            self._restore_step()
        if self._metrics is not None:  # librdkafka's statistics freeze a paused partition's end
            restoring = self._restorer.restoring() if self._restorer is not None else ()
            self._metrics.track_paused(consumer, [TopicPartition(self._changes_topic, p) for p in restoring])
        if not transactions.abort_pending and self._sweeper.sweep_due():
            try:
                self._sweeper.sweep()
            except (KafkaException, KafkaError) as exc:
                self._roll_back(exc)
        if self._admin is not None and self._sweeper.purge_due():
            self._sweeper.purge_merged(self._admin)

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
        self._transactions.abort_and_rewind(error)

    # the stage's own view of its handles (tests swap clients and restorer through these too)

    @property
    def _consumer(self) -> Consumer | None:
        return self._handles.consumer

    @_consumer.setter
    def _consumer(self, value: Consumer | None) -> None:
        self._handles.consumer = value

    @property
    def _producer(self) -> Producer | None:
        return self._handles.producer

    @_producer.setter
    def _producer(self, value: Producer | None) -> None:
        self._handles.producer = value

    @property
    def _admin(self) -> AdminClient | None:
        return self._handles.admin

    @_admin.setter
    def _admin(self, value: AdminClient | None) -> None:
        self._handles.admin = value

    @property
    def _restorer(self) -> Restorer | None:
        return self._handles.restorer

    @_restorer.setter
    def _restorer(self, value: Restorer | None) -> None:
        self._handles.restorer = value

    @property
    def _assigned(self) -> list[TopicPartition]:
        return self._handles.assigned

    @_assigned.setter
    def _assigned(self, value: list[TopicPartition]) -> None:
        self._handles.assigned = value

    def _handle(self, msg: Any, producer: Producer) -> None:
        topic = msg.topic()
        partition = msg.partition()
        if topic == self._changes_topic and self._handles.restoring(partition):
            # fetched before the pause took effect: re-read it after the restore. Once per partition
            # and poll batch, at its first (lowest) offset: the last seek wins, and seeking again at
            # each record would skip all but the batch's last.
            if partition not in self._rewound:
                self._rewound.add(partition)
                self._consumer.seek(TopicPartition(topic, partition, msg.offset()))  # type: ignore[union-attr]
            return
        self._transactions.begin(producer)
        if topic == self._changes_topic:
            self._merger.merge(msg, producer)
        elif topic in self._source_topics:
            self._repartitioner.route(msg, producer)
        self._transactions.consumed(topic, partition, msg.offset())

    # -- rebalances and restore ------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="assigned").inc()
        self._assigned = list(partitions)
        self._positions.rewind_pending = False  # a new assignment starts at the committed offsets
        self._transactions.commit_failing_since = None  # failed commits in a row count within one assignment
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
        transactions = self._transactions
        self.stats.rebalances += 1
        transactions.commit_failing_since = None
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="revoked").inc()
        if transactions.in_txn:
            try:
                # two attempts of at most `wait_cap_s` each (30 s by default): the loop ticks between
                transactions.commit(commit_attempts=2)
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
                transactions.abort_quietly()
        for tp in partitions:
            if tp.topic == self._changes_topic:
                self._store.drop_partition(tp.partition)
                self._merger.drop_partition(tp.partition)
                if self._restorer is not None:
                    self._restorer.cancel(tp.partition)
                if self._metrics is not None:  # another replica holds these customers now
                    with contextlib.suppress(KeyError):
                        self._metrics.state_customers.remove(str(tp.partition))
        self._assigned = []
        self._positions.committed.clear()
        self._sweeper.forget_expiring()
        self._ready.clear()

    def _restore_step(self) -> None:
        consumer, _ = self._handles.clients()
        assert self._restorer is not None
        done = self._restorer.step(deadline=self._budget.deadline)
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


def new_instance_id() -> str:
    """A random instance id (tests running several instances in one process)."""
    return uuid.uuid4().hex[:12]
