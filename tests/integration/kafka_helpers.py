"""Integration-test helpers: create a topic and wait for it, read a partition to its end."""

from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(
    admin: AdminClient,
    name: str,
    partitions: int = 1,
    config: Mapping[str, str] | None = None,
    *,
    timeout: float = 30.0,
) -> str:
    """Create `name` (replication factor 1) and wait until its metadata lists every partition."""
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))],
        operation_timeout=timeout,
    )
    try:
        futures[name].result(timeout=timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    wait_for_topic(admin, name, partitions, timeout=timeout)
    return name


def wait_for_topic(admin: AdminClient, name: str, partitions: int = 1, *, timeout: float = 30.0) -> None:
    """Block until `name` exists with `partitions` partitions, each with a leader."""
    deadline = time.monotonic() + timeout
    while True:
        topic = admin.list_topics(topic=name, timeout=10).topics.get(name)
        if (
            topic is not None
            and topic.error is None
            and len(topic.partitions) == partitions
            and all(p.leader >= 0 for p in topic.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} did not appear with {partitions} partition(s) in {timeout} s")
        time.sleep(0.2)


def delete_topics(admin: AdminClient, names: list[str], *, timeout: float = 30.0) -> None:
    """Delete topics, ignoring ones that are already gone."""
    if not names:
        return
    for name, future in admin.delete_topics(names, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise RuntimeError(f"could not delete topic {name}") from exc


def read_partition(
    bootstrap: str,
    topic: str,
    partition: int = 0,
    *,
    isolation: str = "read_committed",
    timeout: float = 30.0,
) -> list[tuple[bytes | None, bytes | None]]:
    """All (key, value) records of one partition from the start up to its end (LSO for read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{topic}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
        }
    )
    records: list[tuple[bytes | None, bytes | None]] = []
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no end of partition {topic}[{partition}] within {timeout} s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return records
                raise KafkaException(msg.error())
            records.append((msg.key(), msg.value()))
    finally:
        consumer.close()


def listening_pid(port: int) -> int | None:
    """The pid of the local process listening on TCP `port` (IPv4 or IPv6), or None if none is ours.

    Reads /proc (Linux): the listening socket's inode in /proc/net/tcp[6], then the process holding it.
    """
    import os
    from pathlib import Path

    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
        except OSError:
            continue
    return None
