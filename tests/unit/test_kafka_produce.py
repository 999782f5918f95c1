"""`connector.kafka.clients.produce`: a full local queue is waited out, never raised (fake producer)."""

from __future__ import annotations

from typing import Any

import pytest

from connector.errors import KafkaError
from connector.kafka.clients import produce


class QueueProducer:
    """Holds `capacity` records; each poll reports `acked_per_poll` of them delivered (frees them)."""

    def __init__(self, capacity: int, acked_per_poll: int) -> None:
        self.capacity = capacity
        self.acked_per_poll = acked_per_poll
        self.queued = 0
        self.polls = 0
        self.written: list[tuple[str, dict[str, Any]]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.queued >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queued += 1
        self.written.append((topic, kwargs))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        freed = min(self.queued, self.acked_per_poll)
        self.queued -= freed
        return freed


def test_a_full_queue_is_polled_until_there_is_room() -> None:
    producer = QueueProducer(capacity=3, acked_per_poll=2)
    for i in range(10):
        produce(producer, "t", key=str(i).encode(), value=b"v", partition=1)  # type: ignore[arg-type]
    assert [kw["key"] for _, kw in producer.written] == [str(i).encode() for i in range(10)]
    assert all(kw["partition"] == 1 and topic == "t" for topic, kw in producer.written)
    assert producer.polls == 4  # full after 3, 5, 7 and 9 records; each poll frees two


def test_a_queue_that_never_drains_raises_an_abortable_kafka_error() -> None:
    producer = QueueProducer(capacity=1, acked_per_poll=0)
    produce(producer, "t", value=b"first")  # type: ignore[arg-type]
    with pytest.raises(KafkaError, match=r"queue still full after 0.25 s") as caught:
        produce(producer, "t", value=b"second", wait_s=0.25)  # type: ignore[arg-type]
    assert caught.value.txn_requires_abort and caught.value.code == "_QUEUE_FULL"
    assert producer.polls >= 2 and len(producer.written) == 1
