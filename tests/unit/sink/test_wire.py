import pytest

from connector.config import ContactMapping, YespoSettings
from connector.errors import ConfigError, MappingError
from connector.sink.catalog import (
    check_channel_mapping,
    custom_field_names,
    dropped_fields,
    parse_field_catalog,
    resolve_field_ids,
)
from connector.sink.wire import BulkEnvelope, WireTranslator, managed_contact_fields
from tests.samples import example_contact

EXAMPLE = example_contact(
    channels=[
        {"type": "email", "value": "john.smith@example.com"},
        {"type": "sms", "value": "+1 (234) 567-890"},
        {"type": "webPush", "value": "subscription-id-12345"},
        {"type": "mobilePush", "value": "tok", "device": {"appId": "a"}},
        {"type": "appInbox", "value": "inbox-1"},
        {"type": "viber", "value": "+380501234567"},
    ]
)

FULL_MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "external_id",
        "firstName": "first_name",
        "lastName": "last_name",
        "channels": [
            {"type": "email", "column": "email"},
            {"type": "sms", "column": "phone"},
            {"type": "webPush", "column": "wp"},
            {"type": "mobilePush", "column": "mp"},
            {"type": "appInbox", "column": "ai"},
            {"type": "viber", "column": "phone"},
        ],
        "address": {
            "city": "city",
            "region": "region",
            "country": "country",
            "postalCode": "postal_code",
            "addressLine": "address_line",
        },
        "fields": {"birthDate": "birth_date", "loyaltyLevel": "loyalty_level"},
        "languageCode": "language_code",
        "timeZone": "time_zone",
    }
)


def test_every_field_of_the_example_is_translated():
    wire = WireTranslator({"birthDate": 101, "loyaltyLevel": 102}, country_field_id=103).contact(EXAMPLE)
    assert wire == {
        "externalCustomerId": "EM12790",
        "firstName": "John",
        "lastName": "Smith",
        "channels": [
            {"type": "email", "value": "john.smith@example.com"},
            {"type": "sms", "value": "1234567890"},
            {"type": "webpush", "value": "subscription-id-12345"},
            {"type": "mobilepush", "value": "tok", "device": {"appId": "a"}},
            {"type": "appinbox", "value": "inbox-1"},
            {"type": "viber", "value": "380501234567"},
        ],
        "address": {"address": "123 Main Street", "town": "New York", "region": "NY", "postcode": "10001"},
        "fields": [
            {"id": 101, "value": "1990-01-01"},
            {"id": 102, "value": "Gold"},
            {"id": 103, "value": "US"},
        ],
        "languageCode": "en",
        "timeZone": "America/New_York",
    }
    assert "groups" not in wire


def test_country_is_dropped_without_a_country_field():
    wire = WireTranslator({"birthDate": 101, "loyaltyLevel": 102}).contact(EXAMPLE)
    assert {f["id"] for f in wire["fields"]} == {101, 102}
    assert "country" not in wire["address"]


def test_values_become_strings_and_empty_values_are_left_out():
    contact = {
        "externalCustomerId": 42,
        "firstName": None,
        "channels": [
            {"type": "sms", "value": "+"},
            {"type": "email", "value": ""},
            {"type": "email", "value": "a@b.c"},
        ],
        "address": {"city": None, "region": ""},
        "fields": [{"name": "n", "value": 7}, {"name": "b", "value": True}, {"name": "z", "value": None}],
    }
    wire = WireTranslator({"n": 1, "b": 2, "z": 3}).contact(contact)
    assert wire == {
        "externalCustomerId": "42",
        "channels": [{"type": "email", "value": "a@b.c"}],
        "fields": [{"id": 1, "value": "7"}, {"id": 2, "value": "true"}],
    }


def test_channels_are_always_present_and_duplicates_dropped():
    assert WireTranslator({}).contact({"externalCustomerId": "e"}) == {
        "externalCustomerId": "e",
        "channels": [],
    }
    wire = WireTranslator({}).contact(
        {"channels": [{"type": "sms", "value": "+1 23"}, {"type": "sms", "value": "123"}]}
    )
    assert wire["channels"] == [{"type": "sms", "value": "123"}]


@pytest.mark.parametrize(
    "contact",
    [
        {"channels": [{"type": "telegram", "value": "x"}]},
        {"channels": [], "fields": [{"name": "unknown", "value": "x"}]},
        ["not", "an", "object"],
    ],
)
def test_untranslatable_contacts_raise_mapping_error(contact):
    with pytest.raises(MappingError):
        WireTranslator({}).contact(contact)


def test_managed_contact_fields_follow_the_mapping():
    assert managed_contact_fields(FULL_MAPPING) == (
        "externalCustomerId",
        "firstName",
        "lastName",
        "email",
        "sms",
        "webpush",
        "mobilepush",
        "address",
        "town",
        "region",
        "postcode",
        "languageCode",
        "timeZone",
    )
    small = ContactMapping.model_validate(
        {"externalCustomerId": "id", "channels": [{"type": "email", "column": "e"}], "address": {"city": "c"}}
    )
    assert managed_contact_fields(small) == ("externalCustomerId", "email", "town")


def test_custom_field_names_and_dropped_fields():
    with_country = YespoSettings(country_field="country")
    assert custom_field_names(FULL_MAPPING, with_country) == ("birthDate", "loyaltyLevel", "country")
    assert dropped_fields(FULL_MAPPING, with_country) == ()
    assert custom_field_names(FULL_MAPPING, YespoSettings()) == ("birthDate", "loyaltyLevel")
    assert dropped_fields(FULL_MAPPING, YespoSettings()) == ("address.country",)


def test_channel_mapping_checks():
    check_channel_mapping(FULL_MAPPING)
    bad = ContactMapping.model_validate({"channels": [{"type": "telegram", "column": "t"}]})
    with pytest.raises(ConfigError, match=r"contact\.channels\.0\.type"):
        check_channel_mapping(bad)
    three = ContactMapping.model_validate({"channels": [{"type": "email", "column": c} for c in "abc"]})
    with pytest.raises(ConfigError, match="at most two"):
        check_channel_mapping(three)


def test_catalog_parsing_accepts_objects_for_one_element_lists():
    catalog = {
        "addressBook": {
            "addressBookId": 1,
            "name": "main",
            "fieldGroups": [
                {"name": "g1", "fields": {"id": 7, "name": "Birth date", "fieldKey": "birthDate"}},
                {
                    "name": "g2",
                    "fields": [{"id": 8, "name": "tier", "fieldKey": "T"}, {"id": "bad", "name": "x"}],
                },
            ],
        }
    }
    assert parse_field_catalog(catalog) == {"birthDate": 7, "Birth date": 7, "tier": 8, "T": 8}
    assert parse_field_catalog({"addressBook": []}) == {}
    assert parse_field_catalog("nonsense") == {}


def test_resolution_prefers_config_then_catalog_and_names_unknown_fields():
    assert resolve_field_ids(["a", "b"], {"a": 1}, {"a": 9, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ConfigError, match=r"contact\.fields\.c: custom field 'c'"):
        resolve_field_ids(["c"], {}, {"a": 1})
    with pytest.raises(ConfigError, match=r"yespo\.country_field"):
        resolve_field_ids(["land"], {}, None, key_of={"land": "yespo.country_field"})


def test_bulk_envelope_body():
    body = BulkEnvelope(("email", "town"), (101,)).body([{"channels": []}])
    assert body == {
        "contacts": [{"channels": []}],
        "dedupeOn": "externalCustomerId",
        "contactFields": ["email", "town"],
        "customFieldsIDs": [101],
        "restoreDeleted": True,
    }


def test_the_address_country_replaces_a_custom_field_of_the_same_id():
    contact = {
        "fields": [{"name": "country", "value": "PL"}, {"name": "birthDate", "value": "1990-01-01"}],
        "address": {"city": "Kyiv", "country": "UA"},
    }
    wire = WireTranslator({"country": 103, "birthDate": 101}, country_field_id=103).contact(contact)
    assert wire["fields"] == [{"id": 101, "value": "1990-01-01"}, {"id": 103, "value": "UA"}]
    assert wire["address"] == {"town": "Kyiv"}
