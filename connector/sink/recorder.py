"""What the deliver stage records per contact outcome: counters, audit records and DLQ records.

Every record's outcome is audited (`{customer_key, externalCustomerId, op, result, http_status,
attempts, batch_id, time, source}`); a failed one is also written to the DLQ with its reason. The
writes go to the batch's outbox: they reach Kafka only when the stage commits the batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from connector.dlq import dlq_record
from connector.metrics import Metrics
from connector.models import DecodeFailure, RawRecord
from connector.sink.batch import PendingRecord, external_id

__all__ = ["STAGE", "DeliverStats", "OutboxWrite", "OutcomeRecorder"]

logger = logging.getLogger(__name__)

STAGE: Final = "deliver"

_Record = PendingRecord[RawRecord]
OutboxWrite = tuple[str, bytes | None, bytes | None, list[tuple[str, str | bytes | None]] | None]
"""A pending write to the DLQ or audit topic: (topic, key, value, headers)."""


@dataclass
class DeliverStats:
    """Counters of what the stage did (also fed to Prometheus); read them from another thread."""

    consumed: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    batches: int = 0
    requests_failed: int = 0
    retries: int = 0
    commits: int = 0
    assignments: int = 0
    revocations: int = 0
    results: dict[str, int] = field(default_factory=dict)


class OutcomeRecorder:
    """Counts outcomes into `stats` (and `metrics`) and builds their audit and DLQ writes.

    Safe to call from the stage's worker threads: the shared counters are updated under a lock.

    Args:
        stats: the stage's counters.
        dlq_topic: where dead-lettered records go.
        audit_topic: where every outcome is audited.
        metrics: Prometheus metrics, if served.
        wall_ms: epoch milliseconds for audit records.
        max_bytes: the DLQ topic's record limit (`connector.kafka.topics.record_limit`): a DLQ copy
            above it keeps only the headers. The stage lowers it at start-up (`max_bytes`).
    """

    def __init__(
        self,
        stats: DeliverStats,
        *,
        dlq_topic: str,
        audit_topic: str,
        metrics: Metrics | None = None,
        wall_ms: Callable[[], int] = lambda: 0,
        max_bytes: int = 1_000_000,
    ) -> None:
        self.stats = stats
        self.max_bytes = max_bytes
        self._dlq_topic = dlq_topic
        self._audit_topic = audit_topic
        self._metrics = metrics
        self._wall_ms = wall_ms
        self._stats_lock = threading.Lock()

    def count(self, result: str, n: int = 1) -> None:
        """Add `n` to the stats' and metrics' count of `result` (e.g. "group_failed")."""
        with self._stats_lock:
            self.stats.results[result] = self.stats.results.get(result, 0) + n
        if self._metrics is not None:
            self._metrics.contacts_delivered.labels(result=result).inc(n)

    def settled(
        self,
        outbox: list[OutboxWrite],
        rec: _Record,
        result: str,
        status: int | None,
        attempts: int,
        batch_id: str,
        tally: dict[str, int],
    ) -> None:
        """Audit one delivered record into `outbox`; counted in `tally` (see `count_settled`)."""
        tally[result] = tally.get(result, 0) + 1
        outbox.append(self._audit(rec.customer_key, rec, result, status, attempts, batch_id))

    def count_settled(self, tally: dict[str, int]) -> None:
        """Add a tally of delivered records to the stats and metrics (once per step, not per record)."""
        if not tally:
            return
        with self._stats_lock:
            self.stats.delivered += sum(tally.values())
        for result, n in tally.items():
            self.count(result, n)
        tally.clear()

    def dead_letter(
        self,
        outbox: list[OutboxWrite],
        raw: RawRecord,
        error_class: str,
        reason: str,
        rec: _Record | None,
        result: str,
        attempts: int,
        batch_id: str,
    ) -> None:
        """Write `raw` to the DLQ (via `outbox`) with the reason, and audit it as `dlq:<result>`.

        Args:
            outbox: where the DLQ and audit writes wait for the batch's commit.
            raw: the record as consumed (its bytes go to the DLQ unchanged).
            error_class: the error tree's class name for the DLQ headers.
            reason: why, free of customer data.
            rec: the parsed record (None when it could not be read).
            result: the audit result after `dlq:` (rejected, gave_up, segment, unreadable, import_error).
            attempts: delivery attempts made.
            batch_id: the batch's id ("" before a batch was formed).
        """
        # an upsert near message.max.bytes plus the error headers: the copy names the original
        dead = dlq_record(DecodeFailure(raw, reason, error_class, STAGE), max_bytes=self.max_bytes)
        outbox.append((self._dlq_topic, dead.key, dead.value, list(dead.headers)))
        with self._stats_lock:
            self.stats.dead_lettered += 1
        self.count("dlq")
        if self._metrics is not None:
            self._metrics.dlq_records.labels(stage=STAGE, reason=result).inc()
        logger.warning(
            "record dead-lettered",
            extra={"topic": raw.topic, "partition": raw.partition, "offset": raw.offset, "result": result},
        )
        key = rec.customer_key if rec is not None else (raw.key or b"").decode("utf-8", "replace")
        outbox.append(
            self._audit(key, rec, f"dlq:{result}", None, attempts, batch_id, raw=raw, reason=reason)
        )

    def _audit(
        self,
        customer_key: str,
        rec: _Record | None,
        result: str,
        status: int | None,
        attempts: int,
        batch_id: str,
        *,
        raw: RawRecord | None = None,
        reason: str | None = None,
    ) -> OutboxWrite:
        ref = rec.ref if rec is not None else raw
        assert ref is not None
        value: dict[str, Any] = {
            "customer_key": customer_key,
            "externalCustomerId": external_id(rec) if rec is not None else None,
            "op": rec.op if rec is not None else None,
            "result": result,
            "http_status": status,
            "attempts": attempts,
            "batch_id": batch_id,
            "time": self._wall_ms(),
            "source": {"topic": ref.topic, "partition": ref.partition, "offset": ref.offset},
        }
        if reason is not None:
            value["reason"] = reason
        return (self._audit_topic, customer_key.encode(), orjson.dumps(value), None)
