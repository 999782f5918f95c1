"""The local stack's CDC chain works: a PostgreSQL row reaches Kafka through Connect + Debezium as configured.

Checks the settings the connector depends on: JSON with schemas, an explicit NULL in a column with a
DEFAULT stays null (replace.null.with.default=false), REPLICA IDENTITY FULL gives deletes a full `before`,
and a delete is followed by a tombstone.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
import uuid

import pytest

from connector.stack.connect import delete_connector, register_connector, wait_running
from tests.integration.kafka_helpers import delete_topics, read_partition

pytestmark = pytest.mark.integration


def _psql(dsn: str, sql: str) -> str:
    result = subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _events_for(
    bootstrap: str, topic: str, customer_id: int, count: int, timeout: float = 90.0
) -> list[dict | None]:
    deadline = time.monotonic() + timeout
    found: list[dict | None] = []
    while time.monotonic() < deadline:
        try:
            records = read_partition(bootstrap, topic, timeout=20)
        except TimeoutError:
            records = []
        found = [
            json.loads(value) if value is not None else None
            for key, value in records
            if key is not None and json.loads(key)["payload"]["id"] == customer_id
        ]
        if len(found) >= count:
            return found
        time.sleep(1)
    raise AssertionError(f"expected {count} events for customer {customer_id} on {topic}, got {found}")


def test_row_flows_postgres_debezium_kafka(
    kafka_bootstrap, kafka_admin, postgres_dsn, connect_url, debezium_connector_config
):
    prefix = f"it{uuid.uuid4().hex[:10]}"
    customer_id = random.randint(10**12, 10**13)
    _psql(
        postgres_dsn,
        f"INSERT INTO public.customers (id, external_id, email, loyalty_level, notes) "
        f"VALUES ({customer_id}, 'ext-{customer_id}', 'it@example.invalid', NULL, repeat('n', 5000))",
    )
    name, config = debezium_connector_config(prefix=prefix, **{"slot.drop.on.stop": "true"})
    register_connector(connect_url, name, config)
    try:
        wait_running(connect_url, name)
        _psql(postgres_dsn, f"DELETE FROM public.customers WHERE id = {customer_id}")
        created, deleted, tombstone = _events_for(
            kafka_bootstrap, f"{prefix}.public.customers", customer_id, 3
        )
    finally:
        delete_connector(connect_url, name)
        _drop_slot_and_publication(postgres_dsn, prefix)
        ours = [t for t in kafka_admin.list_topics(timeout=10).topics if t.startswith(f"{prefix}.")]
        delete_topics(kafka_admin, ours)

    assert created is not None and deleted is not None
    assert created["schema"]["name"] == f"{prefix}.public.customers.Envelope"  # schemas.enable=true
    row = created["payload"]["after"]
    assert created["payload"]["op"] == "r"  # the pre-existing row comes from the initial snapshot
    assert row["external_id"] == f"ext-{customer_id}"
    assert row["loyalty_level"] is None  # not the column DEFAULT 'bronze'
    assert row["notes"] == "n" * 5000
    assert deleted["payload"]["op"] == "d"
    assert deleted["payload"]["before"]["external_id"] == f"ext-{customer_id}"  # REPLICA IDENTITY FULL
    assert tombstone is None


def _drop_slot_and_publication(dsn: str, prefix: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        active = _psql(dsn, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{prefix}_slot'")
        if active == "":
            break
        if active == "f":
            _psql(dsn, f"SELECT pg_drop_replication_slot('{prefix}_slot')")
            break
        time.sleep(1)
    _psql(dsn, f"DROP PUBLICATION IF EXISTS {prefix}_pub")
