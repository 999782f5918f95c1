"""Exclusive access to the merge stage's outputs for ops commands (resync, rebuild-state).

`GroupFence` holds the merge group as its only member; `fenced_transaction` (`commit_fenced`) commits a
transaction with the group's generation-checked offsets, and aborts it on any failure; `StateScanner`
reads the state topic read_committed to its end;
`wait_until_stable` waits until no transaction is open on given partitions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import GroupActiveError, KafkaError, StateError
from connector.kafka.clients import consumer_config, kafka_errors, producer_config, unstable_partitions
from connector.ops.lag import kafka_call

__all__ = [
    "GroupFence",
    "StateScanner",
    "client_conf",
    "commit_fenced",
    "fenced_transaction",
    "fold_latest",
    "live_members",
    "partition_batches",
    "scan_consumer",
    "stable_timeout",
    "transactional_producer",
    "wait_until_stable",
]

logger = logging.getLogger(__name__)


def fold_latest(
    records: Iterator[tuple[str, bytes | None, int]],
) -> dict[str, tuple[bytes, int]]:
    """Last value per key of a compacted topic's records (key, value, offset); tombstones remove."""
    latest: dict[str, tuple[bytes, int]] = {}
    for key, value, offset in records:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = (value, offset)
    return latest


def live_members(admin: AdminClient, group: str, timeout: float = 10.0) -> int:
    """Number of live members of `group` (0 for an unknown or empty group)."""
    with kafka_call(f"cannot describe consumer group {group!r}"):
        desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(
            timeout=timeout + 5
        )
    return len(desc.members)


_OPS_LOGGER = logging.getLogger("connector.librdkafka")
"""Where the ops commands' librdkafka lines go (Python logging)."""


def client_conf(settings: Settings) -> dict[str, Any]:
    """Admin client properties of the ops commands (librdkafka's log lines go to Python logging).

    Consumers and producers take `consumer_config`/`producer_config` with `logger=_OPS_LOGGER`
    instead: there `kafka.extra` cannot override the properties those helpers fix.
    """
    return {"logger": _OPS_LOGGER, **settings.kafka.as_librdkafka()}


class GroupFence:
    """Membership of the merge group as its only member, for ops that write the stage's outputs.

    While the fence is held no merge stage can own a partition: one that joins triggers a rebalance,
    which revokes our partitions (`check()` raises), and our transactional offset commit carries our
    generation, so the broker rejects it after any rebalance (the transaction aborts).
    """

    def __init__(self, settings: Settings, *, timeout: float = 60.0) -> None:
        """Join `kafka.group_id` on the merge stage's topics and wait for every partition.

        Raises:
            GroupActiveError: another member holds partitions of the group.
            KafkaError: no assignment within `timeout`.
        """
        self.group = settings.kafka.group_id
        self._topics = [*settings.source.topics, settings.state.changes_topic]
        self._revoked = False
        self._assigned: list[TopicPartition] = []
        conf = consumer_config(settings, self.group, logger=_OPS_LOGGER)
        self._consumer: Consumer | None = Consumer(conf)
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        try:
            self._join(timeout)
        except BaseException:
            self.close()
            raise

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        consumer.pause(partitions)  # a member only: it never fetches
        self._assigned = list(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._assigned:
            self._revoked = True
        self._assigned = []

    def _join(self, timeout: float) -> None:
        consumer = self._client()
        deadline = time.monotonic() + timeout
        while not self._assigned:
            if time.monotonic() > deadline:
                raise KafkaError(f"no partitions of group {self.group!r} assigned within {timeout:.0f} s")
            self._poll(consumer, 0.2)
        with kafka_errors():
            md = consumer.list_topics(timeout=10)
        expected = {(t, p) for t in self._topics if t in md.topics for p in md.topics[t].partitions}
        got = {(tp.topic, tp.partition) for tp in self._assigned}
        if got != expected or self._revoked:
            raise GroupActiveError(self.group, 1)
        logger.info("joined the merge group as its only member", extra={"group": self.group})

    def _client(self) -> Consumer:
        if self._consumer is None:
            raise StateError("the group fence is closed")
        return self._consumer

    @staticmethod
    def _poll(consumer: Consumer, timeout: float) -> None:
        try:
            msg = consumer.poll(timeout)
        except KafkaException as exc:
            raise KafkaError(f"group membership failed: {exc}") from exc
        err = msg.error() if msg is not None else None
        if err is not None and err.fatal():
            raise KafkaError(f"group membership failed: {err.name()}", fatal=True)

    def check(self) -> None:
        """Serve the group protocol; raise when a rebalance took our partitions.

        Raises:
            GroupActiveError: another member joined the group (a merge stage started).
        """
        self._poll(self._client(), 0)
        if self._revoked or not self._assigned:
            raise GroupActiveError(self.group, 1)

    def committed(self, timeout: float = 30.0) -> list[TopicPartition]:
        """The group's committed offsets (stable: pending transactional commits resolved first)."""
        with kafka_errors():
            tps = self._client().committed(self._assigned, timeout=timeout)
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in tps if tp.offset >= 0]

    def start_offsets(self, timeout: float = 10.0) -> list[TopicPartition]:
        """Where the group starts on each partition when it has no committed offset: the earliest one.

        (`auto.offset.reset` is `earliest`, and `kafka.extra` cannot change it.) Committed, they
        change nothing for the group, and a transaction that has no committed offsets to send can
        send them instead, so that the broker checks our generation (`commit_fenced`).
        """
        consumer = self._client()
        offsets = []
        for tp in self._assigned:
            with kafka_errors():
                low, _ = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=timeout, cached=False
                )
            offsets.append(TopicPartition(tp.topic, tp.partition, int(low)))
        return offsets

    def metadata(self) -> Any:
        """The consumer group metadata for `send_offsets_to_transaction` (carries the generation)."""
        return self._client().consumer_group_metadata()

    def assigned(self) -> list[tuple[str, int]]:
        """Every (topic, partition) of the merge stage (all of them are ours)."""
        return sorted((tp.topic, tp.partition) for tp in self._assigned)

    def close(self) -> None:
        """Leave the group."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class StateScanner:
    """Reads state topic partitions (read_committed) from the beginning to their end; commits nothing."""

    def __init__(self, settings: Settings, *, idle_timeout: float = 120.0) -> None:
        """An assign-only consumer on `state.topic`."""
        self.topic = settings.state.topic
        self._idle = idle_timeout
        self._consumer = scan_consumer(settings, "scan")

    @staticmethod
    def partition_ids(admin: AdminClient, topic: str) -> list[tuple[str, int]]:
        """(topic, partition) of every partition of `topic`.

        Raises:
            KafkaError: the topic does not exist.
        """
        with kafka_call("cannot read cluster metadata"):
            md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise KafkaError(f"topic {topic!r} does not exist")
        return [(topic, p) for p in sorted(md.partitions)]

    def partitions(self) -> dict[int, int]:
        """Partition -> records between its low and high watermarks (the progress total).

        Raises:
            KafkaError: the state topic does not exist or cannot be read.
        """
        with kafka_errors():
            md = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if md is None or md.error is not None or not md.partitions:
            raise KafkaError(f"state topic {self.topic!r} (state.topic) does not exist")
        sizes = {}
        for p in sorted(md.partitions):
            with kafka_errors():
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=10, cached=False
                )
            sizes[p] = max(0, int(high) - int(low))
        return sizes

    def scan(
        self, partition: int, on_records: Callable[[int], None] | None = None
    ) -> dict[str, tuple[bytes, int]]:
        """The live keys of `partition`: key -> (last value, its offset)."""
        return fold_latest(self._records(partition, on_records))

    def _records(
        self, partition: int, on_records: Callable[[int], None] | None
    ) -> Iterator[tuple[str, bytes | None, int]]:
        batches = partition_batches(self._consumer, self.topic, partition, OFFSET_BEGINNING, idle=self._idle)
        for batch in batches:
            for msg in batch:
                yield (msg.key() or b"").decode(), msg.value(), int(msg.offset() or 0)
            if on_records is not None:
                on_records(len(batch))

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def scan_consumer(settings: Settings, purpose: str) -> Consumer:
    """An assign-only read_committed consumer that reports partition ends (`partition_batches`).

    Its group id (`<group_id>-<purpose>-<random>`) is never joined or committed to.
    """
    group = f"{settings.kafka.group_id}-{purpose}-{uuid.uuid4().hex[:8]}"
    return Consumer(consumer_config(settings, group, logger=_OPS_LOGGER, **{"enable.partition.eof": True}))


def partition_batches(
    consumer: Consumer, topic: str, partition: int, start: int, *, idle: float, max_records: int = 5000
) -> Iterator[list[Message]]:
    """The records of one partition from `start` to its current end, a consume call's worth at a time.

    Assigns the partition to `consumer` (made with `enable.partition.eof`) for the read and unassigns
    it after; a read_committed consumer ends at the last stable offset.

    Raises:
        KafkaError: the partition cannot be read, or made no progress for `idle` seconds (retriable:
            an open transaction may hold the last stable offset).
    """
    with kafka_errors():
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    if high <= low or 0 <= high <= start:
        return
    consumer.assign([TopicPartition(topic, partition, start)])
    last_progress = time.monotonic()
    try:
        while True:
            msgs = consumer.consume(num_messages=max_records, timeout=0.5)
            if not msgs and time.monotonic() - last_progress > idle:
                raise KafkaError(
                    f"reading {topic}[{partition}] made no progress for {idle:.0f} s "
                    "(an open transaction holds the last stable offset?)",
                    retriable=True,
                )
            batch: list[Message] = []
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == ConfluentKafkaError._PARTITION_EOF:
                        if batch:
                            yield batch
                        return
                    raise KafkaError(f"cannot read {topic}[{partition}]: {err.name()}")
                batch.append(msg)
            if batch:
                last_progress = time.monotonic()
                yield batch
    finally:
        consumer.unassign()


def transactional_producer(settings: Settings, suffix: str, **overrides: Any) -> Producer:
    """A transactional producer with id `<prefix>-<group>-<suffix>` (init_transactions done).

    A previous run's open transaction under the same id is aborted (fenced) by the init.
    """
    kafka = settings.kafka
    tid = f"{kafka.transactional_id_prefix}-{kafka.group_id}-{suffix}"
    producer = Producer(producer_config(settings, transactional_id=tid, logger=_OPS_LOGGER, **overrides))
    with kafka_errors():
        producer.init_transactions(30)
    return producer


def stable_timeout(settings: Settings) -> float:
    """How long an open transaction can hold a partition's last stable offset: its timeout, plus slack."""
    return max(60.0, settings.kafka.transaction_timeout_ms / 1000 + 30)


def wait_until_stable(
    admin: AdminClient, partitions: Iterable[tuple[str, int]], *, timeout: float = 60.0
) -> None:
    """Wait until read_committed readers can see everything written to `partitions`.

    `commit_transaction` returns once the commit is decided; the markers that make the records
    visible are written right after. Leaving the merge group before they are could let a merge stage
    restore its state without our last records, so we wait until each partition's last stable offset
    reaches its high watermark (we are the only writer while we hold the group).

    Raises:
        KafkaError: the offsets cannot be read, or the partitions are not stable within `timeout`.
    """
    wanted = [TopicPartition(t, p) for t, p in sorted(set(partitions))]
    if not wanted:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            behind = _not_stable(admin, wanted)
        except KafkaError as exc:
            # leader moves (NOT_LEADER_FOR_PARTITION, e.g. just after topic creation): try again;
            # the last error is raised once the deadline has passed
            if exc.fatal or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        if not behind:
            return
        if time.monotonic() > deadline:
            raise KafkaError(
                f"{behind[0].topic}[{behind[0].partition}] still has an open transaction after "
                f"{timeout:.0f} s (a crashed producer's transaction times out after its "
                "transaction.timeout.ms); try again later"
            )
        time.sleep(0.1)


def _not_stable(admin: AdminClient, wanted: list[TopicPartition]) -> list[TopicPartition]:
    """Partitions whose last stable offset is below their high watermark."""
    with kafka_call("cannot list partition offsets"):
        return unstable_partitions(admin, wanted)


def commit_fenced(producer: Producer, fence: GroupFence, offsets: list[TopicPartition]) -> None:
    """Commit the open transaction with the group's offsets (generation-checked), else abort.

    Offsets must join every transaction: only then does the broker check our membership (KIP-447).
    `fence.check()` sees a revocation only once the client has heard of it; a fence that lost the
    group unnoticed (its session expired while the process stalled, or its coordinator was out of
    reach) could otherwise commit after a merge stage restored the partition, which then merges on
    without our records. A group with no committed offsets (a new group, or its offsets expired
    under `offsets.retention.minutes`) gets the partitions' earliest offsets, where it starts anyway.

    Raises:
        GroupActiveError: our partitions were revoked (another member joined); aborted.
        KafkaError: the broker rejected the offsets or the commit, or there are no offsets to send
            (no partition assigned); aborted.
    """
    try:
        fence.check()
        if not offsets:
            offsets = fence.start_offsets()
        if not offsets:
            raise KafkaError("the transaction has no offsets to send, so the group could not fence it")
        with kafka_errors():
            producer.send_offsets_to_transaction(offsets, fence.metadata(), 30)
            producer.commit_transaction(60)
    except (KafkaError, GroupActiveError):
        _abort_quietly(producer)
        raise


@contextmanager
def fenced_transaction(
    producer: Producer, fence: GroupFence, offsets: list[TopicPartition]
) -> Iterator[None]:
    """Begin a transaction; after the block, `commit_fenced` it with `offsets`.

    Whatever fails in the block (the fence lost to a stage that joined, a full queue) aborts the
    transaction before it propagates: left open, it would hold read_committed readers of its
    partitions (a merge stage restoring the state topic) behind it until the transaction timeout.
    """
    with kafka_errors():
        producer.begin_transaction()
    try:
        yield
    except BaseException:
        _abort_quietly(producer)
        raise
    commit_fenced(producer, fence, offsets)


def _abort_quietly(producer: Producer) -> None:
    """Abort the open transaction; a failed abort is logged (the broker aborts it at its timeout)."""
    try:
        producer.abort_transaction(30)
    except KafkaException as exc:
        logger.warning("abort failed", extra={"error": str(exc)})
