"""The stand-in against the documented Yespo contract (yespo-contacts-api.md), in process, fake clock.

Each test pins a point where the stand-in once departed from the spec: bulk `contactFields` on new
contacts, the import-status `dedupeValue`, 409 on a repeated PUT, the search rate limit, and the
custom-field value rules.
"""

import base64
import json
from typing import Any

import pytest

from connector.standin.faults import Faults
from connector.standin.records import FieldDef
from connector.standin.routes import StandInApp
from connector.standin.store import ContactStore
from connector.standin.validation import RequestValidator, load_spec
from tests.unit.test_merge_stage_abort import Clock

KEY = "k"
HEADERS = {
    "authorization": "Basic " + base64.b64encode(b"u:" + KEY.encode()).decode(),
    "content-type": "application/json",
}
CATALOG = (
    FieldDef(101, "birthDate", "DATE"),
    FieldDef(102, "note", "TEXTFIELD"),
    FieldDef(104, "bio", "TEXTAREA"),
    FieldDef(105, "visits", "NUMBER"),
    FieldDef(106, "lastSeen", "DATETIME"),
    FieldDef(107, "tier", "COMBOBOX"),
)
_VALIDATOR = RequestValidator(load_spec())


class App:
    """A `StandInApp` without sockets; `call` answers (status, parsed body or text)."""

    def __init__(self, rate_limit: float | None = None) -> None:
        self.clock = Clock(1000.0)
        self.store = ContactStore(CATALOG)
        self.app = StandInApp(
            api_key=KEY,
            store=self.store,
            validator=_VALIDATOR,
            faults=Faults(self.clock),
            clock=self.clock,
            rate_limit=rate_limit,
        )

    def call(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        raw = b"" if body is None else json.dumps(body).encode()
        reply = self.app.handle(method, "/api/v1" + path, query or {}, HEADERS, raw)
        if reply.content_type.startswith("application/json"):
            return reply.status, json.loads(reply.body)
        return reply.status, reply.body.decode()

    def bulk(
        self, contacts: list[dict[str, Any]], dedupe_on: str = "externalCustomerId", **extra: Any
    ) -> Any:
        status, answer = self.call(
            "POST", "/contacts", {"contacts": contacts, "dedupeOn": dedupe_on, **extra}
        )
        assert status == 200, answer
        return answer

    def stored(self) -> list[dict[str, Any]]:
        return self.store.dump()["contacts"]

    def mapping(self, answer: Any) -> list[dict[str, Any]]:
        status, session = self.call("GET", f"/importstatus/{answer['asyncSessionId']}")
        assert status == 200
        return session["mapping"]


@pytest.fixture
def app() -> App:
    return App()


ANN = {
    "externalCustomerId": "n1",
    "firstName": "Ann",
    "lastName": "Lee",
    "contactKey": "K1",
    "channels": [{"type": "email", "value": "ann@example.com"}, {"type": "sms", "value": "380501234567"}],
    "address": {"town": "Kyiv", "region": "KY", "postcode": "01001", "address": "Main 1"},
    "languageCode": "uk",
    "timeZone": "Europe/Kyiv",
}


# -- 1. contactFields restricts what is updated, not what a new contact gets -------------------------------


@pytest.mark.parametrize("listed", [["firstName"], ["externalCustomerId", "firstName"], []])
def test_a_contact_created_by_a_bulk_gets_every_field_whatever_contact_fields_lists(app, listed):
    app.bulk([ANN], contactFields=listed)
    (stored,) = app.stored()
    assert stored["externalCustomerId"] == "n1"
    assert stored["channels"] == ANN["channels"]
    assert (stored["firstName"], stored["lastName"], stored["contactKey"]) == ("Ann", "Lee", "K1")
    assert stored["address"] == ANN["address"]
    assert (stored["languageCode"], stored["timeZone"]) == ("uk", "Europe/Kyiv")
    # the external id was stored, so the same request now finds it (rule 1) instead of creating again
    app.bulk([ANN], contactFields=listed)
    assert len(app.stored()) == 1


def test_contact_fields_still_restrict_the_update_of_an_existing_contact(app):
    app.bulk([ANN])
    changed = {**ANN, "firstName": "Eve", "lastName": "Kim", "channels": ANN["channels"][:1]}
    app.bulk([changed], contactFields=["firstName"])
    (stored,) = app.stored()
    assert (stored["firstName"], stored["lastName"]) == ("Eve", "Lee")
    assert stored["channels"] == ANN["channels"]  # sms not listed: kept


# -- 2. import-status mapping: dedupeValue is the value of the field used for uniqueness ------------------


def test_dedupe_value_is_the_email_channel_value_for_dedupe_on_email(app):
    contact = {"firstName": "Ann", "channels": [{"type": "email", "value": "m@example.com"}]}
    created = app.bulk([contact], "email")
    [entry] = app.mapping(created)
    assert entry["dedupeValue"] == "m@example.com"
    updated = app.bulk([{**contact, "firstName": "Bo"}], "email")  # matched on the channel
    assert app.mapping(updated) == [entry]


def test_dedupe_value_is_the_phone_for_dedupe_on_sms_even_with_an_external_id(app):
    contact = {"externalCustomerId": "x9", "channels": [{"type": "sms", "value": "380501234567"}]}
    [entry] = app.mapping(app.bulk([contact], "sms"))
    assert entry["dedupeValue"] == "380501234567"


def test_dedupe_value_for_external_id_and_for_id(app):
    [by_ext] = app.mapping(app.bulk([ANN]))
    assert by_ext["dedupeValue"] == "n1"
    cid = by_ext["contactId"]
    [by_id] = app.mapping(app.bulk([{"id": cid, "firstName": "Bo", "channels": ANN["channels"]}], "id"))
    assert by_id == {"dedupeValue": str(cid), "contactId": cid}


# -- 3. PUT /contact/{id}: a repeat within the minute gets 409 and is not applied ---------------------------


def test_repeated_put_within_a_minute_gets_409_and_is_not_applied(app):
    added = app.call("POST", "/contact", {"channels": [{"type": "email", "value": "p@example.com"}]})
    cid = added[1]["id"]
    update = {"firstName": "Ann", "channels": [{"type": "email", "value": "p@example.com"}]}
    assert app.call("PUT", f"/contact/{cid}", update) == (200, "")
    app.clock.now += 1
    assert app.call("PUT", f"/contact/{cid}", {**update, "firstName": "Bob"})[0] == 200
    app.clock.now += 1
    assert app.call("PUT", f"/contact/{cid}", update) == (409, "Duplicated request")
    assert app.call("GET", f"/contact/{cid}")[1]["firstName"] == "Bob"  # not applied
    app.clock.now += 60
    assert app.call("PUT", f"/contact/{cid}", update)[0] == 200
    assert app.call("GET", f"/contact/{cid}")[1]["firstName"] == "Ann"
    assert app.app.stats()["counters"]["duplicates"] == 1


def test_the_put_window_is_per_target_and_failed_puts_are_not_remembered(app):
    ids = [
        app.call("POST", "/contact", {"channels": [{"type": "email", "value": f"q{i}@example.com"}]})[1]["id"]
        for i in range(2)
    ]
    update = {"lastName": "Lee", "channels": [{"type": "sms", "value": "380501234567"}]}
    assert app.call("PUT", f"/contact/{ids[0]}", update)[0] == 200
    assert app.call("PUT", f"/contact/{ids[1]}", update)[0] == 200  # another contact: no repeat
    assert [app.call("PUT", "/contact/999999", update)[0] for _ in range(2)] == [404, 404]
    # a PUT body sent as an add is another request too
    assert app.call("POST", "/contact", update)[0] == 200


# -- 4. search has its own 50/s limit and takes no slot of the general 200/s one ------------------------


def test_searches_use_only_their_own_window():
    app = App(rate_limit=200)
    searches = [app.call("GET", "/contacts", query={"externalCustomerId": "x"})[0] for _ in range(60)]
    assert searches == [200] * 50 + [429] * 10
    others = [app.call("GET", "/account/info")[0] for _ in range(201)]
    assert others == [200] * 200 + [429]  # the same instant: the whole 200/s is still free
    assert app.call("GET", "/contacts", query={"externalCustomerId": "x"})[0] == 429
    app.clock.now += 1.0
    assert app.call("GET", "/contacts", query={"externalCustomerId": "x"})[0] == 200


# -- 5. custom-field values (spec section 3: S7 limits, section 1 date formats) ------------------------------

VALID = [
    ("TEXTFIELD", "x" * 1000),
    ("TEXTFIELD", ""),
    ("TEXTAREA", "x" * 5000),
    ("NUMBER", "2147483647"),
    ("NUMBER", "-2147483648"),
    ("NUMBER", "+7"),
    ("NUMBER", "007"),
    ("DATE", "2024-02-29"),
    ("DATE", "29/02/2024"),
    ("DATE", "29.02.2024"),
    ("DATE", "31.12.99"),
    ("DATETIME", "2024-02-29T23:59"),
    ("DATETIME", "1990-01-01T00:00"),
    ("COMBOBOX", "x" * 6000),  # no documented limit: not checked
]
INVALID = [
    ("TEXTFIELD", "x" * 1001),
    ("TEXTAREA", "x" * 5001),
    ("NUMBER", "2147483648"),
    ("NUMBER", "-2147483649"),
    ("NUMBER", "1_000"),
    ("NUMBER", " 7 "),
    ("NUMBER", "\u0663"),  # an Arabic-Indic digit: int() takes it
    ("NUMBER", "1.5"),
    ("NUMBER", ""),
    ("DATE", "2024-13-45"),
    ("DATE", "2023-02-29"),
    ("DATE", "31/04/2024"),
    ("DATE", "30.02.24"),
    ("DATE", "2024-1-5"),
    ("DATE", "1990-01-01T00:00"),
    ("DATE", "\u0661\u0669\u0669\u0660-01-01"),  # non-ASCII digits match a plain \d
    ("DATETIME", "yesterday"),
    ("DATETIME", "2024-02-29"),
    ("DATETIME", "2024-02-30T10:00"),
    ("DATETIME", "2024-02-29T24:00"),
    ("DATETIME", "2024-02-29T10:60"),
    ("DATETIME", "2024-02-29 10:00"),
    ("DATETIME", "2024-02-29T10:00:00"),
]
FIELD_IDS = {f.type: f.id for f in CATALOG}
STORE = ContactStore(CATALOG)


def field_problem(kind: str, value: str) -> str | None:
    return STORE.field_problem({"fields": [{"id": FIELD_IDS[kind], "value": value}]})


@pytest.mark.parametrize(("kind", "value"), VALID)
def test_documented_custom_field_values_are_accepted(kind, value):
    assert field_problem(kind, value) is None


@pytest.mark.parametrize(("kind", "value"), INVALID)
def test_undocumented_custom_field_values_are_refused_without_echoing_the_value(kind, value):
    problem = field_problem(kind, value)
    assert problem is not None
    assert value.strip() == "" or value not in problem


def _with_field(i: int, kind: str, value: str) -> dict[str, Any]:
    return {
        "externalCustomerId": f"v{i}",
        "channels": [{"type": "email", "value": f"v{i}@example.com"}],
        "fields": [{"id": FIELD_IDS[kind], "value": value}],
    }


@pytest.mark.parametrize(("kind", "value"), INVALID)
def test_an_invalid_custom_field_value_gets_400_on_add_and_put(app, kind, value):
    status, text = app.call("POST", "/contact", _with_field(1, kind, value))
    assert status == 400 and text.startswith("Bad request: fields")
    cid = app.call("POST", "/contact", _with_field(2, "TEXTFIELD", "ok"))[1]["id"]
    status, text = app.call("PUT", f"/contact/{cid}", _with_field(2, kind, value))
    assert status == 400 and text.startswith("Bad request: fields")
    assert app.stored()[0]["fields"] == {"102": "ok"}


def test_an_invalid_custom_field_value_is_a_failed_contact_of_a_bulk(app):
    contacts = [
        _with_field(1, "DATE", "1990-02-28"),
        _with_field(2, "DATE", "1990-02-30"),
        _with_field(3, "TEXTAREA", "x" * 5001),
        _with_field(4, "NUMBER", "12"),
    ]
    answer = app.bulk(contacts, customFieldsIDs=sorted(FIELD_IDS.values()))
    failed = answer["failedContacts"]
    assert [f["channels"] for f in failed] == [contacts[1]["channels"], contacts[2]["channels"]]
    assert all(f["error"].startswith("fields") for f in failed)
    assert [(c["externalCustomerId"], c["fields"]) for c in app.stored()] == [
        ("v1", {"101": "1990-02-28"}),
        ("v4", {"105": "12"}),
    ]
