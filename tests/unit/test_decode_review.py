"""Decoding cases a review found: `date 'infinity'`, and an unwrapped Avro row with a column named `after`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import struct
from typing import Any

import fastavro
import pytest

from connector.decode import DecodeOptions, decode_event
from connector.decode.logical import logical_converter
from connector.models import ChangeEvent, RawRecord
from connector.registry import StaticSchemaLookup

TOPIC = "crm.public.customers"
KEY_SCHEMA = {
    "type": "record",
    "name": "Key",
    "namespace": TOPIC,
    "fields": [{"name": "id", "type": "long"}],
    "connect.name": f"{TOPIC}.Key",
}


def _frame(sid: int, schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", sid))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    return buf.getvalue()


def _avro_row(columns: list[dict[str, Any]], row: dict[str, Any]) -> ChangeEvent:
    """An unwrapped (ExtractNewRecordState) Avro row of `columns` (plus id, __op, __lsn) decoded."""
    value_schema = {
        "type": "record",
        "name": "Value",
        "namespace": TOPIC,
        "connect.name": f"{TOPIC}.Value",
        "fields": [
            {"name": "id", "type": "long"},
            *columns,
            {"name": "__op", "type": ["null", "string"], "default": None},
            {"name": "__lsn", "type": ["null", "long"], "default": None},
        ],
    }
    lookup = StaticSchemaLookup({1: json.dumps(KEY_SCHEMA), 2: json.dumps(value_schema)})
    datum = {"id": 42, "__op": "u", "__lsn": 24100352, **row}
    record = RawRecord(TOPIC, 0, 0, _frame(1, KEY_SCHEMA, {"id": 42}), _frame(2, value_schema, datum))
    event = decode_event(record, options=DecodeOptions(format="avro"), schemas=lookup)
    assert isinstance(event, ChangeEvent), event
    return event


@pytest.mark.parametrize(("days", "expected"), [(2146033979, dt.date.max), (-2147472692, dt.date.min)])
def test_date_infinity_is_the_last_or_first_date_not_a_dead_letter(days: int, expected: dt.date) -> None:
    """Debezium writes PostgreSQL's `date 'infinity'` as a day count beyond PostgreSQL's own range."""
    for name in ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date"):
        convert = logical_converter(name, {})
        assert convert is not None and convert(days) == expected
        assert convert(5673) == dt.date(1985, 7, 14)
    # time.precision.mode=connect: Avro's own `date` logical type, which fastavro cannot read that far
    column = {
        "name": "valid_until",
        "type": ["null", {"type": "int", "logicalType": "date"}],
        "default": None,
    }
    assert _avro_row([column], {"valid_until": days}).after["valid_until"] == expected
    assert _avro_row([column], {"valid_until": 5673}).after["valid_until"] == dt.date(1985, 7, 14)


def test_a_real_date_beyond_year_9999_is_still_refused() -> None:
    """Only PostgreSQL's infinities are clamped: a real date after 9999 must not turn into infinity."""
    convert = logical_converter("io.debezium.time.Date", {})
    assert convert is not None
    with pytest.raises(ValueError):
        convert((dt.date(9999, 12, 31) - dt.date(1970, 1, 1)).days + 1)


@pytest.mark.parametrize("name", ["after", "before"])
def test_an_unwrapped_avro_row_with_a_column_named_after_converts_its_columns(name: str) -> None:
    birth = {
        "name": "birth_date",
        "type": ["null", {"type": "int", "connect.name": "io.debezium.time.Date", "connect.version": 1}],
        "default": None,
    }
    note = {"name": name, "type": ["null", "string"], "default": None}
    event = _avro_row([birth, note], {"birth_date": 5673, name: "call back"})
    assert event.after["birth_date"] == dt.date(1985, 7, 14)
    assert event.after[name] == "call back"


@pytest.mark.parametrize("native", [False, True])
def test_a_custom_unavailable_value_placeholder_is_configurable(native: bool) -> None:
    """Debezium's `unavailable.value.placeholder` may be set: `source.unavailable_value_placeholder`."""
    from connector.config import load_settings
    from connector.models import UNCHANGED
    from tests.unit.decode_fixtures import pg_insert

    settings = load_settings("deploy/connector.yaml", environ={})
    custom = settings.model_copy(
        update={"source": settings.source.model_copy(update={"unavailable_value_placeholder": "__toasted__"})}
    )
    record = pg_insert("customers", {"id": 1, "notes": "__toasted__", "city": "Porto"})
    for configured, expected in ((custom, UNCHANGED), (settings, "__toasted__")):
        options = dataclasses.replace(DecodeOptions.from_settings(configured), native=native)
        event = decode_event(record, options=options)
        assert isinstance(event, ChangeEvent)
        assert event.after["notes"] == expected and event.after["city"] == "Porto"


@pytest.mark.parametrize("native", [False, True])
def test_a_hex_placeholder_is_read_as_octets_as_debezium_does(native: bool) -> None:
    """`hex:414243` means the bytes ABC: text columns carry "ABC", bytea its base64, int[] the bytes.

    Debezium's PostgresConnectorConfig.getUnavailableValuePlaceholder hex-decodes after `hex:`;
    UnchangedToastedPlaceholder writes `new String(bytes)` into text columns. The literal
    "hex:414243" is real data.
    """
    from connector.models import UNCHANGED
    from tests.unit.decode_fixtures import pg_insert

    options = DecodeOptions(toast_placeholder="hex:414243", native=native)
    record = pg_insert(
        "customers",
        {"id": 1, "notes": "ABC", "photo": "QUJD", "codes": [65, 66, 67], "city": "hex:414243"},
    )
    event = decode_event(record, options=options)
    assert isinstance(event, ChangeEvent)
    assert event.after == {
        "id": 1,
        "notes": UNCHANGED,
        "photo": UNCHANGED,
        "codes": UNCHANGED,
        "city": "hex:414243",
    }


def test_a_hex_placeholder_keeps_java_s_signed_bytes_and_replacement_characters() -> None:
    from connector.decode.rows import ToastForms

    forms = ToastForms("hex:ff41")
    assert forms.is_placeholder([-1, 65])  # int[]: Java's (int) of each signed byte
    assert not forms.is_placeholder([255, 65])
    assert forms.is_placeholder("\ufffdA")  # new String(bytes) of invalid UTF-8 (Java 18+ default)
    assert forms.is_placeholder(b"\xffA") and forms.is_placeholder("/0E=")


@pytest.mark.parametrize("value", ["hex:", "hex:414", "hex:41 42", "hex:4G"])
def test_a_malformed_hex_placeholder_is_a_config_error_naming_the_key(value: str) -> None:
    from connector.config import load_settings
    from connector.errors import ConfigError

    with pytest.raises(ConfigError, match=r"source\.unavailable_value_placeholder") as caught:
        environ = {"YESPO_CONNECTOR_SOURCE__UNAVAILABLE_VALUE_PLACEHOLDER": value}
        load_settings("deploy/connector.yaml", environ=environ)
    assert "hex digits" in str(caught.value)
    with pytest.raises(ConfigError, match=r"source\.unavailable_value_placeholder"):
        DecodeOptions(toast_placeholder=value)
