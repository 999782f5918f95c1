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
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, Final

import httpx
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    DeliveryInterrupted,
    KafkaError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StateError,
)
from connector.gctune import collector_tuning
from connector.kafka.clients import (
    consumer_config,
    kafka_errors,
    produce,
    producer_config,
    to_raw,
    translate,
)
from connector.kafka.topics import batch_size_for, record_limit, topic_limits
from connector.metrics import Metrics
from connector.models import RawRecord
from connector.ops.scan import scan_consumer
from connector.registry import Backoff
from connector.sink.batch import LastWrites, PendingRecord, external_id
from connector.sink.batch_state import Batch
from connector.sink.client import RequestObserver, YespoClient
from connector.sink.delivery import BatchDelivery
from connector.sink.recorder import DeliverStats, OutboxWrite, OutcomeRecorder
from connector.sink.upserts import parse_upsert, read_upsert

__all__ = ["DeliverStage", "DeliverStats", "Runner", "build_deliver_stage", "inline_runner"]

logger = logging.getLogger(__name__)

_CONSUME_CHUNK: Final = 500
_POLL_IDLE_S: Final = 0.1
_POLL_BUSY_S: Final = 0.01
_HOLD_PAUSE_S: Final = 5.0
"""A gathering batch full for this long pauses the partitions so that the loop can keep polling."""
"""consume() timeouts: nothing on the wire / attempts on the wire (their outcome is collected next)."""

_INFLIGHT_TICK_LIMIT_S: Final = 900.0
"""How long a wait for the attempts on the wire keeps the liveness ticking (see `_wait_inflight`)."""
MAX_IN_FLIGHT: Final = 2
"""Batches on the wire at once; only batches without a customer in common overlap."""
SEND_THREAD_PREFIX: Final = "deliver-send"
"""Name prefix of the worker threads that run the delivery attempts."""

_Record = PendingRecord[RawRecord]
Runner = Callable[[Callable[[], None]], "Future[None]"]
"""Runs one delivery attempt and returns its future (a worker thread, or `inline_runner`)."""

# Commit failures that only mean "the group moved on": the records are re-read by the next owner.
_REBALANCE_CODES: Final = frozenset(
    {
        ConfluentError.REBALANCE_IN_PROGRESS,
        ConfluentError.ILLEGAL_GENERATION,
        ConfluentError.UNKNOWN_MEMBER_ID,
        ConfluentError._ASSIGNMENT_LOST,
    }
)

_COORDINATOR_CODES: Final = frozenset(
    {
        ConfluentError._WAIT_COORD,
        ConfluentError.COORDINATOR_NOT_AVAILABLE,
        ConfluentError.NOT_COORDINATOR,
        ConfluentError.COORDINATOR_LOAD_IN_PROGRESS,
        ConfluentError._TIMED_OUT,
        ConfluentError.REQUEST_TIMED_OUT,
        ConfluentError._TRANSPORT,
    }
)
"""Offset commit errors of a coordinator that is away or moving: retried (`DeliverStage._commit`)."""

_COMMIT_BACKOFF: Final = Backoff(initial_s=0.2, max_s=5.0)
"""Delays between the retries of such a commit: 0.2, 0.4, ... 5 s."""
_COMMIT_AWAY_LIMIT_S: Final = 300.0
"""How long offsets may wait for a group coordinator that is away before the stage stops."""
_COMMIT_AWAY_RETRY_S: Final = 5.0
"""Pause between two rounds of commit retries while offsets wait for the coordinator."""

HistoryReader = Callable[[list[tuple[str, int, int, int]], float], Iterable[RawRecord | None]]
"""Reads `(topic, partition, start, end)` ranges of committed records within a time budget (s);
None now and then while it waits (`read_history`)."""


def inline_runner(work: Callable[[], None]) -> Future[None]:
    """Run `work` now, in the caller's thread; the returned future is already done (tests)."""
    future: Future[None] = Future()
    try:
        work()
    except BaseException as exc:  # handed to the loop through the future, like a worker's
        future.set_exception(exc)
    else:
        future.set_result(None)
    return future


def _redirect_message(status: int, exc: PermanentDeliveryError) -> str:
    """The start-up error for a base URL that answers a redirect, naming its target if known."""
    target = f" to {exc.location}" if exc.location else ""
    return (
        f"GET /api/v1/account/info answered HTTP {status}, a redirect{target}: the connector follows "
        "no redirects; set the base URL the API answers at (e.g. https://yespo.io)"
    )


_ENDPOINT_IDS = re.compile(r"/\d+(?=/|$)")


def _endpoint(path: str) -> str:
    path = path.split("?", 1)[0]
    if "/importstatus/" in path:
        return "/api/v1/importstatus/{id}"
    return _ENDPOINT_IDS.sub("/{id}", path)


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
        self._read_back = settings.yespo.read_back_records
        self._topic_limits = topic_limits or self._broker_topic_limits
        self._client = client
        self._clock = clock
        self._sleep = sleep
        # a commit the group coordinator cannot take yet (e.g. just after a broker hang) is retried
        # this long, well within max.poll.interval.ms (the loop does not poll meanwhile)
        self._commit_retry_s = min(30.0, settings.kafka.max_poll_interval_ms / 2000)
        # offsets whose commit found the coordinator away through a whole round of retries (after a
        # broker hang it can stay away longer): carried by the next commit, retried while idle
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._uncommitted_since: float | None = None
        self._uncommitted_retry_at = 0.0
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
        self._producer: Producer | None = None
        self._window: list[Batch] = []
        self._gathering: list[_Record] = []
        self._last_writes = LastWrites()  # per contact: the key and source position of its last record
        self._gather_offsets: dict[tuple[str, int], int] = {}
        self._gather_starts: dict[tuple[str, int], int] = {}  # per partition: its first gathered offset
        self._gather_outbox: list[OutboxWrite] = []
        self._gathered = 0
        self._gather_started = 0.0
        self._assigned: list[TopicPartition] = []
        self._paused = False
        self._backing_off = False  # paused for a retry (not only for a full gathering batch)
        self._full_since: float | None = None  # since when the gathering batch is full
        self._write_failures: list[str] = []

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
        return self._paused and self._backing_off

    def start(self) -> None:
        """Resolve custom fields, check the API key, create clients, subscribe.

        Raises:
            ConfigError: a custom field name is unknown, or `yespo.base_url` answers 404 or a redirect.
            AuthenticationError: the API key was refused.
        """
        self._client.resolve_fields()
        for name in self._client.dropped_fields:
            logger.warning("mapped field cannot be sent to Yespo and is dropped", extra={"field": name})
        self._check_key()
        if self._runner is None:
            self._executor = ThreadPoolExecutor(self._max_in_flight, thread_name_prefix=SEND_THREAD_PREFIX)
            self._runner = self._executor.submit
        # audit/DLQ writes are flushed once per batch: lz4 and a longer linger cost far less CPU per
        # record than zstd at 5 ms, and nothing waits on them in between
        light: dict[str, Any] = {"compression.type": "lz4", "linger.ms": 50}
        outbox = [self.settings.output.dlq_topic, self.settings.output.audit_topic]
        limits = self._topic_limits(outbox)
        producer_limit = self.settings.kafka.message_max_bytes
        self._recorder.max_bytes = record_limit(producer_limit, limits, outbox[:1])
        light.update(batch_size_for(record_limit(producer_limit, limits, outbox)))
        self._producer = self._producer_factory(producer_config(self.settings, **light))
        extra: dict[str, Any] = {}
        if self._metrics is not None:
            extra = {"statistics.interval.ms": 5000, "stats_cb": self._metrics.update_from_librdkafka_stats}
        self._consumer = self._consumer_factory(
            consumer_config(self.settings, self.settings.kafka.deliver_group, **extra)
        )
        self._consumer.subscribe(
            [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        logger.info("deliver stage started", extra={"topic": self._topic, "mode": self._mode})

    def _broker_topic_limits(self, topics: list[str]) -> Mapping[str, int]:
        with kafka_errors():
            return topic_limits(AdminClient(self.settings.kafka.as_librdkafka()), topics)

    def _check_key(self) -> None:
        """Fail fast on a refused key or a wrong base URL; an unreachable API is not fatal (deliveries retry).

        A 404 for `GET /api/v1/account/info`, which Yespo always serves, means `yespo.base_url` does not
        lead to the API. Deletes cannot notice it later: for them a 404 is "the contact is already
        gone", so a wrong URL would commit every delete and erasure without sending it anywhere.

        A redirect (3xx: `http://` for `https://`, a legacy eSputnik host) is refused the same way: the
        connector follows none (a redirected POST or DELETE would lose its body or method), so every
        write would stop the stage later with the same status.

        Raises:
            AuthenticationError: the key was refused (401).
            ConfigError: the account info call answered 404 or a redirect (`yespo.base_url`).
        """
        try:
            self._client.account_info()
        except AuthenticationError as exc:
            if exc.status_code == 401:
                raise
            # 403 here may only mean the key lacks account rights; the contact calls decide.
            logger.warning("account info refused (403); continuing with the contact calls")
        except PermanentDeliveryError as exc:
            if exc.status_code == 404:
                raise ConfigError(
                    "GET /api/v1/account/info answered 404: the base URL does not lead to the Yespo API "
                    "(e.g. https://yespo.io)",
                    key="yespo.base_url",
                ) from None
            if exc.status_code is not None and 300 <= exc.status_code < 400:
                raise ConfigError(_redirect_message(exc.status_code, exc), key="yespo.base_url") from None
            logger.warning("API key not checked at start-up", extra={"error": str(exc)})
        except RetryableDeliveryError as exc:
            logger.warning("API key not checked at start-up", extra={"error": str(exc)})

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
        self._wait_inflight()
        self._collect(on_error="drop")
        self._commit_final()
        if self._uncommitted and self._consumer is not None:
            try:
                self._commit_offsets(self._consumer, [])
            except KafkaError as exc:  # their records are delivered again after the restart
                logger.warning("offsets not committed on stop", extra={"error": str(exc)})

    def _wait_inflight(self) -> None:
        """Wait for the attempts on the wire (a revocation, a stop), ticking the liveness meanwhile.

        An attempt is bounded by its requests' timeouts and the import-status wait (minutes), longer
        than the liveness timeout: a rebalance must not make the process look stuck. Past
        `_INFLIGHT_TICK_LIMIT_S` the ticks stop, so a wait that never ends is still caught.
        """
        pending = {b.future for b in self._window if b.future is not None}
        ticks_until = self._clock() + _INFLIGHT_TICK_LIMIT_S
        self._delivery.interrupt(True)  # an isolation of imports in ERROR stops after its import
        try:
            while pending:
                _, pending = wait_for(pending, timeout=1.0)
                if pending and self._on_tick is not None and self._clock() < ticks_until:
                    self._on_tick()
        finally:
            self._delivery.interrupt(False)

    def close(self) -> None:
        """Close the clients; an unfinished batch stays uncommitted and writes nothing."""
        self._wait_inflight()  # the workers must not use clients that are closing
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._abandon_window()
        self._discard_gathering()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                producer.flush(30)
            except KafkaException as exc:  # a fatal producer must not hide why the stage stops
                logger.warning("producer not flushed on close", extra={"error": str(translate(exc))})
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
        room = self._batch_size - len(self._gathering)
        inflight = [b.future for b in self._window if b.future is not None]
        if room > 0 or self._paused:
            # While a batch waits for its retry or the gathering batch is full, the partitions are
            # paused (`_sync_pause`), so this only serves the group protocol; a message that still
            # arrives is gathered, never dropped. consume() waits out its timeout unless a whole
            # chunk arrives, so with attempts on the wire it comes back soon to collect them (a
            # drained topic would hold their commit back).
            timeout = _POLL_BUSY_S if inflight else _POLL_IDLE_S
            try:
                msgs = consumer.consume(num_messages=min(max(1, room), _CONSUME_CHUNK), timeout=timeout)
            except KafkaException as exc:
                raise translate(exc) from exc
            latest: dict[tuple[str, int], int] = {}
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise translate(KafkaException(err))
                    logger.warning("consumer error", extra={"error": err.name()})
                    continue
                self._gather(to_raw(msg))
                latest[(str(msg.topic()), int(msg.partition() or 0))] = msg.timestamp()[1]
            if self._metrics is not None:  # for consumer_lag_seconds
                for (topic, partition), ts in latest.items():
                    self._metrics.record_consumed(topic, partition, ts)
        elif inflight:  # full for a moment: wait for an attempt (`_sync_pause` pauses if it lasts)
            wait_for(inflight, timeout=0.1, return_when=FIRST_COMPLETED)
        elif self._window:
            self._stop.wait(0.01)  # the window is full of batches that wait for their retry time
        self._advance()
        if self._uncommitted and self._clock() >= self._uncommitted_retry_at:
            self._commit_offsets(consumer, [])
        if self._metrics is not None:  # librdkafka's statistics freeze a paused partition's end
            self._metrics.track_paused(consumer, self._assigned if self._paused else ())

    def _advance(self) -> None:
        """Move the batches along, in numbered steps.

        1. Collect finished attempts (a retryable failure schedules a retry). 2. Form the next batch
        and start every attempt that is due. 3. Produce the DLQ/audit writes of the leading final
        batches, flush them and commit their offsets (while the next batches are already on the
        wire). 4. Pause while a batch waits for its retry.
        """
        self._collect()
        self._commit_final()  # frees its place in the window before the next batch is formed
        self._form_batch()
        self._start_due()
        self._collect()  # an inline runner has finished already
        self._commit_final()
        self._sync_pause()

    def _form_batch(self) -> None:
        if not self._gathered or len(self._window) >= self._max_in_flight:
            return
        if self._gathered < self._batch_size and self._clock() - self._gather_started < self._linger:
            return
        # A customer, or a Yespo contact (its externalCustomerId: a customer whose key changed keeps
        # it under its new key), still open in another batch: keep their records in order.
        keys = frozenset(r.customer_key for r in self._gathering) | frozenset(
            f"\x00ext:{ext}" for r in self._gathering if (ext := external_id(r)) is not None
        )
        if any(keys & b.keys for b in self._window):
            return
        self._window.append(
            Batch(
                uuid.uuid4().hex[:12],
                self._gathering,
                self._gather_offsets,
                self._gather_outbox,
                keys,
                starts=self._gather_starts,
            )
        )
        self._gathering, self._gather_offsets, self._gather_outbox = [], {}, []
        self._gather_starts = {}
        self._gathered = 0
        self.stats.batches += 1

    def _start_due(self) -> None:
        now = self._clock()
        for batch in self._window:
            if batch.future is None and not batch.final and now >= batch.retry_at:
                batch.future = self._runner_or_fail()(functools.partial(self._delivery.attempt, batch))

    def _runner_or_fail(self) -> Runner:
        if self._runner is None:
            raise StateError("deliver stage is not started")
        return self._runner

    def _collect(self, *, on_error: str = "raise") -> None:
        """Mark batches whose attempt finished with a final outcome for every record.

        A retryable failure schedules a retry or, past the retry budget, dead-letters the open
        records (then the batch is final). Any other failure stops the stage (`on_error="raise"`),
        or leaves the batch uncommitted: while draining (`"drop"`), or in a rebalance callback, which
        must not raise (`"keep"`: the loop's next turn raises it).
        """
        for batch in self._window:
            future = batch.future
            if future is None or not future.done():
                continue
            batch.future = None
            exc = future.exception()
            if exc is None:
                batch.final = True
            elif isinstance(exc, DeliveryInterrupted):
                batch.retry_at = self._clock()  # uncommitted, sent again if the stage goes on
            elif isinstance(exc, RetryableDeliveryError):
                batch.final = not self._schedule_retry(batch, exc)
            elif on_error == "raise":
                raise exc
            elif on_error == "keep" and self._fatal is None:
                self._fatal = exc

    def _commit_final(self) -> None:
        """Steps 1-3 for the leading final batches: produce, flush, commit (in batch order)."""
        done: list[Batch] = []
        while self._window and self._window[0].final:
            batch = self._window.pop(0)
            self._release(batch)
            done.append(batch)
        if done:
            self._commit(done)

    def _commit_settled(self) -> None:
        """Steps 1-3 for every final batch that no open batch before it shares a partition with.

        A revocation's commit (`_on_revoke`): a batch that finished behind one waiting for its retry
        is final all the same, and its offsets are safe to commit when no open batch before it
        holds records of its partitions (per partition, the batches committed are still a prefix).
        """
        done: list[Batch] = []
        still_open: list[Batch] = []
        blocked: set[tuple[str, int]] = set()
        for batch in self._window:
            if batch.final and blocked.isdisjoint(batch.offsets):
                done.append(batch)
            else:
                still_open.append(batch)
                blocked.update(batch.offsets)
        self._window = still_open
        for batch in done:
            self._release(batch)
        if done:
            self._commit(done)

    def _sync_pause(self) -> None:
        """Pause while a batch waits for its retry, or while the gathering batch has been full a while.

        Either way the loop keeps calling `consume()`, which fetches nothing from paused partitions
        but keeps the member in its group: an attempt on the wire may take minutes (import-status
        polls, rate-limit waits, request timeouts), longer than `max.poll.interval.ms`. A batch
        that is full for less than `_HOLD_PAUSE_S` is the common case (the attempts on the wire
        end soon): pausing then would drop librdkafka's prefetched records to fetch them again.
        """
        waiting = any(b.future is None and not b.final for b in self._window)
        self._backing_off = waiting
        if len(self._gathering) < self._batch_size:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = self._clock()
        held = self._full_since is not None and self._clock() - self._full_since >= _HOLD_PAUSE_S
        if waiting or held:
            self._pause_all()
        else:
            self._resume_all()

    def _consumer_or_fail(self) -> Consumer:
        if self._consumer is None:
            raise StateError("deliver stage is not started")
        return self._consumer

    def _abandon_window(self) -> None:
        """Drop the batches of the window (revocation, stop); the imports they await are kept.

        Their records are read again (here, or by the partition's next owner), and an import of
        theirs still queued at Yespo must not apply after the next write of its contacts: every
        later attempt of this stage awaits those imports first (`BatchDelivery.abandon`), within
        the delivery's bound. Nothing is polled here: a revocation callback does not wait on Yespo.
        """
        for batch in self._window:
            self._delivery.abandon(batch)
        self._window = []

    def _discard_gathering(self) -> None:
        self._gathering, self._gather_offsets, self._gather_outbox = [], {}, []
        self._gather_starts = {}
        self._gathered = 0

    def _gather(self, raw: RawRecord) -> None:
        self.stats.consumed += 1
        if not self._gathered:
            self._gather_started = self._clock()
        self._gathered += 1
        tp = (raw.topic, raw.partition)
        self._gather_offsets[tp] = max(self._gather_offsets.get(tp, 0), raw.offset + 1)
        self._gather_starts[tp] = min(self._gather_starts.get(tp, raw.offset), raw.offset)
        try:
            record = parse_upsert(raw)
        except DecodeError as exc:  # its reason names a field and a type, never a value
            self._recorder.dead_letter(
                self._gather_outbox,
                raw,
                type(exc).__name__,
                f"upserts record is not readable: {exc.reason}",
                None,
                "unreadable",
                0,
                "",
            )
            return
        if self._last_writes.is_stale(record):
            # an old key's record after the new key's later one (a primary-key change): sending it
            # would bring back (or roll back) the contact; it is settled as superseded instead
            logger.info(
                "record superseded by a later record of its contact under another key",
                extra={"topic": raw.topic, "partition": raw.partition, "offset": raw.offset},
            )
            tally: dict[str, int] = {}
            self._recorder.settled(self._gather_outbox, record, "superseded", None, 0, "", tally)
            self._recorder.count_settled(tally)
            return
        self._gathering.append(record)

    # -- retries and commits ---------------------------------------------------------------------

    def _schedule_retry(self, batch: Batch, exc: RetryableDeliveryError) -> bool:
        """Pause and schedule the next attempt (True), or give up and dead-letter the rest (False)."""
        now = self._clock()
        if batch.first_failure is None:
            batch.first_failure = now
        batch.attempts += 1
        self.stats.retries += 1
        self.stats.requests_failed += 1
        delay = self._client.retry_delay(
            batch.attempts, now - batch.first_failure, exc.retry_after, status_code=exc.status_code
        )
        if delay is None:
            logger.error(
                "giving up on a batch after retries", extra={"batch": batch.batch_id, "error": str(exc)}
            )
            self._delivery.give_up(batch, f"gave up after {batch.attempts} attempts: {exc}")
            return False
        batch.retry_at = now + delay
        logger.warning(
            "delivery failed; retrying",
            extra={
                "batch": batch.batch_id,
                "status": exc.status_code,
                "attempt": batch.attempts,
                "retry_in_s": round(delay, 2),
            },
        )
        return True

    def _release(self, batch: Batch) -> None:
        """Step 1 of completing a batch: produce its DLQ + audit writes."""
        producer = self._producer
        if producer is None:
            raise StateError("deliver stage is not started")
        for topic, key, value, headers in batch.outbox:
            # no transaction to abort here: wait for room as long as it takes (the app's stall
            # check stops a stage loop stuck this long in a client call)
            produce(
                producer,
                topic,
                wait_s=math.inf,
                key=key,
                value=value,
                headers=headers,
                on_delivery=self._on_written,
            )
        producer.poll(0)  # once per batch: each poll gives the GIL away to the workers

    def _commit(self, batches: list[Batch]) -> None:
        """Step 2: flush the DLQ + audit writes (durable before the offsets move). Step 3: commit."""
        consumer = self._consumer_or_fail()
        producer = self._producer
        if producer is None:
            raise StateError("deliver stage is not started")
        if producer.flush(60) > 0:
            raise StateError("DLQ/audit writes were not acknowledged; not committing offsets")
        if self._write_failures:
            failures, self._write_failures = self._write_failures, []
            raise StateError(
                f"{len(failures)} DLQ/audit writes failed (first: {failures[0]}); not committing offsets"
            )
        last: dict[tuple[str, int], int] = {}
        for batch in batches:
            for tp, offset in batch.offsets.items():
                last[tp] = max(last.get(tp, 0), offset)
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(last.items())]
        if offsets:
            self._commit_offsets(consumer, offsets)

    def _commit_offsets(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Commit `offsets` with those still uncommitted, retrying while the group coordinator is away.

        A coordinator still away after `_commit_retry_s` of retries (the loop does not poll
        meanwhile) leaves the offsets uncommitted: the stage goes on, the next commit carries them,
        and `step` retries them every `_COMMIT_AWAY_RETRY_S` while no batch commits.

        Raises:
            KafkaError: a fatal error, another error, or a coordinator away for `_COMMIT_AWAY_LIMIT_S`;
                the stage stops and its restart re-delivers the uncommitted records (idempotent).
        """
        for tp in offsets:
            key = (str(tp.topic), int(tp.partition))
            self._uncommitted[key] = max(self._uncommitted.get(key, 0), int(tp.offset))
        if not self._uncommitted:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(self._uncommitted.items())]
        now = self._clock()
        since = self._uncommitted_since = now if self._uncommitted_since is None else self._uncommitted_since
        deadline = now + self._commit_retry_s
        attempt = 0
        while True:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                self.stats.commits += 1
                self._uncommitted.clear()
                self._uncommitted_since = None
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = getattr(err, "code", lambda: None)()
                fatal = getattr(err, "fatal", lambda: True)()
                if code in _REBALANCE_CODES and not fatal:
                    # The partitions moved on: their next owner re-reads these records (idempotent).
                    logger.warning("offsets not committed: the group is rebalancing")
                    self._uncommitted.clear()
                    self._uncommitted_since = None
                    return
                delay = _COMMIT_BACKOFF.delay(attempt)
                if code not in _COORDINATOR_CODES or fatal:
                    raise translate(exc) from exc
                if self._clock() + delay > deadline:
                    if self._clock() - since >= _COMMIT_AWAY_LIMIT_S:
                        raise translate(exc) from exc
                    logger.warning(
                        "offsets not committed: the group coordinator is away; retried later",
                        extra={"error": str(translate(exc))},
                    )
                    self._uncommitted_retry_at = self._clock() + _COMMIT_AWAY_RETRY_S
                    return
                logger.warning("offset commit failed; retrying", extra={"error": str(translate(exc))})
                self._sleep(delay)
                attempt += 1

    def _on_written(self, err: ConfluentError | None, msg: Any) -> None:
        """Delivery report of a DLQ/audit write (called from flush/poll): remember a failure."""
        if err is not None:
            self._write_failures.append(f"{msg.topic()}: {err.name()}")

    # -- partitions --------------------------------------------------------------------------------

    def _pause_all(self) -> None:
        if not self._paused and self._assigned and self._consumer is not None:
            self._consumer.pause(self._assigned)
            self._paused = True

    def _resume_all(self) -> None:
        if self._paused and self._assigned and self._consumer is not None:
            self._consumer.resume(self._assigned)
        self._paused = False

    def _resume_partitions(self, consumer: Consumer, partitions: list[TopicPartition], event: str) -> None:
        """Resume `partitions` in a rebalance callback; a failure is logged (the assignment retries it)."""
        if not partitions:
            return
        try:
            consumer.resume(partitions)
        except KafkaException as exc:
            logger.warning("partitions not resumed", extra={"event": event, "error": str(translate(exc))})

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition's application pause flag across an eager unassign/assign
        # (it resets only its own), so a partition that comes back paused would never be fetched
        # again. Resuming one that is not paused is a no-op in librdkafka.
        self._resume_partitions(consumer, partitions, "assign")
        # An incremental assignment (cooperative protocol) adds to the partitions a revocation kept
        # (`_on_revoke`); while those are paused for a retry, the new ones are paused with them.
        known = {(str(tp.topic), int(tp.partition)) for tp in self._assigned}
        if self._paused and known:
            try:
                consumer.pause(partitions)
            except KafkaException as exc:
                logger.warning(
                    "partitions not paused", extra={"event": "assign", "error": str(translate(exc))}
                )
        else:
            self._paused = False
        self._assigned += [tp for tp in partitions if (str(tp.topic), int(tp.partition)) not in known]
        self.stats.assignments += 1
        logger.info(
            "partitions assigned",
            extra={"partitions": ",".join(str(tp.partition) for tp in partitions), "count": len(partitions)},
        )
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="assigned").inc()
        self._seed_last_writes(consumer, partitions)
        self._ready.set()

    def _seed_last_writes(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Read back the last records delivered on the assigned partitions into `LastWrites`.

        The guard against an old key's record that arrives after its contact's later record (a
        primary-key change, see `LastWrites`) needs the contact's last record, which an earlier
        process (or another instance, before a rebalance) may have delivered: the last
        `yespo.read_back_records` offsets below each committed offset are read, newest first (not
        delivered), before any record of the assignment is gathered. A read that fails, is stopped,
        or takes longer than the least of a quarter of `max.poll.interval.ms`, half of
        `observability.liveness_timeout_s` and 30 s (the committed-offsets request included) leaves
        the guard with what it read, logged. The loop ticks after each consume call of the read.
        """
        if self._read_back <= 0 or not partitions:
            return
        started = self._clock()
        # within the poll interval, and within /healthz's patience (the loop ticks meanwhile)
        budget = min(
            30.0,
            self.settings.kafka.max_poll_interval_ms / 4000,
            self.settings.observability.liveness_timeout_s / 2,
        )
        read = 0
        try:
            with kafka_errors():
                committed = consumer.committed(partitions, timeout=min(10.0, budget))
            self._tick()
            ranges = [
                (tp.topic, tp.partition, max(0, tp.offset - self._read_back), tp.offset)
                for tp in committed
                if tp.offset > 0
            ]
            if not ranges:
                return
            self._last_writes.reserve(sum(end - start for _, _, start, end in ranges))
            left = max(0.0, budget - (self._clock() - started))
            history = iter(self._history(ranges, left))
            try:
                with kafka_errors():
                    for raw in history:
                        if raw is None:  # a consume call went by
                            self._tick()
                            if self._stop.is_set():
                                raise KafkaError("stopping", retriable=True)
                            continue
                        read += 1
                        record = read_upsert(raw)
                        if record is not None:
                            self._last_writes.seed(record)
            finally:
                close = getattr(history, "close", None)  # a generator's reading consumer closes now
                if close is not None:
                    close()
        except KafkaError as exc:
            logger.warning(
                "superseded-record guard not fully seeded from the delivered records",
                extra={"error": str(exc), "records": read},
            )
            return
        logger.info(
            "superseded-record guard seeded from the delivered records",
            extra={
                "records": read,
                "contacts": len(self._last_writes),
                "seconds": round(self._clock() - started, 3),
            },
        )

    def _tick(self) -> None:
        """Report liveness (`on_tick`), if asked to."""
        if self._on_tick is not None:
            self._on_tick()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Settle what the revoked partitions' attempts finished, then leave the rest to their next owner.

        1. Wait for the attempts on the wire (idempotent calls, but they must not outlive the
        assignment). 2. Collect them and commit the final batches (`_commit_settled`), as a stop
        does (`_drain`): the eager protocol leaves the partitions to this member while the callback
        runs, and a batch Yespo took must not be sent again by the next owner (in single mode the
        repeat would meet a 409 it cannot trust and wait out Yespo's minute). 3. Drop only the work
        of the revoked partitions (`_drop_revoked`); an incremental revocation keeps the rest.
        4. Forget the single-mode writes, once the commit is done.

        An exception raised here would be lost: a failure that must stop the stage (a refused
        commit, unacknowledged DLQ writes, an attempt's fatal error) is kept for the next turn.
        """
        self._leave(consumer, partitions, commit=True)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost (the session expired): as a revocation, but nothing is committed.

        Another member may own them already: a commit would be refused, and the DLQ and audit
        writes of the batches would be written again by the owner that reads their records again.
        """
        logger.warning("partitions lost", extra={"count": len(partitions)})
        self._leave(consumer, partitions, commit=False)

    def _leave(self, consumer: Consumer, partitions: list[TopicPartition], *, commit: bool) -> None:
        """The steps of `_on_revoke` (`commit=False`: of `_on_lost`, which skips the commit)."""
        revoked = {(str(tp.topic), int(tp.partition)) for tp in partitions}
        # Step 1
        self._wait_inflight()
        # Step 2
        self._collect(on_error="keep")
        try:
            if commit:
                self._commit_settled()
                if self._uncommitted:  # offsets that waited for the coordinator go along (`_drain`)
                    self._commit_offsets(consumer, [])
        except (KafkaError, StateError) as exc:
            logger.error("offsets not committed on revoke", extra={"error": str(exc)})
            if self._fatal is None:
                self._fatal = exc
        # Step 3
        self._drop_revoked(consumer, revoked)
        for key in revoked:  # the next owner re-reads their records (idempotent)
            self._uncommitted.pop(key, None)
        if not self._uncommitted:
            self._uncommitted_since = None
        kept = [tp for tp in self._assigned if (str(tp.topic), int(tp.partition)) not in revoked]
        if self._paused:  # while still assigned: the flag would outlive the assignment (`_on_assign`)
            leaving = partitions if kept else (self._assigned or partitions)
            self._resume_partitions(consumer, leaving, "revoke")
        self._assigned = kept
        self._paused = self._paused and bool(kept)  # the kept ones: `_sync_pause` decides next turn
        # Step 4: single mode trusts a 409 only for its own last write of the same body
        # (`_RecentWrites`); while the partitions are elsewhere, another member may write their
        # contacts. Forgotten only now: the batches committed above are not sent again.
        self._client.forget_recent_writes()
        self.stats.revocations += 1
        logger.info("partitions revoked", extra={"count": len(partitions)})
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="revoked").inc()

    def _drop_revoked(self, consumer: Consumer, revoked: set[tuple[str, int]]) -> None:
        """Abandon the batches (and the gathering batch) that hold records of `revoked` partitions.

        A dropped batch's other partitions are tainted too: a later batch holding records of them
        is dropped as well (their records are read again in order), an earlier one is kept (its
        records come first). Kept partitions that lose records are sought back to the first of them;
        a seek that fails would skip those records, so it stops the stage (kept for the next turn).
        An eager revocation takes every partition: everything is dropped, nothing sought.
        """
        retained = {(str(tp.topic), int(tp.partition)) for tp in self._assigned} - revoked
        tainted = set(revoked)
        rewind: dict[tuple[str, int], int] = {}
        kept: list[Batch] = []
        dropped: list[Batch] = []
        for batch in self._window:
            touched = batch.offsets.keys() | batch.starts.keys()
            if retained and tainted.isdisjoint(touched):
                kept.append(batch)
                continue
            tainted |= touched
            dropped.append(batch)
            for tp, start in batch.starts.items():
                rewind[tp] = min(rewind.get(tp, start), start)
        gathered = self._gather_offsets.keys() | self._gather_starts.keys()
        drop_gathering = self._gathered > 0 and (not retained or not tainted.isdisjoint(gathered))
        if drop_gathering:
            for tp, start in self._gather_starts.items():
                rewind[tp] = min(rewind.get(tp, start), start)
        if dropped or drop_gathering:
            logger.info(
                "abandoning uncommitted batches on revoke",
                extra={"batches": len(dropped), "gathering": drop_gathering},
            )
        self._window = dropped
        self._abandon_window()
        self._window = kept
        if drop_gathering:
            self._discard_gathering()
        for (topic, partition), offset in sorted(rewind.items()):
            if (topic, partition) not in retained:
                continue
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                logger.error(
                    "kept partition not sought back to its dropped records", extra={"partition": partition}
                )
                if self._fatal is None:
                    self._fatal = translate(exc)


READ_BACK_CHUNK: Final = 5000
"""Offsets per partition and round of `read_history` (newest first)."""


def read_history(
    settings: Settings,
    ranges: list[tuple[str, int, int, int]],
    budget_s: float,
    *,
    chunk: int = READ_BACK_CHUNK,
) -> Iterator[RawRecord | None]:
    """The committed records of each `(topic, partition, start, end)` range, offsets `start <= o < end`.

    Newest first, so a read cut short keeps what matters most: each round reads every partition's
    next `chunk` offsets below the ones read (in offset order within the chunk), with an assign-only
    read_committed consumer that joins no group (`scan_consumer`). A chunk ends with its record at
    its last offset, else at the first offset past it or at the partition's end, and its partition
    is then unassigned; a start below the partition's first offset reads from its first offset.
    Yields None after each consume call (the caller may tick or stop).

    Raises:
        KafkaError: a partition cannot be read, or the reads took longer than `budget_s` seconds.
    """
    deadline = time.monotonic() + budget_s
    todo = {(topic, partition): (start, end) for topic, partition, start, end in ranges if start < end}
    if not todo:
        return
    consumer = scan_consumer(settings, "read-back")
    try:
        while todo:
            # this round: each partition's newest chunk not read yet
            active = {tp: (max(start, end - chunk), end) for tp, (start, end) in todo.items()}
            todo = {tp: (start, active[tp][0]) for tp, (start, _) in todo.items() if start < active[tp][0]}
            with kafka_errors():
                consumer.incremental_assign([TopicPartition(t, p, lo) for (t, p), (lo, _) in active.items()])
            while active:
                if time.monotonic() > deadline:
                    raise KafkaError(f"reading back took longer than {budget_s:.1f} s", retriable=True)
                with kafka_errors():
                    msgs = consumer.consume(num_messages=5000, timeout=0.5)
                done: list[TopicPartition] = []
                for msg in msgs:
                    tp = (msg.topic() or "", msg.partition() or 0)
                    bounds = active.get(tp)
                    if bounds is None:
                        continue
                    err = msg.error()
                    if err is not None:
                        if err.code() != ConfluentError._PARTITION_EOF:
                            raise KafkaError(f"cannot read {tp[0]}[{tp[1]}]: {err.name()}")
                    else:
                        offset = msg.offset() or 0
                        if offset < bounds[1]:
                            yield to_raw(msg)
                        if offset < bounds[1] - 1:
                            continue
                    del active[tp]
                    done.append(TopicPartition(*tp))
                if done:
                    with kafka_errors():
                        consumer.incremental_unassign(done)
                yield None
    finally:
        consumer.close()


def build_deliver_stage(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    on_tick: Callable[[], None] | None = None,
    http: httpx.Client | None = None,
) -> DeliverStage:
    """The production deliver stage on an httpx client (request durations fed to `metrics`)."""
    owned = http is None
    if http is None:
        http = httpx.Client(timeout=settings.yespo.request_timeout_s)
    on_request: RequestObserver | None = None
    if metrics is not None:
        durations = metrics.http_request_duration

        def observe(path: str, status: str, seconds: float) -> None:  # ids in paths become {id}
            durations.labels(endpoint=_endpoint(path), status=status).observe(seconds)

        on_request = observe
    client = YespoClient(http, settings.yespo, settings.contact, on_request=on_request)
    return DeliverStage(
        settings,
        client=client,
        metrics=metrics,
        on_tick=on_tick,
        on_close=http.close if owned else None,
    )
