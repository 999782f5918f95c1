"""Reading a topic to its end for ops commands and the deliver stage's read-back (read_committed).

`StateScanner` reads the state topic from the beginning and keeps each key's last value (`fold_latest`);
`scan_consumer` and `partition_batches` read any partition from an offset to its current end.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import KafkaError
from connector.kafka.clients import consumer_config, kafka_errors
from connector.ops.fence import OPS_LOGGER
from connector.ops.lag import kafka_call

__all__ = ["StateScanner", "fold_latest", "partition_batches", "scan_consumer"]

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
    return Consumer(consumer_config(settings, group, logger=OPS_LOGGER, **{"enable.partition.eof": True}))


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
