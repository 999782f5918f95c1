"""Custom-field values fitted to their catalog type, checked against the stand-in's own rules."""

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.sink.catalog import parse_field_types
from connector.sink.fieldtypes import fit_field_value
from connector.sink.wire import WireTranslator
from connector.standin.rules import field_value_problem


@pytest.mark.parametrize(
    ("kind", "text", "sent"),
    [
        ("DATE", "2024-05-01", "2024-05-01"),
        ("DATE", "01.05.2024", "01.05.2024"),
        ("DATE", "2024-05-01T23:30:00Z", "2024-05-01"),
        ("DATE", "2024-05-01T23:30:00-02:00", "2024-05-02"),  # its day in UTC
        ("DATETIME", "2024-05-01T10:30", "2024-05-01T10:30"),
        ("DATETIME", "2024-05-01T10:30:59.123456Z", "2024-05-01T10:30"),
        ("DATETIME", "2024-05-01T10:30:00+03:00", "2024-05-01T07:30"),
        ("DATETIME", "2024-05-01", "2024-05-01T00:00"),
        ("NUMBER", "5", "5"),
        ("NUMBER", "5.000", "5"),
        ("NUMBER", "-2147483648", "-2147483648"),
        ("NUMBER", "+7", "7"),
        ("TEXTFIELD", "x" * 1000, "x" * 1000),
        ("TEXTAREA", "x" * 5000, "x" * 5000),
        ("DECIMAL", "10.50", "10.50"),
        ("COMBOBOX", "anything", "anything"),
    ],
)
def test_values_are_fitted_to_the_form_their_type_takes(kind, text, sent) -> None:
    assert fit_field_value(kind, text) == (sent, None)
    assert field_value_problem(kind, sent) is None  # and the stand-in (the documented rules) takes it


@pytest.mark.parametrize(
    ("kind", "text", "reason"),
    [
        ("DATE", "2024-02-30", "not a calendar date (DATE)"),
        ("DATE", "31.02.2024", "not a calendar date (DATE)"),
        ("DATE", "May 1st", "not a date (DATE)"),
        ("DATETIME", "soon", "not a date-time (DATETIME)"),
        ("NUMBER", "10.50", "not an integer (NUMBER)"),
        ("NUMBER", "2147483648", "outside the int32 range (NUMBER)"),
        ("NUMBER", "1e3", "not an integer (NUMBER)"),
        ("TEXTFIELD", "x" * 1001, "longer than 1000 characters (TEXTFIELD)"),
        ("TEXTAREA", "x" * 5001, "longer than 5000 characters (TEXTAREA)"),
    ],
)
def test_a_value_that_cannot_fit_is_left_out_with_a_reason_without_the_value(kind, text, reason) -> None:
    assert fit_field_value(kind, text) == (None, reason)


@given(
    st.sampled_from(["DATE", "DATETIME", "NUMBER", "TEXTFIELD", "TEXTAREA"]),
    st.one_of(
        st.text(max_size=30),
        st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
        st.dates().map(str),
        st.integers(-(2**40), 2**40).map(str),
        st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    ),
)
def test_whatever_is_sent_the_stand_in_takes(kind, text) -> None:
    """Every fitted value passes the stand-in's checks of the documented rules (another implementation)."""
    sent, reason = fit_field_value(kind, text)
    assert (sent is None) != (reason is None)
    if sent is not None:
        assert field_value_problem(kind, sent) is None, (kind, text, sent)


def test_the_translator_fits_by_catalog_type_and_reports_each_field_and_reason_once(caplog) -> None:
    catalog = {
        "addressBook": {
            "fieldGroups": [
                {
                    "fields": [
                        {"id": 201, "name": "visit", "description": {"type": "datetime"}},
                        {"id": 202, "name": "note", "description": {"type": "TEXTFIELD"}},
                        {"id": 203, "name": "plain"},
                    ]
                }
            ]
        }
    }
    types = parse_field_types(catalog)
    assert types == {201: "DATETIME", 202: "TEXTFIELD"}
    translator = WireTranslator({"visit": 201, "note": 202, "plain": 203}, None, types)
    long = "secret-" * 200
    contact = {
        "externalCustomerId": "c1",
        "fields": [
            {"name": "visit", "value": "2024-05-01T10:30:00Z"},
            {"name": "note", "value": long},
            {"name": "plain", "value": long},
        ],
    }
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            sent = translator.contact(contact)["fields"]
    assert sent == [{"id": 201, "value": "2024-05-01T10:30"}, {"id": 203, "value": long}]
    warned = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert [(r.field, r.reason) for r in warned] == [("note", "longer than 1000 characters (TEXTFIELD)")]
    assert "secret" not in caplog.text


def test_a_configured_type_applies_by_name_and_one_for_an_unmapped_field_is_refused_naming_it() -> None:
    import httpx
    from pydantic import SecretStr

    from connector.config import load_settings
    from connector.errors import ConfigError
    from connector.sink.client import YespoClient

    settings = load_settings("deploy/connector.yaml", environ={})
    yespo = settings.yespo.model_copy(
        update={"api_key": SecretStr("k"), "field_ids": {"birthDate": 101, "loyaltyLevel": 102}}
    )
    typed = yespo.model_copy(update={"field_types": {"loyaltyLevel": "NUMBER"}})
    client = YespoClient(httpx.Client(), typed, settings.contact)
    client.resolve_fields()  # every id configured: no request
    sent = client.translate({"fields": [{"name": "loyaltyLevel", "value": "3.0"}]})
    assert sent["fields"] == [{"id": 102, "value": "3"}]
    wrong = yespo.model_copy(update={"field_types": {"vipSince": "DATE"}})
    with pytest.raises(ConfigError) as info:
        YespoClient(httpx.Client(), wrong, settings.contact)
    assert info.value.key == "yespo.field_types.vipSince"


@pytest.mark.parametrize(
    ("kind", "text", "zone", "sent"),
    [
        ("DATETIME", "2024-05-01T02:30:00Z", "America/New_York", "2024-04-30T22:30"),  # EDT, -4 h
        ("DATETIME", "2024-01-15T02:30:00Z", "America/New_York", "2024-01-14T21:30"),  # EST, -5 h
        ("DATETIME", "2024-05-01T22:30:00+00:00", "Europe/Kyiv", "2024-05-02T01:30"),
        ("DATE", "2024-05-01T02:30:00Z", "America/New_York", "2024-04-30"),  # the day it was there
        ("DATETIME", "2024-05-01T02:30", "America/New_York", "2024-05-01T02:30"),  # no offset: as is
        ("DATE", "2024-05-01", "Pacific/Kiritimati", "2024-05-01"),  # a date is no moment
    ],
)
def test_timestamps_are_written_in_the_zone_given(kind, text, zone, sent) -> None:
    from zoneinfo import ZoneInfo

    assert fit_field_value(kind, text, ZoneInfo(zone)) == (sent, None)


def test_the_translator_writes_timestamps_in_the_contacts_own_zone_by_default() -> None:
    """Yespo's API guide: timestamps are in the contact's time zone (the legacy guide: the zone of
    the user who sends the request, hence `yespo.datetime_zone`)."""

    def sent(translator: WireTranslator, **contact: object) -> str:
        wire = translator.contact(
            {"fields": [{"name": "last_order", "value": "2024-05-01T02:30:00Z"}], **contact}
        )
        return wire["fields"][0]["value"]

    types = {7: "DATETIME"}
    own = WireTranslator({"last_order": 7}, field_types=types)
    assert sent(own, timeZone="America/New_York") == "2024-04-30T22:30"
    assert sent(own, timeZone="Asia/Tokyo") == "2024-05-01T11:30"
    assert sent(own) == "2024-05-01T02:30"  # no zone of its own: UTC
    assert sent(own, timeZone="Mars/Olympus_Mons") == "2024-05-01T02:30"  # unknown: UTC
    fixed = WireTranslator({"last_order": 7}, field_types=types, datetime_zone="Europe/Kyiv")
    assert sent(fixed, timeZone="America/New_York") == "2024-05-01T05:30"
    utc = WireTranslator({"last_order": 7}, field_types=types, datetime_zone="UTC")
    assert sent(utc, timeZone="America/New_York") == "2024-05-01T02:30"
