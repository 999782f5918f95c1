"""Restore a state partition from the compacted state topic before its changes are processed.

Reads state partition p (read_committed) from the earliest offset to the end (the last stable offset:
end-of-partition is signalled there for read_committed consumers) into the local store. Runs in
steps from the stage's loop so the main consumer keeps polling while a large partition restores.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import KafkaError as KafkaError_
from connector.errors import StateError
from connector.kafka.clients import consumer_config, unstable_partitions
from connector.state.codec import decode_state
from connector.state.store import StateStore

__all__ = ["Restorer"]

logger = logging.getLogger(__name__)


_BROKER_AWAY: Final = frozenset({KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})
"""Client errors that a broker briefly away causes, retried while reading a partition's ends."""


class Restorer:
    """Restores assigned state partitions into a `StateStore`, a step at a time."""

    def __init__(self, settings: Settings, store: StateStore, *, clock: Callable[[], float] = time.monotonic):
        self._settings = settings
        self._store = store
        self._clock = clock
        self._topic = settings.state.topic
        self._pending: dict[int, float] = {}
        self._finished: list[int] = []
        self._new: list[int] = []
        self._admin: AdminClient | None = None
        self._last_wait_log = 0.0
        self._last_error_log = 0.0
        self._consumer: Consumer | None = None
        self.records = 0
        self.last_duration = 0.0
        self._durations: list[float] = []

    @property
    def pending(self) -> bool:
        """True while a partition is being restored or a finished one was not yet reported."""
        return bool(self._pending) or bool(self._finished)

    def is_restoring(self, partition: int) -> bool:
        """True while `partition` is being restored."""
        return partition in self._pending

    def _client(self) -> Consumer:
        if self._consumer is None:
            group = f"{self._settings.kafka.group_id}-restore-{uuid.uuid4().hex[:8]}"
            self._consumer = Consumer(
                consumer_config(
                    self._settings, group, **{"enable.partition.eof": True, "fetch.max.bytes": 52428800}
                )
            )
        return self._consumer

    def begin(self, partitions: list[int]) -> None:
        """Schedule `partitions` for restoring (their local state is dropped first).

        Cheap and free of I/O, so it is safe inside a rebalance callback; `step()` does the reading.
        """
        for p in partitions:
            if p not in self._pending:
                self._store.drop_partition(p)
                self._pending[p] = self._clock()
                self._new.append(p)

    def _assign_new(self) -> None:
        consumer = self._client()
        new, self._new = [p for p in self._new if p in self._pending], []
        if not new:
            return
        # A previous owner's last commit may be decided but not yet visible (its markers are written
        # after commit_transaction returns), and a crashed owner's open transaction hides what follows
        # until it times out: restore a partition only once no transaction is open on it.
        open_txn = {tp.partition for tp in self._unstable(new)}
        if open_txn:
            self._new = sorted(open_txn)
            if self._clock() - self._last_wait_log > 5:
                self._last_wait_log = self._clock()
                logger.info("waiting for open transactions before restoring", extra={"partitions": self._new})
            new = [p for p in new if p not in open_txn]
            if not new:
                return
        consumer.incremental_assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in new])
        logger.info("restoring state partitions", extra={"partitions": new})
        # An empty partition may never deliver a record; finish it from the watermarks.
        for p in new:
            low, high = self._watermarks(consumer, p)
            if high <= low:
                self._finish(p)

    def _unstable(self, partitions: list[int]) -> list[TopicPartition]:
        if self._admin is None:
            conf = self._settings.kafka.as_librdkafka()
            self._admin = AdminClient(conf)
        try:
            return unstable_partitions(self._admin, [TopicPartition(self._topic, p) for p in partitions])
        except KafkaError_ as exc:
            if exc.fatal:
                raise
            # A fresh client next time: after the broker was away, a client can keep asking with a
            # stale leader epoch and get FENCED_LEADER_EPOCH for ever.
            self._admin = None
            if self._clock() - self._last_error_log > 5:
                self._last_error_log = self._clock()
                logger.info("cannot read offsets yet; retrying", extra={"error": str(exc)})
            return [TopicPartition(self._topic, p) for p in partitions]

    def _watermarks(self, consumer: Consumer, partition: int) -> tuple[int, int]:
        deadline = self._clock() + 60
        while True:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=10, cached=False
                )
                return int(low), int(high)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = err is not None and hasattr(err, "retriable") and err.retriable()
                # a broker away for a moment: librdkafka does not flag these retriable
                retriable = retriable or getattr(err, "code", lambda: None)() in _BROKER_AWAY
                if not retriable or self._clock() > deadline:
                    raise StateError(f"cannot read the end of {self._topic}[{partition}]") from exc
                time.sleep(0.5)

    def drain_durations(self) -> list[float]:
        """The seconds each partition finished since the last call took to restore, in finishing order.

        One entry per partition (from `begin` to its end), for the restore-duration histogram.
        """
        durations, self._durations = self._durations, []
        return durations

    def cancel(self, partition: int) -> None:
        """Stop restoring `partition` (revoked)."""
        if partition in self._finished:
            self._finished.remove(partition)
        if partition in self._new:
            self._new.remove(partition)
            self._pending.pop(partition, None)
            return
        if self._pending.pop(partition, None) is not None and self._consumer is not None:
            self._consumer.incremental_unassign([TopicPartition(self._topic, partition)])

    def step(self, max_records: int = 5000, timeout: float = 0.05) -> list[int]:
        """Load up to `max_records`; return the partitions that finished restoring."""
        self._assign_new()
        done, self._finished = self._finished, []
        if not self._pending:
            return done
        consumer = self._client()
        for msg in consumer.consume(num_messages=max_records, timeout=timeout):
            err = msg.error()
            partition = msg.partition()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if partition in self._pending:
                        self._finish(partition)
                    continue
                raise StateError(f"cannot read the state topic: {err.name()}")
            if partition not in self._pending:
                continue
            value = msg.value()
            try:
                key = (msg.key() or b"").decode()
                self._store.put(partition, key, decode_state(value) if value is not None else None)
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                raise StateError(
                    f"state record {self._topic}[{partition}]@{msg.offset()} is unreadable"
                ) from exc
            self.records += 1
        done.extend(self._finished)
        self._finished = []
        return done

    def _finish(self, partition: int) -> None:
        started = self._pending.pop(partition)
        self._finished.append(partition)
        self.last_duration = self._clock() - started
        self._durations.append(self.last_duration)
        if self._consumer is not None:
            self._consumer.incremental_unassign([TopicPartition(self._topic, partition)])
        logger.info(
            "state partition restored",
            extra={
                "partition": partition,
                "seconds": round(self.last_duration, 3),
                "customers": self._store.size(partition),
                "customers_held": self._store.size(),
            },
        )

    def close(self) -> None:
        """Close the restore consumer."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
