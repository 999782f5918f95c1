"""Helpers for merge-stage integration tests: settings, producing a workload, reading results."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings, load_settings
from connector.kafka.clients import produce, unstable_partitions
from connector.merge import CustomerState, view_of
from connector.models import CustomerView
from connector.state.codec import decode_state
from tests.workload import Workload

REPO_CONFIG = "deploy/connector.yaml"


def merge_settings(
    bootstrap: str, names: Callable[[str], str], *, partitions: int = 3, **kafka: Any
) -> Settings:
    """The repo's example config pointed at unique topics on the test broker."""
    base = load_settings(REPO_CONFIG)
    data = base.model_dump(exclude={"yespo": {"api_key"}})
    data["kafka"].update(
        {"bootstrap_servers": bootstrap, "group_id": names("grp"), "transactional_id_prefix": names("tx")},
        **kafka,
    )
    data["source"]["customers"]["topic"] = names("src-customers")
    data["source"]["children"][0]["topic"] = names("src-groups")
    data["state"].update(
        {"changes_topic": names("changes"), "topic": names("state"), "partitions": partitions}
    )
    data["output"].update(
        {"upserts_topic": names("upserts"), "dlq_topic": names("dlq"), "audit_topic": names("audit")}
    )
    return Settings(**data)


def produce_workload(bootstrap: str, workload: Workload) -> dict[str, int]:
    """Publish the events (keyed, default partitioner, in order); returns records per topic."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    failed = _DeliveryErrors()
    counts: dict[str, int] = {}
    for ev in workload.events:
        produce(producer, ev.topic, wait_s=math.inf, key=ev.key, value=ev.value, on_delivery=failed)
        counts[ev.topic] = counts.get(ev.topic, 0) + 1
        producer.poll(0)
    assert producer.flush(60) == 0
    failed.check()
    return counts


class _DeliveryErrors:
    """A delivery callback that keeps the errors: `flush() == 0` alone says nothing was delivered
    *or failed* (a record the producer gave up on would leave the input short, not the stage wrong)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err}")

    def check(self) -> None:
        assert not self.errors, f"{len(self.errors)} input records not delivered: {self.errors[:5]}"


def split_workload(workload: Workload, n: int) -> list[Workload]:
    """`workload`'s events cut into `n` consecutive parts (events only; the final rows stay on it)."""
    size = -(-len(workload.events) // n)
    return [Workload(events=workload.events[i : i + size]) for i in range(0, len(workload.events), size)]


def feed_workload(bootstrap: str, part: Workload, seconds: float, slices: int = 20) -> None:
    """Produce `part` in `slices` slices spread over about `seconds` (input keeps flowing)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    pieces = split_workload(part, slices)
    failed = _DeliveryErrors()
    started = time.monotonic()
    for i, piece in enumerate(pieces):
        for ev in piece.events:
            produce(producer, ev.topic, wait_s=math.inf, key=ev.key, value=ev.value, on_delivery=failed)
            producer.poll(0)
        assert producer.flush(60) == 0
        failed.check()
        time.sleep(max(0.0, started + seconds * (i + 1) / len(pieces) - time.monotonic()))


def _reader(bootstrap: str, *, committed_only: bool = True) -> Consumer:
    """A consumer that never joins its (unique) group: it reads assigned partitions to their end."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.time_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
            "enable.partition.eof": True,
        }
    )


def _to_the_end(consumer: Consumer, starts: list[TopicPartition], deadline: float) -> Iterator[Any]:
    """Every record from `starts` until each of those partitions reported its end (EOF)."""
    consumer.assign(starts)
    eof: set[int] = set()
    while len(eof) < len(starts):
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {starts[0].topic} did not reach the end")
        for msg in consumer.consume(1000, 0.2):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    continue
                raise RuntimeError(msg.error().str())
            yield msg
    consumer.unassign()


def read_all(bootstrap: str, topic: str, *, committed_only: bool = True, timeout: float = 60) -> list[Any]:
    """Every record of `topic` (read_committed by default), in partition/offset order."""
    consumer = _reader(bootstrap, committed_only=committed_only)
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        out = list(_to_the_end(consumer, starts, time.monotonic() + timeout))
    finally:
        consumer.close()
    out.sort(key=lambda m: (m.partition(), m.offset()))
    return out


def last_offsets(bootstrap: str, topic: str, *, timeout: float = 60) -> dict[int, int]:
    """Per partition, the offset of the last committed data record (-1 when none).

    Reads only each partition's tail: from a little below its last stable offset (a read_committed
    consumer's high watermark) to the end, widening the window while it holds no committed data
    record (transaction markers, aborted records), down to the log start.
    """
    consumer = _reader(bootstrap)
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        last = dict.fromkeys(parts, -1)
        bounds = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
        span = 64
        open_parts = [p for p in parts if bounds[p][1] > bounds[p][0]]
        deadline = time.monotonic() + timeout
        while open_parts:
            starts = {p: max(bounds[p][0], bounds[p][1] - span) for p in open_parts}
            tails = [TopicPartition(topic, p, starts[p]) for p in open_parts]
            for msg in _to_the_end(consumer, tails, deadline):
                last[msg.partition()] = max(last[msg.partition()], msg.offset())
            open_parts = [p for p in open_parts if last[p] < 0 and starts[p] > bounds[p][0]]
            span *= 16
    finally:
        consumer.close()
    return last


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        got = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=30)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in got}


def fully_consumed(bootstrap: str, group: str, topics: list[str]) -> bool:
    """True when the group's committed offset is past the last data record of every partition.

    Topics are checked in order, and one with an open transaction is not consumed yet: the markers
    of a committed transaction land on its partitions one by one, so the source offsets a routing
    transaction committed can be visible while the changes it wrote are not yet (list the source
    topics first, then the changes topic).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for topic in topics:
        parts = admin.list_topics(topic, timeout=10).topics[topic].partitions
        if unstable_partitions(admin, [TopicPartition(topic, p) for p in parts]):
            return False
        last = last_offsets(bootstrap, topic)
        done = committed(bootstrap, group, topic)
        for p, off in last.items():
            if off >= 0 and done.get(p, -1) <= off:
                return False
    return True


def final_states(bootstrap: str, topic: str) -> dict[str, CustomerState]:
    states: dict[str, CustomerState] = {}
    for msg in read_all(bootstrap, topic):
        key = msg.key().decode()
        if msg.value() is None:
            states.pop(key, None)
        else:
            states[key] = decode_state(msg.value())
    return states


def upserts_by_customer(bootstrap: str, topic: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for msg in read_all(bootstrap, topic):
        rec = orjson.loads(msg.value())
        out.setdefault(rec["customer_key"], []).append(rec)
    return out


def reference_view(workload: Workload, cid: int) -> CustomerView:
    groups = workload.groups.get(cid, {})
    rows = [groups[g] for g in sorted(groups, key=lambda g: orjson.dumps([cid, g]).decode())]
    return CustomerView(str(cid), workload.customers.get(cid), {"groups": rows} if rows else {})


def normalized_view(state: CustomerState) -> CustomerView:
    v = view_of(state)
    return CustomerView(v.customer_key, v.customer, {k: list(rows) for k, rows in v.children.items() if rows})


def write_config(settings: Settings, path: Any) -> None:
    """Dump `settings` as a YAML config file for a subprocess (no secrets in it)."""
    import yaml

    data = settings.model_dump(mode="json", exclude={"yespo": {"api_key"}})
    data["observability"]["metrics_port"] = 0
    data["observability"]["log_format"] = "text"
    path.write_text(yaml.safe_dump(data))


def start_stage(
    config_path: Any, stage: str, instance_id: str, log_path: Any, *, api_key: str | None = None
) -> Any:
    """`yespo-connector run` as a subprocess (its own session, so it can be killed alone)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("YESPO_CONNECTOR_")}
    env["YESPO_API_KEY"] = api_key or env.get("YESPO_API_KEY", "test-key")
    with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector",
                "run",
                "--config",
                str(config_path),
                "--stage",
                stage,
                "--create-topics",
                "--instance-id",
                instance_id,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
