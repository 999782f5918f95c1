"""Real Debezium output decodes as expected: PostgreSQL -> Debezium 3.6.1 (JSON + schemas) -> Kafka.

A test table with REPLICA IDENTITY DEFAULT (unlike the CRM tables) and out-of-line (TOAST) columns, so
an UPDATE that leaves them alone carries Debezium's unavailable-value placeholder; a primary-key change
gives delete + tombstone + create with the `__debezium.newkey` / `__debezium.oldkey` headers. Expected
values are the SQL literals written below.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import time
import uuid
from collections import defaultdict
from decimal import Decimal

import pytest

from connector.commands.decode import topic_records
from connector.config import Settings
from connector.decode import DecodeOptions, decode_event
from connector.errors import KafkaError
from connector.models import UNCHANGED, ChangeEvent, Op, RawRecord
from connector.stack.connect import delete_connector, register_connector, wait_running

pytestmark = pytest.mark.integration

UTC = dt.UTC
BIG_BODY_SQL = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i)"  # 6400 chars
BIG_BLOB_SQL = "decode((SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i), 'hex')"


def psql(dsn: str, sql: str) -> str:
    result = subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def read_all(bootstrap: str, topic: str, count: int, timeout: float = 180.0) -> list[RawRecord]:
    settings = Settings.model_validate({"kafka": {"bootstrap_servers": bootstrap}})
    deadline = time.monotonic() + timeout
    records: list[RawRecord] = []
    while time.monotonic() < deadline:
        try:
            records = list(topic_records(settings, topic, max_records=1000, timeout_s=30))
        except KafkaError:  # the topic appears with the snapshot
            records = []
        if len(records) >= count:
            return records
        time.sleep(1)
    raise AssertionError(f"expected {count} records on {topic}, got {len(records)}")


UNWRAP = {
    "transforms": "unwrap",
    "transforms.unwrap.type": "io.debezium.transforms.ExtractNewRecordState",
    "transforms.unwrap.add.fields": "op,table,lsn,source.ts_ms",
}


def run_scenario(
    kafka_bootstrap: str,
    postgres_dsn: str,
    connect_url: str,
    debezium_connector_config,
    count: int,
    **extra: str,
) -> tuple[int, str, list[ChangeEvent]]:
    """Snapshot one row, then insert, update (TOASTed columns untouched), change the key, delete.

    Returns (first id, the big body text, decoded events in offset order).
    """
    suffix = uuid.uuid4().hex[:10]
    table = f"decode_it_{suffix}"
    prefix = f"dec{suffix}"
    base_id = random.randint(10**9, 10**10)
    psql(
        postgres_dsn,
        f"""
        CREATE TABLE public.{table} (
          id bigint PRIMARY KEY, body text, doc jsonb, amount numeric(10,2), born date,
          seen timestamptz, at_local timestamp, tags text[], blob bytea, uid uuid,
          tier text DEFAULT 'bronze');
        ALTER TABLE public.{table} ALTER COLUMN body SET STORAGE EXTERNAL;
        ALTER TABLE public.{table} ALTER COLUMN blob SET STORAGE EXTERNAL;
        ALTER TABLE public.{table} OWNER TO crm_owner;
        INSERT INTO public.{table} VALUES ({base_id}, 'short', '{{"a": 1}}', 1234.50, '1985-07-14',
          '2026-11-20 09:15:42.123456+00', '2026-11-20 09:15:42.5', '{{x,y}}', '\\x0001',
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL);
        """,
    )
    name, config = debezium_connector_config(
        prefix=prefix,
        **{"slot.drop.on.stop": "true", "table.include.list": f"public.{table}", **extra},
    )
    register_connector(connect_url, name, config)
    try:
        wait_running(connect_url, name)
        second, third = base_id + 1, base_id + 2
        psql(
            postgres_dsn,
            f"INSERT INTO public.{table} (id, body, amount, blob) VALUES ({second}, {BIG_BODY_SQL}, 10.00, "
            f"{BIG_BLOB_SQL})",
        )
        psql(postgres_dsn, f"UPDATE public.{table} SET amount = 99.99 WHERE id = {second}")
        psql(postgres_dsn, f"UPDATE public.{table} SET id = {third} WHERE id = {second}")
        psql(postgres_dsn, f"DELETE FROM public.{table} WHERE id = {third}")
        records = read_all(kafka_bootstrap, f"{prefix}.public.{table}", count)
        big_body = psql(postgres_dsn, "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i")
    finally:
        delete_connector(connect_url, name)
        drop(postgres_dsn, prefix, table)
    events = []
    for record in records:
        event = decode_event(record, options=DecodeOptions())
        assert isinstance(event, ChangeEvent), event
        assert event.table == f"public.{table}"
        events.append(event)
    return base_id, big_body, events


def by_key(events: list[ChangeEvent]) -> dict[int, list[ChangeEvent]]:
    grouped: dict[int, list[ChangeEvent]] = defaultdict(list)
    for event in events:
        grouped[event.key["id"]].append(event)
    return grouped


SNAPSHOT_ROW = {
    "body": "short",
    "doc": {"a": 1},
    "amount": Decimal("1234.50"),
    "born": dt.date(1985, 7, 14),
    "seen": dt.datetime(2026, 11, 20, 9, 15, 42, 123456, tzinfo=UTC),
    "at_local": dt.datetime(2026, 11, 20, 9, 15, 42, 500000, tzinfo=UTC),
    "tags": ["x", "y"],
    "blob": b"\x00\x01",
    "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "tier": None,  # an explicit NULL stays null (replace.null.with.default=false), not the DEFAULT
}


def test_debezium_envelopes_decode(
    kafka_bootstrap, postgres_dsn, connect_url, debezium_connector_config
) -> None:
    base_id, big_body, events = run_scenario(
        kafka_bootstrap, postgres_dsn, connect_url, debezium_connector_config, 8
    )
    second, third = base_id + 1, base_id + 2
    grouped = by_key(events)
    assert sorted(grouped) == [base_id, second, third]

    [snap] = grouped[base_id]
    assert (snap.op, snap.snapshot, snap.before) == (Op.READ, True, None)
    assert snap.after == {"id": base_id, **SNAPSHOT_ROW}
    assert snap.position is not None and snap.position.kind == "pg" and snap.position.parts[0] == 0

    created, updated, deleted, tombstone = grouped[second]
    assert (created.op, created.snapshot) == (Op.CREATE, False)
    assert created.after is not None
    assert created.after["body"] == big_body
    assert created.after["blob"] == bytes.fromhex(big_body)
    assert updated.op is Op.UPDATE
    assert updated.before is None  # REPLICA IDENTITY DEFAULT, key unchanged: no old tuple
    assert updated.after is not None
    assert updated.after["amount"] == Decimal("99.99")
    assert updated.after["body"] is UNCHANGED  # TOASTed and not in the WAL: the placeholder
    assert updated.after["blob"] is UNCHANGED  # bytea: the placeholder's bytes, base64 in JSON
    assert deleted.op is Op.DELETE
    assert deleted.new_key == {"id": third}
    assert deleted.before is not None and deleted.before["id"] == second
    assert (tombstone.op, tombstone.tombstone, tombstone.key) == (Op.DELETE, True, {"id": second})

    moved, gone, last_tombstone = grouped[third]
    assert (moved.op, moved.old_key) == (Op.CREATE, {"id": second})
    assert moved.after is not None and moved.after["amount"] == Decimal("99.99")
    assert gone.op is Op.DELETE
    assert gone.before is not None and gone.before["id"] == third
    assert last_tombstone.tombstone

    streamed = [created, updated, deleted, moved, gone]
    assert all(e.position is not None and e.position.kind == "pg" for e in streamed)
    assert [e.position for e in streamed] == sorted(e.position for e in streamed)  # type: ignore[type-var]
    assert all(e.tx_id is not None and e.ts_ms is not None for e in streamed)


def test_debezium_unwrapped_rows_decode(
    kafka_bootstrap, postgres_dsn, connect_url, debezium_connector_config
) -> None:
    """ExtractNewRecordState, rewrite-with-tombstone mode, add.fields=op,table,lsn,source.ts_ms."""
    base_id, big_body, events = run_scenario(
        kafka_bootstrap,
        postgres_dsn,
        connect_url,
        debezium_connector_config,
        8,
        **UNWRAP,
        **{"transforms.unwrap.delete.tombstone.handling.mode": "rewrite-with-tombstone"},
    )
    second, third = base_id + 1, base_id + 2
    grouped = by_key(events)
    [snap] = grouped[base_id]
    # Observed (Debezium 3.6.1, Kafka 4.3.1): in the rewrite modes the explicit NULL in `tier` arrives
    # as the column DEFAULT 'bronze' even with the SMT's replace.null.with.default=false (inferred cause:
    # adding `__deleted` rebuilds the row, and Connect's Struct.get returns the default for a null).
    # Nothing in the record tells it apart: decode passes it on (spec 2.3, the default-value trap).
    assert (snap.op, snap.snapshot, snap.after) == (
        Op.READ,
        True,
        {"id": base_id, **SNAPSHOT_ROW, "tier": "bronze"},
    )
    created, updated, deleted, tombstone = grouped[second]
    assert created.op is Op.CREATE
    assert created.after is not None and created.after["body"] == big_body
    assert updated.op is Op.UPDATE
    assert updated.after is not None
    assert (updated.after["body"], updated.after["blob"], updated.after["amount"]) == (
        UNCHANGED,
        UNCHANGED,
        Decimal("99.99"),
    )
    assert (deleted.op, deleted.after) == (Op.DELETE, None)
    assert deleted.before is not None and deleted.before["id"] == second
    assert not any(name.startswith("__") for name in deleted.before)
    assert tombstone.tombstone
    moved, gone, last_tombstone = grouped[third]
    assert (moved.op, gone.op, last_tombstone.tombstone) == (Op.CREATE, Op.DELETE, True)
    streamed = [created, updated, deleted, moved, gone]
    assert all(e.position is not None and e.position.kind == "pg-lsn" for e in streamed)
    assert [e.position for e in streamed] == sorted(e.position for e in streamed)  # type: ignore[type-var]
    assert all(e.ts_ms is not None for e in streamed)


def test_debezium_unwrap_tombstone_mode_decodes(
    kafka_bootstrap, postgres_dsn, connect_url, debezium_connector_config
) -> None:
    """ExtractNewRecordState's default tombstone mode: a delete becomes a null payload (schema kept)."""
    base_id, _, events = run_scenario(
        kafka_bootstrap, postgres_dsn, connect_url, debezium_connector_config, 6, **UNWRAP
    )
    second, third = base_id + 1, base_id + 2
    grouped = by_key(events)
    [snap] = grouped[base_id]
    # Observed: without a rewrite mode the explicit NULL survives (the SMT's replace.null.with.default
    # is left at its default here), unlike in test_debezium_unwrapped_rows_decode.
    assert snap.after == {"id": base_id, **SNAPSHOT_ROW}
    assert [(e.op, e.tombstone) for e in grouped[second]] == [
        (Op.CREATE, False),
        (Op.UPDATE, False),
        (Op.DELETE, True),
    ]
    assert [(e.op, e.tombstone) for e in grouped[third]] == [(Op.CREATE, False), (Op.DELETE, True)]


def drop(dsn: str, prefix: str, table: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        active = psql(dsn, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{prefix}_slot'")
        if active == "":
            break
        if active == "f":
            psql(dsn, f"SELECT pg_drop_replication_slot('{prefix}_slot')")
            break
        time.sleep(1)
    psql(dsn, f"DROP PUBLICATION IF EXISTS {prefix}_pub; DROP TABLE IF EXISTS public.{table}")
