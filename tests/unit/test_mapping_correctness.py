"""Correctness review of the mapping step: values that were silently wrong or lost on their way to Yespo."""

from __future__ import annotations

import math
from typing import Any

import pytest

from connector.config import ContactMapping
from connector.mapping import DroppedField, map_contact
from connector.models import CustomerView

BASE: dict[str, Any] = {
    "externalCustomerId": "external_id",
    "channels": [{"type": "email", "column": "email"}],
    "default_phone_region": "UA",
}


def _mapping(**overrides: Any) -> ContactMapping:
    return ContactMapping.model_validate({**BASE, **overrides})


def _contact(mapping: ContactMapping, **row: Any) -> dict[str, Any]:
    result = map_contact(CustomerView("7", {"external_id": "X7", "email": None, **row}), mapping)
    assert result.contact is not None
    return result.contact.to_json()


# --- viber is a phone number (spec section 3: "Phone number (SMS, Viber)") ---------------------------


def test_a_viber_number_is_normalized_like_an_sms_number() -> None:
    # A national number without its country code reached Yespo as the wrong digits ("0501234567").
    mapping = _mapping(channels=[{"type": "viber", "column": "phone"}])
    contact = _contact(mapping, phone="050 123 45 67")
    assert contact["channels"] == [{"type": "viber", "value": "+380501234567"}]


def test_an_invalid_viber_number_is_dropped_and_reported() -> None:
    mapping = _mapping(channels=[{"type": "viber", "column": "phone"}])
    result = map_contact(CustomerView("7", {"external_id": "X7", "email": None, "phone": "call me"}), mapping)
    assert result.contact is not None
    assert "channels" not in result.contact.to_json()
    assert result.dropped == (DroppedField("channels[viber]", "not a valid phone number"),)


def test_sms_and_viber_of_one_number_are_both_kept() -> None:
    mapping = _mapping(channels=[{"type": "sms", "column": "phone"}, {"type": "viber", "column": "phone"}])
    contact = _contact(mapping, phone="+380 (50) 123-45-67")
    assert contact["channels"] == [
        {"type": "sms", "value": "+380501234567"},
        {"type": "viber", "value": "+380501234567"},
    ]


# --- numbers in custom fields: plain decimal text, as a NUMBER/DECIMAL field takes it ------------------


FIELDS = _mapping(fields={"score": "score"})


def _field(value: Any) -> list[dict[str, str]] | None:
    result = map_contact(CustomerView("7", {"external_id": "X7", "email": None, "score": value}), FIELDS)
    assert result.contact is not None
    return result.contact.to_json().get("fields")


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (1e-07, "0.0000001"),  # str() gave "1e-07"
        (2.5e-05, "0.000025"),
        (1e16, "10000000000000000"),  # str() gave "1e+16"
        (-1.5e20, "-150000000000000000000"),
        (0.1, "0.1"),
        (12.0, "12.0"),
        (123456789.125, "123456789.125"),
        (2**70, str(2**70)),
    ],
)
def test_numbers_are_written_in_plain_decimal_notation(raw: Any, text: str) -> None:
    assert _field(raw) == [{"name": "score", "value": text}]


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_is_dropped_not_written_as_text(raw: float) -> None:
    # field_text wrote "nan"/"inf" (and orjson wrote NaN inside JSON values as null)
    result = map_contact(CustomerView("7", {"external_id": "X7", "email": None, "score": raw}), FIELDS)
    assert result.contact is not None
    assert "fields" not in result.contact.to_json()
    assert result.dropped == (DroppedField("fields.score", "not a finite number"),)


def test_a_non_finite_float_in_a_standard_field_is_dropped() -> None:
    mapping = _mapping(firstName="first_name")
    result = map_contact(
        CustomerView("7", {"external_id": "X7", "email": None, "first_name": math.nan}), mapping
    )
    assert result.contact is not None
    assert result.dropped == (DroppedField("firstName", "not a finite number"),)


def test_a_json_value_with_a_big_integer_is_kept_exactly() -> None:
    # orjson refuses integers beyond 64 bits: the mapping raised TypeError and stalled the stage
    assert _field({"id": 2**70, "tags": ["a", 1.5]}) == [
        {"name": "score", "value": '{"id":1180591620717411303424,"tags":["a",1.5]}'}
    ]


def test_a_json_value_with_nan_is_dropped() -> None:
    result = map_contact(
        CustomerView("7", {"external_id": "X7", "email": None, "score": [1.0, math.nan]}), FIELDS
    )
    assert result.contact is not None
    assert "fields" not in result.contact.to_json()
    assert result.dropped == (DroppedField("fields.score", "not a finite number"),)


# --- group ids: Yespo segment ids are int32 (`GroupDto.id`, the attach/detach path parameter) ----------


GROUPS = _mapping(groups={"child": "groups", "id": "group_id"})


def _groups(*ids: Any) -> tuple[list[dict[str, Any]] | None, tuple[DroppedField, ...]]:
    rows = [{"group_id": gid} for gid in ids]
    result = map_contact(CustomerView("7", {"external_id": "X7", "email": None}, {"groups": rows}), GROUPS)
    assert result.contact is not None
    return result.contact.to_json().get("groups"), result.dropped


@pytest.mark.parametrize("gid", [2**70, "99999999999999999999", 1e25])
def test_a_group_id_beyond_64_bits_is_dropped_not_a_crash(gid: Any) -> None:
    # orjson raised TypeError on the fingerprint: the merge stage stalled on this customer
    groups, dropped = _groups(gid, 5)
    assert groups == [{"id": 5}]
    assert [d.field for d in dropped] == ["groups"]


@pytest.mark.parametrize("gid", [2**31, "2147483648", 0, -3, "-1"])
def test_a_group_id_outside_the_int32_segment_ids_is_dropped(gid: Any) -> None:
    # Yespo cannot have such a segment: every attach call for it was refused
    groups, dropped = _groups(gid, 2**31 - 1)
    assert groups == [{"id": 2**31 - 1}]
    assert [d.field for d in dropped] == ["groups"]


def test_group_id_text_with_spaces_or_leading_zeros_is_the_number() -> None:
    groups, dropped = _groups(" 42 ", "007")
    assert groups == [{"id": 7}, {"id": 42}]
    assert dropped == ()


def test_a_deeply_nested_json_value_is_dropped_not_a_crash() -> None:
    # orjson refuses nesting beyond 255 levels and Python's recursion stops near 1000: the mapping raised
    deep: Any = [1]
    for _ in range(5000):
        deep = [deep]
    result = map_contact(CustomerView("7", {"external_id": "X7", "email": None, "score": deep}), FIELDS)
    assert result.contact is not None
    assert "fields" not in result.contact.to_json()
    assert result.dropped == (DroppedField("fields.score", "not a JSON value"),)


def test_json_nested_beyond_orjson_limit_is_still_written() -> None:
    nested: Any = [1]
    for _ in range(300):
        nested = [nested]
    assert _field(nested) == [{"name": "score", "value": "[" * 301 + "1" + "]" * 301}]
