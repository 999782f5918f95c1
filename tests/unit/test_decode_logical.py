"""Logical type converters, TOAST placeholder forms and source positions."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from connector.decode.logical import logical_converter
from connector.decode.position import flat_position, source_position
from connector.decode.rows import ToastForms
from connector.models import UNCHANGED, ChangeEvent, SourcePosition
from tests.unit.decode_fixtures import pg_insert

UTC = dt.UTC
MAX = dt.datetime.max.replace(tzinfo=UTC)
MIN = dt.datetime.min.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "params", "wire", "expected"),
    [
        ("io.debezium.time.Date", {}, 5673, dt.date(1985, 7, 14)),
        ("io.debezium.time.Date", {}, -1, dt.date(1969, 12, 31)),
        ("org.apache.kafka.connect.data.Date", {}, dt.date(2000, 1, 1), dt.date(2000, 1, 1)),
        ("io.debezium.time.IsoDate", {}, "1985-07-14Z", dt.date(1985, 7, 14)),
        ("io.debezium.time.Timestamp", {}, 1000, dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (
            "io.debezium.time.MicroTimestamp",
            {},
            1_500_000,
            dt.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC),
        ),
        ("io.debezium.time.MicroTimestamp", {}, 9223372036825200000, MAX),
        ("io.debezium.time.MicroTimestamp", {}, -9223372036832400000, MIN),
        (
            "io.debezium.time.NanoTimestamp",
            {},
            1_000_001_999,
            dt.datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC),
        ),
        (
            "io.debezium.time.ZonedTimestamp",
            {},
            "2026-11-20T09:15:42.123456789Z",
            dt.datetime(2026, 11, 20, 9, 15, 42, 123456, tzinfo=UTC),
        ),
        (
            "io.debezium.time.ZonedTimestamp",
            {},
            "2026-11-20T10:15:42+01:00",
            dt.datetime(2026, 11, 20, 9, 15, 42, tzinfo=UTC),
        ),
        ("io.debezium.time.ZonedTimestamp", {}, "infinity", MAX),
        ("io.debezium.time.ZonedTimestamp", {}, "-infinity", MIN),
        ("io.debezium.time.Time", {}, 3_723_004, dt.time(1, 2, 3, 4000)),
        ("io.debezium.time.MicroTime", {}, 45296789012, dt.time(12, 34, 56, 789012)),
        ("io.debezium.time.MicroTime", {}, 86_400_000_000, dt.time.max),
        ("io.debezium.time.NanoTime", {}, 1_000_000_500, dt.time(0, 0, 1)),
        ("io.debezium.time.ZonedTime", {}, "10:15:30Z", dt.time(10, 15, 30, tzinfo=UTC)),
        ("org.apache.kafka.connect.data.Decimal", {"scale": "2"}, "AeI6", Decimal("1234.50")),
        ("org.apache.kafka.connect.data.Decimal", {"scale": "2"}, "/h3G", Decimal("-1234.50")),
        ("org.apache.kafka.connect.data.Decimal", {"scale": "2"}, 1234.5, Decimal("1234.5")),
        ("org.apache.kafka.connect.data.Decimal", {"scale": "0"}, b"\x01\x00", Decimal(256)),
        ("io.debezium.data.VariableScaleDecimal", {}, {"scale": 2, "value": "AeI6"}, Decimal("1234.50")),
        # numeric(38,2): more digits than decimal's default context keeps; scaling must stay exact
        (
            "org.apache.kafka.connect.data.Decimal",
            {"scale": "2"},
            "CUmw9vACMxPESZBQ3jjzTg==",
            Decimal("123456789012345678901234567890123456.78"),
        ),
        (
            "io.debezium.data.VariableScaleDecimal",
            {},
            {"scale": 2, "value": "CUmw9vACMxPESZBQ3jjzTg=="},
            Decimal("123456789012345678901234567890123456.78"),
        ),
        ("io.debezium.data.Json", {}, '{"a": [1, null]}', {"a": [1, None]}),
        ("io.debezium.data.Json", {}, "[1]", [1]),
        ("io.debezium.data.Bits", {}, "AQ==", b"\x01"),
        (
            "io.debezium.data.Uuid",
            {},
            "6f1c2f5e-8d0a-4a43-9d8e-3c1b2a7f9e10",
            "6f1c2f5e-8d0a-4a43-9d8e-3c1b2a7f9e10",
        ),
    ],
)
def test_logical_converter(name: str, params: dict[str, str], wire: Any, expected: Any) -> None:
    conv = logical_converter(name, params)
    assert conv is not None
    assert conv(wire) == expected


def test_plain_types_need_no_converter() -> None:
    assert logical_converter("io.debezium.data.Enum", {}) is None
    assert logical_converter("crm.public.customers.Value", {}) is None


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("io.debezium.time.Date", "5673"),
        ("io.debezium.time.Date", True),
        ("io.debezium.time.ZonedTimestamp", "yesterday"),
        ("io.debezium.time.MicroTime", -5),
        ("io.debezium.data.Json", "{"),
        ("io.debezium.data.Json", '{"x":1' + "0" * 5000),  # invalid JSON with a long number: still refused
        ("org.apache.kafka.connect.data.Decimal", "***"),
    ],
)
def test_logical_converter_rejects_bad_wire_values(name: str, wire: Any) -> None:
    conv = logical_converter(name, {"scale": "2"})
    assert conv is not None
    with pytest.raises((ValueError, TypeError, ArithmeticError)):
        conv(wire)


PLACEHOLDER = "__debezium_unavailable_value"


@pytest.mark.parametrize(
    "form",
    [
        PLACEHOLDER,
        base64.b64encode(PLACEHOLDER.encode()).decode(),
        PLACEHOLDER.encode(),
        [PLACEHOLDER],
        list(PLACEHOLDER.encode()),
        "uuid[]",  # Java UUID.nameUUIDFromBytes(placeholder), checked in test_java_name_uuid_matches_java
        {PLACEHOLDER: PLACEHOLDER},
    ],
)
def test_toast_forms(form: Any) -> None:
    forms = ToastForms()
    if form == "uuid[]":
        form = list(forms._uuid_list)
    row = {"c": form, "other": "text"}
    assert forms.substitute(row) == {"c": UNCHANGED, "other": "text"}


def test_java_name_uuid_matches_java() -> None:
    # Java: UUID.nameUUIDFromBytes("__debezium_unavailable_value".getBytes()) -> version 3 UUID.
    import hashlib
    import uuid

    digest = hashlib.md5(PLACEHOLDER.encode(), usedforsecurity=False).digest()
    expected = uuid.UUID(bytes=digest, version=3)
    assert ToastForms()._uuid_list == [str(expected)]


def test_toast_precheck() -> None:
    forms = ToastForms()
    ints = list(PLACEHOLDER.encode())
    assert forms.in_row({"a": 1, "b": "__debezium_unavailable_value"})
    assert forms.in_row({"a": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="})
    assert forms.in_row({"a": PLACEHOLDER.encode()})
    assert forms.in_row({"a": [1], "b": ints})  # unhashable values take the slow path
    assert forms.in_row({"a": {"x": 1}, "b": forms._uuid_list})
    assert not forms.in_row({"a": "plain", "b": None, "c": True, "d": 1.5, "e": b"bytes"})
    assert not forms.in_row({"a": [95, 95], "b": {"k": "v"}, "c": None})
    row = {"a": "plain", "b": PLACEHOLDER, "c": [PLACEHOLDER], "d": None}
    assert forms.substitute(row) == {"a": "plain", "b": UNCHANGED, "c": UNCHANGED, "d": None}
    assert not forms.is_placeholder(["other"])
    assert not forms.is_placeholder(7)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"sequence": '["24023119","24023128"]', "lsn": 24023128},
            SourcePosition("pg", (24023119, 24023128)),
        ),
        (
            {"sequence": '[null,"24000000"]', "lsn": 24000000},
            SourcePosition("pg", (24000000, 24000000)),
        ),  # streamed (no snapshot)
        ({"sequence": '["1",null]', "lsn": 77}, SourcePosition("pg-lsn", (0, 77))),
        ({"sequence": "garbage", "lsn": 77}, SourcePosition("pg-lsn", (0, 77))),
        ({"sequence": None, "lsn": None}, None),
        ({"snapshot": "incremental", "sequence": '["1","2"]'}, None),
        ({"file": "mysql-bin.000003", "pos": 154, "row": 2}, SourcePosition("mysql", (3, 154, 2))),
        ({"file": "mysql-bin.000010", "pos": 4, "row": None}, SourcePosition("mysql", (10, 4, 0))),
        ({"file": "mysql-bin.xyz", "pos": 4}, None),
    ],
)
def test_source_position(source: dict[str, Any], expected: SourcePosition | None) -> None:
    assert source_position(source) == expected


def test_positions_order_by_sequence_not_raw_lsn() -> None:
    # Two concurrent transactions: the later commit has the smaller change LSN.
    first = source_position({"sequence": '["100","250"]', "lsn": 250})
    second = source_position({"sequence": '["300","200"]', "lsn": 200})
    assert first is not None and second is not None
    assert first < second


def test_flat_position() -> None:
    assert flat_position({"__lsn": 5}) == SourcePosition("pg-lsn", (0, 5))
    assert flat_position(
        {"__source_file": "bin.000002", "__source_pos": 9, "__source_row": 1}
    ) == SourcePosition("mysql", (2, 9, 1))
    assert flat_position({}) is None


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ('{"card":12345678901234567890123}', '{"card":12345678901234567890123}'),  # beyond 64 bits
        ('{"x":1' + "0" * 400 + "}", '{"x":1' + "0" * 400 + "}"),  # beyond a double: not refused
        ('{"p":0.1000000000000000055511151231257827}', '{"p":0.1000000000000000055511151231257827}'),
        ('{"n":9223372036854775807,"f":1.5}', '{"n":9223372036854775807,"f":1.5}'),  # exact as parsed
        # more than int()'s 4300 digits (sys.get_int_max_str_digits): valid JSON, so not refused
        ('{"x":1' + "0" * 5000 + "}", '{"x":1' + "0" * 5000 + "}"),
        ("[-1.5e-3,-9" + "9" * 4400 + "]", "[-1.5e-3,-9" + "9" * 4400 + "]"),
        ('{"a":"' + "7" * 5000 + '"}', '{"a":"' + "7" * 5000 + '"}'),  # digits in a string: text kept
        ('{"a":"1e9999999999999999999"}', '{"a":"1e9999999999999999999"}'),  # beyond Decimal's exponents
    ],
)
def test_json_columns_keep_every_digit_the_database_wrote(native: bool, attrs: str, expected: str) -> None:
    from connector.decode import DecodeOptions, decode_event
    from connector.jsonvalues import json_row
    from connector.normalize import field_text

    options = DecodeOptions(column_types={"public.customers": {"attrs": "json"}}, native=native)
    event = decode_event(pg_insert("customers", {"id": 1, "attrs": attrs}), options=options)
    assert isinstance(event, ChangeEvent), event
    assert field_text(json_row(event.after)["attrs"]) == expected
