"""A running merge stage seen from outside: /metrics agrees with the output, probes, PII-free logs."""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from connector.config import Settings
from connector.errors import GroupActiveError, KafkaError
from connector.kafka.topics import internal_topics
from connector.ops.fence import GroupFence
from connector.ops.transactions import commit_fenced, transactional_producer, wait_until_stable
from connector.stack.base import free_port
from tests.integration.merge_support import (
    fully_consumed,
    merge_settings,
    produce_workload,
    read_all,
    start_stage,
)
from tests.integration.ops_helpers import LiveMember
from tests.workload import Event, Workload, generate

pytestmark = pytest.mark.integration

API_KEY = "yk-live-Q7ZRECOGNISABLE4242-key"
POISON_EMAIL = "poison.person@example.com"
POISON_PHONE = "+351 21 009 9999"
POISON_NAME = "Poisonella"


def _topics(settings: Settings, create_topic) -> None:
    create_topic(settings.source.customers.topic, partitions=2)
    create_topic(settings.source.children[0].topic, partitions=2)
    for spec in internal_topics(settings):
        create_topic(spec.name, partitions=spec.partitions or 1, config=spec.config)


def _config(settings: Settings, path: Path, port: int) -> None:
    data = settings.model_dump(mode="json", exclude={"yespo": {"api_key"}})
    data["observability"].update({"metrics_port": port, "log_format": "json", "log_level": "DEBUG"})
    path.write_text(yaml.safe_dump(data))


def _poison(topic: str) -> list[Event]:
    envelope = {
        "before": None,
        "after": {"id": 999_999, "email": POISON_EMAIL, "phone": POISON_PHONE, "first_name": POISON_NAME},
        "source": {"schema": "public", "table": "customers", "sequence": '["1", "2"]'},
        "op": "zz",
    }
    return [
        Event(topic, b'{"id": 999999}', orjson.dumps(envelope)),
        Event(topic, b'{"id": 999998}', f'{{"after": {{"email": "{POISON_EMAIL}"'.encode()),
    ]


def _expected_events(workload: Workload) -> collections.Counter[tuple[str, str]]:
    """events_total{table, op} from the raw envelopes (tombstones: table = topic, op = d)."""
    expected: collections.Counter[tuple[str, str]] = collections.Counter()
    for ev in workload.events:
        if ev.value is None:
            expected[(ev.topic, "d")] += 1
            continue
        env = orjson.loads(ev.value)
        expected[(f"{env['source']['schema']}.{env['source']['table']}", env["op"])] += 1
    return expected


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append(sample)
    return out


def _pii(workload: Workload) -> set[str]:
    """Every email, phone and name the workload ever carried (before and after images)."""
    values: set[str] = set()
    for ev in workload.events:
        if ev.value is None:
            continue
        env = orjson.loads(ev.value)
        for row in (env.get("before"), env.get("after")):
            for col in ("email", "phone", "first_name", "last_name"):
                if row and row.get(col):
                    values.add(str(row[col]))
    return values


def test_running_merge_stage_metrics_probes_and_logs(
    kafka_bootstrap, unique_topic, create_topic, tmp_path: Path, monkeypatch
) -> None:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=2)
    _topics(settings, create_topic)
    workload = generate(
        seed=31,
        customers=100,
        events=1000,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    poison = _poison(settings.source.customers.topic)
    produce_workload(kafka_bootstrap, Workload(events=[*workload.events, *poison]))
    port = free_port()
    config = tmp_path / "connector.yaml"
    _config(settings, config, port)
    log = tmp_path / "stage.log"
    monkeypatch.setenv("YESPO_API_KEY", API_KEY)
    proc = start_stage(config, "merge", "ops-it", log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"stage exited with {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "/readyz never answered 200"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        topics = [*settings.source.topics, settings.state.changes_topic]
        while not fully_consumed(kafka_bootstrap, settings.kafka.group_id, topics):
            assert proc.poll() is None, f"stage exited with {proc.returncode}"
            assert time.monotonic() < deadline + 120, "the stage did not catch up"
            time.sleep(1.0)
        response = httpx.get(f"{base}/metrics", timeout=5)
        assert response.status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=5).json()["status"] == "ok"
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]

    # -- /metrics agrees with the topics and the workload ------------------------------------------
    samples = _samples(response.text)
    events = {
        (s.labels["table"], s.labels["op"]): int(s.value) for s in samples["yespo_connector_events_total"]
    }
    assert events == dict(_expected_events(workload))
    records = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, settings.output.upserts_topic)]
    ops = collections.Counter(r["op"] for r in records)
    assert ops["upsert"] > 50
    [upserts] = samples["yespo_connector_upserts_emitted_total"]
    [deletes] = samples["yespo_connector_deletes_emitted_total"]
    assert (int(upserts.value), int(deletes.value)) == (ops["upsert"], ops["delete"])
    dlq = read_all(kafka_bootstrap, settings.output.dlq_topic)
    assert len(dlq) == len(poison)
    dlq_metric = samples["yespo_connector_dlq_records_total"]
    assert {s.labels["stage"] for s in dlq_metric} == {"merge"}
    assert sum(int(s.value) for s in dlq_metric) == len(poison)
    assert samples["yespo_connector_transaction_commit_duration_seconds_count"][0].value > 0
    for msg in dlq:  # the DLQ keeps the original bytes; its error headers carry no PII
        header_text = b" ".join(v or b"" for _, v in msg.headers() or [])
        assert POISON_EMAIL.encode() not in header_text and POISON_NAME.encode() not in header_text

    # -- logs: JSON, and no email, phone, name or API key ---------------------------------------------
    text = log.read_text(errors="replace")
    json_lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line.get("msg") == "partitions assigned" for line in json_lines)
    assert any("dead-lettered" in line.get("msg", "") for line in json_lines)
    secrets = _pii(workload) | {POISON_EMAIL, POISON_PHONE, POISON_NAME, API_KEY}
    assert len(secrets) > 100
    found = sorted(v for v in secrets if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text))
    assert found == [], f"PII or secrets in the logs: {found[:5]}"


def test_a_merge_stage_joining_aborts_a_fenced_transaction(
    kafka_bootstrap, unique_topic, create_topic
) -> None:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=2)
    _topics(settings, create_topic)
    fence = GroupFence(settings)
    producer = transactional_producer(settings, "resync")
    joined: list[LiveMember] = []
    thread: threading.Thread | None = None
    try:
        offsets = fence.committed()
        producer.begin_transaction()
        producer.produce(settings.output.upserts_topic, key=b"k", value=b"{}", partition=0)
        # a "merge stage" joins the group: our next poll hands the partitions over
        thread = threading.Thread(
            target=lambda: joined.append(
                LiveMember(kafka_bootstrap, settings.kafka.group_id, [settings.state.changes_topic])
            ),
            daemon=True,
        )
        thread.start()
        deadline = time.monotonic() + 60
        with pytest.raises(GroupActiveError):
            while time.monotonic() < deadline:
                fence.check()
                time.sleep(0.1)
        with pytest.raises(GroupActiveError):
            commit_fenced(producer, fence, offsets)
    finally:
        fence.close()
        if thread is not None:
            thread.join(60)
        for member in joined:
            member.close()
    assert joined, "the other member never got its partitions"
    assert read_all(kafka_bootstrap, settings.output.upserts_topic) == []  # the transaction aborted


def test_wait_until_stable_waits_for_an_open_transaction(kafka_bootstrap, unique_topic, create_topic) -> None:
    topic = create_topic(unique_topic("state"), partitions=2)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    wait_until_stable(admin, [(topic, 0), (topic, 1)], timeout=10)  # empty: stable at once
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": unique_topic("tx")})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"v", partition=1)
    producer.flush(30)
    started = time.monotonic()
    with pytest.raises(KafkaError, match=rf"{topic}\[1\] still has an open transaction"):
        wait_until_stable(admin, [(topic, 0), (topic, 1)], timeout=2)
    assert time.monotonic() - started >= 2
    producer.commit_transaction(30)
    wait_until_stable(admin, [(topic, 0), (topic, 1)], timeout=30)
    assert len(read_all(kafka_bootstrap, topic)) == 1
