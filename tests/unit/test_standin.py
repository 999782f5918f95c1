"""The Yespo stand-in, in process on a free port (loopback only), and the client against it."""

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connector.config import ContactMapping, YespoSettings
from connector.errors import RetryableDeliveryError
from connector.sink.client import YespoClient
from connector.standin import StandIn
from connector.standin.rules import name_problem
from connector.standin.validation import DEFAULT_SPEC_PATH, RequestValidator, load_spec

KEY = "standin-key"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def standin(clock):
    server = StandIn(api_key=KEY, port=0, rate_limit=None, clock=clock, groups={7: "VIP"})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(standin):
    with httpx.Client(base_url=standin.url + "/api/v1", auth=("anyone", KEY), timeout=5) as client:
        yield client


def by_ext(standin, ext):
    return next(c for c in standin.contacts()["contacts"] if c["externalCustomerId"] == ext)


def bulk(api, contacts, **extra):
    body = {"contacts": contacts, "dedupeOn": "externalCustomerId", **extra}
    response = api.post("/contacts", json=body)
    assert response.status_code == 200, response.text
    return response.json()


FULL = {
    "externalCustomerId": "c1",
    "firstName": "Ann",
    "lastName": "Lee",
    "channels": [{"type": "email", "value": "ann@example.com"}, {"type": "sms", "value": "380501234567"}],
    "address": {"town": "Kyiv", "region": "KY", "postcode": "01001", "address": "Main 1"},
    "fields": [{"id": 101, "value": "1990-01-01"}, {"id": 102, "value": "Gold"}],
    "languageCode": "uk",
    "timeZone": "Europe/Kyiv",
}


# -- auth -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, ("u", "wrong"), ("", "")])
def test_wrong_or_missing_key_gets_401(standin, auth):
    response = httpx.get(standin.url + "/api/v1/account/info", auth=auth)
    assert response.status_code == 401


def test_any_user_name_with_the_key_is_accepted(standin):
    for user in ("", "anyvalue", "yespo-connector"):
        assert httpx.get(standin.url + "/api/v1/account/info", auth=(user, KEY)).status_code == 200


# -- validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"contacts": [{"channels": "x"}], "dedupeOn": "externalCustomerId"}, "body.contacts[0].channels"),
        ({"contacts": [{"channels": [{"type": "webPush", "value": "t"}]}], "dedupeOn": "email"}, "type"),
        ({"contacts": [], "dedupeOn": "nonsense"}, "body.dedupeOn"),
        ({"dedupeOn": "email"}, "'contacts' is a required property"),
        (
            {"contacts": [{"channels": [], "fields": [{"id": "101", "value": "x"}]}], "dedupeOn": "id"},
            "fields[0].id",
        ),
        ({"contacts": [{"channels": []}], "dedupeOn": "id", "contactFields": ["city"]}, "contactFields[0]"),
        ({"contacts": [{"channels": []}] * 3001, "dedupeOn": "id"}, "at most 3000"),
    ],
)
def test_bulk_bodies_violating_the_schema_get_400_with_the_reason(api, body, reason):
    response = api.post("/contacts", json=body)
    assert response.status_code == 400
    assert reason in response.text


def test_single_contact_rules_give_400(api):
    assert api.post("/contact", json={"firstName": "A"}).status_code == 400  # channels required
    assert api.post("/contact", json={"channels": []}).status_code == 400
    three = [{"type": "email", "value": f"a{i}@b.co"} for i in range(3)]
    response = api.post("/contact", json={"channels": three})
    assert response.status_code == 400
    assert "at most two" in response.text
    bad_name = {"firstName": "R2D2 C3P0", "channels": [{"type": "email", "value": "a@b.co"}]}
    assert "more than 3 digits" in api.post("/contact", json=bad_name).text
    unknown_field = {
        "channels": [{"type": "email", "value": "a@b.co"}],
        "fields": [{"id": 999, "value": "x"}],
    }
    assert api.post("/contact", json=unknown_field).status_code == 400


def test_malformed_json_and_wrong_content_type(api):
    assert (
        api.post("/contacts", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    )
    assert api.post("/contacts", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415


@pytest.mark.parametrize(
    ("name", "first", "ok"),
    [
        ("Anna", True, True),
        ("Олена", False, True),
        ("A" * 40, True, True),
        ("Anna-Maria", True, True),
        ("O'Neil", True, True),
        ("Jr.", True, True),
        ("John Ronald Reuel Tolkien", True, False),
        ("John Ronald Reuel Tolkien", False, True),
        ("-Ann", True, False),
        ("Smith.", True, False),
        ("123", True, False),
        ("A" * 41, False, False),
        (" ", True, True),
        ("Ann!", True, False),
        ("D\u00b4Angelo", True, True),  # Yespo lists more apostrophes than ' and \u2019
        ("O\u02bcNeil", False, True),
        ("\u02bcNeil", False, False),  # ...still only inside a word
        ("\u0939\u093f\u0928\u094d\u0926\u0940", True, True),  # Hindi: vowel signs and virama are marks
        ("\u0301Ann", True, False),  # a mark cannot start a word
    ],
)
def test_name_rules(name, first, ok):
    assert (name_problem(name, first=first) is None) is ok


# -- the compiled per-contact check agrees with the full OpenAPI validator -----------------------------

_VALIDATOR = RequestValidator(load_spec())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
channel = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["email", "sms", "webpush", "webPush", "telegram"]), scalars),
        "value": st.one_of(st.text(max_size=5), scalars),
        "device": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"clientVersion": st.sampled_from(["native", "x"]), "active": scalars}
            ),
            scalars,
        ),
    },
)
contact_strategy = st.fixed_dictionaries(
    {},
    optional={
        "channels": st.one_of(st.lists(channel, max_size=3), scalars),
        "firstName": scalars,
        "externalCustomerId": scalars,
        "address": st.one_of(
            st.fixed_dictionaries({}, optional={"town": scalars, "postcode": scalars}), scalars
        ),
        "fields": st.one_of(
            st.lists(st.fixed_dictionaries({}, optional={"id": scalars, "value": scalars}), max_size=2),
            scalars,
        ),
        "groups": st.lists(st.fixed_dictionaries({}, optional={"id": scalars}), max_size=1),
        "addressBookId": scalars,
        "unknownKey": scalars,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(contact_strategy, scalars))
def test_compiled_contact_check_equals_the_openapi_validator(contact):
    full = _VALIDATOR.full_errors("Contact", contact)
    fast = _VALIDATOR.contact_error(contact)
    assert (fast is None) == (not full), (fast, full)


def test_compiled_check_is_much_faster_than_the_full_validator():
    contacts = [dict(FULL, externalCustomerId=f"c{i}") for i in range(300)]
    body = {"contacts": contacts, "dedupeOn": "externalCustomerId"}
    started = time.perf_counter()
    assert _VALIDATOR.validate_bulk(body) is None
    fast = time.perf_counter() - started
    started = time.perf_counter()
    assert _VALIDATOR.validate("ContactsBulkUpdate", body) is None
    full = time.perf_counter() - started
    assert fast * 5 < full


# -- matching, contactFields, customFieldsIDs --------------------------------------------------------------


def test_contact_fields_nulling_clears_listed_absent_fields_and_keeps_unlisted(api, standin):
    bulk(api, [FULL], customFieldsIDs=[101, 102])
    update = {
        "externalCustomerId": "c1",
        "channels": [{"type": "email", "value": "ann@example.com"}],
        "lastName": "Kim",
    }
    bulk(api, [update], contactFields=["firstName", "lastName", "sms", "town"], customFieldsIDs=[])
    c = by_ext(standin, "c1")
    assert "firstName" not in c  # listed, absent: cleared
    assert c["lastName"] == "Kim"
    assert [ch["type"] for ch in c["channels"]] == ["email"]  # sms listed and absent: removed
    assert c["address"] == {"region": "KY", "postcode": "01001", "address": "Main 1"}  # town cleared
    assert c["languageCode"] == "uk"  # not listed: untouched
    assert c["fields"] == {"101": "1990-01-01", "102": "Gold"}  # no custom id listed: untouched


def test_custom_fields_ids_gating(api, standin):
    bulk(api, [FULL], customFieldsIDs=[101, 102])
    update = dict(FULL, fields=[{"id": 101, "value": "2000-02-02"}, {"id": 103, "value": "UA"}])
    bulk(api, [update], customFieldsIDs=[101, 102])
    # 101 listed and sent: updated; 102 listed, not sent: cleared; 103 sent, not listed: ignored
    assert by_ext(standin, "c1")["fields"] == {"101": "2000-02-02"}


def test_new_contact_without_custom_fields_ids_gets_every_field(api, standin):
    bulk(api, [FULL])
    assert by_ext(standin, "c1")["fields"] == {"101": "1990-01-01", "102": "Gold"}
    bulk(api, [dict(FULL, fields=[{"id": 102, "value": "Silver"}])], contactFields=["firstName"])
    assert by_ext(standin, "c1")["fields"]["102"] == "Gold"  # existing: ids list required to update


def test_unknown_external_id_matching_an_email_takes_the_id(api, standin):
    api.post("/contact", json={"channels": [{"type": "email", "value": "ann@example.com"}]})
    bulk(api, [FULL])
    dump = standin.contacts()
    assert dump["count"] == 1
    assert dump["contacts"][0]["externalCustomerId"] == "c1"


def test_dedupe_on_external_id_matches_nothing_for_a_contact_without_one(api, standin):
    """Rule 2 matches a contact without an externalCustomerId on the channel `dedupeOn` names; this
    one names none (undocumented: the stand-in creates a new contact, the pessimistic reading)."""
    bulk(api, [FULL])
    bulk(api, [{"firstName": "Ann2", "channels": FULL["channels"][:1]}])
    stored = standin.contacts()["contacts"]
    assert [(c["externalCustomerId"], c["firstName"]) for c in stored] == [("c1", "Ann"), (None, "Ann2")]


def test_dedupe_on_email_never_updates_the_email_and_keeps_an_unlisted_external_id(api, standin):
    """Rule 8: the dedupeOn field is never updated; an externalCustomerId not in contactFields is kept."""
    bulk(api, [FULL])
    fields = ["firstName", "email"]
    bulk(
        api, [{"firstName": "Ann2", "channels": FULL["channels"][:1]}], dedupeOn="email", contactFields=fields
    )
    (stored,) = standin.contacts()["contacts"]
    assert (stored["externalCustomerId"], stored["firstName"]) == ("c1", "Ann2")
    assert stored["channels"][:1] == FULL["channels"][:1]


def test_dedupe_on_field_id_is_refused_not_approximated(api):
    body = {"contacts": [FULL], "dedupeOn": "fieldId", "fieldId": 102}
    response = api.post("/contacts", json=body)
    assert response.status_code == 400 and "fieldId" in response.text


def test_put_with_an_external_id_of_another_contact_fails(api, standin):
    bulk(
        api, [FULL, {**FULL, "externalCustomerId": "c2", "channels": [{"type": "email", "value": "b@x.io"}]}]
    )
    second = by_ext(standin, "c2")["id"]
    own = [{"type": "email", "value": "b@x.io"}]
    response = api.put(f"/contact/{second}", json={"externalCustomerId": "c1", "channels": own})
    assert response.status_code == 400 and "c1" not in response.text
    assert by_ext(standin, "c2")["id"] == second and by_ext(standin, "c1")["id"] != second


def test_soft_delete_restore_and_erase(api, standin):
    bulk(api, [FULL], groupNames=["VIP"])
    first_id = by_ext(standin, "c1")["id"]
    assert api.delete("/contact", params={"externalCustomerId": "c1"}).status_code == 200
    assert by_ext(standin, "c1")["deleted"] is True
    assert api.get(f"/contact/{first_id}").status_code == 404
    bulk(api, [FULL], restoreDeleted=False)
    assert by_ext(standin, "c1")["deleted"] is True  # skipped
    bulk(api, [dict(FULL, firstName="Eve")], restoreDeleted=True)
    restored = by_ext(standin, "c1")
    assert (restored["deleted"], restored["id"], restored["firstName"]) == (False, first_id, "Eve")
    assert restored["groups"] == [7]
    assert api.delete("/contact", params={"externalCustomerId": "c1", "erase": "true"}).status_code == 200
    assert standin.contacts()["count"] == 0
    assert api.delete("/contact", params={"externalCustomerId": "c1"}).status_code == 404
    bulk(api, [FULL], restoreDeleted=True)
    assert by_ext(standin, "c1")["id"] != first_id  # erased: a new contact


def test_single_add_restores_a_soft_deleted_contact(api, standin):
    contact = {"externalCustomerId": "s1", "channels": [{"type": "email", "value": "s@example.com"}]}
    cid = api.post("/contact", json=contact).json()["id"]
    assert api.delete(f"/contact/{cid}").status_code == 200
    assert api.post("/contact", json={**contact, "firstName": "Bo"}).json()["id"] == cid
    assert api.get(f"/contact/{cid}").json()["firstName"] == "Bo"


def test_repeat_of_single_request_within_60s_gets_409(api, clock):
    contact = {"externalCustomerId": "d1", "channels": [{"type": "email", "value": "d@example.com"}]}
    assert api.post("/contact", json=contact).status_code == 200
    response = api.post("/contact", json=contact)
    assert (response.status_code, response.text) == (409, "Duplicated request")
    clock.now += 61
    assert api.post("/contact", json=contact).status_code == 200


def test_failed_contacts_object_for_one_array_for_several(api):
    good = {"externalCustomerId": "g", "channels": [{"type": "email", "value": "g@example.com"}]}
    bad = [
        {
            "externalCustomerId": f"b{i}",
            "firstName": "B",
            "channels": [{"type": "email", "value": f"nope{i}"}],
        }
        for i in range(2)
    ]
    one = bulk(api, [good, bad[0]])
    # echoed as the official FailedContact: the contact's own keys that schema has, and the error
    assert one["failedContacts"]["channels"] == bad[0]["channels"]
    assert one["failedContacts"]["firstName"] == "B"
    assert "externalCustomerId" not in one["failedContacts"]
    assert "invalid email" in one["failedContacts"]["error"]
    two = bulk(api, [good, *bad])
    assert [f["channels"] for f in two["failedContacts"]] == [b["channels"] for b in bad]
    assert "failedContacts" not in bulk(api, [good])


def test_failed_contact_keys_are_the_official_schema_properties(api):
    spec = json.loads(DEFAULT_SPEC_PATH.read_text())
    properties = set(spec["components"]["schemas"]["FailedContact"]["properties"])
    assert "externalCustomerId" not in properties
    assert {"channels", "error", "firstName"} <= properties
    full = dict(FULL, externalCustomerId="bad", channels=[{"type": "email", "value": "nope"}])
    entry = bulk(api, [full])["failedContacts"]
    assert set(entry) <= properties
    assert set(entry) == (set(full) & properties) | {"error"}


def test_import_status_and_search(api):
    answer = bulk(api, [FULL, dict(FULL, externalCustomerId="c2")])
    status = api.get(f"/importstatus/{answer['asyncSessionId']}").json()
    assert status["status"] == "FINISHED"
    assert sorted(m["dedupeValue"] for m in status["mapping"]) == ["c1", "c2"]
    found = api.get("/contacts", params={"externalCustomerId": "c2"})
    assert found.headers["TotalCount"] == "1"
    assert found.json()[0]["externalCustomerId"] == "c2"
    page = api.get("/contacts", params={"email": "ANN@example.com", "maxrows": 1})
    assert (page.headers["TotalCount"], len(page.json())) == ("2", 1)
    assert api.get("/contacts", params={"externalCustomerId": "c2", "email": "x"}).status_code == 400
    assert api.get("/importstatus/nope").status_code == 404


def test_an_import_made_to_fail_ends_in_error_and_applies_nothing(api, standin):
    """`fail_imports`: the next N imports, and every import holding a poisoned contact, end in ERROR."""

    def status(answer):
        return api.get(f"/importstatus/{answer['asyncSessionId']}").json()["status"]

    standin.faults.fail_imports(count=1, external_ids=["c2"])
    assert status(bulk(api, [FULL])) == "ERROR"  # the next one
    assert standin.contacts()["count"] == 0
    assert status(bulk(api, [FULL, dict(FULL, externalCustomerId="c2")])) == "ERROR"  # holds c2
    assert standin.contacts()["count"] == 0
    assert status(bulk(api, [FULL])) == "FINISHED"
    assert [c["externalCustomerId"] for c in standin.contacts()["contacts"]] == ["c1"]
    stats = standin.stats()
    assert stats["counters"]["imports_failed"] == 2 and stats["faults_injected"] == 2
    admin = standin.url + "/_standin"
    assert httpx.post(admin + "/faults/fail-imports", json={"external_ids": ["c1"]}).status_code == 200
    assert status(bulk(api, [FULL])) == "ERROR"
    assert httpx.post(admin + "/faults/fail-imports", json={"count": -1}).status_code == 400
    assert httpx.post(admin + "/faults/fail-imports", json={"external_ids": "c1"}).status_code == 400
    httpx.post(admin + "/faults/clear")
    assert status(bulk(api, [FULL])) == "FINISHED"


def test_delayed_bulk_goes_started_then_finished(clock):
    with (
        StandIn(api_key=KEY, rate_limit=None, bulk_delay_s=0.2) as server,
        httpx.Client(base_url=server.url + "/api/v1", auth=("", KEY)) as client,
    ):
        sid = bulk(client, [FULL])["asyncSessionId"]
        assert client.get(f"/importstatus/{sid}").json()["status"] == "STARTED"
        assert server.contacts()["count"] == 0
        deadline = time.monotonic() + 5
        while client.get(f"/importstatus/{sid}").json()["status"] != "FINISHED":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.contacts()["count"] == 1


def test_delayed_bulk_reports_a_new_contact_without_channels_in_failed_contacts():
    """As without the delay: applied later, the refusal must not be lost (the client would count it)."""
    with (
        StandIn(api_key=KEY, rate_limit=None, bulk_delay_s=0.2) as server,
        httpx.Client(base_url=server.url + "/api/v1", auth=("", KEY)) as client,
    ):
        answer = bulk(client, [{**FULL, "externalCustomerId": "new", "channels": []}, FULL])
        assert answer["failedContacts"]["error"] == "channels: at least one channel is required"
        assert answer["failedContacts"]["channels"] == []
        assert answer["failedContacts"]["firstName"] == FULL["firstName"]
        deadline = time.monotonic() + 5
        while client.get(f"/importstatus/{answer['asyncSessionId']}").json()["status"] != "FINISHED":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [c["externalCustomerId"] for c in server.contacts()["contacts"]] == ["c1"]


# -- segments, catalog ------------------------------------------------------------------------------------


def test_attach_detach_by_external_ids(api, standin):
    bulk(api, [FULL, dict(FULL, externalCustomerId="c2")])
    response = api.post("/group/7/contacts/attach", json={"externalCustomerIds": ["c1", "c2", "ghost"]})
    assert (response.status_code, response.text) == (200, "Contacts were attached")
    assert by_ext(standin, "c2")["groups"] == [7]
    assert (
        api.post("/group/7/contacts/detach", json={"externalCustomerIds": ["c2"]}).text
        == "Contacts were detached"
    )
    assert by_ext(standin, "c2")["groups"] == []
    assert by_ext(standin, "c1")["groups"] == [7]
    assert api.post("/group/7/contacts/attach", json={"externalCustomerIds": ["x"] * 501}).status_code == 400
    both = {"externalCustomerIds": ["c1"], "contactIds": [1]}
    assert api.post("/group/7/contacts/attach", json=both).status_code == 400
    assert api.post("/group/7/contacts/detach", json={}).status_code == 200  # empties the segment
    assert by_ext(standin, "c1")["groups"] == []
    assert api.get("/groups").json() == [{"id": 7, "name": "VIP", "type": "Static"}]


def test_unknown_group_is_404_when_auto_create_is_off():
    with StandIn(api_key=KEY, rate_limit=None, auto_create_groups=False) as server:
        r = httpx.post(
            server.url + "/api/v1/group/5/contacts/attach",
            json={"externalCustomerIds": ["a"]},
            auth=("", KEY),
        )
        assert r.status_code == 404


def test_address_books_catalog_is_configurable():
    with StandIn(api_key=KEY, custom_fields={"tier": 55}) as server:
        body = httpx.get(server.url + "/api/v1/addressbooks", auth=("", KEY)).json()
        assert body["addressBook"]["fieldGroups"]["fields"]["id"] == 55  # one field: an object


# -- rate limit and faults ----------------------------------------------------------------------------------


def test_rate_limit_sliding_window(clock):
    with (
        StandIn(api_key=KEY, rate_limit=3, clock=clock) as server,
        httpx.Client(base_url=server.url + "/api/v1", auth=("", KEY)) as client,
    ):
        assert [client.get("/account/info").status_code for _ in range(4)] == [200, 200, 200, 429]
        clock.now += 0.5
        assert client.get("/account/info").status_code == 429
        clock.now += 0.6
        assert client.get("/account/info").status_code == 200
        assert server.stats()["counters"]["rate_limited"] == 2


def test_search_has_its_own_lower_limit(clock):
    """Spec section 7: 50 searches per second, under the 200 requests/s of the other calls."""
    with (
        StandIn(api_key=KEY, rate_limit=200, clock=clock) as server,
        httpx.Client(base_url=server.url + "/api/v1", auth=("", KEY)) as client,
    ):
        codes = [client.get("/contacts", params={"externalCustomerId": "x"}).status_code for _ in range(60)]
        assert codes == [200] * 50 + [429] * 10
        assert client.get("/account/info").status_code == 200


def test_fail_next_throttle_and_latency(api, standin, clock):
    standin.faults.fail_next(2)
    assert [api.get("/account/info").status_code for _ in range(3)] == [500, 500, 200]
    standin.faults.throttle(10, retry_after=4)
    response = api.get("/account/info")
    assert (response.status_code, response.headers["Retry-After"]) == (429, "4")
    standin.faults.throttle(10)
    assert "Retry-After" not in api.get("/account/info").headers
    clock.now += 11
    assert api.get("/account/info").status_code == 200
    standin.faults.latency(0.2)
    started = time.monotonic()
    api.get("/account/info")
    assert time.monotonic() - started >= 0.2


def test_admin_endpoints_need_no_auth_and_drive_faults(standin, api):
    admin = standin.url + "/_standin"
    assert httpx.post(admin + "/faults/fail-next", json={"count": 1, "status": 503}).status_code == 200
    assert api.get("/account/info").status_code == 503
    httpx.post(admin + "/faults/throttle", json={"seconds": 30, "retry_after": 1})
    assert api.get("/account/info").status_code == 429
    httpx.post(admin + "/faults/clear")
    assert api.get("/account/info").status_code == 200
    bulk(api, [FULL])
    assert httpx.get(admin + "/contacts").json()["count"] == 1
    stats = httpx.get(admin + "/stats").json()
    assert stats["requests"]["POST bulk_update 200"] == 1
    assert stats["faults_injected"] == 2
    httpx.post(admin + "/reset")
    assert httpx.get(admin + "/contacts").json()["count"] == 0
    assert httpx.post(admin + "/faults/outage", json={"mode": "refuse"}).status_code == 400


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def connection(url):
    """ "ok", "refused" (nothing listens) or "cut" (accepted, then reset while going down)."""
    try:
        httpx.get(url + "/api/v1/account/info", auth=("", KEY), timeout=2)
    except httpx.ConnectError:
        return "refused"
    except httpx.TransportError:
        return "cut"
    return "ok"


def test_outage_refuses_connections_then_comes_back_on_the_same_port(standin, api):
    port = standin.port
    assert api.get("/account/info").status_code == 200  # a kept-alive connection exists
    httpx.post(standin.url + "/_standin/faults/outage", json={"seconds": 1.0})
    wait_until(lambda: connection(standin.url) == "refused")
    with pytest.raises(httpx.TransportError):
        api.get("/account/info")  # the kept-alive connection was closed too
    wait_until(lambda: connection(standin.url) == "ok")
    assert standin.port == port
    assert api.get("/account/info").status_code == 200


def test_outage_503_mode(standin, api):
    standin.outage(None, mode="503")
    assert api.get("/account/info").status_code == 503
    standin.restore()
    assert api.get("/account/info").status_code == 200


# -- the connector's client against the stand-in ------------------------------------------------

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "external_id",
        "firstName": "first_name",
        "lastName": "last_name",
        "channels": [
            {"type": "email", "column": "email"},
            {"type": "sms", "column": "phone"},
            {"type": "webPush", "column": "wp"},
        ],
        "address": {
            "city": "city",
            "region": "region",
            "country": "country",
            "postalCode": "pc",
            "addressLine": "al",
        },
        "fields": {"birthDate": "birth_date", "loyaltyLevel": "loyalty_level"},
        "languageCode": "language_code",
        "timeZone": "time_zone",
    }
)


def example(i, **overrides):
    contact = {
        "externalCustomerId": f"EM{i}",
        "firstName": "John",
        "lastName": "Smith",
        "channels": [
            {"type": "email", "value": f"john{i}@example.com"},
            {"type": "sms", "value": "+1234567890"},
            {"type": "webPush", "value": f"sub-{i}"},
        ],
        "address": {
            "city": "New York",
            "region": "NY",
            "country": "US",
            "postalCode": "10001",
            "addressLine": "1 Main",
        },
        "fields": [{"name": "birthDate", "value": "1990-01-01"}, {"name": "loyaltyLevel", "value": "Gold"}],
        "groups": [{"id": 7, "name": "VIP"}],
        "languageCode": "en",
        "timeZone": "America/New_York",
    }
    contact.update(overrides)
    return contact


@pytest.fixture
def make_client():
    opened = []

    def make(standin):
        settings = YespoSettings(
            base_url=standin.url, api_key=SecretStr(KEY), country_field="country", max_requests_per_second=200
        )
        http = httpx.Client()
        opened.append(http)
        client = YespoClient(http, settings, MAPPING)
        client.resolve_fields()  # birthDate, loyaltyLevel, country from GET /api/v1/addressbooks
        return client

    yield make
    for http in opened:
        http.close()


def test_client_bulk_bodies_pass_the_stand_in_validator_and_land_translated(standin, make_client):
    client = make_client(standin)
    contacts = [example(i) for i in range(50)]
    body = client.bulk_body([client.translate(c) for c in contacts])
    assert _VALIDATOR.validate("ContactsBulkUpdate", body) is None  # the full OpenAPI validator
    outcome = client.send_bulk(contacts)
    assert all(c.ok for c in outcome.contacts)
    stored = by_ext(standin, "EM3")
    assert stored["address"] == {"town": "New York", "region": "NY", "postcode": "10001", "address": "1 Main"}
    assert stored["fields"] == {"101": "1990-01-01", "102": "Gold", "103": "US"}
    assert {ch["type"] for ch in stored["channels"]} == {"email", "sms", "webpush"}
    assert client.import_status(outcome.session_ids[0]).status == "FINISHED"


def test_client_clears_a_field_the_crm_cleared(standin, make_client):
    client = make_client(standin)
    client.send_bulk([example(1)])
    cleared = example(1, lastName=None, fields=[{"name": "birthDate", "value": "1990-01-01"}])
    cleared["channels"] = cleared["channels"][:1]
    client.send_bulk([cleared])
    stored = by_ext(standin, "EM1")
    assert "lastName" not in stored
    assert stored["fields"] == {"101": "1990-01-01", "103": "US"}
    assert [ch["type"] for ch in stored["channels"]] == ["email"]


def test_client_keeps_the_fields_of_unknown_value_and_clears_the_others(standin, make_client):
    # keep_fields (an unchanged TOAST value the connector never saw) must not clear Yespo's value,
    # while a field cleared in the same batch by another contact is cleared
    client = make_client(standin)
    client.send_bulk([example(1), example(2)])
    unknown = example(1, lastName=None, fields=[{"name": "birthDate", "value": "1990-01-01"}])
    unknown["address"] = {k: v for k, v in unknown["address"].items() if k not in ("city", "country")}
    del unknown["channels"][1]  # the sms value is unknown
    cleared = example(2, lastName=None, fields=[{"name": "birthDate", "value": "1990-01-01"}])
    keep = [
        ["lastName", "fields.loyaltyLevel", "address.city", "address.country", "channels[sms]"],
        [],
    ]
    outcome = client.send_bulk_isolating([unknown, cleared], keep)
    assert all(c.ok for c in outcome.contacts) and outcome.requests == 2
    kept = by_ext(standin, "EM1")
    assert kept["lastName"] == "Smith"
    assert kept["fields"] == {"101": "1990-01-01", "102": "Gold", "103": "US"}
    assert kept["address"]["town"] == "New York"
    assert {ch["type"] for ch in kept["channels"]} == {"email", "sms", "webpush"}
    other = by_ext(standin, "EM2")
    assert "lastName" not in other
    assert other["fields"] == {"101": "1990-01-01", "103": "US"}


def test_client_isolates_a_schema_breaking_contact_and_delivers_the_rest(standin, make_client):
    client = make_client(standin)
    contacts = [example(i) for i in range(10)]
    # Device data passes through the translator; a clientVersion outside the enum breaks the schema.
    push = {"type": "mobilePush", "value": "token", "device": {"clientVersion": "bogus"}}
    contacts[6] = example(6, channels=[*example(6)["channels"], push])
    outcome = client.send_bulk_isolating(contacts)
    assert [c.external_id for c in outcome.failed] == ["EM6"]
    assert outcome.failed[0].status_code == 400
    assert "clientVersion" in outcome.failed[0].reason
    assert outcome.requests > 1
    assert standin.contacts()["count"] == 9


def test_client_single_delete_groups_and_faults(standin, make_client):
    client = make_client(standin)
    first = client.send_single(example(1))
    assert first.ok and first.contact_id
    again = client.send_single(example(1))
    assert (again.ok, again.reason, again.status_code) == (True, "duplicate", 409)
    assert client.attach(7, ["EM1"]).ok
    assert by_ext(standin, "EM1")["groups"] == [7]
    assert client.detach(7, ["EM1"]).ok
    assert client.delete("EM1", erase=False).ok
    assert by_ext(standin, "EM1")["deleted"] is True
    assert client.delete("EM1", erase=True).ok
    gone = client.delete("EM1", erase=True)
    assert (gone.ok, gone.status_code, gone.reason) == (True, 404, "not found")
    standin.faults.throttle(30, retry_after=2)
    with pytest.raises(RetryableDeliveryError) as info:
        client.send_bulk([example(2)])
    assert (info.value.status_code, info.value.retry_after) == (429, 2.0)


def test_stand_in_command_serves_until_sigterm():
    import signal
    import subprocess
    import sys

    cmd = [
        sys.executable,
        "-m",
        "connector",
        "stand-in",
        "--port",
        "0",
        "--api-key",
        KEY,
        "--field",
        "tier=9",
        "--segment",
        "7=VIP",
        "--strict-segments",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.rsplit(" ", 1)[1].strip()
        books = httpx.get(url + "/api/v1/addressbooks", auth=("", KEY)).json()
        assert books["addressBook"]["fieldGroups"]["fields"]["id"] == 9
        # a segment that was not declared does not exist (as at Yespo); a declared one does
        ids = {"externalCustomerIds": ["a"]}
        assert (
            httpx.post(url + "/api/v1/group/5/contacts/attach", json=ids, auth=("", KEY)).status_code == 404
        )
        assert (
            httpx.post(url + "/api/v1/group/7/contacts/attach", json=ids, auth=("", KEY)).status_code == 200
        )
        assert httpx.get(url + "/api/v1/groups", auth=("", KEY)).json() == [
            {"id": 7, "name": "VIP", "type": "Static"}
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert KEY not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_put_contact_updates_by_id_and_restores(api, standin):
    bulk(api, [FULL])
    cid = by_ext(standin, "c1")["id"]
    assert api.delete(f"/contact/{cid}").status_code == 200
    response = api.put(f"/contact/{cid}", json={"firstName": "Zoe", "channels": FULL["channels"]})
    assert response.status_code == 200
    stored = by_ext(standin, "c1")
    assert (stored["deleted"], stored["firstName"], stored["lastName"]) == (False, "Zoe", "Lee")
    assert api.put("/contact/999999", json={"channels": FULL["channels"]}).status_code == 404
    assert api.put(f"/contact/{cid}", json={"channels": "x"}).status_code == 400


# -- robustness: the stand-in is the tests' oracle, it must answer (review findings) ------------------


@pytest.mark.parametrize(
    ("contact", "reason"),
    [
        ({"channels": [{"value": "a@b.co"}]}, "without a type"),
        ({"channels": [{"type": "email", "value": "a@b.co"}], "fields": [{"id": 101}]}, "without a value"),
    ],
)
def test_a_schema_valid_channel_without_type_or_field_without_value_gets_400(api, standin, contact, reason):
    response = api.post("/contact", json=contact)
    assert response.status_code == 400
    assert reason in response.text
    assert standin.contacts()["count"] == 0  # nothing half-applied


def test_a_bulk_contact_with_a_channel_without_type_is_a_failed_contact_the_rest_applies(api, standin):
    answer = bulk(api, [{"externalCustomerId": "x0", "channels": [{"value": "a@b.co"}]}, FULL])
    assert "without a type" in answer["failedContacts"]["error"]
    assert api.get(f"/importstatus/{answer['asyncSessionId']}").json()["status"] == "FINISHED"
    assert [c["externalCustomerId"] for c in standin.contacts()["contacts"]] == ["c1"]


def test_an_empty_channel_list_is_refused_also_for_an_existing_contact(api, standin):
    """Spec section 3: "At least one channel" (S1 BaseContact, ContactUpdate); before, a bulk import
    applied it to an existing contact and wiped its channels."""
    bulk(api, [FULL])
    emptied = {"externalCustomerId": "c1", "firstName": "Eve", "channels": []}
    other = {**FULL, "externalCustomerId": "c2", "channels": [{"type": "email", "value": "b@x.io"}]}
    answer = bulk(api, [emptied, other], contactFields=["firstName", "email", "sms"])
    failed = answer["failedContacts"]
    assert failed["error"] == "channels: at least one channel is required"
    assert failed["channels"] == [] and failed["firstName"] == "Eve"
    stored = by_ext(standin, "c1")
    assert (stored["firstName"], stored["channels"]) == ("Ann", FULL["channels"]), "nothing applied"
    assert by_ext(standin, "c2")["firstName"] == "Ann", "the rest of the import applies"
    cid = stored["id"]
    response = api.put(f"/contact/{cid}", json={"firstName": "Eve", "channels": []})
    assert response.status_code == 400 and "at least one channel" in response.text
    assert api.put(f"/contact/{cid}", json={"firstName": "Eve"}).status_code == 200
    assert by_ext(standin, "c1")["channels"] == FULL["channels"]  # absent from a PUT: kept


def test_a_stand_in_bug_answers_500_not_a_cut_connection(api, standin, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(standin.store, "upsert_single", broken)
    response = api.post("/contact", json=FULL)
    assert response.status_code == 500
    assert api.get("/account/info").status_code == 200  # and it goes on serving


def test_the_delayed_import_worker_survives_a_failing_import_and_a_reset():
    with (
        StandIn(api_key=KEY, rate_limit=None, bulk_delay_s=0.2) as server,
        httpx.Client(base_url=server.url + "/api/v1", auth=("", KEY), timeout=5) as client,
    ):
        real = server.store.apply_bulk
        calls = []

        def fails_once(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("bug")
            return real(*args, **kwargs)

        server.store.apply_bulk = fails_once
        first = bulk(client, [FULL])["asyncSessionId"]
        wait_until(lambda: client.get(f"/importstatus/{first}").json()["status"] == "ERROR")
        bulk(client, [{**FULL, "externalCustomerId": "before-reset"}])
        httpx.post(server.url + "/_standin/reset").raise_for_status()  # while that import is queued
        after = bulk(client, [FULL])["asyncSessionId"]
        wait_until(lambda: client.get(f"/importstatus/{after}").json()["status"] == "FINISHED")
        assert [c["externalCustomerId"] for c in server.contacts()["contacts"]] == ["c1"]


def test_a_reset_between_the_answer_and_the_import_applies_nothing_to_the_fresh_store(standin, api):
    real = standin.store.run_import

    def reset_first(*args, **kwargs):
        standin.reset()
        return real(*args, **kwargs)

    standin.store.run_import = reset_first
    answer = bulk(api, [FULL])
    assert standin.contacts()["count"] == 0
    assert api.get(f"/importstatus/{answer['asyncSessionId']}").status_code == 404


def test_an_outage_ends_by_its_own_timer_only(standin):
    standin.outage(0.5)
    standin.restore()
    standin.outage(30)  # the first timer must not end this one
    time.sleep(1.0)
    assert connection(standin.url) == "refused"
    standin.restore()
    assert connection(standin.url) == "ok"


def test_a_stopped_stand_in_stays_stopped_after_its_outage_timer():
    server = StandIn(api_key=KEY, port=0, rate_limit=None)
    server.start()
    url = server.url
    server.outage(0.3)
    server.outage(0.4)
    server.stop()
    time.sleep(0.8)
    assert connection(url) == "refused"
