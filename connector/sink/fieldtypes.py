"""Custom-field values fitted to their Yespo catalog type. Pure.

The mapping writes a custom field's value as text (`connector.mapping`): a date column as
`2024-05-01`, a timestamp as `2024-05-01T10:30:00Z`, a number as `5` or `10.50`. Yespo takes a value
only in its field type's documented form (spec sections 1 and 3): a DATE as `yyyy-MM-dd` (or
`dd/MM/yyyy`, `dd.MM.yyyy`, `dd.MM.yy`), a DATETIME as `yyyy-MM-ddTHH:mm`, a NUMBER as an int32, a text
input up to 1000 characters and a text area up to 5000. A value Yespo would refuse fails the whole
contact (`failedContacts`), so the deliver stage fits each value to its field's type: a timestamp
becomes the DATETIME form (minutes) or, for a DATE, its day, both in the time zone the caller names
(`yespo.datetime_zone`: the contact's by default); an integral decimal (`5.0`) an integer. A value
that cannot fit is left out, like an invalid value in the mapping (docs/mapping.md); the reason
names the rule, never the value.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

__all__ = ["fit_field_value"]

_TEXT_LIMITS: Final = {"TEXTFIELD": 1000, "TEXTAREA": 5000}
_INT32: Final = re.compile(r"[+-]?[0-9]+")
_INTEGRAL_DECIMAL: Final = re.compile(r"([+-]?[0-9]+)\.0+")
_ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_OTHER_DATES: Final = (
    re.compile(r"(?P<d>[0-9]{2})/(?P<m>[0-9]{2})/(?P<y>[0-9]{4})"),
    re.compile(r"(?P<d>[0-9]{2})\.(?P<m>[0-9]{2})\.(?P<y>[0-9]{4}|[0-9]{2})"),
)
_DATETIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}")


def fit_field_value(kind: str, text: str, zone: dt.tzinfo = dt.UTC) -> tuple[str | None, str | None]:
    """`text` in the form a custom field of catalog type `kind` takes.

    A timestamp with an offset (`2024-05-01T02:30:00Z`) is written as wall-clock time in `zone`; one
    without is written as it is.

    Returns:
        (the value to send, None), or (None, why it cannot fit) for a value to leave out. Types
        without a documented rule (COMBOBOX, DECIMAL, TAGS, ...) take any text.
    """
    limit = _TEXT_LIMITS.get(kind)
    if limit is not None:
        return (text, None) if len(text) <= limit else (None, f"longer than {limit} characters ({kind})")
    if kind == "NUMBER":
        return _number(text)
    if kind == "DATE":
        return _date(text, zone)
    if kind == "DATETIME":
        return _datetime(text, zone)
    return text, None


def _number(text: str) -> tuple[str | None, str | None]:
    value = text.strip()
    if (whole := _INTEGRAL_DECIMAL.fullmatch(value)) is not None:
        value = whole.group(1)
    if not _INT32.fullmatch(value):
        return None, "not an integer (NUMBER)"
    number = int(value)
    if not -(2**31) <= number < 2**31:
        return None, "outside the int32 range (NUMBER)"
    return str(number), None


def _moment(text: str, zone: dt.tzinfo = dt.UTC) -> dt.datetime | None:
    """An ISO-8601 date or date-time (aware ones in `zone`), or None."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(zone)
        except OverflowError:
            return None
    return moment


def _date(text: str, zone: dt.tzinfo) -> tuple[str | None, str | None]:
    if _ISO_DATE.fullmatch(text):
        return (text, None) if _moment(text) is not None else (None, "not a calendar date (DATE)")
    for form in _OTHER_DATES:
        if (found := form.fullmatch(text)) is not None:
            return (text, None) if _calendar(found) else (None, "not a calendar date (DATE)")
    moment = _moment(text, zone)
    if moment is None:
        return None, "not a date (DATE)"
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}", None


def _datetime(text: str, zone: dt.tzinfo) -> tuple[str | None, str | None]:
    if _DATETIME.fullmatch(text) and _moment(text) is not None:
        return text, None
    moment = _moment(text, zone)
    if moment is None:
        return None, "not a date-time (DATETIME)"
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}",
        None,
    )


def _calendar(found: re.Match[str]) -> bool:
    year = found["y"]
    try:
        dt.date(int(year) + (2000 if len(year) == 2 else 0), int(found["m"]), int(found["d"]))
    except ValueError:
        return False
    return True
