"""Restore a state partition from the compacted state topic before its changes are processed.

Reads state partition p (read_committed) from the earliest offset to the end (the last stable offset:
end-of-partition is signalled there for read_committed consumers) into the local store. Runs in
steps from the stage's loop so the main consumer keeps polling while a large partition restores; a
step's blocking calls end by the stage's step deadline, and what is left waits for the next step.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import KafkaError as KafkaError_
from connector.errors import StateError
from connector.kafka.clients import admin_config, restore_consumer_config, unstable_partitions
from connector.state.codec import decode_state
from connector.state.store import StateStore

__all__ = ["HANGING_WARNING", "MIN_CALL_S", "Restorer"]

logger = logging.getLogger(__name__)


_BROKER_AWAY: Final = frozenset({KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})
"""Client errors that a broker briefly away causes, retried while reading a partition's ends."""

_ENDS_TIMEOUT_S: Final = 10.0
"""The longest one read of a partition's ends waits."""

_ENDS_PATIENCE_S: Final = 60.0
"""How long a partition's ends may stay unreadable (the broker away) before the restore gives up."""

_ENDS_RETRY_S: Final = 0.5
"""The pause before a failed read of a partition's ends is made again (at a later step)."""

_HANGING_GRACE_S: Final = 60.0
"""How long past `kafka.transaction_timeout_ms` an open transaction on a state partition is waited
for before the restore warns that it is probably hanging (the broker aborts timed-out ones sooner)."""

_HANGING_LOG_EVERY_S: Final = 60.0

_UNSTABLE_TIMEOUT_S: Final = 15.0
"""The longest the open-transaction check (`unstable_partitions`) waits."""

HANGING_WARNING: Final = (
    "state partitions still have an open transaction long after kafka.transaction_timeout_ms: "
    "probably a hanging transaction; find it with `kafka-transactions.sh --bootstrap-server B "
    "find-hanging --broker-id N --max-transaction-timeout 1` and abort it (README, 'A hanging "
    "transaction')"
)
"""The warning `_warn_hanging` logs (operators and the broker-hang test look for it)."""

MIN_CALL_S: Final = 1.0
"""A blocking call starts only with this much time left before the step's deadline (else a later
step): the restore's here, and the merge stage's (`connector.merge_stage`)."""


@dataclass(slots=True)
class _Ends:
    """A partition being restored whose ends are not read yet (an empty one never delivers a record)."""

    failing_since: float | None = None  # when the first failed read in a row started
    retry_at: float = 0.0


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
        self._ends: dict[int, _Ends] = {}  # assigned to the restore consumer, ends still to read
        self._admin: AdminClient | None = None
        self._last_wait_log = 0.0
        self._last_error_log = 0.0
        self._last_hanging_log = -math.inf
        self._consumer: Consumer | None = None
        self.records = 0
        self.last_duration = 0.0
        self._durations: list[float] = []

    @property
    def pending(self) -> bool:
        """True while a partition is being restored or a finished one was not yet reported."""
        return bool(self._pending) or bool(self._finished)

    def restoring(self) -> list[int]:
        """The changes partitions being restored (kept paused until they are)."""
        return list(self._pending)

    def is_restoring(self, partition: int) -> bool:
        """True while `partition` is being restored."""
        return partition in self._pending

    def _client(self) -> Consumer:
        if self._consumer is None:
            group = f"{self._settings.kafka.group_id}-restore-{uuid.uuid4().hex[:8]}"
            self._consumer = Consumer(restore_consumer_config(self._settings, group))
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

    def _assign_new(self, deadline: float) -> None:
        consumer = self._client()
        new = self._new = [p for p in self._new if p in self._pending]
        if not new:
            return
        timeout = min(_UNSTABLE_TIMEOUT_S, deadline - self._clock())
        if timeout < MIN_CALL_S:
            return  # out of time: the next step asks
        self._new = []
        # A previous owner's last commit may be decided but not yet visible (its markers are written
        # after commit_transaction returns), and a crashed owner's open transaction hides what follows
        # until it times out: restore a partition only once no transaction is open on it.
        open_txn = {tp.partition for tp in self._unstable(new, timeout)}
        if open_txn:
            self._new = sorted(open_txn)
            if self._clock() - self._last_wait_log > 5:
                self._last_wait_log = self._clock()
                logger.info("waiting for open transactions before restoring", extra={"partitions": self._new})
            self._warn_hanging(self._new)
            new = [p for p in new if p not in open_txn]
            if not new:
                return
        consumer.incremental_assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in new])
        logger.info("restoring state partitions", extra={"partitions": new})
        # An empty partition may never deliver a record; finish it from the watermarks.
        for p in new:
            self._ends[p] = _Ends()

    def _warn_hanging(self, waiting: list[int]) -> None:
        """Warn (once a minute) about partitions whose transaction outlived the transaction timeout.

        The broker aborts a transaction left open longer than `kafka.transaction_timeout_ms` (a
        crashed owner's) within seconds of the timeout; one still open a minute later is most likely
        a hanging transaction whose markers the broker skipped, which no client call ends: an
        operator aborts it with `kafka-transactions.sh` (README, "A hanging transaction").
        """
        now = self._clock()
        limit = self._settings.kafka.transaction_timeout_ms / 1000 + _HANGING_GRACE_S
        hanging = [p for p in waiting if now - self._pending.get(p, now) > limit]
        if not hanging or now - self._last_hanging_log < _HANGING_LOG_EVERY_S:
            return
        self._last_hanging_log = now
        logger.warning(
            HANGING_WARNING,
            extra={
                "topic": self._topic,
                "partitions": hanging,
                "seconds": round(max(now - self._pending[p] for p in hanging)),
            },
        )

    def _read_ends(self, deadline: float) -> None:
        """Finish the empty partitions among those whose ends are not read yet, while time is left.

        A read the broker does not answer ends this step's reads (the others would most likely wait
        as long); its partition goes last, so that the next step asks the others first.
        """
        for p, ends in list(self._ends.items()):
            now = self._clock()
            if ends.retry_at > now:
                continue
            timeout = min(_ENDS_TIMEOUT_S, deadline - now)
            if timeout < MIN_CALL_S:
                return  # out of time: the next step reads the others
            read = self._watermarks(self._client(), p, ends, timeout)
            del self._ends[p]
            if read is None:
                self._ends[p] = ends
                return
            low, high = read
            if high <= low:
                self._finish(p)

    def _unstable(self, partitions: list[int], timeout: float) -> list[TopicPartition]:
        if self._admin is None:
            self._admin = AdminClient(admin_config(self._settings))
        try:
            return unstable_partitions(
                self._admin, [TopicPartition(self._topic, p) for p in partitions], timeout=timeout
            )
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

    def _watermarks(
        self, consumer: Consumer, partition: int, ends: _Ends, timeout: float
    ) -> tuple[int, int] | None:
        """One read of `partition`'s ends; None if the broker did not answer (read again at a later step).

        Raises:
            StateError: a non-retriable error, or the ends unreadable for `_ENDS_PATIENCE_S`.
        """
        started = self._clock()
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self._topic, partition), timeout=timeout, cached=False
            )
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = err is not None and hasattr(err, "retriable") and err.retriable()
            # a broker away for a moment: librdkafka does not flag these retriable
            retriable = retriable or getattr(err, "code", lambda: None)() in _BROKER_AWAY
            if ends.failing_since is None:
                ends.failing_since = started
            now = self._clock()
            if not retriable or now - ends.failing_since > _ENDS_PATIENCE_S:
                raise StateError(f"cannot read the end of {self._topic}[{partition}]") from exc
            ends.retry_at = now + _ENDS_RETRY_S
            if now - self._last_error_log > 5:
                self._last_error_log = now
                logger.info(
                    "cannot read a state partition's end yet; retrying",
                    extra={"partition": partition, "error": str(err)},
                )
            return None
        return int(low), int(high)

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
        self._ends.pop(partition, None)
        if partition in self._new:
            self._new.remove(partition)
            self._pending.pop(partition, None)
            return
        if self._pending.pop(partition, None) is not None and self._consumer is not None:
            self._consumer.incremental_unassign([TopicPartition(self._topic, partition)])

    def step(
        self, max_records: int = 5000, timeout: float = 0.05, *, deadline: float = math.inf
    ) -> list[int]:
        """Load up to `max_records`; return the partitions that finished restoring.

        The blocking calls (the open-transaction check, each read of a partition's ends) end by
        `deadline` (on the restorer's clock); what did not fit, or met a broker away, waits for a later
        step: a partition's ends unreadable for a minute stop the restore with `StateError`.
        """
        self._assign_new(deadline)
        self._read_ends(deadline)
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
        self._ends.pop(partition, None)
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
