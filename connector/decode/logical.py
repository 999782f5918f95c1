"""Connect/Debezium logical types -> Python values: one converter per type name, built once per schema.

Converters take the wire value (a JSON value, or what fastavro returned) and return the Python value:
dates -> `date`, timestamps -> tz-aware UTC `datetime`, times -> `datetime.time`, decimals ->
`Decimal`, `io.debezium.data.Json` -> parsed `dict`/`list`, bytes -> `bytes`, UUIDs/enums -> `str`.
They raise `ValueError`/`TypeError`/`ArithmeticError` on bad input; the caller turns that into a
`DecodeFailure`. The date, time and timestamp converters live in `connector.decode.temporal`.
"""

from __future__ import annotations

import binascii
import decimal
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import orjson

from connector.decode.temporal import (
    check_int,
    date_from_days,
    datetime_from_micros,
    datetime_from_ms,
    datetime_from_nanos,
    iso_date,
    iso_local_time,
    iso_time,
    time_from_micros,
    time_from_ms,
    time_from_nanos,
    zoned_timestamp,
)
from connector.errors import DecodeError

__all__ = [
    "ALIASES",
    "DECIMAL_MODES",
    "IDENTITY_NAMES",
    "MAX_SCALE",
    "Converter",
    "DecimalMode",
    "ExactFloat",
    "InexactNumber",
    "bytes_value",
    "logical_converter",
    "resolve_alias",
]

logger = logging.getLogger(__name__)

Converter = Callable[[Any], Any]
DecimalMode = Literal["precise", "string", "double"]
"""Debezium's `decimal.handling.mode`: how a schemaless Decimal column was written."""
DECIMAL_MODES: Final[tuple[DecimalMode, ...]] = ("precise", "string", "double")

MAX_SCALE: Final = 16383  # PostgreSQL's NUMERIC_DSCALE_MASK
_FLOAT_DIGITS: Final = 15  # significant decimal digits a double always round-trips (DBL_DIG)
_MIN_NORMAL: Final = sys.float_info.min  # below it (zero included) a double may hold an underflow
_MAX_UNSCALED_BYTES: Final = 65536
"""Longer than any database's decimal: PostgreSQL's numeric holds at most 147,455 digits (61 KB
unscaled), MySQL's 65. A longer value is refused before `Decimal(int)`, quadratic in its length
(44 s for 700 KB), stalls the stage."""
# Scaling an unscaled Decimal must be exact: the default context (28 digits) rounds numeric(38,2).
_EXACT: Final = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def bytes_value(value: Any) -> bytes:
    """Bytes from Avro (as is) or from JsonConverter (base64 text)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            # what b64decode(validate=True) does, without its per-call regular expression
            return binascii.a2b_base64(value, strict_mode=True)
        except binascii.Error as exc:
            raise ValueError("invalid base64") from exc
    raise TypeError("expected bytes")


class ExactFloat(float):
    """A JSON number that keeps its text: what the exact re-read of a record gives for non-integers."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactFloat:  # noqa: D102 - msgspec's float_hook
        self = super().__new__(cls, text)
        self.text = text
        return self


class InexactNumber(DecodeError):
    """A Decimal column holds a JSON number with more digits than a float keeps.

    Raised by the Decimal converter on orjson's float; the decoder then reads the record again,
    keeping every number's text (`ExactFloat`).
    """

    def __init__(self) -> None:
        super().__init__("a Decimal column holds a JSON number with more digits than a float keeps")


def _check_scale(scale: int) -> int:
    # Nothing real goes beyond PostgreSQL's largest display scale; a garbage scale would give a
    # Decimal whose plain text form (`jsonvalues`) takes gigabytes.
    if not -MAX_SCALE <= scale <= MAX_SCALE:
        raise ValueError("decimal scale out of range")
    return scale


def _unscaled(raw: bytes, scale: int) -> decimal.Decimal:
    """Connect's Decimal wire form: a big-endian two's-complement unscaled value, scaled exactly."""
    if len(raw) > _MAX_UNSCALED_BYTES:
        raise ValueError("decimal value longer than any database column holds")
    return decimal.Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-scale, _EXACT)


# What Debezium's decimal.handling.mode=string writes: BigDecimal's text (toPlainString; an exponent
# is accepted too) and, for PostgreSQL's special numerics, SpecialValueDecimal's names (NAN,
# POSITIVE_INFINITY, NEGATIVE_INFINITY). Not what else Decimal() reads: spaces, '_', non-ASCII digits, sNaN.
_DECIMAL_TEXT: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|(?i:nan)")
_SPECIAL_DECIMALS: Final = {
    "POSITIVE_INFINITY": decimal.Decimal("Infinity"),
    "NEGATIVE_INFINITY": decimal.Decimal("-Infinity"),
}
# decimal.handling.mode=double: JsonConverter writes a double NaN/±Infinity (PostgreSQL's special
# numerics) as these texts; any other text in such a column is not a double.
_DOUBLE_TEXTS: Final = {
    "NaN": decimal.Decimal("NaN"),
    "Infinity": decimal.Decimal("Infinity"),
    "-Infinity": decimal.Decimal("-Infinity"),
}


def _decimal_text(text: str) -> decimal.Decimal:
    special = _SPECIAL_DECIMALS.get(text)
    if special is not None:
        return special
    if _DECIMAL_TEXT.fullmatch(text) is None:
        raise ValueError("a Decimal text that is not a decimal number")
    number = decimal.Decimal(text)
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int):  # 1E+999999999 would render (`jsonvalues`) as a gigabyte of digits
        _check_scale(-exponent)
    return number


def _decimal(scale: int, mode: DecimalMode = "precise") -> Converter:
    text_only = mode == "string"
    double = mode == "double"
    quantum = decimal.Decimal(1).scaleb(-_check_scale(scale), _EXACT)

    def numeric(number: decimal.Decimal) -> decimal.Decimal:
        """A decimal.format=NUMERIC value at the column's scale (as the base64 form gives it)."""
        scaled = number.quantize(quantum, context=_EXACT)
        if scaled != number:
            raise ValueError("a Decimal with more fraction digits than its scale")
        return scaled

    def convert(value: Any) -> decimal.Decimal:
        cls = type(value)
        if cls is str:
            if double:  # never base64: "Infinity" is valid base64
                special = _DOUBLE_TEXTS.get(value)
                if special is None:
                    raise ValueError("a text in a decimal.handling.mode=double Decimal column")
                return special
            # decimal.handling.mode=string writes "1234" for a scale-0 value, valid base64 too: only
            # the configured mode tells them apart. A '.' or a leading '-' is never base64.
            if text_only or "." in value or value[:1] == "-":
                return _decimal_text(value)
            raw = bytes_value(value)
        elif cls is float:  # decimal.format=NUMERIC, as orjson read it
            # A float keeps 15 significant digits for sure: a longer number may have lost some, and
            # one below the smallest normal double (zero included) may be an underflow (1E-400 -> 0.0).
            if -_MIN_NORMAL < value < _MIN_NORMAL:
                raise InexactNumber
            number = numeric(decimal.Decimal(repr(value)))
            if len(number.as_tuple().digits) > _FLOAT_DIGITS:
                raise InexactNumber
            return number
        elif cls is ExactFloat:
            return numeric(decimal.Decimal(value.text))
        elif cls is int:
            return numeric(decimal.Decimal(value))
        elif isinstance(value, decimal.Decimal):  # fastavro's logicalType "decimal"
            return value
        else:
            raw = bytes_value(value)
        return _unscaled(raw, scale)

    return convert


def _variable_scale_decimal(value: Any) -> decimal.Decimal:
    if not isinstance(value, Mapping):
        raise TypeError("expected a struct")
    scale = _check_scale(check_int(value["scale"]))
    raw = bytes_value(value["value"])
    return _unscaled(raw, scale)


_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INT64: Final = range(-(2**63), 2**64)  # what orjson reads as an int
_INT_TEXT_MAX: Final = 21  # "-" and 20 digits: longer integer texts are all outside _INT64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_text(value: Any) -> Any:
    """An `io.debezium.data.Json` column: the parsed JSON, or its text when parsing would change it.

    PostgreSQL's json/jsonb keep numbers exactly; orjson reads an integer beyond 64 bits as a float
    and refuses one beyond a double's range. Such a value keeps its text (exact, as the database
    wrote it), so no digit is lost on the way to Yespo and the row is not refused.
    """
    if not isinstance(value, str):
        raise TypeError("expected a string")
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        # still invalid: raises ValueError. Numbers stay text: int() refuses more than 4300 digits.
        json.loads(value, parse_constant=_refuse_constant, parse_int=str, parse_float=str)
        return value  # valid JSON with a number beyond a double's range
    return value if _loses_digits(value) else parsed


def _loses_digits(text: str) -> bool:
    """True when a number in `text` (JSON) would not come back as written from a float or int64."""
    for token in _JSON_NUMBER.findall(text):  # digits inside strings too: at worst the text is kept
        exponent = "e" in token or "E" in token
        if len(token) < 16 and not exponent:
            continue  # at most 15 digits: exact as an int64 and as a double
        if "." not in token and not exponent:
            # more than 20 digits is beyond uint64 (and int() refuses more than 4300 digits)
            if len(token) > _INT_TEXT_MAX or int(token) not in _INT64:
                return True
            continue
        try:
            if decimal.Decimal(token) != decimal.Decimal(repr(float(token))):
                return True  # a double keeps 15 significant digits; an exponent may be out of its range
        except decimal.InvalidOperation:
            return True  # an exponent beyond even Decimal's range: far beyond a double's
    return False


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError("expected a string")


_FIXED: Final[dict[str, Converter]] = {
    "io.debezium.time.Date": date_from_days,
    "org.apache.kafka.connect.data.Date": date_from_days,
    "io.debezium.time.IsoDate": iso_date,
    "io.debezium.time.Timestamp": datetime_from_ms,
    "org.apache.kafka.connect.data.Timestamp": datetime_from_ms,
    "io.debezium.time.MicroTimestamp": datetime_from_micros,
    "io.debezium.time.NanoTimestamp": datetime_from_nanos,
    "io.debezium.time.ZonedTimestamp": zoned_timestamp,
    "io.debezium.time.IsoTimestamp": zoned_timestamp,
    "io.debezium.time.Time": time_from_ms,
    "org.apache.kafka.connect.data.Time": time_from_ms,
    "io.debezium.time.MicroTime": time_from_micros,
    "io.debezium.time.NanoTime": time_from_nanos,
    "io.debezium.time.ZonedTime": iso_time,
    "io.debezium.time.IsoTime": iso_local_time,
    "io.debezium.data.VariableScaleDecimal": _variable_scale_decimal,
    "io.debezium.data.Json": _json_text,
    "io.debezium.data.Bits": bytes_value,
    "bytes": bytes_value,
    "io.debezium.data.Uuid": _text,
}

IDENTITY_NAMES: Final = frozenset(
    {
        "io.debezium.data.Enum",
        "io.debezium.data.EnumSet",
        "io.debezium.data.Xml",
        "io.debezium.data.Ltree",
        "io.debezium.time.MicroDuration",
        "io.debezium.time.NanoDuration",
        "io.debezium.time.Interval",
        "io.debezium.time.Year",
    }
)
"""Named types whose wire value is already the Python value we want."""

ALIASES: Final[dict[str, str]] = {
    "date": "io.debezium.time.Date",
    "timestamp": "io.debezium.time.Timestamp",
    "micro_timestamp": "io.debezium.time.MicroTimestamp",
    "nano_timestamp": "io.debezium.time.NanoTimestamp",
    "zoned_timestamp": "io.debezium.time.ZonedTimestamp",
    "time": "io.debezium.time.Time",
    "micro_time": "io.debezium.time.MicroTime",
    "nano_time": "io.debezium.time.NanoTime",
    "json": "io.debezium.data.Json",
    "uuid": "io.debezium.data.Uuid",
    "decimal": "org.apache.kafka.connect.data.Decimal",
    "variable_scale_decimal": "io.debezium.data.VariableScaleDecimal",
    "bits": "io.debezium.data.Bits",
}
"""Short names accepted in `source.column_types` (full Connect/Debezium names work too)."""


def resolve_alias(type_name: str) -> tuple[str, dict[str, str]]:
    """`"decimal:2"` -> (`org.apache.kafka.connect.data.Decimal`, {"scale": "2"}); other names as is."""
    name, _, arg = type_name.partition(":")
    name = ALIASES.get(name, name)
    params = {"scale": arg} if arg else {}
    return name, params


def logical_converter(
    name: str, parameters: Mapping[str, Any], *, decimal_mode: DecimalMode = "precise"
) -> Converter | None:
    """The converter for Connect/Debezium logical type `name`, or None when the value is kept as is.

    `decimal_mode` (Debezium's `decimal.handling.mode`) decides how a Decimal reads a text: "string"
    reads every text as a decimal number; "double" only JsonConverter's "NaN"/"Infinity"/"-Infinity";
    "precise" reads base64 of the unscaled value, except texts that cannot be base64 (with a '.' or
    a leading '-'), read as decimal numbers.

    Raises:
        ValueError: a Decimal without a usable `scale` parameter.
    """
    if name == "org.apache.kafka.connect.data.Decimal":
        scale = parameters.get("scale", 0)
        if type(scale) is not int:
            if not isinstance(scale, str | bytes):  # int(None) would be a TypeError, not a bad scale
                raise ValueError("decimal scale is not a number")
            scale = int(scale)
        return _decimal(scale, decimal_mode)
    return _FIXED.get(name)
