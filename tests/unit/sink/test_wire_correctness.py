"""Mapped contacts on the wire: every request body the mapping can lead to is one Yespo's OpenAPI accepts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.config import ContactMapping
from connector.errors import ConfigError
from connector.mapping import map_contact
from connector.models import CustomerView
from connector.sink.catalog import resolve_field_ids
from connector.sink.wire import BulkEnvelope, WireTranslator, managed_contact_fields
from connector.standin.validation import RequestValidator, load_spec

VALIDATOR = RequestValidator(load_spec())

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "id",
        "firstName": "fn",
        "lastName": "ln",
        "channels": [
            {"type": "email", "column": "em"},
            {"type": "sms", "column": "ph"},
            {"type": "viber", "column": "vb"},
            {"type": "webPush", "column": "wp"},
            {"type": "sms", "column": "ph2"},
        ],
        "address": {"city": "c", "region": "r", "country": "co", "postalCode": "pc", "addressLine": "al"},
        "fields": {"score": "score", "meta": "meta"},
        "languageCode": "lc",
        "timeZone": "tz",
        "default_phone_region": "UA",
    }
)
TRANSLATOR = WireTranslator({"score": 5, "meta": 6}, country_field_id=7)
ENVELOPE = BulkEnvelope(managed_contact_fields(MAPPING), (5, 6, 7))

_TEXT = st.one_of(
    st.none(),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=45),
    st.text("abcAB'-. 12\u2019`\u00b4\u02bc\u0301@+()", max_size=45),
)
_PHONE = st.one_of(_TEXT, st.from_regex(r"\+?[0-9 ()-]{5,18}", fullmatch=True))
_VALUE = st.one_of(_TEXT, st.floats(), st.integers(), st.booleans(), st.lists(st.floats(), max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fn=_TEXT,
    ln=_TEXT,
    em=st.one_of(_TEXT, st.emails()),
    ph=_PHONE,
    vb=_PHONE,
    ph2=_PHONE,
    co=_TEXT,
    tz=st.one_of(_TEXT, st.sampled_from(["europe/kyiv", "localtime", "Factory", "UTC"])),
    lc=_TEXT,
    score=_VALUE,
    meta=_VALUE,
)
def test_every_mapped_contact_is_a_valid_request(**row: Any) -> None:
    result = map_contact(
        CustomerView("k", {"id": "E1", "wp": "tok", "c": " Kyiv ", "r": None, "pc": None, "al": None, **row}),
        MAPPING,
    )
    assert result.contact is not None
    wire = TRANSLATOR.contact(result.contact.to_json())
    assert VALIDATOR.contact_error(wire) is None
    assert VALIDATOR.validate_bulk(ENVELOPE.body([wire])) is None
    per_type: dict[str, int] = {}
    for channel in wire["channels"]:
        per_type[channel["type"]] = per_type.get(channel["type"], 0) + 1
        if channel["type"] in ("sms", "viber"):
            assert channel["value"].isdigit()
    assert max(per_type.values()) <= 2
    values = {field["id"]: field["value"] for field in wire.get("fields", ())}
    if isinstance(row["score"], float) and 5 in values:  # plain decimal text, never nan or 1e-07
        assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", values[5])
    if 6 in values and isinstance(row["meta"], list):  # JSON text: NaN has no JSON form
        assert "null" not in values[6]


# --- custom-field ids: int32 (`ContactField.id`, `customFieldsIDs` items) -----------------------------


@pytest.mark.parametrize("bad", [0, -5, 2**31, 10**12])
def test_a_configured_field_id_outside_int32_is_a_config_error(bad: int) -> None:
    # it went into customFieldsIDs of every bulk request: each was refused, every contact dead-lettered
    with pytest.raises(ConfigError, match=r"yespo\.field_ids\.score"):
        resolve_field_ids(["score"], {"score": bad}, None)


def test_field_ids_within_int32_resolve() -> None:
    assert resolve_field_ids(["a", "b"], {"a": 1}, {"b": 2**31 - 1}) == {"a": 1, "b": 2**31 - 1}


def test_sms_and_viber_values_are_ascii_digits_on_the_wire() -> None:
    # re's \d and str.isdigit() accept any script's digits ("\u0663\u0668\u0660" is 380): they were sent
    # as they were, and Yespo reads ASCII digits only
    contact = {
        "externalCustomerId": "E",
        "channels": [
            {"type": "sms", "value": "+\u0663\u0668\u0660 50 123 45 67"},
            {"type": "viber", "value": "\u0663\u0668\u0660501234567"},
        ],
    }
    wire = WireTranslator({}).contact(contact)
    assert wire["channels"] == [
        {"type": "sms", "value": "380501234567"},
        {"type": "viber", "value": "380501234567"},
    ]
