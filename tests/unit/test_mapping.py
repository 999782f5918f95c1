"""map_contact and decide_emission: every mapped field, the null rule, drops, groups, diff and deletes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.config import ContactMapping, load_settings
from connector.contact import Contact
from connector.emission import Emission, EmittedState, decide_emission, track_emission
from connector.errors import MappingError
from connector.jsonvalues import UNCHANGED_MARKER
from connector.mapping import UNMATCHABLE, ContactMapper, DroppedField, MappingResult, map_contact
from connector.models import CustomerView
from tests.samples import example_contact

REPO = Path(__file__).resolve().parents[2]

# The `contact:` section of ../shared/examples/connector.yaml (deploy/connector.yaml).
MAPPING: dict[str, Any] = {
    "externalCustomerId": "external_id",
    "firstName": "first_name",
    "lastName": "last_name",
    "channels": [
        {"type": "email", "column": "email"},
        {"type": "sms", "column": "phone"},
        {"type": "webPush", "column": "web_push_subscription"},
    ],
    "address": {
        "city": "city",
        "region": "region",
        "country": "country",
        "postalCode": "postal_code",
        "addressLine": "address_line",
    },
    "fields": {"birthDate": "birth_date", "loyaltyLevel": "loyalty_level"},
    "groups": {"child": "groups", "id": "group_id", "name": "group_name"},
    "languageCode": "language_code",
    "timeZone": "time_zone",
    "on_delete": "delete",
    "default_phone_region": "US",
}

ROW: dict[str, Any] = {
    "id": 7,
    "external_id": "EM12790",
    "first_name": "John",
    "last_name": "Smith",
    "email": "john.smith@example.com",
    "phone": "+1 650 253 0000",
    "web_push_subscription": "subscription-id-12345",
    "city": "New York",
    "region": "NY",
    "country": "US",
    "postal_code": "10001",
    "address_line": "123 Main Street",
    "birth_date": "1990-01-01",
    "loyalty_level": "Gold",
    "language_code": "en",
    "time_zone": "America/New_York",
    "updated_at": "2026-01-01T00:00:00Z",
}

GROUPS = [{"customer_id": 7, "group_id": 1001, "group_name": "Newsletter Subscribers"}]

EXPECTED: dict[str, Any] = example_contact(
    channels=[
        {"type": "email", "value": "john.smith@example.com"},
        {"type": "sms", "value": "+16502530000"},
        {"type": "webPush", "value": "subscription-id-12345"},
    ]
)


@pytest.fixture
def mapping_factory() -> Callable[..., ContactMapping]:
    def make(**overrides: Any) -> ContactMapping:
        return ContactMapping.model_validate({**MAPPING, **overrides})

    return make


@pytest.fixture
def mapping(mapping_factory: Callable[..., ContactMapping]) -> ContactMapping:
    return mapping_factory()


def view(groups: Sequence[Mapping[str, Any]] = GROUPS, **changes: Any) -> CustomerView:
    """Customer 7: ROW with `changes` applied, and its group rows."""
    return CustomerView("7", {**ROW, **changes}, {"groups": list(groups)})


def mapped(mapping: ContactMapping, **changes: Any) -> MappingResult:
    return map_contact(view(**changes), mapping)


# --- every mapped field ----------------------------------------------------------------------------


def test_full_row_maps_to_the_example_shape(mapping: ContactMapping) -> None:
    result = mapped(mapping)
    assert result.error is None
    assert result.dropped == ()
    assert result.contact is not None
    out = result.contact.to_json()
    assert out == EXPECTED
    assert list(out) == list(EXPECTED)
    assert result.fingerprint == result.contact.fingerprint()
    # the mapper's own JSON (what the upsert carries) is to_json() byte for byte: key order too
    assert result.contact_json is not None
    assert orjson.dumps(result.contact_json) == orjson.dumps(out)


def test_the_deployed_config_maps_the_example(mapping: ContactMapping) -> None:
    settings = load_settings(REPO / "deploy" / "connector.yaml", environ={})
    contact_mapping = settings.contact.model_copy(update={"default_phone_region": "US"})
    result = map_contact(view(), contact_mapping)
    assert result.contact is not None
    assert result.contact.to_json() == EXPECTED


@pytest.mark.parametrize(
    ("column", "raw", "path", "expected"),
    [
        ("first_name", "  Jean-Luc ", ("firstName",), "Jean-Luc"),
        ("last_name", "O'Neil", ("lastName",), "O'Neil"),
        ("external_id", 12790, ("externalCustomerId",), "12790"),
        ("external_id", " X-1 ", ("externalCustomerId",), "X-1"),
        ("email", " John@Example.COM", ("channels", 0, "value"), "john@example.com"),
        ("phone", "(650) 253-0000", ("channels", 1, "value"), "+16502530000"),
        ("web_push_subscription", " tok ", ("channels", 2, "value"), "tok"),
        ("city", "Kyiv", ("address", "city"), "Kyiv"),
        ("region", "Kyivska", ("address", "region"), "Kyivska"),
        ("country", "ua", ("address", "country"), "UA"),
        ("postal_code", "01001", ("address", "postalCode"), "01001"),
        ("address_line", "Khreshchatyk 1", ("address", "addressLine"), "Khreshchatyk 1"),
        ("birth_date", "2001-02-03", ("fields", 0, "value"), "2001-02-03"),
        ("loyalty_level", "Platinum", ("fields", 1, "value"), "Platinum"),
        ("language_code", "pt_br", ("languageCode",), "pt-BR"),
        ("time_zone", "europe/kyiv", ("timeZone",), "Europe/Kyiv"),
    ],
)
def test_each_mapped_field(
    mapping: ContactMapping, column: str, raw: Any, path: tuple[Any, ...], expected: str
) -> None:
    result = mapped(mapping, **{column: raw})
    assert result.dropped == ()
    assert result.contact is not None
    node: Any = result.contact.to_json()
    for step in path:
        node = node[step]
    assert node == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1990-01-01", "1990-01-01"),  # a date, as jsonvalues renders it
        ("2026-03-01T10:15:30.25Z", "2026-03-01T10:15:30.25Z"),  # a timestamp
        ("1234.50", "1234.50"),  # a decimal
        (42, "42"),
        (2.5, "2.5"),
        (True, "true"),
        (False, "false"),
        ({"tier": 2}, '{"tier":2}'),  # a JSON column
    ],
)
def test_custom_field_values_become_strings(mapping: ContactMapping, raw: Any, expected: str) -> None:
    result = mapped(mapping, loyalty_level=raw)
    assert result.contact is not None
    assert result.contact.to_json()["fields"][1] == {"name": "loyaltyLevel", "value": expected}


# --- the null rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, "", "   ", UNCHANGED_MARKER])
@pytest.mark.parametrize(
    ("column", "key"),
    [
        ("first_name", "firstName"),
        ("last_name", "lastName"),
        ("language_code", "languageCode"),
        ("time_zone", "timeZone"),
    ],
)
def test_null_or_empty_scalar_is_omitted(mapping: ContactMapping, empty: Any, column: str, key: str) -> None:
    result = mapped(mapping, **{column: empty})
    assert result.dropped == ()
    assert result.contact is not None
    out = result.contact.to_json()
    assert key not in out
    assert out == {k: v for k, v in EXPECTED.items() if k != key}


@pytest.mark.parametrize("empty", [None, "", UNCHANGED_MARKER])
def test_null_channel_field_and_address_part_are_omitted(mapping: ContactMapping, empty: Any) -> None:
    result = mapped(mapping, phone=empty, loyalty_level=empty, region=empty)
    assert result.dropped == ()
    assert result.contact is not None
    out = result.contact.to_json()
    assert [c["type"] for c in out["channels"]] == ["email", "webPush"]
    assert out["fields"] == [{"name": "birthDate", "value": "1990-01-01"}]
    assert "region" not in out["address"]


def test_unknown_values_are_kept_not_cleared(mapping: ContactMapping) -> None:
    # the TOAST marker left in the state (a value never seen) is unknown: out of the contact like a
    # null, but listed in `kept` so that Yespo keeps the field instead of clearing it
    result = mapped(mapping, last_name=UNCHANGED_MARKER, phone=UNCHANGED_MARKER, region=UNCHANGED_MARKER)
    nulls = mapped(mapping, last_name=None, phone=None, region=None)
    assert result.kept == ("lastName", "channels[sms]", "address.region")
    assert nulls.kept == ()
    assert result.contact == nulls.contact
    assert result.dropped == ()
    # a value learned later, or a real NULL, is a change of what to send: fingerprints differ
    assert result.fingerprint != nulls.fingerprint
    assert nulls.fingerprint == nulls.contact.fingerprint()  # type: ignore[union-attr]
    fields = mapped(mapping, loyalty_level=UNCHANGED_MARKER)
    assert fields.kept == ("fields.loyaltyLevel",)
    emission = decide_emission(None, None, result, "delete")
    assert emission is not None
    assert emission.keep_fields == result.kept
    assert emission.to_json()["keep_fields"] == ["lastName", "channels[sms]", "address.region"]
    assert "keep_fields" not in decide_emission(None, None, nulls, "delete").to_json()  # type: ignore[union-attr]


def test_address_omitted_when_all_parts_are_empty(mapping: ContactMapping) -> None:
    result = mapped(mapping, city=None, region="", country=None, postal_code=None, address_line=" ")
    assert result.contact is not None
    assert "address" not in result.contact.to_json()


def test_all_fields_and_channels_empty(mapping: ContactMapping) -> None:
    result = mapped(
        mapping, email=None, phone=None, web_push_subscription=None, birth_date=None, loyalty_level=None
    )
    assert result.contact is not None
    out = result.contact.to_json()
    assert "channels" not in out
    assert "fields" not in out


def test_unmapped_keys_are_not_required(mapping_factory: Callable[..., ContactMapping]) -> None:
    minimal = mapping_factory(
        firstName=None,
        lastName=None,
        channels=[],
        address=None,
        fields={},
        groups=None,
        languageCode=None,
        timeZone=None,
    )
    result = map_contact(view(), minimal)
    assert result.contact is not None
    assert result.contact.to_json() == {"externalCustomerId": "EM12790"}


def test_a_column_missing_from_the_row_is_reported(mapping: ContactMapping) -> None:
    row = {k: v for k, v in ROW.items() if k not in ("time_zone", "phone", "birth_date", "city")}
    result = map_contact(CustomerView("7", row, {}), mapping)
    assert result.contact is not None
    assert {d.field for d in result.dropped} == {
        "timeZone",
        "channels[sms]",
        "fields.birthDate",
        "address.city",
    }
    assert all(d.reason == "column missing from the row" for d in result.dropped)


# --- invalid values drop one field -----------------------------------------------------------------


def test_values_at_their_limits_are_kept(mapping: ContactMapping) -> None:
    """The limits are inclusive: a 5000-character field value and a 40-character name stay."""
    result = mapped(mapping, loyalty_level="x" * 5000, first_name="A" * 40)
    assert result.error is None and result.dropped == ()
    assert result.contact is not None
    out = result.contact.to_json()
    assert {"name": "loyaltyLevel", "value": "x" * 5000} in out["fields"]
    assert out["firstName"] == "A" * 40


@pytest.mark.parametrize(
    ("column", "raw", "field", "gone"),
    [
        ("first_name", "A" * 41, "firstName", "firstName"),
        ("first_name", "12345", "firstName", "firstName"),
        ("last_name", "Smith!", "lastName", "lastName"),
        ("email", "not-an-email", "channels[email]", "email"),
        ("phone", "12", "channels[sms]", "sms"),
        ("country", "USA", "address.country", "country"),
        ("language_code", "english", "languageCode", "languageCode"),
        ("time_zone", "Mars/Olympus", "timeZone", "timeZone"),
        ("external_id", True, "externalCustomerId", "externalCustomerId"),
        ("external_id", {"x": 1}, "externalCustomerId", "externalCustomerId"),
        ("loyalty_level", "x" * 5001, "fields.loyaltyLevel", "loyaltyLevel"),
        ("time_zone", ["UTC"], "timeZone", "timeZone"),
    ],
)
def test_invalid_value_drops_only_that_field(
    mapping: ContactMapping, column: str, raw: Any, field: str, gone: str
) -> None:
    result = mapped(mapping, **{column: raw})
    assert result.error is None
    assert [d.field for d in result.dropped] == [field]
    reason = result.dropped[0].reason
    assert reason
    assert str(raw)[:20] not in reason  # no value (PII) in the reason
    assert result.contact is not None
    out = result.contact.to_json()
    flat = str(out)
    if gone in ("email", "sms"):
        assert gone not in [c["type"] for c in out["channels"]]
    elif gone == "country":
        assert "country" not in out["address"]
    elif gone == "loyaltyLevel":
        assert [f["name"] for f in out["fields"]] == ["birthDate"]
    else:
        assert gone not in out
    # everything else survives
    assert "john.smith@example.com" in flat or gone == "email"
    assert out.get("lastName") == "Smith" or gone == "lastName"


def test_dropped_field_as_dict() -> None:
    assert DroppedField("timeZone", "not an IANA time zone").as_dict() == {
        "field": "timeZone",
        "reason": "not an IANA time zone",
    }


def test_phone_default_region_and_validation_come_from_the_mapping(
    mapping_factory: Callable[..., ContactMapping],
) -> None:
    ua = mapping_factory(default_phone_region="ua")
    assert ua.default_phone_region == "UA"
    result = map_contact(view(phone="050 123 4567"), ua)
    assert result.contact is not None
    assert result.contact.to_json()["channels"][1]["value"] == "+380501234567"
    no_region = map_contact(view(phone="050 123 4567"), mapping_factory(default_phone_region=None))
    assert [d.field for d in no_region.dropped] == ["channels[sms]"]
    loose = mapping_factory(phone_validation="possible")
    possible = map_contact(view(phone="+1 200 555 0123"), loose)
    assert possible.dropped == ()
    strict = map_contact(view(phone="+1 200 555 0123"), mapping_factory())
    assert [d.field for d in strict.dropped] == ["channels[sms]"]


def test_name_rules_from_the_mapping(mapping_factory: Callable[..., ContactMapping]) -> None:
    assert mapped(mapping_factory(), first_name="John, Jr").dropped != ()
    assert mapped(mapping_factory(name_rules="basic"), first_name="John, Jr").dropped == ()


def test_unknown_default_phone_region_is_a_config_error(
    mapping_factory: Callable[..., ContactMapping],
) -> None:
    with pytest.raises(ValueError, match="default_phone_region"):
        mapping_factory(default_phone_region="ZZ")


# --- channels --------------------------------------------------------------------------------------


def test_channel_order_follows_the_config(mapping_factory: Callable[..., ContactMapping]) -> None:
    reordered = mapping_factory(
        channels=[
            {"type": "webPush", "column": "web_push_subscription"},
            {"type": "email", "column": "email"},
            {"type": "viber", "column": "viber_id"},
            {"type": "telegram", "column": "tg"},
            {"type": "mobilePush", "column": "push_token"},
            {"type": "appInbox", "column": "inbox"},
        ]
    )
    result = map_contact(
        view(viber_id="+380 50 123 4567", tg=" 123 ", push_token="pt", inbox="ib"), reordered
    )
    assert result.contact is not None
    assert result.contact.to_json()["channels"] == [
        {"type": "webPush", "value": "subscription-id-12345"},
        {"type": "email", "value": "john.smith@example.com"},
        {"type": "viber", "value": "+380501234567"},
        {"type": "telegram", "value": "123"},
        {"type": "mobilePush", "value": "pt"},
        {"type": "appInbox", "value": "ib"},
    ]


def test_same_channel_twice_is_one_channel_and_at_most_two_per_type(
    mapping_factory: Callable[..., ContactMapping],
) -> None:
    many = mapping_factory(
        channels=[
            {"type": "email", "column": "email"},
            {"type": "email", "column": "email2"},
            {"type": "email", "column": "email3"},
            {"type": "email", "column": "email4"},
        ]
    )
    result = map_contact(
        view(email2="JOHN.SMITH@example.com", email3="b@example.com", email4="c@example.com"), many
    )
    assert result.contact is not None
    assert result.contact.to_json()["channels"] == [
        {"type": "email", "value": "john.smith@example.com"},
        {"type": "email", "value": "b@example.com"},
    ]
    assert result.dropped == (DroppedField("channels[email]", "more than 2 channels of this type"),)


# --- groups ----------------------------------------------------------------------------------------


def test_groups_sorted_and_deduplicated_by_id(mapping: ContactMapping) -> None:
    rows: list[dict[str, Any]] = [
        {"group_id": 30, "group_name": "C"},
        {"group_id": "10", "group_name": "A"},
        {"group_id": 20, "group_name": None},
        {"group_id": 30, "group_name": "C2"},
        {"group_id": 10.0, "group_name": "A"},
    ]
    result = map_contact(view(groups=rows), mapping)
    assert result.contact is not None
    assert result.contact.to_json()["groups"] == [
        {"id": 10, "name": "A"},
        {"id": 20},
        {"id": 30, "name": "C"},
    ]
    # the duplicate's name does not depend on the row order
    again = map_contact(view(groups=list(reversed(rows))), mapping)
    assert again.contact == result.contact


def test_bad_group_ids_are_dropped_null_ids_ignored(mapping: ContactMapping) -> None:
    rows: list[dict[str, Any]] = [
        {"group_id": "abc", "group_name": "x"},
        {"group_id": True, "group_name": "y"},
        {"group_id": None, "group_name": "z"},
        {"group_id": 5, "group_name": "ok"},
    ]
    result = map_contact(view(groups=rows), mapping)
    assert result.contact is not None
    assert result.contact.to_json()["groups"] == [{"id": 5, "name": "ok"}]
    assert [d.field for d in result.dropped] == ["groups", "groups"]


def test_no_group_rows_no_groups_key(mapping: ContactMapping) -> None:
    result = map_contact(CustomerView("7", ROW, {}), mapping)
    assert result.contact is not None
    assert "groups" not in result.contact.to_json()


def test_group_without_name_column(mapping_factory: Callable[..., ContactMapping]) -> None:
    m = mapping_factory(groups={"child": "groups", "id": "group_id"})
    result = map_contact(view(), m)
    assert result.contact is not None
    assert result.contact.to_json()["groups"] == [{"id": 1001}]


# --- absent and unmatchable ------------------------------------------------------------------------


def test_absent_customer_gives_no_contact(mapping: ContactMapping) -> None:
    result = map_contact(CustomerView("7", None, {"groups": GROUPS}), mapping)
    assert result == MappingResult(None)


def test_unmatchable_contact_is_an_error(mapping: ContactMapping) -> None:
    result = mapped(mapping, external_id=None, email="bad", phone=None, web_push_subscription="")
    assert result.contact is None
    assert result.error == UNMATCHABLE
    assert [d.field for d in result.dropped] == ["channels[email]"]


def test_external_id_alone_or_a_channel_alone_is_enough(mapping: ContactMapping) -> None:
    only_id = mapped(mapping, email=None, phone=None, web_push_subscription=None)
    assert only_id.error is None
    only_channel = mapped(mapping, external_id=None, email=None, phone=None)
    assert only_channel.error is None
    assert only_channel.contact is not None
    assert only_channel.contact.to_json()["channels"] == [
        {"type": "webPush", "value": "subscription-id-12345"}
    ]


def test_mapper_refuses_what_the_model_refuses(
    mapping: ContactMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connector.mapping as mapping_module

    monkeypatch.setattr(mapping_module, "normalize_country", lambda value: "usa")
    with pytest.raises(MappingError, match="failed validation"):
        ContactMapper(mapping).map(view())


def test_map_contact_reuses_the_compiled_mapper(
    mapping: ContactMapping, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connector.mapping as mapping_module

    built: list[ContactMapping] = []
    real = mapping_module.ContactMapper

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, m: ContactMapping) -> None:
            built.append(m)
            super().__init__(m)

    monkeypatch.setattr(mapping_module, "ContactMapper", Counting)
    monkeypatch.setattr(mapping_module, "_last_mapper", None)
    for _ in range(3):
        map_contact(view(), mapping)
    other = mapping.model_copy(update={"timeZone": None})
    assert "timeZone" not in (map_contact(view(), other).contact or Contact()).to_json()
    assert built == [mapping, other]


# --- diff-only emission ----------------------------------------------------------------------------


def emit(
    mapping: ContactMapping, state: EmittedState | None, v: CustomerView, on_delete: str = "delete"
) -> tuple[Emission | None, EmittedState | None]:
    result = map_contact(v, mapping)
    emission = decide_emission(
        state.fingerprint if state else None, state.groups if state else None, result, on_delete
    )
    return emission, track_emission(state, emission)


def test_first_sight_emits_an_upsert(mapping: ContactMapping) -> None:
    emission, state = emit(mapping, None, view())
    assert emission is not None
    assert emission.op == "upsert"
    assert emission.contact == EXPECTED
    assert emission.groups_removed == []
    assert emission.erase is False
    assert state == EmittedState(emission.fingerprint or "", (1001,))
    assert emission.to_json() == {"op": "upsert", "contact": EXPECTED, "groups_removed": [], "erase": False}


def test_unchanged_contact_emits_nothing(mapping: ContactMapping) -> None:
    _, state = emit(mapping, None, view())
    emission, after = emit(mapping, state, view())
    assert emission is None
    assert after == state


@pytest.mark.parametrize(
    "changes",
    [
        {"updated_at": "2026-05-05T05:05:05Z"},  # a column the mapping does not use
        {"id": 8},
        {"email": "  JOHN.SMITH@EXAMPLE.COM "},  # the same value after normalization
        {"phone": "(650) 253-0000"},
        {"time_zone": "america/new_york"},
    ],
)
def test_a_change_that_does_not_change_the_contact_emits_nothing(
    mapping: ContactMapping, changes: dict[str, Any]
) -> None:
    _, state = emit(mapping, None, view())
    emission, _ = emit(mapping, state, view(**changes))
    assert emission is None


def test_a_mapped_change_emits_an_upsert(mapping: ContactMapping) -> None:
    _, state = emit(mapping, None, view())
    emission, after = emit(mapping, state, view(loyalty_level="Platinum"))
    assert emission is not None
    assert emission.op == "upsert"
    assert emission.contact is not None
    assert emission.contact["fields"][1] == {"name": "loyaltyLevel", "value": "Platinum"}
    assert after is not None and state is not None
    assert after.fingerprint != state.fingerprint


def test_clearing_a_column_emits_the_contact_without_the_field(mapping: ContactMapping) -> None:
    _, state = emit(mapping, None, view())
    emission, _ = emit(mapping, state, view(first_name=None))
    assert emission is not None
    assert emission.contact is not None
    assert "firstName" not in emission.contact


def test_group_add_and_remove(mapping: ContactMapping) -> None:
    g = {"customer_id": 7, "group_name": "g"}
    _, state = emit(mapping, None, view(groups=[{**g, "group_id": 1}, {**g, "group_id": 2}]))
    assert state is not None and state.groups == (1, 2)
    added, state = emit(
        mapping, state, view(groups=[{**g, "group_id": 1}, {**g, "group_id": 2}, {**g, "group_id": 3}])
    )
    assert added is not None
    assert added.groups_removed == []
    assert added.group_ids == (1, 2, 3)
    removed, state = emit(mapping, state, view(groups=[{**g, "group_id": 3}]))
    assert removed is not None
    assert removed.groups_removed == [1, 2]
    assert removed.contact is not None
    assert removed.contact["groups"] == [{"id": 3, "name": "g"}]
    cleared, state = emit(mapping, state, view(groups=[]))
    assert cleared is not None
    assert cleared.groups_removed == [3]
    assert cleared.contact is not None
    assert "groups" not in cleared.contact
    assert state is not None and state.groups == ()


def test_renaming_a_group_is_an_upsert_without_removal(mapping: ContactMapping) -> None:
    _, state = emit(mapping, None, view())
    emission, _ = emit(mapping, state, view(groups=[{"group_id": 1001, "group_name": "Renamed"}]))
    assert emission is not None
    assert emission.groups_removed == []


@pytest.mark.parametrize(("on_delete", "erase"), [("delete", False), ("erase", True)])
def test_delete_emits_one_delete(mapping: ContactMapping, on_delete: str, erase: bool) -> None:
    _, state = emit(mapping, None, view(), on_delete)
    gone = CustomerView("7", None, {"groups": GROUPS})
    emission, state = emit(mapping, state, gone, on_delete)
    assert emission == Emission("delete", None, [], erase, None)
    assert emission is not None
    assert emission.to_json() == {"op": "delete", "groups_removed": [], "erase": erase}
    assert emission.group_ids == ()
    assert state is None
    # a second delete (e.g. the tombstone) emits nothing more
    again, state = emit(mapping, state, gone, on_delete)
    assert again is None
    # a re-created customer is upserted again, even with the same data
    back, state = emit(mapping, state, view(), on_delete)
    assert back is not None
    assert back.op == "upsert"
    assert back.contact == EXPECTED


def test_delete_ignored(mapping: ContactMapping) -> None:
    _, state = emit(mapping, None, view(), "ignore")
    emission, after = emit(mapping, state, CustomerView("7", None, {}), "ignore")
    assert emission is None
    assert after == state  # Yespo still has the contact: a re-created identical customer emits nothing
    back, _ = emit(mapping, after, view(), "ignore")
    assert back is None


@pytest.mark.parametrize("on_delete", ["delete", "erase", "ignore"])
def test_delete_of_a_never_emitted_customer_emits_nothing(mapping: ContactMapping, on_delete: str) -> None:
    emission, state = emit(mapping, None, CustomerView("7", None, {}), on_delete)
    assert emission is None
    assert state is None


def test_unmatchable_emits_nothing_and_keeps_the_state(mapping: ContactMapping) -> None:
    _, state = emit(mapping, None, view())
    bad = view(external_id=None, email=None, phone=None, web_push_subscription=None)
    emission, after = emit(mapping, state, bad)
    assert emission is None
    assert after == state


def test_decide_emission_without_precomputed_fingerprint(mapping: ContactMapping) -> None:
    result = map_contact(view(), mapping)
    assert result.contact is not None
    bare = MappingResult(result.contact, result.dropped)
    a = decide_emission(None, None, bare, "delete")
    b = decide_emission(None, None, result, "delete")
    assert a == b
    assert decide_emission(result.fingerprint, [1001], bare, "delete") is None


def test_unknown_on_delete_is_refused(mapping: ContactMapping) -> None:
    with pytest.raises(ValueError, match="on_delete"):
        decide_emission(None, None, map_contact(view(), mapping), "purge")


def test_track_emission() -> None:
    prev = EmittedState("f0", (1,))
    assert track_emission(prev, None) is prev
    assert track_emission(prev, Emission("delete", None, [], False, None)) is None
    up = Emission("upsert", {"groups": [{"id": 2}, {"id": 5}]}, [1], False, "f1")
    assert track_emission(prev, up) == EmittedState("f1", (2, 5))
