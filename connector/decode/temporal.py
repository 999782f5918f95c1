"""Connect/Debezium date, time and timestamp logical types -> `date`, `time` and tz-aware UTC `datetime`.

Infinite timestamps (PostgreSQL `infinity`) become `datetime.max` / `datetime.min` (UTC); finite
timestamps outside years 1..9999 fail rather than pass for infinite. A `time` of 24:00:00 becomes
`time.max`; a time beyond it or negative (MySQL TIME durations) fails.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Final

__all__ = [
    "check_int",
    "date_from_days",
    "datetime_from_micros",
    "datetime_from_ms",
    "datetime_from_nanos",
    "iso_date",
    "iso_local_time",
    "iso_time",
    "time_from_micros",
    "time_from_ms",
    "time_from_nanos",
    "zoned_timestamp",
]

logger = logging.getLogger(__name__)

_UTC: Final = dt.UTC
_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=_UTC)
_MAX_DT: Final = dt.datetime.max.replace(tzinfo=_UTC)
_MIN_DT: Final = dt.datetime.min.replace(tzinfo=_UTC)
_MAX_US: Final = (_MAX_DT - _EPOCH) // dt.timedelta(microseconds=1)
_MIN_US: Final = (_MIN_DT - _EPOCH) // dt.timedelta(microseconds=1)
_DAY_US: Final = 86_400_000_000
# PostgreSQL +-infinity (PGStatement.DATE_POSITIVE/NEGATIVE_INFINITY) read as microseconds, which is
# what Debezium writes for MicroTimestamp and, divided by 1000, for Timestamp; anything beyond is infinite.
_INFINITY_US: Final = 9_223_372_036_000_000_000
_LONG_MAX: Final = 2**63 - 1
_LONG_MIN: Final = -(2**63)
_timedelta: Final = dt.timedelta


def check_int(value: Any) -> int:
    """`value` when it is an `int` (not a bool): the integer wire forms of the logical types.

    Raises:
        TypeError: anything else.
    """
    if type(value) is not int:
        raise TypeError("expected an integer")
    return value


# PostgreSQL's dates run from Julian day 0 (4714 BC) to 2147483494 (5874897 AD); Debezium writes
# `date 'infinity'` and `'-infinity'` as day counts beyond them (e.g. 2146033979, -2147472692).
_PG_LAST_DAY: Final = 2147483494 - 2440588  # Julian day of 1970-01-01: 2440588
_PG_FIRST_DAY: Final = -2440588


def date_from_days(value: Any) -> dt.date:
    """`Date` (days since 1970-01-01) -> `date`; PostgreSQL's +-infinity -> `date.max` / `date.min`.

    A `date` (fastavro's logicalType "date") is returned as is.

    Raises:
        TypeError: neither an integer nor a date.
        ValueError: a finite day outside years 1..9999.
    """
    if type(value) is int:
        if value > _PG_LAST_DAY:
            return dt.date.max  # infinity, as a timestamp's becomes datetime.max
        if value < _PG_FIRST_DAY:
            return dt.date.min
        return dt.date.fromordinal(_EPOCH_ORDINAL + value)
    if isinstance(value, dt.date):  # fastavro's logicalType "date" already converted it
        return value
    raise TypeError("expected an integer")


def _datetime_from_us(us: int) -> dt.datetime:
    if _MIN_US <= us <= _MAX_US:
        return _EPOCH + _timedelta(0, 0, us)  # positional: twice as fast as microseconds=us
    if us >= _INFINITY_US:
        return _MAX_DT
    if us <= -_INFINITY_US:
        return _MIN_DT
    # A real PostgreSQL timestamp after 9999 or before year 1: no datetime holds it, and clamping
    # it would silently turn it into "infinity".
    raise ValueError("timestamp outside years 1..9999")


def datetime_from_ms(value: Any) -> dt.datetime:
    """`Timestamp` (milliseconds since the epoch) -> UTC `datetime`; fastavro's `datetime` as UTC.

    Raises:
        TypeError: neither an integer nor a datetime.
        ValueError: a finite timestamp outside years 1..9999.
    """
    if isinstance(value, dt.datetime):  # fastavro's timestamp-millis
        return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)
    return _datetime_from_us(check_int(value) * 1000)


def datetime_from_micros(value: Any) -> dt.datetime:
    """`MicroTimestamp` (microseconds since the epoch) -> UTC `datetime`; infinity as `datetime.max/min`.

    Raises:
        TypeError: not an integer.
        ValueError: a finite timestamp outside years 1..9999.
    """
    return _datetime_from_us(check_int(value))


def datetime_from_nanos(value: Any) -> dt.datetime:
    """`NanoTimestamp` (nanoseconds since the epoch) -> UTC `datetime`, truncated to the microsecond.

    Raises:
        TypeError: not an integer.
        ValueError: a finite timestamp outside years 1..9999.
    """
    if value == _LONG_MAX:  # nanoseconds mode writes PostgreSQL infinity as Long.MAX / Long.MIN
        return _MAX_DT
    if value == _LONG_MIN:
        return _MIN_DT
    return _datetime_from_us(check_int(value) // 1000)  # floor: truncates towards the past


def zoned_timestamp(value: Any) -> dt.datetime:
    """`ZonedTimestamp` / `IsoTimestamp` (ISO 8601 text) -> UTC `datetime`; "infinity" / "-infinity" too.

    Raises:
        TypeError: not a string.
        ValueError: not an ISO 8601 timestamp.
    """
    if not isinstance(value, str):
        raise TypeError("expected a string")
    if value == "infinity":
        return _MAX_DT
    if value == "-infinity":
        return _MIN_DT
    parsed = dt.datetime.fromisoformat(value)
    tz = parsed.tzinfo
    if tz is _UTC:  # Debezium always writes `...Z`
        return parsed
    if tz is None:
        return parsed.replace(tzinfo=_UTC)
    return parsed.astimezone(_UTC)


def iso_date(value: Any) -> dt.date:
    """`IsoDate` (ISO 8601 text; its first 10 characters, the date) -> `date`.

    Raises:
        TypeError: not a string.
        ValueError: not an ISO 8601 date.
    """
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return dt.date.fromisoformat(value[:10])


def _time_from_us(us: int) -> dt.time:
    if us >= _DAY_US:
        if us == _DAY_US:  # PostgreSQL's 24:00:00
            return dt.time.max
        # MySQL TIME is a duration up to 838:59:59: no time of day holds it
        raise ValueError("time of day beyond 24:00:00")
    if us < 0:
        raise ValueError("negative time of day")
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return dt.time(hour, minute, second, micro)


def time_from_ms(value: Any) -> dt.time:
    """`Time` (milliseconds since midnight) -> `time`; fastavro's `time` as is.

    Raises:
        TypeError: neither an integer nor a time.
        ValueError: beyond 24:00:00 (`time.max`) or negative.
    """
    if isinstance(value, dt.time):  # fastavro's time-millis
        return value
    return _time_from_us(check_int(value) * 1000)


def time_from_micros(value: Any) -> dt.time:
    """`MicroTime` (microseconds since midnight) -> `time`; fastavro's `time` as is.

    Raises:
        TypeError: neither an integer nor a time.
        ValueError: beyond 24:00:00 (`time.max`) or negative.
    """
    if isinstance(value, dt.time):
        return value
    return _time_from_us(check_int(value))


def time_from_nanos(value: Any) -> dt.time:
    """`NanoTime` (nanoseconds since midnight) -> `time`, truncated to the microsecond.

    Raises:
        TypeError: not an integer.
        ValueError: beyond 24:00:00 (`time.max`) or negative.
    """
    return _time_from_us(check_int(value) // 1000)


def iso_time(value: Any) -> dt.time:
    """`ZonedTime` (ISO 8601 text) -> `time`, with its offset.

    Raises:
        TypeError: not a string.
        ValueError: not an ISO 8601 time.
    """
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return dt.time.fromisoformat(value)


def iso_local_time(value: Any) -> dt.time:
    """`IsoTime` (a `time` column in isostring mode): written in UTC; a time without zone, as MicroTime."""
    parsed = iso_time(value)
    offset = parsed.utcoffset()
    if offset is None:
        return parsed
    if not offset:
        return parsed.replace(tzinfo=None)
    moment = dt.datetime.combine(dt.date(2000, 1, 1), parsed) - offset
    return moment.time()
