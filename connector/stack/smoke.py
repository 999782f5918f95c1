"""A smoke check of a running broker: one transactional record produced, then read back read_committed."""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connector.errors import StackError

__all__ = ["smoke_check"]

logger = logging.getLogger(__name__)


def smoke_check(bootstrap: str, *, timeout: float = 60.0) -> float:
    """Create a topic, commit one record in a transaction, consume it with read_committed, delete the topic.

    Returns:
        The round-trip time in seconds.

    Raises:
        StackError: any step failed or the record did not come back within `timeout`.
    """
    started = time.monotonic()
    topic = f"yespo-stack-smoke-{uuid.uuid4().hex[:12]}"
    payload = uuid.uuid4().hex.encode()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout)
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-tx"})
        producer.init_transactions(timeout)
        producer.begin_transaction()
        producer.produce(topic, key=b"smoke", value=payload)
        producer.commit_transaction(timeout)
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{topic}-reader",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error() is not None:
                    raise StackError(f"smoke check: consumer error {msg.error()}")
                if msg.value() == payload:
                    return time.monotonic() - started
            raise StackError(f"smoke check: the record did not come back within {timeout:.0f} s")
        finally:
            consumer.close()
    except KafkaException as exc:
        raise StackError(f"smoke check failed: {exc}") from exc
    finally:
        admin.delete_topics([topic])
