"""The deliver stage's run loop: upserts topic (read_committed) -> Yespo contacts API.

Records are gathered into a batch (at most `yespo.batch_size`, or after `yespo.batch_linger_ms`),
planned (`sink.batch.plan`: last record per customer wins) and sent: bulk upsert chunks (or single
calls), then segment attach/detach, then deletes. A record's offset is committed only once its
outcome is final: delivered, or written to the DLQ (with an audit record), and the DLQ/audit
writes are flushed first. Retryable failures (429, 5xx, timeouts) pause every assigned partition and
retry the rest of the batch after a backoff while the consumer keeps polling (no
`max.poll.interval.ms` breach, no rebalance). 401/403 stop the stage: nothing is committed and
nothing is dead-lettered (a configuration problem must not lose records).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from connector.config import Settings
from connector.dlq import dlq_record
from connector.errors import PermanentDeliveryError, RetryableDeliveryError, StateError
from connector.kafka.clients import consumer_config, kafka_errors, producer_config, to_raw, translate
from connector.metrics import Metrics
from connector.models import DecodeFailure, RawRecord
from connector.sink.batch import DeliveryPlan, PendingRecord, PlannedUpsert, plan, plan_group_calls
from connector.sink.client import YespoClient

__all__ = ["DeliverStage", "DeliverStats", "build_deliver_stage"]

logger = logging.getLogger(__name__)

STAGE = "deliver"


@dataclass
class DeliverStats:
    """Counters of what the stage did (also fed to Prometheus)."""

    consumed: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    batches: int = 0
    requests_failed: int = 0
    retries: int = 0
    commits: int = 0
    results: dict[str, int] = field(default_factory=dict)


@dataclass
class _Batch:
    """Records in flight, the plan's progress and the retry state."""

    batch_id: str
    records: list[PendingRecord[RawRecord]]
    offsets: dict[tuple[str, int], int]
    plan: DeliveryPlan[RawRecord] | None = None
    chunk: int = 0
    groups_done: bool = False
    delete: int = 0
    attempts: int = 0
    first_failure: float | None = None
    retry_at: float = 0.0
    succeeded: list[PlannedUpsert[RawRecord]] = field(default_factory=list)


_ENDPOINT_IDS = re.compile(r"/\d+(?=/|$)")


def _endpoint(path: str) -> str:
    path = path.split("?", 1)[0]
    if "/importstatus/" in path:
        return "/api/v1/importstatus/{id}"
    return _ENDPOINT_IDS.sub("/{id}", path)


class DeliverStage:
    """One process's share of the deliver stage. `run()` loops until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: YespoClient,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        metrics: Metrics | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._client = client
        self._clock = clock
        self._wall_ms = wall_ms
        self._metrics = metrics
        self._on_tick = on_tick
        self.stats = DeliverStats()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._topic = settings.output.upserts_topic
        self._dlq_topic = settings.output.dlq_topic
        self._audit_topic = settings.output.audit_topic
        self._batch_size = settings.yespo.batch_size
        self._linger = settings.yespo.batch_linger_ms / 1000.0
        self._mode = settings.yespo.mode
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._batch: _Batch | None = None
        self._gathering: list[PendingRecord[RawRecord]] = []
        self._gather_offsets: dict[tuple[str, int], int] = {}
        self._gather_started = 0.0
        self._assigned: list[TopicPartition] = []
        self._paused = False

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish; an in-flight batch is abandoned uncommitted (it is re-read later)."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """True once partitions are assigned and the API key was accepted."""
        return self._ready.is_set()

    def start(self) -> None:
        """Resolve custom fields (start-up errors name the config key), create clients, subscribe."""
        self._client.resolve_fields()
        for name in self._client.dropped_fields:
            logger.warning("mapped field cannot be sent to Yespo and is dropped", extra={"field": name})
        self._producer = Producer(producer_config(self.settings))
        extra: dict[str, Any] = {}
        if self._metrics is not None:
            extra = {"statistics.interval.ms": 5000, "stats_cb": self._metrics.update_from_librdkafka_stats}
        self._consumer = Consumer(consumer_config(self.settings, self.settings.kafka.deliver_group, **extra))
        self._consumer.subscribe([self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        logger.info("deliver stage started", extra={"topic": self._topic, "mode": self._mode})

    def run(self) -> None:
        """Start and loop until stopped."""
        self.start()
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self.close()

    def close(self) -> None:
        """Close the clients (an unfinished batch stays uncommitted)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(30)
            self._producer = None

    # -- the loop --------------------------------------------------------------------------------

    def step(self) -> None:
        """Poll (always, to stay in the group), gather, and deliver when a batch is due."""
        consumer = self._consumer_or_fail()
        if self._on_tick is not None:
            self._on_tick()
        room = self._batch_size - len(self._gathering)
        try:
            msgs = consumer.consume(num_messages=max(1, room), timeout=0.1) if room > 0 else []
            if room <= 0:
                consumer.poll(0)  # serve callbacks and heartbeats while the batch waits
        except KafkaException as exc:
            raise translate(exc) from exc
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise translate(KafkaException(err))
                logger.warning("consumer error", extra={"error": err.name()})
                continue
            self._gather(to_raw(msg))
        if self._batch is None and self._gathering:
            due = (
                len(self._gathering) >= self._batch_size
                or self._clock() - self._gather_started >= self._linger
            )
            if due:
                self._batch = _Batch(uuid.uuid4().hex[:12], self._gathering, self._gather_offsets)
                self._gathering, self._gather_offsets = [], {}
                self.stats.batches += 1
        if self._batch is not None and self._clock() >= self._batch.retry_at:
            self._deliver(self._batch)

    def _consumer_or_fail(self) -> Consumer:
        if self._consumer is None:
            raise StateError("deliver stage is not started")
        return self._consumer

    def _gather(self, raw: RawRecord) -> None:
        self.stats.consumed += 1
        if not self._gathering:
            self._gather_started = self._clock()
        tp = (raw.topic, raw.partition)
        self._gather_offsets[tp] = max(self._gather_offsets.get(tp, 0), raw.offset + 1)
        try:
            value: Any = orjson.loads(raw.value) if raw.value is not None else None
            if not isinstance(value, dict):
                raise ValueError("not an object")
            op = value.get("op")
            if op not in ("upsert", "delete"):
                raise ValueError("unknown op")
            contact = value.get("contact")
            if op == "upsert" and not isinstance(contact, dict):
                raise ValueError("upsert without a contact")
            ext = value.get("external_customer_id")
            record = PendingRecord(
                customer_key=str(value.get("customer_key") or (raw.key or b"").decode("utf-8", "replace")),
                ref=raw,
                op=op,
                contact=contact,
                external_id=str(ext) if ext is not None else None,
                erase=bool(value.get("erase")),
                groups_removed=tuple(int(g) for g in value.get("groups_removed") or ()),
            )
        except (ValueError, TypeError, KeyError):
            self._dead_letter(raw, "DecodeError", "upserts record is not readable", None, "unreadable", 0)
            return
        self._gathering.append(record)

    # -- delivery --------------------------------------------------------------------------------

    def _deliver(self, batch: _Batch) -> None:
        try:
            while True:
                if batch.plan is None:
                    batch.plan = plan(batch.records, batch_size=self._batch_size)
                    for record, reason in batch.plan.rejected:
                        self._dead_letter(record.ref, "PermanentDeliveryError", reason, record, "rejected", 0)
                self._run_plan(batch, batch.plan)
                if not batch.plan.deferred:
                    break
                # records after an erase of the same customer: a new plan once the erase is done
                batch.records = list(batch.plan.deferred)
                batch.plan, batch.chunk, batch.groups_done, batch.delete = None, 0, False, 0
                batch.succeeded = []
        except RetryableDeliveryError as exc:
            self._schedule_retry(batch, exc)
            return
        self._complete(batch)

    def _run_plan(self, batch: _Batch, the_plan: DeliveryPlan[RawRecord]) -> None:
        attempts = batch.attempts + 1
        while batch.chunk < len(the_plan.upsert_chunks):
            chunk = the_plan.upsert_chunks[batch.chunk]
            self._send_upserts(batch, chunk, attempts)
            batch.chunk += 1
        if not batch.groups_done:
            for call in plan_group_calls(batch.succeeded):
                try:
                    outcome = (
                        self._client.attach(call.group_id, call.external_ids)
                        if call.action == "attach"
                        else self._client.detach(call.group_id, call.external_ids)
                    )
                    ok, reason = outcome.ok, f"segment {call.action} failed: {outcome.reason}"
                except PermanentDeliveryError as exc:
                    ok, reason = False, f"segment {call.action} failed: {exc}"
                if not ok:
                    logger.warning(
                        "segment call failed", extra={"group": call.group_id, "action": call.action}
                    )
                    self._count("group_failed")
                    if self._metrics is not None:
                        self._metrics.dlq_records.labels(stage=STAGE, reason="segment").inc()
                    self._audit_text(batch, call.action, call.group_id, reason)
            batch.groups_done = True
        while batch.delete < len(the_plan.deletes):
            item = the_plan.deletes[batch.delete]
            ext = item.record.external_id or str((item.record.contact or {}).get("externalCustomerId"))
            try:
                outcome = self._client.delete(ext, erase=item.erase)
                ok, status, why = outcome.ok, outcome.status_code, outcome.reason
            except PermanentDeliveryError as exc:
                ok, status, why = False, exc.status_code, str(exc)
            result = "erased" if item.erase else "deleted"
            for rec in item.covered:
                if ok:
                    self._settled(
                        rec, result if rec is item.record else "superseded", status, attempts, batch
                    )
                else:
                    self._dead_letter(
                        rec.ref,
                        "PermanentDeliveryError",
                        why or "delete failed",
                        rec,
                        "rejected",
                        attempts,
                        batch,
                    )
            batch.delete += 1

    def _send_upserts(
        self, batch: _Batch, chunk: tuple[PlannedUpsert[RawRecord], ...], attempts: int
    ) -> None:
        contacts = [u.record.contact or {} for u in chunk]
        if self._mode == "bulk":
            bulk = self._client.send_bulk_isolating(contacts)
            outcomes = [(c.ok, c.status_code, c.reason) for c in bulk.contacts]
            for message in bulk.error_messages:
                logger.warning("bulk answer carried an errorMessage", extra={"message": message})
            if self.settings.yespo.poll_import_status:
                self._poll_imports(bulk.session_ids)
        else:
            outcomes = []
            for contact in contacts:
                try:
                    one = self._client.send_single(contact)
                    outcomes.append((one.ok, one.status_code, one.reason))
                except PermanentDeliveryError as exc:
                    outcomes.append((False, exc.status_code, str(exc)))
        for item, (ok, status, reason) in zip(chunk, outcomes, strict=True):
            if ok:
                batch.succeeded.append(item)
                for rec in item.covered:
                    result = "delivered" if rec is item.record else "superseded"
                    self._settled(rec, result, status, attempts, batch)
            else:
                for rec in item.covered:
                    self._dead_letter(
                        rec.ref,
                        "PermanentDeliveryError",
                        reason or "rejected",
                        rec,
                        "rejected",
                        attempts,
                        batch,
                    )

    def _poll_imports(self, session_ids: tuple[str, ...]) -> None:
        for sid in session_ids:
            for _ in range(20):
                status = self._client.import_status(sid)
                if status.finished:
                    if status.failed:
                        logger.error("bulk import ended in ERROR", extra={"session": sid})
                        self._count("import_error")
                    break
                time.sleep(0.5)

    def _schedule_retry(self, batch: _Batch, exc: RetryableDeliveryError) -> None:
        now = self._clock()
        if batch.first_failure is None:
            batch.first_failure = now
        batch.attempts += 1
        self.stats.retries += 1
        self.stats.requests_failed += 1
        delay = self._client.retry_delay(batch.attempts, now - batch.first_failure, exc.retry_after)
        if delay is None:
            logger.error(
                "giving up on a batch after retries", extra={"batch": batch.batch_id, "error": str(exc)}
            )
            self._give_up(batch, f"gave up after {batch.attempts} attempts: {exc}")
            return
        batch.retry_at = now + delay
        self._pause_all()
        logger.warning(
            "delivery failed; retrying",
            extra={"batch": batch.batch_id, "status": exc.status_code, "retry_in_s": round(delay, 2)},
        )

    def _give_up(self, batch: _Batch, reason: str) -> None:
        the_plan = batch.plan
        remaining: list[PendingRecord[RawRecord]] = []
        if the_plan is None:
            remaining = list(batch.records)
        else:
            for chunk in the_plan.upsert_chunks[batch.chunk :]:
                for upsert in chunk:
                    remaining.extend(upsert.covered)
            for delete in the_plan.deletes[batch.delete :]:
                remaining.extend(delete.covered)
            remaining.extend(the_plan.deferred)
        for rec in remaining:
            self._dead_letter(
                rec.ref, "RetryableDeliveryError", reason, rec, "gave_up", batch.attempts, batch
            )
        self._complete(batch)

    def _complete(self, batch: _Batch) -> None:
        """Step 1: flush DLQ + audit writes. Step 2: commit the batch's offsets. Step 3: resume."""
        consumer = self._consumer_or_fail()
        assert self._producer is not None
        # Step 1: what the DLQ and audit topics must hold is durable before the offsets move.
        if self._producer.flush(60) > 0:
            raise StateError("DLQ/audit writes were not acknowledged; not committing offsets")
        # Step 2: commit.
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        if offsets:
            with kafka_errors():
                consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        self._batch = None
        # Step 3: take new records again.
        self._resume_all()

    # -- outcomes ----------------------------------------------------------------------------------

    def _count(self, result: str) -> None:
        self.stats.results[result] = self.stats.results.get(result, 0) + 1
        if self._metrics is not None:
            self._metrics.contacts_delivered.labels(result=result).inc()

    def _settled(
        self, rec: PendingRecord[RawRecord], result: str, status: int | None, attempts: int, batch: _Batch
    ) -> None:
        self.stats.delivered += 1
        self._count(result)
        self._audit(rec, result, status, attempts, batch.batch_id)

    def _dead_letter(
        self,
        raw: RawRecord,
        error_class: str,
        reason: str,
        rec: PendingRecord[RawRecord] | None,
        result: str,
        attempts: int,
        batch: _Batch | None = None,
    ) -> None:
        assert self._producer is not None
        dead = dlq_record(DecodeFailure(raw, reason, error_class, STAGE))
        self._producer.produce(self._dlq_topic, key=dead.key, value=dead.value, headers=list(dead.headers))
        self.stats.dead_lettered += 1
        self._count("dlq")
        if self._metrics is not None:
            self._metrics.dlq_records.labels(stage=STAGE, reason=result).inc()
        logger.warning(
            "record dead-lettered",
            extra={"topic": raw.topic, "partition": raw.partition, "offset": raw.offset, "result": result},
        )
        if rec is not None:
            self._audit(rec, f"dlq:{result}", None, attempts, batch.batch_id if batch else "")

    def _audit(
        self, rec: PendingRecord[RawRecord], result: str, status: int | None, attempts: int, batch_id: str
    ) -> None:
        assert self._producer is not None
        ext = rec.external_id or (rec.contact or {}).get("externalCustomerId")
        value = {
            "customer_key": rec.customer_key,
            "externalCustomerId": ext,
            "op": rec.op,
            "result": result,
            "http_status": status,
            "attempts": attempts,
            "batch_id": batch_id,
            "time": self._wall_ms(),
            "source": {"topic": rec.ref.topic, "partition": rec.ref.partition, "offset": rec.ref.offset},
        }
        self._producer.produce(self._audit_topic, key=rec.customer_key.encode(), value=orjson.dumps(value))
        self._producer.poll(0)

    def _audit_text(self, batch: _Batch, action: str, group_id: int, reason: str) -> None:
        assert self._producer is not None
        value = {
            "batch_id": batch.batch_id,
            "op": action,
            "group_id": group_id,
            "result": "failed",
            "reason": reason,
            "time": self._wall_ms(),
        }
        self._producer.produce(self._audit_topic, key=f"group-{group_id}".encode(), value=orjson.dumps(value))

    # -- partitions --------------------------------------------------------------------------------

    def _pause_all(self) -> None:
        if not self._paused and self._assigned and self._consumer is not None:
            self._consumer.pause(self._assigned)
            self._paused = True

    def _resume_all(self) -> None:
        if self._paused and self._assigned and self._consumer is not None:
            self._consumer.resume(self._assigned)
        self._paused = False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = list(partitions)
        self._paused = False
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="assigned").inc()
        self._ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Uncommitted work is abandoned: the next owner re-reads it (upserts are idempotent).
        if self._batch is not None or self._gathering:
            logger.info("abandoning uncommitted batch on revoke")
        self._batch = None
        self._gathering, self._gather_offsets = [], {}
        self._assigned = []
        self._paused = False
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="revoked").inc()


def build_deliver_stage(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    on_tick: Callable[[], None] | None = None,
    http: httpx.Client | None = None,
) -> DeliverStage:
    """The production deliver stage on an httpx client (HTTP durations fed to `metrics`)."""
    if http is None:
        hooks: dict[str, list[Callable[..., Any]]] = {}
        if metrics is not None:
            m = metrics

            def on_request(request: httpx.Request) -> None:
                request.extensions["yespo_started"] = time.perf_counter()

            def on_response(response: httpx.Response) -> None:
                started = response.request.extensions.get("yespo_started")
                if started is not None:
                    m.http_request_duration.labels(
                        endpoint=_endpoint(response.request.url.path), status=str(response.status_code)
                    ).observe(time.perf_counter() - started)

            hooks = {"request": [on_request], "response": [on_response]}
        http = httpx.Client(event_hooks=hooks, timeout=settings.yespo.request_timeout_s)
    client = YespoClient(http, settings.yespo, settings.contact)
    return DeliverStage(settings, client=client, metrics=metrics, on_tick=on_tick)
