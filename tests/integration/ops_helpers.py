"""Helpers for the ops integration tests (lag, replay): transactional producing, group commits,
a config file for a set of topics, running the CLI in-process, and Kafka's own consumer-groups tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector import cli, logs

REPO = Path(__file__).resolve().parents[2]


def produce(
    bootstrap: str,
    topic: str,
    transactions: Sequence[Mapping[int, int]],
    *,
    timestamps_ms: Sequence[int] | None = None,
    transactional_id: str | None = None,
) -> None:
    """One committed transaction per item of `transactions` ({partition: record count}).

    With `timestamps_ms`, transaction i stamps its records with `timestamps_ms[i]`.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id or f"ops-it-{topic}",
            "linger.ms": 0,
        }
    )
    producer.init_transactions(30)
    for i, counts in enumerate(transactions):
        producer.begin_transaction()
        for partition, count in counts.items():
            for n in range(count):
                kwargs: dict[str, Any] = {}
                if timestamps_ms is not None:
                    kwargs["timestamp"] = timestamps_ms[i]
                producer.produce(topic, value=f"v{i}-{n}".encode(), key=b"k", partition=partition, **kwargs)
        producer.commit_transaction(30)


def commit(bootstrap: str, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commit offsets for `group` without joining it (assign-style, like a stopped stage left them)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def committed(
    admin: AdminClient, group: str, partitions: Sequence[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """The group's committed offsets (-1001 where there is none)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}


def first_record_offset(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 30) -> int:
    """The offset of the first record a read_committed consumer reads when starting at `offset`."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "ops-it-probe", "isolation.level": "read_committed"}
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                return int(msg.offset())
        raise AssertionError(f"no record at or after {topic}[{partition}]@{offset}")
    finally:
        consumer.close()


class LiveMember:
    """A consumer that joins `group` on `topics` and stays a member until closed (a running stage)."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        self.consumer.subscribe(topics)
        # The poll that serves the assignment may already return a record or a partition's end: they
        # are kept for consume_all (dropping them lost a record in a CI run: 13 of 14 seen).
        self._seen = 0
        self.per_partition: dict[tuple[str, int], int] = {}
        self._at_end: set[tuple[str, int]] = set()
        deadline = time.monotonic() + 60
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no assignment for group {group} within 60 s")
            self._take(self.consumer.poll(0.2))

    def _take(self, msg: Message | None) -> None:
        if msg is None:
            return
        if msg.error() is None:
            self._seen += 1
            key = (msg.topic(), msg.partition())
            self.per_partition[key] = self.per_partition.get(key, 0) + 1
        elif msg.error().code() == -191:  # _PARTITION_EOF
            self._at_end.add((msg.topic(), msg.partition()))

    def consume_all(self, timeout: float = 30, *, expected: int = 0) -> int:
        """Poll until every assigned partition reached its end and `expected` records were seen.

        A read_committed consumer can reach a partition's end (the last stable offset) just before the
        producer's commit markers land, so waiting for the end alone may stop one transaction short.
        """
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        deadline = time.monotonic() + timeout
        while (assigned - self._at_end or self._seen < expected) and time.monotonic() < deadline:
            self._take(self.consumer.poll(0.2))
        assert not assigned - self._at_end, f"partitions did not reach their end: {assigned - self._at_end}"
        return self._seen

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self.consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )

    def close(self) -> None:
        self.consumer.close()


def write_config(
    path: Path,
    bootstrap: str,
    *,
    group: str,
    deliver_group: str,
    source: str,
    changes: str,
    upserts: str,
) -> Path:
    """A connector config naming the given groups and topics (everything else default)."""
    doc = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, "deliver_group_id": deliver_group},
        "source": {"customers": {"topic": source}},
        "state": {"changes_topic": changes},
        "output": {"upserts_topic": upserts},
        "observability": {"log_format": "text", "log_level": "WARNING"},
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `yespo-connector ARGS` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        logs.reset()
    out = capsys.readouterr()
    return code, out.out, out.err


def kafka_libs() -> Path:
    """The Kafka jars for the Java tools: $KAFKA_LIBS, else the stack's libs dir; fails if none."""
    candidates = []
    if os.environ.get("KAFKA_LIBS"):
        candidates.append(Path(os.environ["KAFKA_LIBS"]))
    if os.environ.get("YESPO_STACK_JARS_DIR"):
        candidates.append(Path(os.environ["YESPO_STACK_JARS_DIR"]) / "libs")
    candidates.append(REPO / ".stack" / "libs")
    for libs in candidates:
        if list(libs.glob("kafka-tools-*.jar")):
            return libs
    pytest.fail(
        "Kafka's Java tools (kafka-tools-*.jar) not found in "
        + ", ".join(str(c) for c in candidates)
        + ": run `yespo-connector stack up` (copies the jars to .stack/libs) or set KAFKA_LIBS to a libs dir"
    )


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    exe = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not exe or not Path(exe).exists():
        pytest.fail("java not found (needed to run kafka-consumer-groups); install a JDK or set JAVA_HOME")
    return exe


def describe_group(
    bootstrap: str, group: str
) -> dict[tuple[str, int], tuple[int | None, int | None, int | None]]:
    """`kafka-consumer-groups --describe --group G`: {(topic, partition): (current, log-end, lag)}."""
    result = subprocess.run(
        [
            java(),
            "-Xmx256m",
            "-cp",
            f"{kafka_libs()}/*",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kafka-consumer-groups failed: {result.stderr[-2000:]}"
    return parse_describe(result.stdout, group)


def parse_describe(text: str, group: str) -> dict[tuple[str, int], tuple[int | None, int | None, int | None]]:
    """Rows of the describe table; '-' becomes None."""

    def num(value: str) -> int | None:
        return None if value == "-" else int(value)

    rows: dict[tuple[str, int], tuple[int | None, int | None, int | None]] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if fields[:3] == ["GROUP", "TOPIC", "PARTITION"]:
            header = fields
            continue
        if header is None or not fields or fields[0] != group:
            continue
        row = dict(zip(header, fields, strict=False))
        rows[(row["TOPIC"], int(row["PARTITION"]))] = (
            num(row["CURRENT-OFFSET"]),
            num(row["LOG-END-OFFSET"]),
            num(row["LAG"]),
        )
    assert header is not None, f"no describe table in the tool's output:\n{text}"
    return rows
