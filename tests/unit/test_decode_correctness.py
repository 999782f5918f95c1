"""Correctness of decoded values against Debezium's wire formats: extremes, precision, positions."""

from __future__ import annotations

import datetime as dt
import io
import struct
from decimal import Decimal
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.config import load_settings
from connector.decode import DecodeOptions, decode_event
from connector.decode.logical import logical_converter
from connector.decode.rows import ToastForms
from connector.errors import ConfigError
from connector.models import UNCHANGED, ChangeEvent, DecodeFailure, RawRecord
from tests.unit.test_config import REPO_EXAMPLE

UTC = dt.UTC
MAX = dt.datetime.max.replace(tzinfo=UTC)
MIN = dt.datetime.min.replace(tzinfo=UTC)
LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)


def convert(name: str, wire: Any, params: dict[str, str] | None = None) -> Any:
    conv = logical_converter(name, params or {})
    assert conv is not None
    return conv(wire)


@pytest.mark.parametrize(
    ("name", "wire", "expected"),
    [
        # PostgreSQL +-infinity (PGStatement.DATE_POSITIVE/NEGATIVE_INFINITY) in every unit
        # timestamp(0..3): Debezium's infinity LocalDateTime (from those micros) as epoch millis
        ("io.debezium.time.Timestamp", 9223372036825200, MAX),
        ("io.debezium.time.Timestamp", -9223372036832400, MIN),
        ("io.debezium.time.MicroTimestamp", 9223372036825200000, MAX),
        ("io.debezium.time.MicroTimestamp", -9223372036832400000, MIN),
        # nanoseconds mode writes Long.MAX / Long.MIN: as nanoseconds these are inside year 2262
        ("io.debezium.time.NanoTimestamp", LONG_MAX, MAX),
        ("io.debezium.time.NanoTimestamp", LONG_MIN, MIN),
        # before the epoch: truncated towards the past, like the digits of the ISO text
        ("io.debezium.time.NanoTimestamp", -1, dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("io.debezium.time.MicroTimestamp", -1, dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("io.debezium.time.Timestamp", -86_400_001, dt.datetime(1969, 12, 30, 23, 59, 59, 999000, UTC)),
        # the representable extremes stay themselves
        ("io.debezium.time.MicroTimestamp", -62135596800000000, dt.datetime(1, 1, 1, tzinfo=UTC)),
        ("io.debezium.time.MicroTimestamp", 253402300799999999, MAX),
        ("io.debezium.time.Date", -719162, dt.date(1, 1, 1)),
        ("io.debezium.time.Date", 2932896, dt.date(9999, 12, 31)),
    ],
)
def test_timestamp_extremes(name: str, wire: int, expected: Any) -> None:
    assert convert(name, wire) == expected


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        # real PostgreSQL values outside Python's years 1..9999 must not become "infinity" silently
        ("io.debezium.time.MicroTimestamp", 253402300800000000),  # 10000-01-01
        ("io.debezium.time.MicroTimestamp", -62135596800000001),  # 1 BC
        ("io.debezium.time.Timestamp", 253402300800000),
        ("io.debezium.time.Timestamp", -62135596800001),
        ("io.debezium.time.NanoTimestamp", -62135596800000000001),
        ("io.debezium.time.Date", 2932897),
    ],
)
def test_unrepresentable_timestamps_fail(name: str, wire: int) -> None:
    with pytest.raises((ValueError, OverflowError)):
        convert(name, wire)


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("io.debezium.time.MicroTime", 86_400_000_000),
        ("io.debezium.time.Time", 86_400_000),
        ("io.debezium.time.NanoTime", 86_400_000_000_000),
    ],
)
def test_time_24_00_is_time_max(name: str, wire: int) -> None:
    assert convert(name, wire) == dt.time.max


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        # MySQL TIME spans -838:59:59..838:59:59 and arrives as a MicroTime duration: a time of day
        # cannot hold 30:00:00, and must not quietly become 23:59:59.999999
        ("io.debezium.time.MicroTime", 108_000_000_000),
        ("io.debezium.time.MicroTime", 86_400_000_001),
        ("io.debezium.time.Time", 86_400_001),
        ("io.debezium.time.NanoTime", 86_400_000_001_000),
        ("io.debezium.time.MicroTime", -1),
    ],
)
def test_time_outside_a_day_fails(name: str, wire: int) -> None:
    with pytest.raises(ValueError, match="time of day"):
        convert(name, wire)


DECIMAL = "org.apache.kafka.connect.data.Decimal"


def same_decimal(got: Any, expected: str) -> bool:
    """Equal in value and in scale (`1234.5` is not `1234.50`: they render differently)."""
    return type(got) is Decimal and got.as_tuple() == Decimal(expected).as_tuple()


@pytest.mark.parametrize(
    ("scale", "wire", "expected"),
    [
        # decimal.format=NUMERIC: JsonConverter writes the BigDecimal as a JSON number
        ("2", 1234.5, "1234.50"),
        ("2", 1234, "1234.00"),
        ("2", -0.5, "-0.50"),
        ("0", 7, "7"),
        ("3", 0.001, "0.001"),
        ("-2", 1200, "1.2E+3"),
        # base64 of the unscaled value: the same Decimal, scale included
        ("2", "AeI6", "1234.50"),
        ("2", "/h3G", "-1234.50"),
        ("-2", "DA==", "1.2E+3"),
    ],
)
def test_decimal_keeps_the_column_scale(scale: str, wire: Any, expected: str) -> None:
    got = convert(DECIMAL, wire, {"scale": scale})
    assert same_decimal(got, expected), got


def numeric_record(value_text: str, *, double_text: str = "0.1") -> RawRecord:
    """A schemas.enable=true envelope with decimal.format=NUMERIC: numbers spliced in as JSON text."""
    field = {"type": "bytes", "optional": True, "name": DECIMAL, "version": 1}
    row_fields = [
        {"type": "int64", "optional": False, "field": "id"},
        {**field, "parameters": {"scale": "2", "connect.decimal.precision": "38"}, "field": "amount"},
        {**field, "parameters": {"scale": "0"}, "field": "big"},
        {"type": "double", "optional": True, "field": "ratio"},
        {"type": "array", "optional": True, "items": {"type": "double"}, "field": "ratios"},
    ]
    row = {"type": "struct", "optional": True, "name": "crm.public.accounts.Value", "fields": row_fields}
    schema = {
        "type": "struct",
        "name": "crm.public.accounts.Envelope",
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            {"type": "struct", "optional": False, "field": "source", "fields": []},
            {"type": "string", "optional": False, "field": "op"},
        ],
    }
    source = {"schema": "public", "table": "accounts", "lsn": 5, "sequence": '["1","5"]'}
    after = (
        f'{{"id":1,"amount":{value_text},"big":123456789012345678901234567890,'
        f'"ratio":{double_text},"ratios":[{double_text},2]}}'
    )
    payload = f'{{"before":null,"after":{after},"source":{orjson.dumps(source).decode()},"op":"c"}}'
    value = b'{"schema":' + orjson.dumps(schema) + b',"payload":' + payload.encode() + b"}"
    key_schema = {"type": "struct", "fields": [{"type": "int64", "optional": False, "field": "id"}]}
    key = b'{"schema":' + orjson.dumps(key_schema) + b',"payload":{"id":1}}'
    return RawRecord("crm.public.accounts", 0, 7, key, value)


@pytest.mark.parametrize(
    "amount",
    [
        "123456789012345678901234567890123456.78",  # numeric(38,2): 38 digits, a float keeps 15-17
        "1.10",
        "12345678901234.56",  # 16 digits
        "-99999999999999999999999999999999.99",
        "0.07",
    ],
)
def test_numeric_decimal_format_is_exact(amount: str) -> None:
    event = decode_event(numeric_record(amount), options=DecodeOptions())
    assert isinstance(event, ChangeEvent), event
    assert event.after is not None
    assert same_decimal(event.after["amount"], amount), event.after["amount"]
    # a scale-0 Decimal beyond 64 bits: orjson would have read it as a float
    assert event.after["big"] == Decimal(123456789012345678901234567890)
    # the exact re-read must not change the other columns' types
    assert type(event.after["ratio"]) is float and event.after["ratio"] == 0.1
    assert [type(v) for v in event.after["ratios"]] == [float, int]
    assert type(event.after["id"]) is int


@given(st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1))
def test_numeric_decimal_format_property(unscaled: int) -> None:
    amount = Decimal(f"{unscaled}E-2")  # exact (scaleb would round to 28 digits)
    event = decode_event(numeric_record(str(amount)), options=DecodeOptions())
    assert isinstance(event, ChangeEvent), event
    assert event.after is not None
    assert event.after["amount"].as_tuple() == amount.as_tuple()


def test_numeric_decimal_format_schemaless_column_types() -> None:
    value = b'{"id": 1, "amount": 98765432109876543210.12, "ratio": 0.25, "__op": "u"}'
    options = DecodeOptions(column_types={"public.accounts": {"amount": "decimal:2"}})
    event = decode_event(RawRecord("crm.public.accounts", 0, 1, b'{"id": 1}', value), options=options)
    assert isinstance(event, ChangeEvent), event
    assert event.after is not None
    assert same_decimal(event.after["amount"], "98765432109876543210.12")
    assert type(event.after["ratio"]) is float


def string_mode_record(amount: Any, price: Any = "7.25") -> RawRecord:
    """A schemaless unwrapped row, decimals as Debezium's decimal.handling.mode=string writes them."""
    value = orjson.dumps({"id": 1, "amount": amount, "price": price, "__op": "u", "__lsn": 5})
    return RawRecord("crm.public.accounts", 0, 1, b'{"id": 1}', value)


def string_mode_options(mode: str, native: bool) -> DecodeOptions:
    columns = {"amount": "decimal:0", "price": "decimal:2"}
    return DecodeOptions(column_types={"public.accounts": columns}, decimal_handling_mode=mode, native=native)  # type: ignore[arg-type]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        # BigDecimal.toPlainString() of a scale-0 value: valid base64 too ("1234" is -2658824)
        ("1234", "1234"),
        ("AeI6", None),  # base64 is not a decimal text: the record is refused, not misread
        ("-1234", "-1234"),
        ("0", "0"),
        ("98765432109876543210", "98765432109876543210"),
        ("12.5", "12.5"),
        ("1E+3", "1E+3"),  # BigDecimal.toString() of a negative scale
        ("NAN", "NaN"),  # Debezium's string form of PostgreSQL's numeric NaN (SpecialValueDecimal)
        ("POSITIVE_INFINITY", "Infinity"),  # ... and of its numeric infinities (PostgreSQL 14+)
        ("NEGATIVE_INFINITY", "-Infinity"),
        ("INFINITY", None),
        ("", None),
        (" 12", None),
        ("1_000", None),  # Decimal() reads these; Debezium never writes them
        ("\u0661\u0662", None),  # non-ASCII digits
        ("1E+99999", None),  # its plain text would take 99,999 digits: beyond any column's scale
    ],
)
def test_string_decimal_handling_mode_reads_every_text_as_a_number(
    native: bool, amount: str, expected: str | None
) -> None:
    event = decode_event(string_mode_record(amount), options=string_mode_options("string", native))
    if expected is None:
        assert isinstance(event, DecodeFailure), event
        assert "amount" in event.reason
        return
    assert isinstance(event, ChangeEvent), event
    assert event.after is not None
    assert same_decimal(event.after["amount"], expected), event.after["amount"]
    assert same_decimal(event.after["price"], "7.25")


@pytest.mark.parametrize("native", [True, False])
def test_precise_mode_reads_base64_unless_the_text_cannot_be_base64(native: bool) -> None:
    # (double mode reads no base64: tests/unit/test_decode_edge_cases.py)
    options = string_mode_options("precise", native)
    event = decode_event(string_mode_record("AQ==", "AeI6"), options=options)
    assert isinstance(event, ChangeEvent) and event.after is not None, event
    assert same_decimal(event.after["amount"], "1") and same_decimal(event.after["price"], "1234.50")
    # '.' and a leading '-' are not base64: such texts are numbers in every mode
    event = decode_event(string_mode_record("-1234", "12.50"), options=options)
    assert isinstance(event, ChangeEvent) and event.after is not None, event
    assert same_decimal(event.after["amount"], "-1234") and same_decimal(event.after["price"], "12.50")
    # numbers stay numbers (decimal.format=NUMERIC, or a double)
    event = decode_event(string_mode_record(1234, 0.5), options=options)
    assert isinstance(event, ChangeEvent) and event.after is not None, event
    assert same_decimal(event.after["amount"], "1234") and same_decimal(event.after["price"], "0.50")


def test_decimal_handling_mode_is_a_source_setting() -> None:
    settings = load_settings(
        REPO_EXAMPLE, environ={"YESPO_CONNECTOR_SOURCE__DECIMAL_HANDLING_MODE": "string"}
    )
    assert settings.source.decimal_handling_mode == "string"
    assert DecodeOptions.from_settings(settings).decimal_handling_mode == "string"
    assert load_settings(REPO_EXAMPLE, environ={}).source.decimal_handling_mode == "precise"
    bad = {"YESPO_CONNECTOR_SOURCE__DECIMAL_HANDLING_MODE": "exact"}
    with pytest.raises(ConfigError, match=r"source\.decimal_handling_mode"):
        load_settings(REPO_EXAMPLE, environ=bad)
    with pytest.raises(ConfigError, match=r"^source\.decimal_handling_mode: "):
        DecodeOptions(decimal_handling_mode="exact")  # type: ignore[arg-type]


def pg_envelope(sequence: str | None, lsn: int, *, snapshot: str = "false", tx: int = 7) -> dict[str, Any]:
    source = {"connector": "postgresql", "db": "appdb", "schema": "public", "table": "customers"}
    source |= {"snapshot": snapshot, "txId": tx, "lsn": lsn, "sequence": sequence, "ts_ms": 1}
    return {"before": None, "after": {"id": 42, "city": "Porto"}, "source": source, "op": "u"}


def decoded(value: dict[str, Any], headers: tuple[tuple[str, bytes], ...] = ()) -> ChangeEvent:
    record = RawRecord("crm.public.customers", 0, 1, b'{"id": 42}', orjson.dumps(value), headers=headers)
    event = decode_event(record, options=DecodeOptions())
    assert isinstance(event, ChangeEvent), event
    return event


def test_streamed_change_begun_before_the_snapshot_point_ranks_above_the_snapshot() -> None:
    # The initial snapshot reads at LSN 5000. A transaction that wrote row 42 at LSN 4990, before
    # the snapshot point, commits after it: the snapshot read the old row, and the change is
    # streamed next, as the first transaction with no previous commit LSN.
    snapshot = pg_envelope('[null,"5000"]', 5000, snapshot="true")
    snapshot["op"] = "r"
    snap = decoded(snapshot).position
    first = decoded(pg_envelope('[null,"4990"]', 4990)).position
    then = decoded(pg_envelope('["5010","5020"]', 5020)).position
    assert snap is not None and first is not None and then is not None
    assert snap.parts == (0, 5000)  # snapshot reads keep 0: below anything streamed
    assert snap < first < then  # with 0 for the streamed change, (0, 4990) was "stale"


@pytest.mark.parametrize("snapshot", [["true"], {"a": 1}, 1.5, None, "false"])
def test_odd_snapshot_values_are_streamed_changes(snapshot: Any) -> None:
    envelope = pg_envelope('[null,"70"]', 70)
    envelope["source"]["snapshot"] = snapshot
    position = decoded(envelope).position
    assert position is not None and position.parts == (70, 70)


def test_first_change_after_lost_offsets_ranks_above_earlier_positions() -> None:
    # Streamed before: previous commit at 900, change at 1000. The connector restarts without its
    # offsets (no commit position) and streams on from a later WAL position.
    before = decoded(pg_envelope('["900","1000"]', 1000)).position
    after = decoded(pg_envelope('[null,"5100"]', 5100)).position
    then = decoded(pg_envelope('["5150","5200"]', 5200)).position
    assert before is not None and after is not None and then is not None
    assert before < after < then


def test_positions_in_emission_order_stay_ordered() -> None:
    # In emission (commit) order: snapshot reads, the first transaction (no previous commit), the next.
    events = [('[null,"100"]', "r"), ('[null,"100"]', "r"), ('[null,"90"]', "u")]
    events += [('[null,"95"]', "u"), ('["170","180"]', "u"), ('["200","190"]', "c")]
    positions = []
    for sequence, op in events:
        envelope = pg_envelope(sequence, 0, snapshot="true" if op == "r" else "false")
        envelope["op"] = op
        positions.append(decoded(envelope).position)
    assert all(p is not None for p in positions)
    assert positions == sorted(positions)  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # add.fields=sequence,lsn (unqualified names: `__<field>`) vs source.sequence (`__source_<field>`)
        ({"__sequence": '["900","1000"]', "__lsn": 1000}, ("pg", (900, 1000))),
        ({"__source_sequence": '["900","1000"]', "__source_lsn": 1000}, ("pg", (900, 1000))),
        ({"__file": "mysql-bin.000003", "__pos": 154, "__row": 1}, ("mysql", (3, 154, 1))),
        ({"__source_file": "mysql-bin.000003", "__source_pos": 154}, ("mysql", (3, 154, 0))),
        ({"__snapshot": "incremental", "__lsn": 5}, None),
        ({"__lsn": 5}, ("pg-lsn", (0, 5))),
        ({"__sequence": '[null,"1000"]'}, ("pg", (1000, 1000))),  # streamed, no previous commit
        ({"__sequence": '[null,"1000"]', "__snapshot": "last"}, ("pg", (0, 1000))),  # snapshot read
    ],
)
def test_unwrapped_positions_from_either_field_name(fields: dict[str, Any], expected: Any) -> None:
    row = {"id": 42, "city": "Porto", "__op": "u", "__deleted": "false", **fields}
    event = decoded(row)
    assert (None if event.position is None else (event.position.kind, event.position.parts)) == expected
    assert event.after == {"id": 42, "city": "Porto"}


def test_mysql_transaction_id_is_the_whole_gtid() -> None:
    gtid = "3e11fa47-71ca-11e1-9e33-c80aa9429562:23"
    source = {"connector": "mysql", "db": "crm", "table": "customers", "file": "mysql-bin.000003"}
    source |= {"pos": 154, "row": 0, "gtid": gtid, "ts_ms": 1}
    envelope = {"before": None, "after": {"id": 42}, "source": source, "op": "c"}
    assert decoded(envelope).tx_id == gtid
    # provide.transaction.metadata=true: the transaction block carries the GTID as its id too
    envelope["transaction"] = {"id": gtid, "total_order": 1, "data_collection_order": 1}
    assert decoded(envelope).tx_id == gtid
    # PostgreSQL's id is "<txId>:<lsn>" with a changing LSN part: grouped by the xid
    pg = pg_envelope('["1","2"]', 2, tx=571)
    pg["transaction"] = {"id": "571:53195829", "total_order": 1, "data_collection_order": 1}
    assert decoded(pg).tx_id == "571"


@pytest.mark.parametrize(
    "value",
    [
        # a garbage scale would decode to 1E+2000000000, whose plain text form (json_value) is 2 GB
        {"id": 42, "balance": {"scale": -2_000_000_000, "value": "AQ=="}},
        {"id": 42, "balance": {"scale": 2_000_000_000, "value": "AQ=="}},
    ],
)
def test_absurd_decimal_scales_fail(value: dict[str, Any]) -> None:
    options = DecodeOptions(column_types={"public.customers": {"balance": "variable_scale_decimal"}})
    record = RawRecord("crm.public.customers", 0, 1, b'{"id": 42}', orjson.dumps(value))
    result = decode_event(record, options=options)
    assert not isinstance(result, ChangeEvent), result


def test_absurd_decimal_scale_in_a_schema_fails() -> None:
    with pytest.raises(ValueError, match="scale"):
        logical_converter(DECIMAL, {"scale": "2000000000"})
    # the largest scale PostgreSQL can show (NUMERIC_DSCALE_MASK) still works
    assert convert(DECIMAL, "AQ==", {"scale": "16383"}) == Decimal("1E-16383")
    wire = {"scale": -16383, "value": "AQ=="}
    assert convert("io.debezium.data.VariableScaleDecimal", wire) == Decimal("1E+16383")


@pytest.mark.parametrize("type_name", ["decimal:abc", "decimal:99999999"])
def test_bad_configured_decimal_scale_is_a_config_error(type_name: str) -> None:
    with pytest.raises(ConfigError, match="scale"):
        DecodeOptions(column_types={"public.customers": {"balance": type_name}})


def avro_decimal(precision: int, scale: int) -> dict[str, Any]:
    params = {"scale": str(scale), "connect.decimal.precision": str(precision)}
    return {
        "type": "bytes",
        "logicalType": "decimal",
        "precision": precision,
        "scale": scale,
        "connect.version": 1,
        "connect.parameters": params,
        "connect.name": DECIMAL,
    }


def unscaled(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)


def avro_datum(schema: dict[str, Any], datum: dict[str, Any], schema_id: int) -> bytes:
    """Confluent-framed Avro, written with decimals as their plain bytes (the same binary layout)."""
    plain = orjson.loads(orjson.dumps(schema).replace(b'"logicalType":"decimal"', b'"x":"y"'))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(plain), datum)
    return b"\x00" + schema_id.to_bytes(4, "big") + out.getvalue()


def test_avro_decimals_are_exact_whatever_their_declared_precision() -> None:
    from connector.registry import StaticSchemaLookup

    row = {
        "type": "record",
        "name": "Value",
        "namespace": "crm.public.accounts",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "amount", "type": ["null", avro_decimal(38, 2)], "default": None},
            # fastavro rounds to the declared precision (in one shared context): a producer that
            # declares less than the value holds must not cost digits
            {"name": "small", "type": avro_decimal(10, 2)},
        ],
    }
    schema = {
        "type": "record",
        "name": "Envelope",
        "namespace": "crm.public.accounts",
        "fields": [
            {"name": "before", "type": ["null", row], "default": None},
            {"name": "after", "type": ["null", "Value"], "default": None},
            {"name": "op", "type": "string"},
            {"name": "source", "type": {"type": "map", "values": "string"}},
        ],
    }
    key_schema = {
        "type": "record",
        "name": "Key",
        "namespace": "k",
        "fields": [{"name": "id", "type": "long"}],
    }
    lookup = StaticSchemaLookup({1: schema, 2: key_schema})
    amount = 12345678901234567890123456789012345678  # 38 digits, scale 2
    small = 12345678901234567  # 17 digits in a precision-10 column
    after = {"id": 42, "amount": unscaled(amount), "small": unscaled(small)}
    envelope = {"before": None, "after": after, "op": "c", "source": {"table": "accounts"}}
    value = avro_datum(schema, envelope, 1)
    key = avro_datum(key_schema, {"id": 42}, 2)
    record = RawRecord("crm.public.accounts", 0, 1, key, value)
    event = decode_event(record, options=DecodeOptions(), schemas=lookup)
    assert isinstance(event, ChangeEvent), event
    assert event.after is not None
    assert same_decimal(event.after["amount"], "123456789012345678901234567890123456.78")
    assert same_decimal(event.after["small"], "123456789012345.67")
    assert event.key == {"id": 42}


def test_avro_decimals_fall_back_to_fastavro_when_the_schema_cannot_be_re_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connector.decode import avro

    def refuse(schema: Any) -> Any:
        raise ValueError("no")

    monkeypatch.setattr(avro, "parse_schema", refuse)
    monkeypatch.setattr(avro, "_plans", {})
    schema = fastavro.parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "amount", "type": avro_decimal(38, 2)}]}
    )
    framed = avro_datum(schema, {"amount": unscaled(123450)}, 1)
    datum, conv = avro.read_avro(framed, {1: schema}, what="value", as_row=True)  # type: ignore[arg-type]
    assert conv is None
    assert same_decimal(datum["amount"], "1234.50")


PLACEHOLDER = "__debezium_unavailable_value"
PLACEHOLDER_B64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="


@pytest.mark.parametrize(
    "form",
    [
        # hstore with hstore.handling.mode=json (the default): Debezium 3.6.1 writes its placeholder
        # map through convertMapToJsonStringRepresentation (Jackson, compact)
        '{"__debezium_unavailable_value":"__debezium_unavailable_value"}',
        # bytea[]: UNCHANGED_BINARY_ARRAY_TOAST_VALUE = [placeholder bytes]; JSON base64, Avro bytes
        [PLACEHOLDER_B64],
        [PLACEHOLDER.encode()],
    ],
)
def test_toast_placeholder_forms_of_debezium_3_6(form: Any) -> None:
    row = {"id": 42, "col": form}
    assert ToastForms().substitute(row) == {"id": 42, "col": UNCHANGED}


def test_toast_hstore_json_column_with_schema() -> None:
    # The hstore column's schema is io.debezium.data.Json: the placeholder must be caught before the
    # JSON text is parsed into a map that looks like real data.
    json_field = {"type": "string", "optional": True, "name": "io.debezium.data.Json", "version": 1}
    fields = [{"type": "int64", "optional": False, "field": "id"}, {**json_field, "field": "attrs"}]
    row_schema = {"type": "struct", "optional": True, "name": "crm.public.customers.Value", "fields": fields}
    schema = {
        "type": "struct",
        "name": "crm.public.customers.Envelope",
        "fields": [
            {**row_schema, "field": "before"},
            {**row_schema, "field": "after"},
            {"type": "struct", "optional": False, "field": "source", "fields": []},
            {"type": "string", "optional": False, "field": "op"},
        ],
    }
    placeholder_map = orjson.dumps({PLACEHOLDER: PLACEHOLDER}).decode()
    payload = {
        "before": None,
        "after": {"id": 42, "attrs": placeholder_map},
        "source": {"schema": "public", "table": "customers", "lsn": 9},
        "op": "u",
    }
    value = orjson.dumps({"schema": schema, "payload": payload})
    event = decode_event(
        RawRecord("crm.public.customers", 0, 1, b'{"id": 42}', value), options=DecodeOptions()
    )
    assert isinstance(event, ChangeEvent), event
    from connector.models import UNCHANGED

    assert event.after == {"id": 42, "attrs": UNCHANGED}


@pytest.mark.parametrize(
    ("meta", "op", "deleted"),
    [
        ({"__deleted": "true", "__op": "d"}, "d", True),
        ({"__deleted": "true"}, "d", True),  # rewrite mode without add.fields=op
        ({"__deleted": True}, "d", True),  # a converter that made it a boolean
        ({"__deleted": "false", "__op": "c"}, "c", False),
        ({"__deleted": False, "__op": "u"}, "u", False),
        ({"__op": "r", "__source_snapshot": "true"}, "r", False),
        ({"__op": "d"}, "d", True),
        ({}, "u", False),  # no metadata: an upsert of unknown origin
    ],
)
def test_unwrapped_rows(meta: dict[str, Any], op: str, deleted: bool) -> None:
    event = decoded({"id": 42, "city": "Porto", **meta})
    assert event.op == op
    row = {"id": 42, "city": "Porto"}
    assert (event.before, event.after) == ((row, None) if deleted else (None, row))
    assert event.snapshot is (op == "r")


@pytest.mark.parametrize(
    "value",
    [
        b"null",  # delete.tombstone.handling.mode=tombstone, schemas.enable=false
        b'{"schema":{"type":"struct","fields":[],"optional":true},"payload":null}',
        None,  # a real tombstone
    ],
)
def test_unwrapped_tombstone_forms_delete_the_key(value: bytes | None) -> None:
    event = decode_event(
        RawRecord("crm.public.customers", 0, 1, b'{"id": 42}', value), options=DecodeOptions()
    )
    assert isinstance(event, ChangeEvent), event
    assert (event.op, event.key, event.before, event.after, event.tombstone) == (
        "d",
        {"id": 42},
        None,
        None,
        True,
    )


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("io.debezium.time.MicroTime", 36_930_123_456),
        ("io.debezium.time.Time", 36_930_123),
        ("io.debezium.time.NanoTime", 36_930_123_456_789),
        # time.precision.mode=isostring: ISO_OFFSET_TIME in UTC; still a time without a zone
        ("io.debezium.time.IsoTime", "10:15:30.123456789Z"),
        ("io.debezium.time.IsoTime", "12:15:30.123456+02:00"),
    ],
)
def test_time_without_zone_is_naive_in_every_precision_mode(name: str, wire: Any) -> None:
    got = convert(name, wire)
    assert got.tzinfo is None
    assert got.replace(microsecond=got.microsecond // 1000 * 1000) == dt.time(10, 15, 30, 123000)


def test_zoned_time_keeps_its_zone() -> None:
    assert convert("io.debezium.time.ZonedTime", "10:15:30Z") == dt.time(10, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize("scale", [None, [2], {"x": 1}, 2.5, "x"])
def test_unusable_decimal_scale_parameter_is_a_value_error(scale: Any) -> None:
    # connect_converter turns a ValueError into a DecodeFailure; anything else was "unexpected"
    with pytest.raises(ValueError):
        logical_converter(DECIMAL, {"scale": scale})


@given(
    st.integers(min_value=-(10**40) + 1, max_value=10**40 - 1),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=1, max_value=40),
)
def test_avro_decimal_property(unscaled_value: int, scale: int, extra: int) -> None:
    from connector.decode import avro

    precision = scale + extra  # declared, whatever the value holds (fastavro rounded to it)

    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "amount", "type": avro_decimal(precision, scale)}],
        }
    )
    framed = avro_datum(schema, {"amount": unscaled(unscaled_value)}, 1)
    datum, conv = avro.read_avro(framed, {1: schema}, what="value", as_row=True)  # type: ignore[arg-type]
    assert conv is not None
    got = conv(datum)["amount"]
    assert got.as_tuple() == Decimal(f"{unscaled_value}E{-scale}").as_tuple()


@given(st.floats(width=32))
def test_avro_float32_reads_as_its_shortest_decimal(value: float) -> None:
    # PostgreSQL real / Connect float32: JsonConverter (Jackson) writes the float's shortest decimal,
    # e.g. 1.1; fastavro gives the float widened to a double, 1.100000023841858. Same column, same
    # value: the same number whatever the wire format.
    from connector.decode import avro

    schema = fastavro.parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "ratio", "type": ["null", "float"]}]}
    )
    framed = avro_datum(schema, {"ratio": value}, 1)
    datum, conv = avro.read_avro(framed, {1: schema}, what="value", as_row=True)  # type: ignore[arg-type]
    got = conv(datum)["ratio"] if conv is not None else datum["ratio"]
    assert struct.pack("<f", got) == struct.pack("<f", value) or (value != value and got != got)
    if value == value and abs(value) != float("inf"):
        assert len(repr(got)) <= len(repr(float(f"{value:.9g}")))
        assert float(repr(got)) == got


def test_avro_float32_example() -> None:
    from connector.decode import avro

    float_with_props = {"type": "float", "connect.doc": "a real"}
    fields = [
        {"name": "r", "type": "float"},
        {"name": "s", "type": {"type": "array", "items": float_with_props}},
    ]
    schema = fastavro.parse_schema({"type": "record", "name": "R", "fields": fields})
    framed = avro_datum(schema, {"r": 1.1, "s": [0.1, 3.4028234663852886e38]}, 1)
    datum, conv = avro.read_avro(framed, {1: schema}, what="value", as_row=True)  # type: ignore[arg-type]
    assert conv is not None
    assert conv(datum) == {"r": 1.1, "s": [0.1, 3.4028235e38]}
