"""The deliver stage's gathering batch: consumed upserts records that wait to become the next `Batch`.

Unreadable records are dead-lettered and superseded ones settled here, before any batch holds them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException

from connector.errors import DecodeError
from connector.kafka.clients import to_raw, translate
from connector.metrics import Metrics
from connector.models import RawRecord
from connector.sink.batch import LastWrites, PendingRecord, external_id
from connector.sink.batch_state import Batch
from connector.sink.recorder import DeliverStats, OutboxWrite, OutcomeRecorder
from connector.sink.upserts import parse_upsert

__all__ = ["Gathering"]

logger = logging.getLogger(__name__)

_Record = PendingRecord[RawRecord]


class Gathering:
    """The records consumed since the last batch was formed, with their offsets and outbox writes.

    Args:
        recorder: records the outcomes of unreadable and superseded records.
        last_writes: the superseded-record guard (per contact: the key and source position of its
            last record).
        stats: the stage's counters (`consumed`).
        clock: monotonic seconds (when the gathering started, for the linger).
        metrics: Prometheus metrics, if served (when each partition's last record was consumed).

    Attributes:
        records: the readable, current records, in topic order.
        offsets: per partition, the offset to commit (the last gathered record's plus one).
        starts: per partition, its first gathered offset.
        outbox: the DLQ/audit writes of the records settled while gathering.
        count: records gathered (settled ones included).
        started: when the first of them was gathered.
    """

    def __init__(
        self,
        recorder: OutcomeRecorder,
        last_writes: LastWrites,
        stats: DeliverStats,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
    ) -> None:
        self._recorder = recorder
        self._last_writes = last_writes
        self._stats = stats
        self._clock = clock
        self._metrics = metrics
        self.records: list[_Record] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.starts: dict[tuple[str, int], int] = {}  # per partition: its first gathered offset
        self.outbox: list[OutboxWrite] = []
        self.count = 0
        self.started = 0.0

    def consume(self, consumer: Consumer, max_records: int, timeout: float) -> None:
        """Consume up to `max_records` records (waiting up to `timeout` s) and gather them.

        Raises:
            KafkaError: the consumer failed, or a message carried a fatal error (other errors are
                logged and skipped).
        """
        try:
            msgs = consumer.consume(num_messages=max_records, timeout=timeout)
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
            self.add(to_raw(msg))
            latest[(str(msg.topic()), int(msg.partition() or 0))] = msg.timestamp()[1]
        if self._metrics is not None:  # for consumer_lag_seconds
            for (topic, partition), ts in latest.items():
                self._metrics.record_consumed(topic, partition, ts)

    def add(self, raw: RawRecord) -> None:
        """Gather one consumed record: dead-letter it if unreadable, settle it if superseded."""
        self._stats.consumed += 1
        if not self.count:
            self.started = self._clock()
        self.count += 1
        tp = (raw.topic, raw.partition)
        self.offsets[tp] = max(self.offsets.get(tp, 0), raw.offset + 1)
        self.starts[tp] = min(self.starts.get(tp, raw.offset), raw.offset)
        try:
            record = parse_upsert(raw)
        except DecodeError as exc:  # its reason names a field and a type, never a value
            self._recorder.dead_letter(
                self.outbox,
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
            self._recorder.settled(self.outbox, record, "superseded", None, 0, "", tally)
            self._recorder.count_settled(tally)
            return
        self.records.append(record)

    def keys(self) -> frozenset[str]:
        """The customers and Yespo contacts of the gathered records (`Batch.keys`)."""
        # A customer, or a Yespo contact (its externalCustomerId: a customer whose key changed keeps
        # it under its new key), still open in another batch: keep their records in order.
        return frozenset(r.customer_key for r in self.records) | frozenset(
            f"\x00ext:{ext}" for r in self.records if (ext := external_id(r)) is not None
        )

    def partitions(self) -> set[tuple[str, int]]:
        """The partitions the gathered records (settled ones included) come from."""
        return self.offsets.keys() | self.starts.keys()

    def take(self, keys: frozenset[str]) -> Batch:
        """The gathered records as a new batch (with their `keys`); the gathering starts afresh."""
        batch = Batch(
            uuid.uuid4().hex[:12],
            self.records,
            self.offsets,
            self.outbox,
            keys,
            starts=self.starts,
        )
        self.discard()
        return batch

    def discard(self) -> None:
        """Forget the gathered records (their offsets are not committed: they are read again)."""
        self.records, self.offsets, self.outbox = [], {}, []
        self.starts = {}
        self.count = 0
