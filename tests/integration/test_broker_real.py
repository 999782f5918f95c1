"""Proof that the test broker is real Kafka: transactions are filtered for read_committed, compaction works.

A mock (librdkafka's mock cluster, Tansu) fails (a): it hands aborted records to read_committed consumers.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Producer

from tests.integration.kafka_helpers import read_partition

pytestmark = pytest.mark.integration


def _values(records: list[tuple[bytes | None, bytes | None]]) -> list[bytes | None]:
    return [value for _key, value in records]


def test_read_committed_sees_only_committed_transactions(kafka_bootstrap, unique_topic, create_topic):
    topic = create_topic(unique_topic("txn"))
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"it-txn-{uuid.uuid4().hex}",
            "enable.idempotence": True,
        }
    )
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=f"k{i}".encode(), value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=f"k{i}".encode(), value=f"aborted-{i}".encode())
    producer.flush(30)  # the aborted records really reach the log before the abort
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, key=b"k9", value=b"committed-after-abort")
    producer.commit_transaction(30)

    del producer
    committed = _values(read_partition(kafka_bootstrap, topic, isolation="read_committed"))
    everything = _values(read_partition(kafka_bootstrap, topic, isolation="read_uncommitted"))

    assert committed == [b"committed-0", b"committed-1", b"committed-2", b"committed-after-abort"]
    # the aborted batch was written: a read_uncommitted consumer sees it, read_committed filtered it
    assert everything == [
        b"committed-0",
        b"committed-1",
        b"committed-2",
        b"aborted-0",
        b"aborted-1",
        b"aborted-2",
        b"committed-after-abort",
    ]


def test_compacted_topic_keeps_latest_value_per_key_and_tombstones_remove_keys(
    kafka_bootstrap, unique_topic, create_topic
):
    topic = create_topic(
        unique_topic("compact"),
        config={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "100",
        },
    )
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    history = [(b"k1", b"v1"), (b"k2", b"v1"), (b"k3", b"v1"), (b"k1", b"v2"), (b"k2", b"v2"), (b"k1", b"v3")]
    for key, value in history:
        producer.produce(topic, key=key, value=value)
        producer.flush(10)
    producer.produce(topic, key=b"k3", value=None)  # tombstone
    producer.flush(10)

    before = read_partition(kafka_bootstrap, topic, isolation="read_uncommitted")
    assert before == [*history, (b"k3", None)]

    # The active segment is never cleaned: keep appending a "roll" record after segment.ms so segments
    # roll and the cleaner (log.cleaner.backoff.ms=1000) gets dirty segments to compact, and a second pass
    # drops the tombstone once delete.retention.ms has passed.
    # in offset order: k2's last value (offset 4) precedes k1's (offset 5); k3 is gone entirely
    wanted = [(b"k2", b"v2"), (b"k1", b"v3")]
    deadline = time.monotonic() + 90
    seen: list[tuple[bytes | None, bytes | None]] = []
    while time.monotonic() < deadline:
        time.sleep(0.5)
        producer.produce(topic, key=b"roll", value=b"x")
        producer.flush(10)
        seen = [
            r for r in read_partition(kafka_bootstrap, topic, isolation="read_uncommitted") if r[0] != b"roll"
        ]
        if seen == wanted:
            break
    producer.flush(10)
    del producer
    assert seen == wanted, f"compaction not visible within 90 s; topic holds {seen}"


def test_last_offsets_reads_tails_as_a_full_read_would(kafka_bootstrap, unique_topic, create_topic):
    """The tests' drain probes (`merge_support.last_offsets`) read only each partition's tail: the last
    committed data record must be the one a full read_committed read finds, also behind a long aborted
    tail and transaction markers, and -1 for partitions with none."""
    from tests.integration.merge_support import last_offsets, read_all

    topic = create_topic(unique_topic("tail"), partitions=4)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"it-tail-{uuid.uuid4().hex}",
            "enable.idempotence": True,
        }
    )
    producer.init_transactions(30)

    def transaction(partition: int, count: int, *, commit: bool) -> None:
        producer.begin_transaction()
        for i in range(count):
            producer.produce(topic, value=str(i).encode(), partition=partition)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)

    transaction(0, 100, commit=True)  # committed data, then a long aborted tail (widens the window)
    for _ in range(5):
        transaction(0, 100, commit=False)
    for _ in range(3):  # many small transactions: markers between the records
        transaction(1, 2, commit=True)
    transaction(2, 10, commit=False)  # only aborted records
    # partition 3 stays empty
    full = dict.fromkeys(range(4), -1)
    for msg in read_all(kafka_bootstrap, topic):
        full[msg.partition()] = max(full[msg.partition()], msg.offset())
    assert full[0] == 99 and full[1] >= 0 and full[2] == -1 and full[3] == -1
    assert last_offsets(kafka_bootstrap, topic) == full
