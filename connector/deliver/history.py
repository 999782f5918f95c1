"""Read-back of delivered upserts records on assignment: seeds the superseded-record guard (`LastWrites`).

`read_history` reads committed offset ranges newest first; `seed_last_writes` bounds and logs the read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import KafkaError as ConfluentError

from connector.config import Settings
from connector.errors import KafkaError
from connector.kafka.clients import kafka_errors, to_raw
from connector.models import RawRecord
from connector.ops.scan import scan_consumer
from connector.sink.batch import LastWrites
from connector.sink.upserts import read_upsert

__all__ = ["READ_BACK_CHUNK", "HistoryReader", "read_history", "seed_last_writes"]

logger = logging.getLogger(__name__)

HistoryReader = Callable[[list[tuple[str, int, int, int]], float], Iterable[RawRecord | None]]
"""Reads `(topic, partition, start, end)` ranges of committed records within a time budget (s);
None now and then while it waits (`read_history`)."""

READ_BACK_CHUNK: Final = 5000
"""Offsets per partition and round of `read_history` (newest first)."""


def seed_last_writes(
    settings: Settings,
    consumer: Consumer,
    partitions: list[TopicPartition],
    last_writes: LastWrites,
    *,
    history: HistoryReader,
    clock: Callable[[], float],
    tick: Callable[[], None],
    stopping: Callable[[], bool],
) -> None:
    """Read back the last records delivered on the assigned partitions into `LastWrites`.

    The guard against an old key's record that arrives after its contact's later record (a
    primary-key change, see `LastWrites`) needs the contact's last record, which an earlier
    process (or another instance, before a rebalance) may have delivered: the last
    `yespo.read_back_records` offsets below each committed offset are read, newest first (not
    delivered), before any record of the assignment is gathered. A read that fails, is stopped,
    or takes longer than the least of a quarter of `max.poll.interval.ms`, half of
    `observability.liveness_timeout_s` and 30 s (the committed-offsets request included) leaves
    the guard with what it read, logged. The loop ticks after each consume call of the read.

    Args:
        settings: the whole configuration (`yespo.read_back_records` and the time budget).
        consumer: the stage's consumer (asked for the committed offsets).
        partitions: the partitions just assigned.
        last_writes: the guard to seed.
        history: reads the records back (`read_history`).
        clock: monotonic seconds.
        tick: reports liveness.
        stopping: True once the stage is asked to stop (the read ends early).
    """
    read_back = settings.yespo.read_back_records
    if read_back <= 0 or not partitions:
        return
    started = clock()
    # within the poll interval, and within /healthz's patience (the loop ticks meanwhile)
    budget = min(
        30.0,
        settings.kafka.max_poll_interval_ms / 4000,
        settings.observability.liveness_timeout_s / 2,
    )
    read = 0
    try:
        with kafka_errors():
            committed = consumer.committed(partitions, timeout=min(10.0, budget))
        tick()
        ranges = [
            (tp.topic, tp.partition, max(0, tp.offset - read_back), tp.offset)
            for tp in committed
            if tp.offset > 0
        ]
        if not ranges:
            return
        last_writes.reserve(sum(end - start for _, _, start, end in ranges))
        left = max(0.0, budget - (clock() - started))
        records = iter(history(ranges, left))
        try:
            with kafka_errors():
                for raw in records:
                    if raw is None:  # a consume call went by
                        tick()
                        if stopping():
                            raise KafkaError("stopping", retriable=True)
                        continue
                    read += 1
                    record = read_upsert(raw)
                    if record is not None:
                        last_writes.seed(record)
        finally:
            close = getattr(records, "close", None)  # a generator's reading consumer closes now
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
            "contacts": len(last_writes),
            "seconds": round(clock() - started, 3),
        },
    )


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
