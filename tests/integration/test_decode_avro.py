"""Avro Debezium events through the registry stand-in and the real broker, decoded; registry outages.

Schemas from the golden fixtures are registered in the Confluent-compatible stand-in (HTTP on
127.0.0.1), the fixture records are re-framed with the ids the stand-in assigned, produced to a
unique topic, consumed back (read_committed) and decoded. A registry that goes down is waited out
(backoff) until it returns on the same port; an unknown schema id becomes a DecodeFailure.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import msgspec
import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from connector.cli import app
from connector.commands.decode import topic_records
from connector.config import Settings
from connector.decode import DecodeOptions, decode_event
from connector.errors import SchemaRegistryUnavailableError
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from connector.registry import Backoff, SchemaRegistryClient, wait_for_registry
from tests.registry_standin import RegistryStandIn
from tests.unit.decode_fixtures import FIXTURES, load_record
from tests.unit.test_decode import EXPECTED

pytestmark = pytest.mark.integration

CASES = ["create", "update", "delete", "tombstone", "pk_change_delete", "types", "toast", "unwrapped_delete"]


@pytest.fixture
def registry() -> Iterator[RegistryStandIn]:
    standin = RegistryStandIn().start()
    yield standin
    standin.stop()


def register_fixture_schemas(standin: RegistryStandIn) -> dict[int, int]:
    """Register every fixture schema; returns fixture id -> id assigned by the stand-in."""
    entries = json.loads((FIXTURES / "avro" / "schemas.json").read_text(encoding="utf-8"))
    client = SchemaRegistryClient(standin.url)
    try:
        return {int(k): client.register(f"it-{v['subject']}", v["schema"]) for k, v in entries.items()}
    finally:
        client.close()


def reframe(raw: bytes | None, ids: dict[int, int]) -> bytes | None:
    if raw is None:
        return None
    return b"\x00" + ids[int.from_bytes(raw[1:5], "big")].to_bytes(4, "big") + raw[5:]


def produce(bootstrap: str, topic: str, records: list[RawRecord]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for record in records:
        producer.produce(topic, key=record.key, value=record.value, headers=list(record.headers), partition=0)
    assert producer.flush(30) == 0


def consume(bootstrap: str, topic: str, count: int) -> list[RawRecord]:
    settings = Settings.model_validate({"kafka": {"bootstrap_servers": bootstrap}})
    return list(topic_records(settings, topic, max_records=count, timeout_s=60))


@pytest.fixture
def avro_topic(
    kafka_bootstrap: str,
    registry: RegistryStandIn,
    unique_topic: Callable[..., str],
    create_topic: Callable[..., str],
) -> tuple[str, list[str]]:
    ids = register_fixture_schemas(registry)
    topic = create_topic(unique_topic("decode-avro"))
    records = []
    for name in CASES:
        record = load_record("avro", name)
        records.append(
            msgspec.structs.replace(record, key=reframe(record.key, ids), value=reframe(record.value, ids))
        )
    produce(kafka_bootstrap, topic, records)
    return topic, CASES


def options_for(topic: str) -> DecodeOptions:
    return DecodeOptions(topic_tables={topic: "public.customers"})


def test_avro_events_round_trip_through_registry_and_broker(
    kafka_bootstrap: str, registry: RegistryStandIn, avro_topic: tuple[str, list[str]]
) -> None:
    topic, names = avro_topic
    consumed = consume(kafka_bootstrap, topic, len(names))
    assert [r.offset for r in consumed] == list(range(len(names)))
    client = SchemaRegistryClient(registry.url)
    try:
        for name, record in zip(names, consumed, strict=True):
            event = decode_event(record, options=options_for(topic), schemas=client)
            assert isinstance(event, ChangeEvent), (name, event)
            assert event == msgspec.structs.replace(EXPECTED[name], ref=record.ref), name
    finally:
        client.close()
    fetched = {path for method, path in registry.requests if method == "GET"}
    assert fetched <= {f"/schemas/ids/{i}" for i in range(1, 100)}
    # one fetch per schema id: the client caches parsed schemas
    assert len([p for m, p in registry.requests if m == "GET"]) == len(fetched)


def test_registry_outage_is_waited_out(
    kafka_bootstrap: str, registry: RegistryStandIn, avro_topic: tuple[str, list[str]]
) -> None:
    topic, _ = avro_topic
    [record] = consume(kafka_bootstrap, topic, 1)
    registry.stop()
    client = SchemaRegistryClient(registry.url, timeout_s=2)
    failures: list[str] = []

    def attempt() -> object:
        try:
            return decode_event(record, options=options_for(topic), schemas=client)
        except SchemaRegistryUnavailableError as exc:
            failures.append(str(exc))
            raise

    restart = threading.Timer(2.0, registry.start)
    restart.start()
    started = time.monotonic()
    try:
        event = wait_for_registry(attempt, backoff=Backoff(initial_s=0.2, max_s=1.0), max_wait_s=60)
    finally:
        restart.join()
        client.close()
    assert isinstance(event, ChangeEvent)
    assert event == msgspec.structs.replace(EXPECTED["create"], ref=record.ref)
    assert len(failures) >= 2
    assert time.monotonic() - started >= 1.5


def test_registry_5xx_is_retried_not_failed(
    kafka_bootstrap: str, registry: RegistryStandIn, avro_topic: tuple[str, list[str]]
) -> None:
    topic, _ = avro_topic
    [record] = consume(kafka_bootstrap, topic, 1)
    registry.fail_status = 503
    client = SchemaRegistryClient(registry.url)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            registry.fail_status = None

    try:
        event = wait_for_registry(
            lambda: decode_event(record, options=options_for(topic), schemas=client),
            sleep=sleep,
            max_wait_s=60,
        )
    finally:
        client.close()
    assert isinstance(event, ChangeEvent)
    assert sleeps == [0.5, 1.0, 2.0]


def test_unknown_schema_id_becomes_a_failure(
    kafka_bootstrap: str,
    registry: RegistryStandIn,
    unique_topic: Callable[..., str],
    create_topic: Callable[..., str],
) -> None:
    ids = register_fixture_schemas(registry)
    topic = create_topic(unique_topic("decode-unknown"))
    good = load_record("avro", "create")
    bad_value = b"\x00" + (999).to_bytes(4, "big") + good.value[5:]
    produce(kafka_bootstrap, topic, [RawRecord(topic, 0, 0, reframe(good.key, ids), bad_value)])
    [record] = consume(kafka_bootstrap, topic, 1)
    client = SchemaRegistryClient(registry.url)
    try:
        result = decode_event(record, options=options_for(topic), schemas=client)
    finally:
        client.close()
    assert isinstance(result, DecodeFailure)
    assert result.reason == "unknown Avro schema id 999"
    assert result.error_class == "UnknownSchemaError"
    assert result.record.value == bad_value


def test_decode_cli_reads_an_avro_topic(
    tmp_path, kafka_bootstrap: str, registry: RegistryStandIn, avro_topic: tuple[str, list[str]]
) -> None:
    topic, names = avro_topic
    config = tmp_path / "connector.yaml"
    config.write_text(
        f"kafka: {{bootstrap_servers: '{kafka_bootstrap}'}}\n"
        f"source: {{format: avro, schema_registry_url: '{registry.url}'}}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["decode", "--config", str(config), "--from-topic", topic, "--max", "3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["op"], line["offset"]) for line in lines] == [("c", 0), ("u", 1), ("d", 2)]
    assert lines[0]["after"]["birth_date"] == "1985-07-14"
    assert lines[0]["after"]["updated_at"] == "2026-11-20T09:15:42.123456Z"
    assert lines[2]["before"]["updated_at"] == "1970-01-01T00:00:00Z"
    # --max larger than the topic: stops at the end of the partition
    result = CliRunner().invoke(
        app, ["decode", "--config", str(config), "--from-topic", topic, "--max", "100"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(names)


def test_standin_speaks_the_confluent_api(registry: RegistryStandIn) -> None:
    schema = json.dumps({"type": "record", "name": "K", "fields": [{"name": "id", "type": "long"}]})
    with httpx.Client(base_url=registry.url) as http:
        first = http.post("/subjects/t-key/versions", json={"schema": schema}).json()["id"]
        again = http.post("/subjects/t-key/versions", json={"schema": schema}).json()["id"]
        assert first == again
        latest = http.get("/subjects/t-key/versions/latest").json()
        assert (latest["version"], latest["id"], latest["schema"]) == (1, first, schema)
        assert http.post("/subjects/t-key", json={"schema": schema}).json()["version"] == 1
        missing = http.post("/subjects/t-key", json={"schema": '"string"'})
        assert (missing.status_code, missing.json()["error_code"]) == (404, 40403)
        assert http.get("/subjects/nope/versions/1").json()["error_code"] == 40401
        assert http.get("/schemas/ids/12345").status_code == 404
        assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
        assert http.put("/config", json={"compatibility": "NONE"}).json() == {"compatibility": "NONE"}
        assert http.get("/config").json() == {"compatibilityLevel": "NONE"}
