"""Read a consumer group's lag per partition: committed offset, end offset, records and seconds behind.

Figures match `kafka-consumer-groups --describe` (CURRENT-OFFSET, LOG-END-OFFSET, LAG) except that the
end is the **last stable offset** (what a read_committed consumer can reach), while the Java tool shows
the high watermark; the two differ only while a transaction is open on the partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import KafkaError as ClientError
from confluent_kafka.admin import AdminClient, OffsetSpec

from connector.errors import KafkaError
from connector.kafka.clients import translate
from connector.ops.lag_status import PartitionSample
from connector.ops.stages import StageGroup

__all__ = ["GroupLag", "LagReader", "PartitionLag", "kafka_call"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of one group at one moment.

    Attributes:
        topic: Topic name.
        partition: Partition number (-1 for a topic that could not be read at all).
        committed: The group's committed offset; None when it has none (the tool's "-").
        start: The partition's first retained offset.
        end: The last stable offset (read_committed end; equals the high watermark when no
            transaction is open).
        lag: `end - committed` in offsets, as `kafka-consumer-groups` reports it (transaction
            markers count); None without a committed offset.
        lag_seconds: Age of the oldest unconsumed record (now minus its timestamp); 0.0 when no
            record is waiting; None when unknown.
        error: Why the partition could not be read, if it could not.
        drained: No record is waiting: the committed offset is at the end, or only transaction
            markers lie between them (a stage that commits the offset after a transaction's last
            record stays one marker behind the end for as long as it is idle).
    """

    topic: str
    partition: int
    committed: int | None
    start: int | None
    end: int | None
    lag: int | None
    lag_seconds: float | None
    error: str | None = None
    drained: bool = False

    @property
    def pending(self) -> int | None:
        """Records still to consume: `lag` (0 when drained), or the retained backlog without a commit."""
        if self.drained:
            return 0
        if self.lag is not None:
            return max(self.lag, 0)
        if self.committed is None and self.start is not None and self.end is not None:
            return max(self.end - self.start, 0)
        return None


@dataclass(frozen=True, slots=True)
class GroupLag:
    """A stage's consumer group at one moment: its state, live members and partitions."""

    stage: str
    group: str
    state: str
    members: int
    partitions: tuple[PartitionLag, ...]
    taken_at: float
    error: str | None = None

    def samples(self) -> Iterator[tuple[tuple[str, str, int], PartitionSample]]:
        """((group, topic, partition), sample) pairs for status evaluation."""
        for p in self.partitions:
            error = p.error or self.error
            yield (
                (self.group, p.topic, p.partition),
                PartitionSample(
                    committed=p.committed, lag=None if error else p.pending, members=self.members, error=error
                ),
            )


@contextmanager
def kafka_call(what: str) -> Iterator[None]:
    """`kafka.clients.translate` for ops commands: the `KafkaError` message starts with `what`.

    Also turns an admin future's `TimeoutError` into a retriable `KafkaError`.
    """
    try:
        yield
    except KafkaException as exc:
        base = translate(exc)
        raise KafkaError(f"{what}: {base}", retriable=base.retriable, fatal=base.fatal) from exc
    except TimeoutError as exc:
        raise KafkaError(f"{what}: timed out", retriable=True) from exc


class LagReader:
    """Reads group lag with an AdminClient plus an assign()-only consumer (never joins a group).

    Safe while the connector runs: it commits nothing and does not join the stage's group.
    """

    def __init__(
        self,
        kafka_conf: Mapping[str, Any],
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create the clients from librdkafka properties (`settings.kafka.as_librdkafka()`)."""
        self._timeout = timeout_s
        self._clock = clock
        # librdkafka's own log lines go to Python logging instead of stderr (errors are raised anyway).
        conf = {"logger": logging.getLogger("connector.librdkafka"), **kafka_conf}
        self._admin = AdminClient(conf)
        self._consumer_conf = {
            **conf,
            # group.id is mandatory in confluent-kafka; this one never joins, subscribes or commits.
            "group.id": "yespo-connector-lag-probe",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "max.partition.fetch.bytes": 65536,
            "queued.max.messages.kbytes": 1024,
        }
        self._consumer: Consumer | None = None

    def close(self) -> None:
        """Close the probe consumer (the admin client needs no closing)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> LagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, sg: StageGroup) -> GroupLag:
        """The lag of `sg.group` on every partition of `sg.topics`.

        A failure to reach the cluster or describe the group is returned as `GroupLag.error`; a
        topic that does not exist becomes an error row (partition -1). Never raises `KafkaError`.
        """
        taken_at = self._clock()
        try:
            partitions, missing = self._partitions(sg.topics)
            state, members = self._describe_group(sg.group)
            committed = self._committed(sg.group, partitions)
            start = self._list_offsets(partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
            end = self._list_offsets(partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        except KafkaError as exc:
            return GroupLag(sg.stage, sg.group, "UNKNOWN", 0, (), taken_at, error=str(exc))
        positions = {}
        for tp in partitions:
            c, s, e = committed.get(tp), start.get(tp), end.get(tp)
            # below the log start (retention deleted what the group had not read): read from the start
            position = max(c, s) if c is not None and s is not None else (c if c is not None else s)
            if position is not None and e is not None and e > position:
                positions[tp] = position
        ages, drained = self._ages(positions, end)
        rows: list[PartitionLag] = [
            PartitionLag(t, -1, None, None, None, None, None, error="topic does not exist") for t in missing
        ]
        for tp in partitions:
            c, s, e = committed.get(tp), start.get(tp), end.get(tp)
            error = None if s is not None and e is not None else "offsets unavailable"
            lag = e - c if c is not None and e is not None else None
            seconds: float | None = 0.0 if tp not in positions else ages.get(tp)
            empty = error is None and (tp in drained or (tp not in positions and c is not None))
            rows.append(PartitionLag(tp[0], tp[1], c, s, e, lag, seconds, error, drained=empty))
        rows.sort(key=lambda r: (r.topic, r.partition))
        return GroupLag(sg.stage, sg.group, state, members, tuple(rows), taken_at)

    def _describe_group(self, group: str) -> tuple[str, int]:
        with kafka_call(f"cannot describe consumer group {group!r}"):
            desc = self._admin.describe_consumer_groups([group], request_timeout=self._timeout)[group].result(
                timeout=self._timeout + 5
            )
        return desc.state.name, len(desc.members)

    def _partitions(self, topics: tuple[str, ...]) -> tuple[list[tuple[str, int]], list[str]]:
        # All topics: asking for one topic by name could auto-create it on brokers that allow that.
        with kafka_call("cannot read cluster metadata"):
            metadata = self._admin.list_topics(timeout=self._timeout)
        found: list[tuple[str, int]] = []
        missing: list[str] = []
        for topic in dict.fromkeys(topics):
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                missing.append(topic)
                continue
            found.extend((topic, p) for p in sorted(meta.partitions))
        return found, missing

    def _committed(self, group: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
        with kafka_call(f"cannot read committed offsets of group {group!r}"):
            result = self._admin.list_consumer_group_offsets([request], request_timeout=self._timeout)[
                group
            ].result(timeout=self._timeout + 5)
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in result.topic_partitions
            if tp.error is None and tp.offset != OFFSET_INVALID and tp.offset >= 0
        }

    def _list_offsets(
        self, partitions: list[tuple[str, int]], spec: OffsetSpec
    ) -> dict[tuple[str, int], int]:
        """Offsets by spec; `latest` under READ_COMMITTED is the last stable offset (verified on 4.3.1)."""
        if not partitions:
            return {}
        request = {TopicPartition(t, p): spec for t, p in partitions}
        out: dict[tuple[str, int], int] = {}
        with kafka_call("cannot list partition offsets"):
            futures = self._admin.list_offsets(
                request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout
            )
            for tp, future in futures.items():
                try:
                    out[(tp.topic, tp.partition)] = future.result(timeout=self._timeout + 5).offset
                except KafkaException as exc:
                    logger.warning(
                        "cannot list offsets",
                        extra={"topic": tp.topic, "partition": tp.partition, "error": str(exc)},
                    )
        return out

    def _ages(
        self, positions: dict[tuple[str, int], int], end: dict[tuple[str, int], int]
    ) -> tuple[dict[tuple[str, int], float], set[tuple[str, int]]]:
        """Seconds since the timestamp of the first record at or after each position; the drained ones.

        Reads with read_committed, so the first record returned is the oldest unconsumed one a stage
        would see; transaction markers are skipped. A partition with no record before its end (only
        markers, or nothing) is drained, its age 0.0.
        """
        drained: set[tuple[str, int]] = set()
        if not positions:
            return {}, drained
        if self._consumer is None:
            with kafka_call("cannot create the lag probe consumer"):
                self._consumer = Consumer(self._consumer_conf)
        consumer = self._consumer
        ages: dict[tuple[str, int], float] = {}
        with kafka_call("cannot read the oldest unconsumed records"):
            consumer.assign([TopicPartition(t, p, off) for (t, p), off in positions.items()])
            deadline = time.monotonic() + self._timeout
            try:
                while len(ages) < len(positions) and time.monotonic() < deadline:
                    msg = consumer.poll(0.2)
                    if msg is None:
                        continue
                    key = (str(msg.topic()), int(msg.partition() or 0))
                    if key not in positions or key in ages:
                        continue
                    err = msg.error()
                    if err is not None:
                        if err.code() == ClientError._PARTITION_EOF:
                            ages[key] = 0.0
                            drained.add(key)
                        continue
                    ts_type, ts = msg.timestamp()
                    if (msg.offset() or 0) >= end[key]:
                        ages[key] = 0.0
                        drained.add(key)
                    elif ts_type != TIMESTAMP_NOT_AVAILABLE:
                        ages[key] = max(0.0, self._clock() - ts / 1000.0)
            finally:
                consumer.unassign()
        return ages, drained
