"""Correctness of decoded values against Debezium's wire formats: extremes, precision, positions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from connector.decode.logical import logical_converter

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
