"""Golden fixtures: every case x {JSON with schemas, JSON without schemas, Avro} -> the expected event."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from connector.decode import DecodeOptions, Ignored, decode_event
from connector.models import UNCHANGED, ChangeEvent, DecodeFailure, Op, RawRecord, RecordRef, SourcePosition
from tests.unit.decode_fixtures import FIXTURES, FORMATS, avro_lookup, case_names, load_record, options_for

UTC = dt.UTC

ANA = {
    "id": 42,
    "external_id": "6f1c2f5e-8d0a-4a43-9d8e-3c1b2a7f9e10",
    "first_name": "Ana",
    "last_name": "Silva",
    "email": "ana.silva@example.com",
    "phone": "+351210000000",
    "city": "Lisboa",
    "country": "PT",
    "birth_date": dt.date(1985, 7, 14),
    "loyalty_level": "gold",
    "updated_at": dt.datetime(2026, 11, 20, 9, 15, 42, 123456, tzinfo=UTC),
    "language_code": "pt",
    "time_zone": "Europe/Lisbon",
}
ANA_UPDATED = {
    **ANA,
    "last_name": "Silva-Costa",
    "city": "Porto",
    "loyalty_level": "platinum",
    "updated_at": dt.datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC),
}
# REPLICA IDENTITY DEFAULT delete: filler values and schema defaults (the default-value trap) are
# passed through as sent; only the key columns are real.
ANA_FILLER = {
    "id": 42,
    "external_id": "00000000-0000-0000-0000-000000000000",
    "first_name": None,
    "last_name": None,
    "email": None,
    "phone": None,
    "city": None,
    "country": None,
    "birth_date": None,
    "loyalty_level": "bronze",
    "updated_at": dt.datetime(1970, 1, 1, tzinfo=UTC),
    "language_code": None,
    "time_zone": None,
}
DOC = {
    "id": 1,
    "body": "long text",
    "attachment": b"\x00\x01binary",
    "meta": {"a": [1, 2], "b": "x"},
    "tags": ["x", "y"],
    "scores": [1, 2, 3],
    "amount": Decimal("1234.50"),
    "balance": Decimal("-12.345"),
    "created_micro": dt.datetime(2026, 11, 20, 9, 15, 42, 123456, tzinfo=UTC),
    "created_ms": dt.datetime(2026, 11, 20, 9, 15, 42, 123000, tzinfo=UTC),
    "created_nano": dt.datetime(2026, 11, 20, 9, 15, 42, 123456, tzinfo=UTC),
    "start_time": dt.time(12, 34, 56, 789012),
    "ref_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "small": -3,
    "ratio": 0.25,
    "active": True,
}
DOC_TOAST = {
    **DOC,
    "body": UNCHANGED,
    "attachment": UNCHANGED,
    "meta": UNCHANGED,
    "tags": UNCHANGED,
    "scores": UNCHANGED,
    "amount": Decimal("99.00"),
}
CUSTOMERS = "crm.public.customers"
GROUPS = "crm.public.customer_groups"


def pg(a: int, b: int) -> SourcePosition:
    return SourcePosition("pg", (a, b))


def lsn(n: int) -> SourcePosition:
    return SourcePosition("pg-lsn", (0, n))


def ev(topic: str, offset: int, **kw: Any) -> ChangeEvent:
    defaults: dict[str, Any] = {
        "table": "public.customers",
        "key": {"id": 42},
        "before": None,
        "after": None,
        "position": None,
        "ts_ms": None,
    }
    return ChangeEvent(ref=RecordRef(topic, 0, offset), **{**defaults, **kw})


def ignored(kind: str) -> tuple[str, str]:
    return ("ignored", kind)


EXPECTED: dict[str, Any] = {
    "create": ev(
        CUSTOMERS,
        10,
        op=Op.CREATE,
        after=ANA,
        position=pg(24023119, 24023128),
        ts_ms=1795166142123,
        tx_id="771",
    ),
    "update": ev(
        CUSTOMERS,
        11,
        op=Op.UPDATE,
        after=ANA_UPDATED,
        position=pg(24100300, 24100352),
        ts_ms=1795255200000,
        tx_id="775",
    ),
    "update_snapshot_null": ev(
        CUSTOMERS,
        21,
        op=Op.UPDATE,
        after=ANA_UPDATED,
        position=pg(24100300, 24100352),
        ts_ms=1795255200000,
        tx_id="775",
        snapshot=False,
    ),
    "delete": ev(
        CUSTOMERS,
        12,
        op=Op.DELETE,
        before=ANA_FILLER,
        position=pg(24100400, 24100600),
        ts_ms=1795255300000,
        tx_id="780",
    ),
    "tombstone": ev(CUSTOMERS, 13, op=Op.DELETE, tombstone=True),
    "read": ev(
        CUSTOMERS,
        1,
        op=Op.READ,
        after=ANA,
        position=pg(0, 24000000),
        ts_ms=1795160000000,
        tx_id="760",
        snapshot=True,
    ),
    "read_incremental": ev(CUSTOMERS, 20, op=Op.READ, after=ANA, ts_ms=1795260000000, snapshot=True),
    "truncate": ignored("truncate"),
    "message": ignored("message"),
    "unwrapped_message": ignored("message"),
    "heartbeat": ignored("heartbeat"),
    "transaction_begin": ignored("transaction"),
    "transaction_end": ignored("transaction"),
    "pk_change_delete": ev(
        CUSTOMERS,
        30,
        op=Op.DELETE,
        before=ANA,
        position=pg(24400000, 24400010),
        ts_ms=1795290000000,
        tx_id="800",
        new_key={"id": 43},
    ),
    "pk_change_create": ev(
        CUSTOMERS,
        32,
        op=Op.CREATE,
        key={"id": 43},
        after={**ANA, "id": 43},
        position=pg(24400000, 24400020),
        ts_ms=1795290000000,
        tx_id="800",
        old_key={"id": 42},
    ),
    "groups_update": ev(
        GROUPS,
        5,
        table="public.customer_groups",
        op=Op.UPDATE,
        key={"customer_id": 42, "group_id": 7},
        after={"customer_id": 42, "group_id": 7, "group_name": "VIP"},
        position=pg(24100390, 24100400),
        ts_ms=1795255200100,
        tx_id="772",
    ),
    "groups_delete": ev(
        GROUPS,
        6,
        table="public.customer_groups",
        op=Op.DELETE,
        key={"customer_id": 42, "group_id": 7},
        before={"customer_id": 42, "group_id": 7, "group_name": None},
        position=pg(24100590, 24100600),
        ts_ms=1795255300100,
        tx_id="773",
    ),
    "types": ev(
        "crm.public.documents",
        40,
        table="public.documents",
        op=Op.CREATE,
        key={"id": 1},
        after=DOC,
        position=pg(24500000, 24500010),
        ts_ms=1795300000000,
        tx_id="900",
    ),
    "toast": ev(
        "crm.public.documents",
        41,
        table="public.documents",
        op=Op.UPDATE,
        key={"id": 1},
        after=DOC_TOAST,
        position=pg(24500100, 24500110),
        ts_ms=1795300100000,
        tx_id="901",
    ),
    "mysql_create": ev(
        "crm.shop.customers",
        50,
        table="shop.customers",
        op=Op.CREATE,
        after=ANA,
        position=SourcePosition("mysql", (3, 154, 1)),
        ts_ms=1795166142000,
        tx_id="3e11fa47-71ca-11e1-9e33-c80aa9429562:23",
    ),
    "unwrapped_create": ev(
        CUSTOMERS, 60, op=Op.CREATE, after=ANA, position=lsn(24023128), ts_ms=1795166142123
    ),
    "unwrapped_update": ev(
        CUSTOMERS, 61, op=Op.UPDATE, after=ANA_UPDATED, position=lsn(24100352), ts_ms=1795255200000
    ),
    "unwrapped_delete": ev(
        CUSTOMERS, 62, op=Op.DELETE, before=ANA_FILLER, position=lsn(24100600), ts_ms=1795255300000
    ),
    "unwrapped_read": ev(
        CUSTOMERS, 63, op=Op.READ, after=ANA, position=lsn(24000000), ts_ms=1795160000000, snapshot=True
    ),
    "unwrapped_tombstone": ev(CUSTOMERS, 64, op=Op.DELETE, tombstone=True),
    "unwrapped_null": ev(CUSTOMERS, 65, op=Op.DELETE, tombstone=True),
    "unwrapped_groups_delete": ev(
        GROUPS,
        66,
        table="public.customer_groups",
        op=Op.DELETE,
        key={"customer_id": 42, "group_id": 7},
        before={"customer_id": 42, "group_id": 7, "group_name": None},
        position=lsn(24100600),
        ts_ms=1795255300100,
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == case_names()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_fixture(fmt: str, name: str) -> None:
    record = load_record(fmt, name)
    result = decode_event(record, options=options_for(fmt), schemas=avro_lookup())
    expected = EXPECTED[name]
    if isinstance(expected, tuple):
        assert isinstance(result, Ignored), result
        assert result.kind == expected[1]
        assert result.ref == record.ref
    else:
        assert not isinstance(result, DecodeFailure), result.reason
        assert result == expected


def test_unchanged_marker_is_the_singleton() -> None:
    result = decode_event(load_record("json_plain", "toast"), options=options_for("json_plain"))
    assert isinstance(result, ChangeEvent)
    assert result.after is not None
    assert result.after["body"] is UNCHANGED
    assert result.after["attachment"] is UNCHANGED


def test_schemaless_json_without_column_types_keeps_wire_values() -> None:
    result = decode_event(load_record("json_plain", "create"), options=DecodeOptions())
    assert isinstance(result, ChangeEvent)
    assert result.after is not None
    assert result.after["birth_date"] == 5673
    assert result.after["updated_at"] == "2026-11-20T09:15:42.123456Z"


def test_forced_format_mismatch_is_a_failure() -> None:
    avro = load_record("avro", "create")
    result = decode_event(avro, options=DecodeOptions(format="json"), schemas=avro_lookup())
    assert isinstance(result, DecodeFailure)
    assert result.reason == "value is not valid JSON"
    plain = load_record("json_plain", "create")
    result = decode_event(plain, options=DecodeOptions(format="avro"), schemas=avro_lookup())
    assert isinstance(result, DecodeFailure)
    assert result.reason == "value is not in the Confluent Avro wire format"


def test_avro_without_registry_is_a_failure() -> None:
    result = decode_event(load_record("avro", "create"), options=DecodeOptions())
    assert isinstance(result, DecodeFailure)
    assert result.reason == "value is Avro but no schema registry is configured"


@pytest.mark.parametrize("schemas", ["true", "false"])
@pytest.mark.parametrize("replace_null", ["true", "false"])
def test_bytes_from_kafkas_json_converter(schemas: str, replace_null: str) -> None:
    """Bytes written by Kafka 4.3.1's JsonConverter itself (see fixtures/debezium/jsonconverter/)."""
    base = FIXTURES / "jsonconverter" / f"create_schemas-{schemas}_replace-null-{replace_null}"
    record = RawRecord(
        "crm.public.customers",
        0,
        10,
        base.with_suffix(".key").read_bytes(),
        base.with_suffix(".value").read_bytes(),
    )
    fmt = "json_schema" if schemas == "true" else "json_plain"
    result = decode_event(record, options=options_for(fmt))
    assert result == EXPECTED["create"]
