"""Decimal columns at the edges: numbers beyond a double's range, unscaled values longer than any column."""

from __future__ import annotations

import base64
import decimal
import json

import pytest

from connector.decode import DecodeOptions, decode_event
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from tests.unit.decode_fixtures import pg_insert

KEY = (
    b'{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}],'
    b'"optional":false},"payload":{"id":1}}'
)


def numeric_record(number_text: str, scale: int) -> RawRecord:
    """An unwrapped row whose Decimal column is a JSON number (decimal.format=NUMERIC)."""
    schema = {
        "type": "struct",
        "name": "crm.public.t.Value",
        "optional": True,
        "fields": [
            {"type": "int32", "optional": False, "field": "id"},
            {
                "type": "bytes",
                "optional": True,
                "name": "org.apache.kafka.connect.data.Decimal",
                "version": 1,
                "parameters": {"scale": str(scale), "connect.decimal.precision": "1000"},
                "field": "amount",
            },
        ],
    }
    value = (
        '{"schema":'
        + json.dumps(schema, separators=(",", ":"))
        + ',"payload":{"id":1,"amount":'
        + number_text
        + ',"__op":"c","__table":"t","__lsn":100}}'
    )
    return RawRecord("crm.public.t", 0, 1, KEY, value.encode())


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("text", "scale", "expected"),
    [
        ("1" + "0" * 400, 0, decimal.Decimal("1E+400")),  # orjson: "number is infinity"
        ("1E+400", 0, decimal.Decimal("1E+400")),
        ("1E-400", 400, decimal.Decimal("1E-400")),  # orjson: 0.0
        ("-2.5E-330", 400, decimal.Decimal("-2.5E-330")),  # orjson: a denormal with fewer digits
        ("0", 2, decimal.Decimal("0.00")),
        ("12.50", 2, decimal.Decimal("12.50")),
    ],
)
def test_numeric_decimals_beyond_a_doubles_range_are_exact(
    native: bool, text: str, scale: int, expected: decimal.Decimal
) -> None:
    event = decode_event(numeric_record(text, scale), options=DecodeOptions(native=native))
    assert isinstance(event, ChangeEvent), event
    amount = event.after["amount"]
    assert amount == expected and amount.as_tuple().exponent == -scale


def variable_scale_record(unscaled: bytes) -> RawRecord:
    balance = {"scale": 2, "value": base64.b64encode(unscaled).decode()}
    return pg_insert("documents", {"id": 1, "balance": balance})


def options() -> DecodeOptions:
    return DecodeOptions(
        column_types={"public.documents": {"balance": "io.debezium.data.VariableScaleDecimal"}}
    )


def test_an_unscaled_value_longer_than_any_column_fails_instead_of_stalling() -> None:
    """Decimal(int) is quadratic: 700 KB took 44 s. PostgreSQL's longest numeric is 61 KB unscaled."""
    failure = decode_event(variable_scale_record(b"\x01" + b"\x00" * 70_000), options=options())
    assert isinstance(failure, DecodeFailure)
    assert "balance" in failure.reason and "VariableScaleDecimal" in failure.reason
    event = decode_event(variable_scale_record(b"\x01" + b"\x00" * 99), options=options())
    assert isinstance(event, ChangeEvent)
    assert event.after["balance"] == decimal.Decimal(2 ** (8 * 99)).scaleb(-2, decimal.Context(prec=500))
