"""Decoding cases a second review found, each on the Python decoder and the C fast path alike.

Primary-key-change headers that are not JSON, decimal.handling.mode=double specials, PostgreSQL's
`__db`, Avro infinite timestamps and 24:00 times, numbers beyond a double, the exact re-read of
non-compact JSON with a schema, and non-ASCII digits in a position.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import os
from typing import Any

import fastavro
import orjson
import pytest

from connector.config import load_settings
from connector.decode import DecodeOptions, decode_event
from connector.decode import native as native_module
from connector.decode.position import flat_position
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from connector.registry import StaticSchemaLookup
from connector.routing import Router
from tests.unit.test_config import REPO_EXAMPLE
from tests.unit.test_decode_native import same

TOPIC = "crm.public.customers"
NATIVE = pytest.mark.parametrize("native", [False, True])
SOURCE = {
    "connector": "postgresql",
    "db": "appdb",
    "schema": "public",
    "table": "customers",
    "txId": 5,
    "lsn": 10,
    "sequence": '["1","10"]',
    "ts_ms": 1,
}


def envelope(after: dict[str, Any] | None, *, before: dict[str, Any] | None = None, op: str = "c") -> bytes:
    return orjson.dumps({"before": before, "after": after, "source": SOURCE, "op": op})


def decode_both(record: RawRecord, **options: Any) -> ChangeEvent | DecodeFailure:
    """The record decoded by both paths, which must agree; the Python path's result."""
    slow, fast = (decode_event(record, options=DecodeOptions(native=n, **options)) for n in (False, True))
    assert same(fast, slow), (fast, slow)
    assert isinstance(slow, ChangeEvent | DecodeFailure), slow
    return slow


# --- 1. a `__debezium.newkey` header that is present but not JSON still marks a key change


@pytest.mark.parametrize(
    "header",
    [
        b'{"id":42,"d":1985-07-14}',  # SimpleHeaderConverter: a Connect Date in the key, unquoted
        b'{"email":"tab\there"}',  # ... a string with a raw tab
        b"\x00",
        b"42",  # JSON, but not an object
    ],
)
def test_a_present_pk_header_that_is_not_a_json_object_still_marks_the_delete_moved(header: bytes) -> None:
    value = envelope(None, before={"id": 42, "email": "a@b.c"}, op="d")
    record = RawRecord(TOPIC, 0, 1, b'{"id":42}', value, headers=(("__debezium.newkey", header),))
    event = decode_both(record)
    assert isinstance(event, ChangeEvent)
    assert event.new_key == {} and event.old_key is None
    (change,) = Router(load_settings(REPO_EXAMPLE)).route(event)  # type: ignore[misc]
    assert (change.customer_key, change.op, change.moved) == ("42", "delete", True)


@pytest.mark.parametrize("headers", [(), (("__debezium.newkey", b""),), (("__debezium.newkey", None),)])
def test_an_absent_or_empty_pk_header_is_no_key_change(headers: tuple[tuple[str, bytes | None], ...]) -> None:
    value = envelope(None, before={"id": 42, "email": "a@b.c"}, op="d")
    event = decode_both(RawRecord(TOPIC, 0, 1, b'{"id":42}', value, headers=headers))
    assert isinstance(event, ChangeEvent) and event.new_key is None
    (change,) = Router(load_settings(REPO_EXAMPLE)).route(event)  # type: ignore[misc]
    assert change.moved is False


# --- 2. decimal.handling.mode=double: JsonConverter's NaN/Infinity texts are never base64


DOUBLE_MODE = {
    "decimal_handling_mode": "double",
    "column_types": {"public.customers": {"amount": "decimal:2"}},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("NaN", "NaN")],
)
def test_double_mode_reads_json_converter_specials(text: str, expected: str) -> None:
    event = decode_both(
        RawRecord(TOPIC, 0, 1, b'{"id":1}', envelope({"id": 1, "amount": text})), **DOUBLE_MODE
    )
    assert isinstance(event, ChangeEvent) and event.after is not None
    assert event.after["amount"].as_tuple() == decimal.Decimal(expected).as_tuple()


@pytest.mark.parametrize("text", ["AQ==", "1234", "12.50", "infinity", "NAN"])
def test_double_mode_refuses_other_texts(text: str) -> None:
    event = decode_both(
        RawRecord(TOPIC, 0, 1, b'{"id":1}', envelope({"id": 1, "amount": text})), **DOUBLE_MODE
    )
    assert isinstance(event, DecodeFailure) and "amount" in event.reason


def test_double_mode_still_reads_doubles() -> None:
    event = decode_both(
        RawRecord(TOPIC, 0, 1, b'{"id":1}', envelope({"id": 1, "amount": 1234.5})), **DOUBLE_MODE
    )
    assert isinstance(event, ChangeEvent) and event.after is not None
    assert event.after["amount"].as_tuple() == decimal.Decimal("1234.50").as_tuple()


@pytest.mark.parametrize(("mode", "kind"), [("precise", 6), ("string", 0), ("double", 0)])
def test_only_precise_mode_decimals_take_the_native_decimal_kind(mode: str, kind: int) -> None:
    plan = native_module._plan({"amount": "decimal:2"}, mode)  # type: ignore[arg-type]
    assert plan["amount"][1] == kind


# --- 3. PostgreSQL's `__db` is the database, not the schema


@pytest.mark.parametrize("db_field", ["__db", "__source_db"])
def test_a_postgresql_unwrapped_row_takes_its_schema_from_the_topic_not_db(db_field: str) -> None:
    row = {"id": 1, "birth_date": 5673, "__op": "u", db_field: "appdb", "__table": "customers", "__lsn": 10}
    event = decode_both(
        RawRecord(TOPIC, 0, 1, b'{"id":1}', orjson.dumps(row)),
        column_types={"public.customers": {"birth_date": "date"}},
    )
    assert isinstance(event, ChangeEvent) and event.after is not None
    assert event.table == "public.customers"
    assert event.after["birth_date"] == dt.date(1985, 7, 14)


@pytest.mark.skipif(
    not native_module.AVAILABLE and not os.environ.get("CI"),
    reason="the C extension is not built here (no compiler when installed); CI requires it",
)
def test_the_fast_path_serves_postgresql_rows_with_db_and_leaves_mysql_rows_to_python() -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    ctx = DecodeOptions(column_types={"public.customers": {"birth_date": "date"}}).native_context
    row = {"id": 1, "birth_date": 5673, "__op": "u", "__db": "appdb", "__table": "customers", "__lsn": 10}
    event = _speedups.decode_envelope(RawRecord(TOPIC, 0, 1, b'{"id":1}', orjson.dumps(row)), ctx)
    assert isinstance(event, ChangeEvent) and event.table == "public.customers"
    mysql = {"id": 1, "__op": "u", "__db": "inventory", "__table": "customers", "__file": "binlog.000003"}
    assert _speedups.decode_envelope(RawRecord(TOPIC, 0, 1, b'{"id":1}', orjson.dumps(mysql)), ctx) is None


def test_a_postgresql_unwrapped_row_with_a_routed_topic_takes_the_configured_table() -> None:
    row = {"id": 1, "__op": "u", "__db": "appdb", "__table": "customers", "__lsn": 10}
    record = RawRecord("customers-routed", 0, 1, b'{"id":1}', orjson.dumps(row))
    event = decode_both(record, topic_tables={"customers-routed": "crm_schema.customers"})
    assert isinstance(event, ChangeEvent) and event.table == "crm_schema.customers"


def test_a_mysql_unwrapped_row_keeps_db_as_its_schema() -> None:
    row = {"id": 1, "__op": "u", "__db": "inventory", "__table": "customers", "__file": "binlog.000003"}
    row |= {"__pos": 154}
    event = decode_both(RawRecord("mysql.inventory.customers", 0, 1, b'{"id":1}', orjson.dumps(row)))
    assert isinstance(event, ChangeEvent) and event.table == "inventory.customers"


# --- 4. Avro (time.precision.mode=connect): infinite timestamps and 24:00 as JSON reads them

AVRO_KEY = {"type": "record", "name": "Key", "namespace": TOPIC, "fields": [{"name": "id", "type": "long"}]}


def _avro_time_row(logical: str, base: str, raw: int) -> ChangeEvent | DecodeFailure:
    column = {"type": base, "connect.version": 1, "logicalType": logical}
    value_schema = {
        "type": "record",
        "name": "Value",
        "namespace": TOPIC,
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "v", "type": ["null", column], "default": None},
            {"name": "__op", "type": ["null", "string"], "default": None},
            {"name": "__lsn", "type": ["null", "long"], "default": None},
        ],
    }
    plain = json.loads(json.dumps(value_schema).replace('"logicalType"', '"x"'))  # the same binary layout

    def frame(sid: int, schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
        return b"\x00" + sid.to_bytes(4, "big") + out.getvalue()

    lookup = StaticSchemaLookup({1: json.dumps(AVRO_KEY), 2: json.dumps(value_schema)})
    datum = {"id": 1, "v": raw, "__op": "u", "__lsn": 10}
    record = RawRecord(TOPIC, 0, 1, frame(1, AVRO_KEY, {"id": 1}), frame(2, plain, datum))
    event = decode_event(record, options=DecodeOptions(format="avro"), schemas=lookup)
    assert isinstance(event, ChangeEvent | DecodeFailure)
    return event


MAX_DT = dt.datetime.max.replace(tzinfo=dt.UTC)
MIN_DT = dt.datetime.min.replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("logical", "base", "raw", "expected"),
    [
        ("timestamp-millis", "long", 9223372036825200, MAX_DT),
        ("timestamp-millis", "long", -9223372036832400, MIN_DT),
        ("timestamp-millis", "long", 1_600_000_000_123, dt.datetime(2020, 9, 13, 12, 26, 40, 123000, dt.UTC)),
        ("timestamp-micros", "long", 9223372036825200000, MAX_DT),
        (
            "timestamp-micros",
            "long",
            1_600_000_000_123_456,
            dt.datetime(2020, 9, 13, 12, 26, 40, 123456, dt.UTC),
        ),
        ("time-millis", "int", 86_400_000, dt.time.max),
        ("time-millis", "int", 3_723_004, dt.time(1, 2, 3, 4000)),
        ("time-micros", "long", 86_400_000_000, dt.time.max),
        ("time-micros", "long", 3_723_000_004, dt.time(1, 2, 3, 4)),
    ],
)
def test_avro_timestamps_and_times_read_as_json_reads_them(
    logical: str, base: str, raw: int, expected: Any
) -> None:
    event = _avro_time_row(logical, base, raw)
    assert isinstance(event, ChangeEvent) and event.after is not None, event
    value = event.after["v"]
    assert value == expected and type(value) is type(expected)
    if isinstance(expected, dt.datetime):
        assert value.tzinfo is dt.UTC


@pytest.mark.parametrize(
    ("logical", "base", "raw"), [("time-millis", "int", 86_400_001), ("time-millis", "int", -1)]
)
def test_avro_times_beyond_a_day_are_still_refused(logical: str, base: str, raw: int) -> None:
    event = _avro_time_row(logical, base, raw)
    assert isinstance(event, DecodeFailure) and "unexpected" not in event.reason


# --- 5. numbers beyond a double in a column without column_types, decimal.format=NUMERIC


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (b"1" + b"0" * 400, decimal.Decimal(10**400)),
        (b"-" + b"9" * 320, decimal.Decimal(-(10**320 - 1))),
        (b"1.5e400", decimal.Decimal("1.5E+400")),
    ],
)
def test_a_number_beyond_a_double_stays_exact(number: bytes, expected: decimal.Decimal) -> None:
    value = envelope({"id": 1, "big": 0}).replace(b'"big":0', b'"big":' + number)
    event = decode_both(RawRecord(TOPIC, 0, 1, b'{"id":1}', value))
    assert isinstance(event, ChangeEvent) and event.after is not None, event
    assert event.after["big"].as_tuple() == expected.as_tuple()


def test_a_number_beyond_a_double_with_a_huge_exponent_is_refused_clearly() -> None:
    value = envelope({"id": 1, "big": 0}).replace(b'"big":0', b'"big":1e999999')
    event = decode_both(RawRecord(TOPIC, 0, 1, b'{"id":1}', value))
    assert isinstance(event, DecodeFailure) and "unexpected" not in event.reason


def test_a_number_within_a_double_beyond_64_bits_is_still_a_float() -> None:
    value = envelope({"id": 1, "big": 0}).replace(b'"big":0', b'"big":1' + b"0" * 30)
    event = decode_both(RawRecord(TOPIC, 0, 1, b'{"id":1}', value))
    assert isinstance(event, ChangeEvent) and event.after is not None
    assert event.after["big"] == 1e30 and type(event.after["big"]) is float


# --- 6. the exact re-read of JSON with a schema that is not JsonConverter's compact text

SCHEMA = {
    "type": "struct",
    "name": "crm.public.customers.Envelope",
    "fields": [
        {
            "type": "struct",
            "optional": True,
            "field": "after",
            "name": "crm.public.customers.Value",
            "fields": [
                {"type": "int64", "field": "id"},
                {"type": "double", "optional": True, "default": 1.5, "field": "score"},
                {
                    "type": "bytes",
                    "optional": True,
                    "name": "org.apache.kafka.connect.data.Decimal",
                    "parameters": {"scale": "2"},
                    "field": "amount",
                },
            ],
        },
        {"type": "struct", "field": "source", "fields": []},
        {"type": "string", "field": "op"},
    ],
}


@pytest.mark.parametrize("amount", ["12.34", "1234567890123456.78"])
def test_the_exact_reread_of_non_compact_json_with_a_schema(amount: str) -> None:
    payload = {"before": None, "after": {"id": 1, "score": 2.5, "amount": "@"}, "source": SOURCE, "op": "c"}
    value = json.dumps({"schema": SCHEMA, "payload": payload}, indent=1).replace('"@"', amount).encode()
    key = json.dumps(
        {"schema": {"type": "struct", "fields": [{"type": "int64", "field": "id"}]}, "payload": {"id": 1}}
    )
    event = decode_both(RawRecord(TOPIC, 0, 1, key.encode(), value))
    assert isinstance(event, ChangeEvent) and event.after is not None, event
    assert event.after["amount"].as_tuple() == decimal.Decimal(amount).as_tuple()
    assert event.after["score"] == 2.5 and type(event.after["score"]) is float


# --- 7. positions: non-ASCII digits are no number


@pytest.mark.parametrize("lsn", ["²", "١٢", "12"])
def test_a_position_text_with_non_ascii_digits_is_no_position(lsn: str) -> None:
    expected = None if lsn != "12" else (0, 12)
    position = flat_position({"__lsn": lsn})
    assert (position.parts if position is not None else None) == expected
    row = {"id": 1, "__op": "u", "__table": "customers", "__lsn": lsn}
    event = decode_both(RawRecord(TOPIC, 0, 1, b'{"id":1}', orjson.dumps(row)))
    assert isinstance(event, ChangeEvent)
    assert (event.position.parts if event.position is not None else None) == expected
