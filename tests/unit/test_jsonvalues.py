"""Decoded values -> JSON values: the text form state and contacts hold, lossless and stable.

Property tests go the whole way: a Python value -> Debezium's wire value -> decode -> JSON value,
which must give the original value back.
"""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector import jsonvalues
from connector.decode.logical import ExactFloat, InexactNumber, logical_converter
from connector.jsonvalues import UNCHANGED_MARKER, from_json_value, json_row, json_value
from connector.models import UNCHANGED

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def decode(name: str, wire: Any, params: dict[str, str] | None = None) -> Any:
    conv = logical_converter(name, params or {})
    assert conv is not None
    return conv(wire)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("1E+3"), "1000"),  # plain notation, never an exponent
        (Decimal("1.2E+3"), "1200"),
        (Decimal("1234.50"), "1234.50"),  # the column's scale is kept
        (Decimal("0E-10"), "0.0000000000"),
        (Decimal("-0.05"), "-0.05"),
        (Decimal("1E-30"), "0.000000000000000000000000000001"),
        (Decimal("123456789012345678901234567890123456.78"), "123456789012345678901234567890123456.78"),
        (dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2026-01-01T10:00:00Z"),
        (dt.datetime(2026, 1, 1, 12, 0, 0, 5), "2026-01-01T12:00:00.000005Z"),  # naive: read as UTC
        (dt.datetime.max.replace(tzinfo=UTC), "9999-12-31T23:59:59.999999Z"),
        (dt.datetime.min.replace(tzinfo=UTC), "0001-01-01T00:00:00Z"),
        (dt.date(1, 1, 1), "0001-01-01"),
        (dt.time(1, 2), "01:02:00"),
        (dt.time.max, "23:59:59.999999"),
        (b"\x00\xff", "AP8="),
        (UNCHANGED, UNCHANGED_MARKER),
        ({"a": [Decimal("1.5"), None, dt.date(2000, 1, 2)]}, {"a": ["1.5", None, "2000-01-02"]}),
        ((1, "x"), [1, "x"]),
        (True, True),
        (None, None),
    ],
)
def test_json_value(value: Any, expected: Any) -> None:
    assert json_value(value) == expected
    orjson.dumps(json_value(value))  # always serializable


def test_json_row_copies_only_when_needed() -> None:
    native = {"a": 1, "b": "x", "c": None, "d": 1.5, "e": True}
    assert json_row(native) is native
    assert json_row({"a": dt.date(2000, 1, 1), "b": UNCHANGED}) == {"a": "2000-01-01", "b": UNCHANGED_MARKER}
    assert json_row(None) is None
    assert from_json_value(UNCHANGED_MARKER) is UNCHANGED
    assert from_json_value("x") == "x"


class _Str(str):
    """A str subclass: not an exact JSON type, so the native loop hands it to `json_value`."""


row_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.text(max_size=5).map(_Str),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, UTC])),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.binary(max_size=4),
    st.just(UNCHANGED),
    st.lists(st.integers(), max_size=2),
)


@given(st.dictionaries(st.text(max_size=4), row_values, max_size=8))
def test_native_json_row_is_the_python_loop(row: dict[str, Any]) -> None:
    """The C `json_row` returns what the Python loop does: same values, same key order; the row
    itself (not a copy) exactly when every value is a str, int, float, bool or None."""
    if jsonvalues._native_json_row is None:
        pytest.fail("connector.decode._speedups is not built (pip install -e . builds it)")
    expected = jsonvalues._json_row(row)
    got = jsonvalues._native_json_row(row, json_value)
    assert list(got.items()) == list(expected.items())
    assert (got is row) == all(type(v) in (str, int, float, bool, type(None)) for v in row.values())
    assert (got is row) == (expected is row)


def unscaled_base64(value: Decimal) -> str:
    """Connect Decimal on the wire: the unscaled value, big-endian two's complement, base64."""
    sign, digits, _ = value.as_tuple()
    unscaled = int("".join(map(str, digits))) * (-1 if sign else 1)
    size = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(size, "big", signed=True)).decode()


decimals = st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1).flatmap(
    lambda unscaled: st.integers(min_value=-5, max_value=38).map(
        lambda scale: Decimal(f"{unscaled}E{-scale}")
    )
)


@given(decimals)
def test_decimal_round_trip(value: Decimal) -> None:
    scale = -value.as_tuple().exponent  # type: ignore[operator]
    for got in (
        decode("org.apache.kafka.connect.data.Decimal", unscaled_base64(value), {"scale": str(scale)}),
        decode("io.debezium.data.VariableScaleDecimal", {"scale": scale, "value": unscaled_base64(value)}),
    ):
        assert got.as_tuple() == value.as_tuple()
        text = json_value(got)
        assert "E" not in text and Decimal(text) == value
        if scale >= 0:  # a non-negative scale survives the text form as is
            assert Decimal(text).as_tuple() == value.as_tuple()


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=2, min_value=-(10**13) + 1, max_value=10**13 - 1
    )
)
def test_numeric_format_decimal_matches_base64_form(value: Decimal) -> None:
    # decimal.format=NUMERIC and the base64 form give the same Decimal, scale included (up to 15
    # digits here; longer numbers make the decoder re-read the record: test_decode_correctness)
    params = {"scale": "2"}
    number = orjson.loads(str(value))
    if number == 0:
        # a zero double may be an underflow (1E-400 reads as 0.0): the decoder re-reads exactly
        with pytest.raises(InexactNumber):
            decode("org.apache.kafka.connect.data.Decimal", number, params)
        number = ExactFloat(str(value))
    via_number = decode("org.apache.kafka.connect.data.Decimal", number, params)
    via_bytes = decode("org.apache.kafka.connect.data.Decimal", unscaled_base64(value), params)
    assert via_number.as_tuple() == via_bytes.as_tuple()
    assert json_value(via_number) == json_value(via_bytes)


datetimes = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999998)
)


@given(datetimes)
def test_timestamp_round_trip(naive: dt.datetime) -> None:
    value = naive.replace(tzinfo=UTC)
    micros = (value - EPOCH) // dt.timedelta(microseconds=1)
    assert decode("io.debezium.time.MicroTimestamp", micros) == value
    assert decode("io.debezium.time.NanoTimestamp", micros * 1000 + 999) == value  # truncated
    millis = value.replace(microsecond=value.microsecond // 1000 * 1000)
    assert decode("io.debezium.time.Timestamp", micros // 1000) == millis
    text = json_value(value)
    assert text.endswith("Z") and dt.datetime.fromisoformat(text) == value


@given(datetimes, st.integers(min_value=0, max_value=9), st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_zoned_timestamp_round_trip(naive: dt.datetime, digits: int, offset_minutes: int) -> None:
    value = naive.replace(tzinfo=UTC)
    # ZonedTimestamp: ISO 8601 with 0-9 fraction digits (nanoseconds padded), any offset
    zone = dt.timezone(dt.timedelta(minutes=offset_minutes))
    try:
        local = value.astimezone(zone)
    except OverflowError:
        return
    fraction = f"{local.microsecond:06d}000"[:digits]
    text = local.replace(microsecond=0, tzinfo=None).isoformat() + (f".{fraction}" if digits else "")
    offset = local.strftime("%z")
    text += "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"
    expected = value.replace(microsecond=int(fraction[:6].ljust(6, "0")) if digits else 0)
    got = decode("io.debezium.time.ZonedTimestamp", text)
    assert got == expected and got.tzinfo is UTC
    assert dt.datetime.fromisoformat(json_value(got)) == expected


@given(st.dates())
def test_date_round_trip(value: dt.date) -> None:
    days = value.toordinal() - dt.date(1970, 1, 1).toordinal()
    assert decode("io.debezium.time.Date", days) == value
    assert json_value(value) == value.isoformat()


@given(st.times())
def test_time_round_trip(value: dt.time) -> None:
    micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    assert decode("io.debezium.time.MicroTime", micros) == value
    assert decode("io.debezium.time.NanoTime", micros * 1000 + 999) == value
    assert dt.time.fromisoformat(json_value(value)) == value


@given(st.binary(max_size=64))
def test_bytes_round_trip(value: bytes) -> None:
    got = decode("io.debezium.data.Bits", base64.b64encode(value).decode())
    assert got == value
    assert base64.b64decode(json_value(got)) == value
