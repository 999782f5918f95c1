"""The deliver stage's run loop: upserts topic (read_committed) -> Yespo contacts API.

Records are gathered into a batch (at most `yespo.batch_size`, or after `yespo.batch_linger_ms`),
planned (`sink.batch.plan`: last record per customer wins) and sent by `sink.delivery`: bulk upsert
chunks (or single calls), then segment attach/detach, then deletes. A record's offset is committed
only once its outcome is final: delivered, or written to the DLQ (with an audit record); DLQ and
audit writes wait in the batch until then and are flushed before the commit. Retryable failures
(429, 5xx, timeouts) pause every assigned partition and retry the rest of the batch after a backoff
while the consumer keeps polling (no `max.poll.interval.ms` breach, no rebalance). 401/403 stop the
stage: nothing is committed and nothing is dead-lettered (a configuration problem must not lose
records).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, Final

from confluent_kafka import Consumer, Producer, TopicPartition

from connector.config import Settings
from connector.deliver.commits import OffsetCommitter
from connector.deliver.flow import PartitionFlow
from connector.deliver.gathering import Gathering
from connector.deliver.history import HistoryReader, read_history, seed_last_writes
from connector.deliver.keycheck import check_key
from connector.deliver.outbox import Outbox, broker_topic_limits
from connector.deliver.rebalance import Rebalance
from connector.deliver.runner import MAX_IN_FLIGHT, SEND_THREAD_PREFIX, Runner
from connector.deliver.window import BatchWindow
from connector.errors import KafkaError, StateError
from connector.gctune import collector_tuning, weak_method
from connector.kafka.clients import consumer_config
from connector.metrics import Metrics
from connector.sink.batch import LastWrites
from connector.sink.batch_state import Batch
from connector.sink.client import YespoClient
from connector.sink.delivery import BatchDelivery
from connector.sink.recorder import DeliverStats, OutcomeRecorder

__all__ = ["DeliverStage"]

logger = logging.getLogger(__name__)

_CONSUME_CHUNK: Final = 500
_POLL_IDLE_S: Final = 0.1
_POLL_BUSY_S: Final = 0.01
"""consume() timeouts: nothing on the wire / attempts on the wire (their outcome is collected next)."""


class DeliverStage:
    """One process's share of the deliver stage. `run()` loops until `stop()` or a fatal error.

    Args:
        settings: the whole configuration (topics, group, batch size, mode).
        client: the Yespo client (its rate limiter paces every request).
        clock: monotonic seconds (linger, backoff).
        wall_ms: epoch milliseconds for audit records.
        metrics: Prometheus metrics, if served.
        on_tick: called once per loop turn (liveness).
        consumer_factory: builds the consumer from its librdkafka config (tests pass a fake).
        producer_factory: builds the DLQ/audit producer from its config (tests pass a fake).
        sleep: how `poll_import_status` waits between status requests.
        runner: runs delivery attempts; default: a pool of `max_in_flight` worker threads, so the loop
            keeps polling (and gathers the next batch) while batches are on the wire.
        max_in_flight: batches on the wire at once. A batch starts only when it shares no customer
            with a batch still open, so each customer's records reach Yespo in topic order; offsets
            are committed in batch order.
        on_close: called by `close()` after the Kafka clients (e.g. to close an owned httpx client).
        topic_limits: topic -> `max.message.bytes` of the DLQ and audit topics (default: asked of the
            broker at start-up); DLQ copies and producer batches are fitted under them.
        history: reads back committed upserts records on assignment (default: `read_history`), as
            many per partition as `yespo.read_back_records` says.

    Raises (from `run`):
        AuthenticationError: the API key was refused (401/403); nothing of the batch was committed or
            dead-lettered.
        PermanentDeliveryError: a whole request was refused with a status that does not blame its
            content (404/405/415 on a write: a wrong `yespo.base_url`); nothing is lost either.
        KafkaError, StateError: the broker or the DLQ producer failed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: YespoClient,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        metrics: Metrics | None = None,
        on_tick: Callable[[], None] | None = None,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
        sleep: Callable[[float], None] = time.sleep,
        runner: Runner | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        on_close: Callable[[], None] | None = None,
        topic_limits: Callable[[list[str]], Mapping[str, int]] | None = None,
        history: HistoryReader | None = None,
    ) -> None:
        self.settings = settings
        self._history = history or functools.partial(read_history, settings)
        self._topic_limits = topic_limits or functools.partial(broker_topic_limits, settings)
        self._client = client
        self._clock = clock
        self._metrics = metrics
        self._on_tick = on_tick
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._on_close = on_close
        self._runner = runner
        self._executor: ThreadPoolExecutor | None = None
        self._max_in_flight = max(1, max_in_flight)
        self._fatal: BaseException | None = None
        self.stats = DeliverStats()
        # a commit the group coordinator cannot take yet (e.g. just after a broker hang) is retried
        # this long, well within max.poll.interval.ms (the loop does not poll meanwhile)
        self._offsets = OffsetCommitter(
            self.stats,
            retry_s=min(30.0, settings.kafka.max_poll_interval_ms / 2000),
            clock=clock,
            sleep=sleep,
        )
        self._recorder = OutcomeRecorder(
            self.stats,
            dlq_topic=settings.output.dlq_topic,
            audit_topic=settings.output.audit_topic,
            metrics=metrics,
            wall_ms=wall_ms,
            max_bytes=settings.kafka.message_max_bytes,
        )
        self._delivery = BatchDelivery(
            client,
            self._recorder,
            mode=settings.yespo.mode,
            batch_size=settings.yespo.batch_size,
            poll_import_status=settings.yespo.poll_import_status,
            import_timeout_s=settings.yespo.import_status_timeout_s,
            import_error_attempts=settings.yespo.import_error_attempts,
            sleep=sleep,
            clock=clock,
        )
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._topic = settings.output.upserts_topic
        self._batch_size = settings.yespo.batch_size
        self._linger = settings.yespo.batch_linger_ms / 1000.0
        self._mode = settings.yespo.mode
        self._consumer: Consumer | None = None
        self._outbox: Outbox | None = None
        self._batches = BatchWindow(self._delivery, client, self.stats, clock)
        self._last_writes = LastWrites()  # per contact: the key and source position of its last record
        self._gathering = Gathering(self._recorder, self._last_writes, self.stats, clock, metrics)
        self._flow = PartitionFlow(clock)
        self._rebalance = Rebalance(
            batches=self._batches,
            gathering=self._gathering,
            flow=self._flow,
            offsets=self._offsets,
            client=client,
            stats=self.stats,
            metrics=metrics,
            settle=weak_method(self._settle),  # Rebalance calls back: no cycle (gctune.weak_method)
            seed=weak_method(self._seed),
            keep_fatal=weak_method(self._keep_fatal),
            ready=self._ready,
        )

    @property
    def _window(self) -> list[Batch]:
        """The batches formed and not yet committed, oldest first (read by tests and diagnostics)."""
        return self._batches.batches

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish: a batch on the wire is finished and committed, a waiting one is not."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """True once partitions are assigned (the API key was not refused at start-up)."""
        return self._ready.is_set()

    @property
    def paused(self) -> bool:
        """True while the assigned partitions are paused for a retry backoff."""
        return self._flow.paused and self._flow.backing_off

    def start(self) -> None:
        """Resolve custom fields, check the API key, create clients, subscribe.

        Raises:
            ConfigError: a custom field name is unknown, or `yespo.base_url` answers 404 or a redirect.
            AuthenticationError: the API key was refused.
        """
        self._client.resolve_fields()
        for name in self._client.dropped_fields:
            logger.warning("mapped field cannot be sent to Yespo and is dropped", extra={"field": name})
        check_key(self._client)
        if self._runner is None:
            self._executor = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix=SEND_THREAD_PREFIX)
            self._runner = self._executor.submit
        self._outbox = Outbox(
            self.settings,
            self._recorder,
            producer_factory=self._producer_factory,
            topic_limits=self._topic_limits,
        )
        extra: dict[str, Any] = {}
        if self._metrics is not None:
            extra = {"statistics.interval.ms": 5000, "stats_cb": self._metrics.update_from_librdkafka_stats}
        self._consumer = self._consumer_factory(
            consumer_config(self.settings, self.settings.kafka.deliver_group, **extra)
        )
        self._consumer.subscribe(
            [self._topic],
            on_assign=self._rebalance.on_assign,
            on_revoke=self._rebalance.on_revoke,
            on_lost=self._rebalance.on_lost,
        )
        logger.info("deliver stage started", extra={"topic": self._topic, "mode": self._mode})

    def run(self) -> None:
        """Start and loop until stopped (the garbage collector tuned meanwhile: `collector_tuning`)."""
        try:
            self.start()
            with collector_tuning.applied():
                while not self._stop.is_set():
                    self.step()
                self._drain()
        finally:
            self.close()

    def _drain(self) -> None:
        """On a requested stop: let the batches on the wire finish; commit what is final, in order."""
        self._batches.wait(self._on_tick)
        self._batches.collect(on_error="drop")
        self._commit_final()
        if self._offsets.pending and self._consumer is not None:
            try:
                self._offsets.commit(self._consumer, [])
            except KafkaError as exc:  # their records are delivered again after the restart
                logger.warning("offsets not committed on stop", extra={"error": str(exc)})

    def close(self) -> None:
        """Close the clients; an unfinished batch stays uncommitted and writes nothing."""
        self._batches.wait(self._on_tick)  # the workers must not use clients that are closing
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._batches.abandon()
        self._gathering.discard()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()
        if self._outbox is not None:
            outbox, self._outbox = self._outbox, None
            outbox.close()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    # -- the loop --------------------------------------------------------------------------------

    def step(self) -> None:
        """Poll (to stay in the group), gather, collect finished attempts, start the next ones.

        Each turn advances the batches (below), consumes into the gathering batch (at most
        `_CONSUME_CHUNK` records, so finished attempts are not left waiting behind a long gather; not
        while it is full: then it waits a moment for an attempt on the wire), and advances again.
        """
        consumer = self._consumer_or_fail()
        self._tick()
        if self._fatal is not None:
            raise self._fatal
        self._advance()
        room = self._batch_size - len(self._gathering.records)
        inflight = self._batches.inflight()
        if room > 0 or self._flow.paused:
            # While a batch waits for its retry or the gathering batch is full, the partitions are
            # paused (`PartitionFlow.sync`), so this only serves the group protocol; a message that
            # still arrives is gathered, never dropped. consume() waits out its timeout unless a
            # whole chunk arrives, so with attempts on the wire it comes back soon to collect them
            # (a drained topic would hold their commit back).
            timeout = _POLL_BUSY_S if inflight else _POLL_IDLE_S
            self._gathering.consume(consumer, min(max(1, room), _CONSUME_CHUNK), timeout)
        elif inflight:  # full for a moment: wait for an attempt (`PartitionFlow.sync` pauses if it lasts)
            wait_for(inflight, timeout=0.1, return_when=FIRST_COMPLETED)
        elif self._batches.batches:
            self._stop.wait(0.01)  # the window is full of batches that wait for their retry time
        self._advance()
        if self._offsets.due():
            self._offsets.commit(consumer, [])
        if self._metrics is not None:  # librdkafka's statistics freeze a paused partition's end
            self._metrics.track_paused(consumer, self._flow.lagging())

    def _advance(self) -> None:
        """Move the batches along, in numbered steps.

        1. Collect finished attempts (a retryable failure schedules a retry). 2. Form the next batch
        and start every attempt that is due. 3. Produce the DLQ/audit writes of the leading final
        batches, flush them and commit their offsets (while the next batches are already on the
        wire). 4. Pause while a batch waits for its retry.
        """
        self._batches.collect()
        self._commit_final()  # frees its place in the window before the next batch is formed
        self._form_batch()
        self._batches.start_due(self._runner)
        self._batches.collect()  # an inline runner has finished already
        self._commit_final()
        self._flow.sync(
            self._consumer,
            waiting=self._batches.waiting(),
            full=len(self._gathering.records) >= self._batch_size,
        )

    def _form_batch(self) -> None:
        gathering = self._gathering
        if not gathering.count or len(self._batches.batches) >= self._max_in_flight:
            return
        if gathering.count < self._batch_size and self._clock() - gathering.started < self._linger:
            return
        keys = gathering.keys()
        if any(keys & b.keys for b in self._batches.batches):
            return
        self._batches.batches.append(gathering.take(keys))
        self.stats.batches += 1

    def _commit_final(self) -> None:
        """Steps 1-3 for the leading final batches: produce, flush, commit (in batch order)."""
        done: list[Batch] = []
        while (batch := self._batches.pop_final()) is not None:
            self._release(batch)
            done.append(batch)
        if done:
            self._commit(done)

    def _commit_settled(self) -> None:
        """Steps 1-3 for every final batch that no open batch before it shares a partition with.

        A revocation's commit (`Rebalance.on_revoke`): see `BatchWindow.take_settled`.
        """
        done = self._batches.take_settled()
        for batch in done:
            self._release(batch)
        if done:
            self._commit(done)

    def _release(self, batch: Batch) -> None:
        """Step 1 of completing a batch: produce its DLQ + audit writes."""
        self._outbox_or_fail().release(batch)

    def _commit(self, batches: list[Batch]) -> None:
        """Step 2: flush the DLQ + audit writes (durable before the offsets move). Step 3: commit."""
        consumer = self._consumer_or_fail()
        self._outbox_or_fail().flush()
        self._offsets.commit_batches(consumer, batches)

    def _consumer_or_fail(self) -> Consumer:
        if self._consumer is None:
            raise StateError("deliver stage is not started")
        return self._consumer

    def _outbox_or_fail(self) -> Outbox:
        if self._outbox is None:
            raise StateError("deliver stage is not started")
        return self._outbox

    def _tick(self) -> None:
        """Report liveness (`on_tick`), if asked to."""
        if self._on_tick is not None:
            self._on_tick()

    # -- rebalances (`Rebalance`) -----------------------------------------------------------------

    def _settle(self, consumer: Consumer, commit: bool) -> None:
        """Steps 1-2 of a revocation (`Rebalance.on_revoke`): wait, collect and (`commit`) commit."""
        # Step 1
        self._batches.wait(self._on_tick)
        # Step 2
        kept = self._batches.collect(on_error="keep")
        if kept is not None:
            self._keep_fatal(kept)
        try:
            if commit:
                self._commit_settled()
                if self._offsets.pending:  # offsets that waited for the coordinator go along (`_drain`)
                    self._offsets.commit(consumer, [])
        except (KafkaError, StateError) as exc:
            logger.error("offsets not committed on revoke", extra={"error": str(exc)})
            self._keep_fatal(exc)

    def _seed(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        seed_last_writes(
            self.settings,
            consumer,
            partitions,
            self._last_writes,
            history=self._history,
            clock=self._clock,
            tick=self._tick,
            stopping=self._stop.is_set,
        )

    def _keep_fatal(self, exc: BaseException) -> None:
        """Keep the first failure a rebalance callback met, for the loop's next turn to raise."""
        if self._fatal is None:
            self._fatal = exc
