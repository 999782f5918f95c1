"""The README's procedure for a hanging transaction, on a real broker with a real one.

A hanging transaction (seen in CI after a 50 s broker hang) holds a partition's last stable offset
below it for good: the merge stage waits before restoring such a state partition and, a minute past
its transaction timeout, warns and names `kafka-transactions.sh`. This module checks that the
procedure the README gives ends one: `find-hanging` lists it, `abort` ends it, and read_committed
readers get past it. The broker skips KIP-890's produce verification, so that a hanging transaction
can be made at will (`hanging.leave_hanging`) instead of waiting for the broker race that made one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.kafka.clients import unstable_partitions
from tests.integration.conftest import PrivateBroker, running_private_broker
from tests.integration.hanging import find_hanging, leave_hanging
from tests.integration.kafka_helpers import create_topic
from tests.integration.merge_support import read_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def unverified_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    yield from running_private_broker(
        tmp_path_factory.mktemp("unverified-broker"),
        broker_properties={"transaction.partition.verification.enable": "false"},
    )


def test_the_readme_procedure_ends_a_hanging_transaction(unverified_broker, unique_topic) -> None:
    bootstrap = unverified_broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = unique_topic("state")
    create_topic(admin, topic, 2)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"a", value=b"before", partition=1)
    assert producer.flush(30) == 0
    leave_hanging(bootstrap, topic, 1, transactional_id=unique_topic("tx"))
    producer.produce(topic, key=b"b", value=b"after", partition=1)
    assert producer.flush(30) == 0
    partitions = [TopicPartition(topic, p) for p in (0, 1)]
    # it is open, and nothing ends it: its coordinator never had the partition in a transaction
    time.sleep(2)
    assert [tp.partition for tp in unstable_partitions(admin, partitions)] == [1]
    assert [m.value() for m in read_all(bootstrap, topic)] == [b"before"]  # the LSO stops below it
    assert find_hanging(
        unverified_broker.config.java, unverified_broker.config.libs_dir, bootstrap, topic
    ) == [(topic, 1, 1)]
    # the operator's part
    assert unverified_broker.abort_hanging(topic) == [(topic, 1, 1)]
    deadline = time.monotonic() + 30
    while unstable_partitions(admin, partitions):
        assert time.monotonic() < deadline, "the aborted transaction still holds the partition"
        time.sleep(0.5)
    assert [m.value() for m in read_all(bootstrap, topic)] == [b"before", b"after"]
    assert unverified_broker.abort_hanging() == []  # nothing hangs any more, on any topic
