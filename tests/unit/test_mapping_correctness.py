"""Correctness review of the mapping step: values that were silently wrong or lost on their way to Yespo."""

from __future__ import annotations

from typing import Any

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
    result = map_contact(CustomerView("7", {"external_id": "X7", **row}), mapping)
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
    result = map_contact(CustomerView("7", {"external_id": "X7", "phone": "call me"}), mapping)
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
