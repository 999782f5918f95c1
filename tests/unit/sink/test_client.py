import base64
import json
import logging

import httpx
import pytest
from pydantic import SecretStr

from connector.config import ContactMapping, YespoSettings
from connector.errors import (
    AuthenticationError,
    ConfigError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from connector.sink.client import YespoClient, api_root
from connector.sink.responses import classify_response

KEY = "s3cret-key-value"

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "external_id",
        "firstName": "first_name",
        "channels": [{"type": "email", "column": "email"}, {"type": "sms", "column": "phone"}],
        "address": {"city": "city", "country": "country"},
        "fields": {"birthDate": "birth_date", "loyaltyLevel": "loyalty_level"},
    }
)


class Recorder:
    """A MockTransport handler that answers from a list and records the requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def bodies(self):
        return [json.loads(r.content) for r in self.requests]


def make_client(handler, *, field_ids=None, country_field="country", **overrides):
    settings = YespoSettings(
        base_url="https://yespo.test",
        api_key=SecretStr(KEY),
        field_ids={"birthDate": 101, "loyaltyLevel": 102, "country": 103} if field_ids is None else field_ids,
        country_field=country_field,
        max_requests_per_second=200,
        **overrides,
    )
    http = httpx.Client(transport=httpx.MockTransport(handler))
    clock = FakeClock()
    return YespoClient(http, settings, MAPPING, clock=clock, sleep=clock.sleep)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def contact(ext, email=None):
    return {
        "externalCustomerId": ext,
        "firstName": "Ann",
        "channels": [
            {"type": "email", "value": email or f"{ext}@example.com"},
            {"type": "sms", "value": "+3805"},
        ],
        "address": {"city": "Kyiv", "country": "UA"},
        "fields": [{"name": "birthDate", "value": "1990-01-01"}],
        "groups": [{"id": 1, "name": "g"}],
    }


def ok_bulk(failed=None):
    body = {"asyncSessionId": "sess-1"}
    if failed is not None:
        body["failedContacts"] = failed
    return httpx.Response(200, json=body)


# -- requests on the wire ---------------------------------------------------------------------------


def test_bulk_request_shape_auth_and_url():
    rec = Recorder(ok_bulk())
    outcome = make_client(rec).send_bulk([contact("a"), contact("b")])
    (request,) = rec.requests
    assert request.method == "POST"
    assert str(request.url) == "https://yespo.test/api/v1/contacts"
    assert request.headers["content-type"] == "application/json"
    user, password = base64.b64decode(request.headers["authorization"].split()[1]).decode().split(":", 1)
    assert password == KEY
    assert user == "yespo-connector"
    body = json.loads(request.content)
    assert body["dedupeOn"] == "externalCustomerId"
    assert body["restoreDeleted"] is True
    assert body["contactFields"] == ["externalCustomerId", "firstName", "email", "sms", "town"]
    assert body["customFieldsIDs"] == [101, 102, 103]
    assert body["contacts"][0] == {
        "externalCustomerId": "a",
        "firstName": "Ann",
        "channels": [{"type": "email", "value": "a@example.com"}, {"type": "sms", "value": "3805"}],
        "address": {"town": "Kyiv"},
        "fields": [{"id": 101, "value": "1990-01-01"}, {"id": 103, "value": "UA"}],
    }
    assert [c.ok for c in outcome.contacts] == [True, True]
    assert outcome.session_ids == ("sess-1",)


@pytest.mark.parametrize(
    ("base", "root"),
    [
        ("https://yespo.io", "https://yespo.io/api/v1"),
        ("https://api.yespo.io/api/", "https://api.yespo.io/api/v1"),
        ("http://127.0.0.1:8080/api/v1", "http://127.0.0.1:8080/api/v1"),
    ],
)
def test_api_root(base, root):
    assert api_root(base) == root


# -- status classification (table-driven) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "operation", "expected"),
    [
        (200, {}, "bulk update", "ok"),
        (204, {}, "delete contact", "ok"),
        (409, {}, "add contact", "duplicate"),
        (409, {}, "bulk update", RetryableDeliveryError),
        (404, {}, "delete contact", "not found"),
        (401, {}, "bulk update", AuthenticationError),
        (403, {}, "add contact", AuthenticationError),
        (400, {}, "bulk update", PermanentDeliveryError),
        (404, {}, "attach", PermanentDeliveryError),
        (409, {}, "import status", PermanentDeliveryError),
        (415, {}, "add contact", PermanentDeliveryError),
        (408, {}, "add contact", RetryableDeliveryError),
        (429, {}, "bulk update", RetryableDeliveryError),
        (429, {"Retry-After": "3"}, "bulk update", RetryableDeliveryError),
        (500, {}, "bulk update", RetryableDeliveryError),
        (503, {"Retry-After": "10"}, "delete contact", RetryableDeliveryError),
    ],
)
def test_classify_response(status, headers, operation, expected):
    response = httpx.Response(status, headers=headers, text="details")
    if isinstance(expected, str):
        assert classify_response(response, operation) == expected
    else:
        with pytest.raises(expected) as info:
            classify_response(response, operation)
        assert info.value.status_code == status
        if "Retry-After" in headers:
            assert info.value.retry_after == float(headers["Retry-After"])
        elif (status, operation) == (409, "bulk update"):  # sent again after Yespo's one-minute window
            assert info.value.retry_after is not None and info.value.retry_after > 60
        elif expected is RetryableDeliveryError:
            assert info.value.retry_after is None


def test_a_delete_answered_with_not_found_text_is_success():
    response = httpx.Response(400, text="Contact not found")
    assert classify_response(response, "delete contact") == "not found"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_stop_with_authentication_error(status):
    with pytest.raises(AuthenticationError):
        make_client(Recorder(httpx.Response(status))).send_bulk([contact("a")])


@pytest.mark.parametrize(("headers", "retry_after"), [({"Retry-After": "2.5"}, 2.5), ({}, None)])
def test_429_is_retryable_with_and_without_retry_after(headers, retry_after):
    rec = Recorder(httpx.Response(429, headers=headers))
    with pytest.raises(RetryableDeliveryError) as info:
        make_client(rec).send_bulk([contact("a")])
    assert info.value.status_code == 429
    assert info.value.retry_after == retry_after
    assert len(rec.requests) == 1  # a single attempt: the caller owns the retry loop


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(status):
    with pytest.raises(RetryableDeliveryError):
        make_client(Recorder(httpx.Response(status))).send_single(contact("a"))


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("closed"),
        httpx.ReadError("reset"),
    ],
)
def test_transport_failures_are_retryable_and_chained(exc):
    with pytest.raises(RetryableDeliveryError) as info:
        make_client(Recorder(exc)).send_bulk([contact("a")])
    assert info.value.__cause__ is exc
    assert info.value.status_code is None


def test_unreadable_2xx_body_is_retryable():
    with pytest.raises(RetryableDeliveryError):
        make_client(Recorder(httpx.Response(200, text="<html>"))).send_bulk([contact("a")])


# -- bulk per-contact outcomes -----------------------------------------------------------------------


def test_failed_contacts_as_a_single_object():
    rec = Recorder(ok_bulk({"externalCustomerId": "b", "channels": [], "error": "Invalid email x@y.z"}))
    outcome = make_client(rec).send_bulk([contact("a"), contact("b"), contact("c")])
    assert [c.ok for c in outcome.contacts] == [True, False, True]
    assert outcome.failed[0].reason == "Invalid email <email>"
    assert outcome.failed[0].external_id == "b"


def test_failed_contacts_as_an_array_and_matched_by_channels_without_external_id():
    no_ext = {"channels": [{"type": "email", "value": "q@example.com"}]}
    with_ids = [
        {"externalCustomerId": "a", "error": "bad name"},
        {"externalCustomerId": "ghost", "error": "?"},
    ]
    without = [{"channels": [{"type": "email", "value": "q@example.com"}], "error": "bad"}]
    rec = Recorder(ok_bulk(with_ids), ok_bulk(without))
    outcome = make_client(rec).send_bulk([contact("a"), no_ext, contact("c")])
    assert [c.ok for c in outcome.contacts] == [False, False, True]
    assert outcome.unattributed_failures == 1
    assert [json.loads(r.content)["dedupeOn"] for r in rec.requests] == ["externalCustomerId", "email"]


def test_contacts_without_an_external_id_are_sent_apart_matched_on_their_email_or_phone():
    """Yespo ignores `dedupeOn` for a contact with an externalCustomerId (rule 1) and matches one
    without on the channel `dedupeOn` names (rule 2): `externalCustomerId` names none."""
    email = {
        "channels": [{"type": "email", "value": "q@example.com"}, {"type": "sms", "value": "+380501234567"}]
    }
    phone = {"channels": [{"type": "sms", "value": "+380501234568"}]}
    push = {"channels": [{"type": "webPush", "value": "token-1"}]}
    rec = Recorder(ok_bulk())
    outcome = make_client(rec).send_bulk([contact("a"), email, phone, contact("b"), push, dict(email)])
    assert all(c.ok for c in outcome.contacts) and outcome.requests == 3
    bodies = [json.loads(r.content) for r in rec.requests]
    assert [b["dedupeOn"] for b in bodies] == ["externalCustomerId", "email", "sms"]
    sent = [[c.get("externalCustomerId") or c["channels"][0]["value"] for c in b["contacts"]] for b in bodies]
    # with neither an id nor an email or phone nothing documented matches: it stays with the ids
    assert sent == [["a", "b", "token-1"], ["q@example.com", "q@example.com"], ["380501234568"]]
    # listed but absent would clear the id of the contact they match: not listed for them
    assert "externalCustomerId" in bodies[0]["contactFields"]
    assert [f for f in bodies[0]["contactFields"] if f != "externalCustomerId"] == bodies[1]["contactFields"]
    assert bodies[1]["contactFields"] == bodies[2]["contactFields"]
    assert bodies[0]["customFieldsIDs"] == bodies[1]["customFieldsIDs"] == bodies[2]["customFieldsIDs"]


def test_failed_contact_as_the_official_schema_is_matched_by_its_channels():
    # Yespo's FailedContact has no externalCustomerId: the echo carries the channels as sent
    client = make_client(Recorder(ok_bulk()))
    sent = client.translate(contact("b"))
    echo = {"firstName": "Ann", "channels": sent["channels"], "error": "channels: invalid email address"}
    rec = Recorder(ok_bulk(echo))
    outcome = make_client(rec).send_bulk([contact("a"), contact("b"), contact("c")])
    assert [c.ok for c in outcome.contacts] == [True, False, True]
    assert outcome.contacts[1].external_id == "b"
    assert outcome.unattributed_failures == 0


def _rejecting(bad_ext, echo):
    """A bulk endpoint that rejects the contacts `bad_ext` names, echoing `echo(wire)` for each."""

    def answer(request):
        contacts = json.loads(request.content)["contacts"]
        failed = [{**echo(c), "error": "rejected"} for c in contacts if c["externalCustomerId"] in bad_ext]
        return ok_bulk(failed or None)

    return answer


def test_a_rejection_that_names_no_sent_contact_is_isolated_by_sending_halves():
    # the echo's channels were normalized by Yespo (upper-cased here): no sent contact matches them
    def echo(wire):
        return {"channels": [{"type": c["type"], "value": c["value"].upper()} for c in wire["channels"]]}

    rec = Recorder(_rejecting({"b5"}, echo))
    contacts = [contact(f"b{i}") for i in range(8)]
    outcome = make_client(rec).send_bulk_isolating(contacts)
    assert [c.ok for c in outcome.contacts] == [i != 5 for i in range(8)]
    assert outcome.contacts[5].reason == "rejected"
    assert len(rec.requests) == 1 + 2 * 3  # the whole, then two halves at each of 3 levels
    assert len(outcome.session_ids) == len(rec.requests)  # every answer's import is awaited
    # without isolation the rejection stays unattributed (reported, and every contact counted taken)
    plain = make_client(Recorder(_rejecting({"b5"}, echo))).send_bulk(contacts)
    assert plain.unattributed_failures == 1


def test_a_rejection_matching_contacts_that_share_channels_is_isolated():
    shared = "same@example.com"
    contacts = [contact("a", shared), contact("b", shared), contact("c")]
    client = make_client(Recorder(ok_bulk()))
    wire = {c["externalCustomerId"]: client.translate(c) for c in contacts}
    rec = Recorder(_rejecting({"b"}, lambda c: {"channels": wire[c["externalCustomerId"]]["channels"]}))
    outcome = make_client(rec).send_bulk_isolating(contacts)
    assert [c.ok for c in outcome.contacts] == [True, False, True]


def test_a_bulk_200_with_an_error_message_and_no_import_session_is_retried():
    rec = Recorder(httpx.Response(200, json={"errorMessage": "Import failed for x@y.z"}))
    with pytest.raises(RetryableDeliveryError, match="errorMessage") as err:
        make_client(rec).send_bulk([contact("a"), contact("b")])
    assert "x@y.z" not in str(err.value)


def test_a_bulk_200_with_an_error_message_and_an_import_session_is_left_to_the_import_status():
    answer = {"asyncSessionId": "s-1", "errorMessage": "partly refused"}
    outcome = make_client(Recorder(httpx.Response(200, json=answer))).send_bulk([contact("a")])
    assert [c.ok for c in outcome.contacts] == [True]
    assert outcome.session_ids == ("s-1",)
    assert outcome.error_messages == ("partly refused",)


def test_reasons_quoting_the_contact_s_values_keep_none_of_them():
    # a server may quote what it refused: the name, the town, a field's value
    person = dict(contact("b"), firstName="Ivanna", address={"city": "Vinnytsia", "country": "UA"})
    sent = make_client(Recorder(ok_bulk())).translate(person)
    quoted = "firstName 'Ivanna' is invalid; town VINNYTSIA unknown; invalid email address"
    echo = {"channels": sent["channels"], "error": quoted}
    bulk = make_client(Recorder(ok_bulk(echo))).send_bulk([contact("a"), person])
    single = make_client(Recorder(httpx.Response(400, text=quoted))).send_single(person)
    isolated = make_client(Recorder(httpx.Response(400, text=quoted))).send_bulk_isolating([person])
    for reason in (bulk.contacts[1].reason, single.reason, isolated.contacts[0].reason):
        assert reason is not None
        assert "Ivanna" not in reason and "innytsia" not in reason.lower()
        assert "firstName '<value>' is invalid" in reason and "invalid email address" in reason


def test_reasons_quoting_values_with_collapsed_whitespace_or_json_escapes_keep_none_of_them():
    person = dict(contact("b"), firstName="Jürgen", address={"city": "Old  Town", "country": "UA"})
    for quoted in ('{"error": "firstName \'J\\u00fcrgen\' rejected"}', "town 'Old   Town' unknown"):
        reason = make_client(Recorder(httpx.Response(400, text=quoted))).send_single(person).reason
        assert reason is not None and "rgen" not in reason and "Old" not in reason, reason


def test_untranslatable_contact_is_failed_locally_and_not_sent():
    rec = Recorder(ok_bulk())
    bad = {"externalCustomerId": "z", "channels": [], "fields": [{"name": "nope", "value": "1"}]}
    outcome = make_client(rec).send_bulk([contact("a"), bad])
    assert [c.ok for c in outcome.contacts] == [True, False]
    assert outcome.contacts[1].status_code is None
    assert len(rec.bodies()[0]["contacts"]) == 1


def test_bulk_400_raises_permanent_and_isolating_bisects_to_the_bad_contacts():
    bad = {"b3", "b6"}

    def answer(request):
        exts = {c["externalCustomerId"] for c in json.loads(request.content)["contacts"]}
        if exts & bad:
            return httpx.Response(400, text="contacts[0].channels: not of type array")
        return ok_bulk()

    contacts = [contact(f"b{i}") for i in range(8)]
    with pytest.raises(PermanentDeliveryError):
        make_client(Recorder(answer)).send_bulk(contacts)
    rec = Recorder(answer)
    outcome = make_client(rec).send_bulk_isolating(contacts)
    assert [c.external_id for c in outcome.failed] == ["b3", "b6"]
    assert all(c.status_code == 400 and "HTTP 400" in c.reason for c in outcome.failed)
    assert len(outcome.succeeded) == 6
    assert outcome.requests == len(rec.requests)
    delivered = {c["externalCustomerId"] for b in rec.bodies() for c in b["contacts"] if len(b["contacts"])}
    assert delivered == {f"b{i}" for i in range(8)}
    assert len(outcome.session_ids) == 4  # the successful sub-requests


def test_contacts_with_fields_to_keep_go_in_requests_that_do_not_list_those_fields():
    rec = Recorder(ok_bulk())
    keep = [(), ("firstName", "fields.loyaltyLevel"), (), ("address.country", "channels[sms]"), ()]
    contacts = [contact(f"k{i}") for i in range(5)]
    outcome = make_client(rec).send_bulk(contacts, keep)
    assert [c.ok for c in outcome.contacts] == [True] * 5 and outcome.requests == 3
    sent = {
        tuple(c["externalCustomerId"] for c in b["contacts"]): (b["contactFields"], b["customFieldsIDs"])
        for b in rec.bodies()
    }
    assert sent == {
        ("k0", "k2", "k4"): (["externalCustomerId", "firstName", "email", "sms", "town"], [101, 102, 103]),
        ("k1",): (["externalCustomerId", "email", "sms", "town"], [101, 103]),
        ("k3",): (["externalCustomerId", "firstName", "email", "town"], [101, 102]),
    }
    # isolation keeps each contact's envelope while bisecting
    rec = Recorder(httpx.Response(400, text="bad"), ok_bulk())
    outcome = make_client(rec).send_bulk_isolating(contacts[:2], keep[:2])
    assert [c.ok for c in outcome.contacts] == [False, True]
    assert rec.bodies()[-1]["contactFields"] == ["externalCustomerId", "email", "sms", "town"]


def test_isolating_propagates_retryable_and_non_content_errors():
    with pytest.raises(RetryableDeliveryError):
        make_client(Recorder(httpx.Response(400), httpx.Response(503))).send_bulk_isolating(
            [contact("a"), contact("b")]
        )
    with pytest.raises(PermanentDeliveryError):
        make_client(Recorder(httpx.Response(405))).send_bulk_isolating([contact("a"), contact("b")])


def test_a_bulk_409_is_sent_again_after_the_window_never_counted_delivered():
    # 409 says the same body came within the minute, not that its import applied: A, B, then A
    # again leaves B in Yespo; an import in ERROR then its byte-identical retry applies nothing
    for send in ("send_bulk", "send_bulk_isolating"):
        rec = Recorder(httpx.Response(409, text="Duplicated request"))
        with pytest.raises(RetryableDeliveryError) as err:
            getattr(make_client(rec), send)([contact("a"), contact("b")])
        assert err.value.status_code == 409
        assert err.value.retry_after is not None and err.value.retry_after > 60
        assert len(rec.requests) == 1  # not bisected: the halves would only be repeats too


def test_more_than_3000_contacts_is_a_programming_error():
    with pytest.raises(ValueError):
        make_client(Recorder(ok_bulk())).send_bulk([contact("a")] * 3001)


# -- single, delete, segments, status ------------------------------------------------------------------


def test_single_ok_returns_the_contact_id():
    rec = Recorder(httpx.Response(200, json={"id": 77}))
    outcome = make_client(rec).send_single(contact("a"))
    assert (outcome.ok, outcome.contact_id, outcome.status_code) == (True, 77, 200)
    assert str(rec.requests[0].url) == "https://yespo.test/api/v1/contact"
    assert rec.bodies()[0]["externalCustomerId"] == "a"


def test_single_409_repeat_of_this_process_last_write_is_success():
    ok = httpx.Response(200, json={"id": 7})
    client = make_client(Recorder(ok, httpx.Response(409, text="Duplicated request")))
    assert client.send_single(contact("a")).ok
    outcome = client.send_single(contact("a"))  # the same body again within the minute (a retry)
    assert outcome.ok
    assert outcome.reason == "duplicate"


def test_single_409_without_a_known_last_write_is_sent_again_after_the_window():
    # a restart, or a partition that moved here: the earlier writes to the contact were made by
    # another process, so the 409 may repeat a write that a later one replaced (A, B, then A)
    client = make_client(Recorder(httpx.Response(409, text="Duplicated request")))
    with pytest.raises(RetryableDeliveryError) as err:
        client.send_single(contact("a"))
    assert err.value.status_code == 409
    assert err.value.retry_after is not None and err.value.retry_after > 60


def test_forgetting_recent_writes_stops_trusting_a_409_for_writes_made_before():
    # a partition that left and came back: another instance may have written the contact meanwhile
    # (A here, B there, A here again: Yespo answers 409 and keeps B), so the 409 proves nothing
    ok, repeat = httpx.Response(200, json={"id": 7}), httpx.Response(409, text="Duplicated request")
    client = make_client(Recorder(ok, repeat))
    assert client.send_single(contact("a")).ok
    client.forget_recent_writes()
    with pytest.raises(RetryableDeliveryError) as err:
        client.send_single(contact("a"))
    assert err.value.status_code == 409 and err.value.retry_after is not None
    # what it forgot is learnt again from the next writes
    client = make_client(Recorder(ok, ok, repeat))
    client.send_single(contact("a"))
    client.forget_recent_writes()
    assert client.send_single(contact("a")).ok
    assert client.send_single(contact("a")).reason == "duplicate"


def test_single_400_fails_only_that_contact():
    outcome = make_client(Recorder(httpx.Response(400, text="firstName: invalid"))).send_single(contact("a"))
    assert not outcome.ok
    assert outcome.status_code == 400


@pytest.mark.parametrize(("erase", "flag"), [(True, "true"), (False, "false")])
def test_delete_request_and_404_is_success(erase, flag):
    rec = Recorder(httpx.Response(404, text="Contact not found"))
    outcome = make_client(rec).delete("ext 1/2", erase=erase)
    assert outcome.ok
    assert outcome.reason == "not found"
    request = rec.requests[0]
    assert request.method == "DELETE"
    assert request.url.path == "/api/v1/contact"
    assert dict(request.url.params) == {"externalCustomerId": "ext 1/2", "erase": flag}


def test_delete_ok():
    assert make_client(Recorder(httpx.Response(200))).delete("a", erase=False).ok


@pytest.mark.parametrize("action", ["attach", "detach"])
def test_group_calls(action):
    rec = Recorder(httpx.Response(200, text="Contacts were attached"))
    client = make_client(rec)
    outcome = getattr(client, action)(12, ["a", "b"])
    assert outcome.ok
    assert rec.requests[0].url.path == f"/api/v1/group/12/contacts/{action}"
    assert rec.bodies() == [{"externalCustomerIds": ["a", "b"]}]
    for ids in ([], ["x"] * 501):
        with pytest.raises(ValueError):
            getattr(client, action)(12, ids)
    assert len(rec.requests) == 1  # never an empty detach (it would empty the segment)


@pytest.mark.parametrize("status", [400, 405])
def test_refusals_of_deletes_and_segment_calls_keep_none_of_the_ids_they_sent(status):
    # a refusal's text comes back as the reason (400) or as a raised error (405: the stage stops and
    # logs it); either way a quoted externalCustomerId is masked, the wording kept
    calls = {
        "delete": lambda client: client.delete("cust-4711", erase=False),
        "attach": lambda client: client.attach(5, ["cust-4711", "cust-0815"]),
        "detach": lambda client: client.detach(5, ["cust-0815", "cust-4711"]),
    }
    answer = 'Bad request: contact "cust-4711" is locked; CUST-0815 unknown'
    for name, call in calls.items():
        client = make_client(Recorder(httpx.Response(status, text=answer)))
        if status == 400:
            outcome = call(client)
            assert not outcome.ok and outcome.reason is not None
            text = outcome.reason
        else:
            with pytest.raises(PermanentDeliveryError) as err:
                call(client)
            assert err.value.status_code == 405 and err.value.__cause__ is None
            text = str(err.value)
        assert "4711" not in text, name
        assert "0815" not in text or name == "delete", name  # a delete sends one id only
        assert 'contact "<value>" is locked' in text, name


def test_import_status_parsing():
    body = {
        "status": "FINISHED",
        "timestamp": "2026-01-01T00:00:00",
        "mapping": [{"dedupeValue": "a", "contactId": 5}, {"dedupeValue": "b"}],
    }
    rec = Recorder(httpx.Response(200, json=body))
    status = make_client(rec).import_status("abc/1")
    assert status.finished and not status.failed
    assert status.mapping == (("a", 5),)
    assert rec.requests[0].url.raw_path == b"/api/v1/importstatus/abc%2F1"


@pytest.mark.parametrize("status", [404, 400, 410])
def test_import_status_refused_is_retriable_not_permanent(status):
    rec = Recorder(httpx.Response(status, text="Session not found"))
    with pytest.raises(RetryableDeliveryError) as err:
        make_client(rec).import_status("s")
    assert err.value.status_code == status


def test_import_status_without_the_mapping_reads_the_status_only():
    body = {
        "status": "ERROR",
        "description": "failed for anna@example.com",
        "mapping": [{"dedupeValue": "a", "contactId": 5}],
    }
    status = make_client(Recorder(httpx.Response(200, json=body))).import_status("s", mapping=False)
    assert status.failed and status.finished
    assert status.description == "failed for <email>"
    assert status.mapping == ()
    for answer, message in (("[1, 2]", "without a status"), ("", "without a status"), ("{", "unreadable")):
        client = make_client(Recorder(httpx.Response(200, text=answer)))
        with pytest.raises(RetryableDeliveryError, match=message):
            client.import_status("s", mapping=False)
    client = make_client(Recorder(httpx.Response(200, json={"status": 3})))
    with pytest.raises(RetryableDeliveryError, match="without a status"):
        client.import_status("s", mapping=False)


# -- field resolution, secrets ---------------------------------------------------------------------------


def test_missing_field_ids_are_resolved_once_from_the_address_books():
    catalog = {
        "addressBook": {
            "fieldGroups": {"fields": [{"id": 7, "name": "loyaltyLevel"}, {"id": 8, "fieldKey": "country"}]}
        }
    }
    rec = Recorder(httpx.Response(200, json=catalog), ok_bulk())
    client = make_client(rec, field_ids={"birthDate": 101})
    with pytest.raises(ConfigError, match="resolve_fields"):
        client.send_bulk([contact("a")])
    assert client.resolve_fields() == {"birthDate": 101, "loyaltyLevel": 7, "country": 8}
    assert rec.requests[0].url.path == "/api/v1/addressbooks"
    client.send_bulk([contact("a")])
    assert json.loads(rec.requests[1].content)["customFieldsIDs"] == [101, 7, 8]


def test_unknown_field_name_fails_start_up_naming_it():
    rec = Recorder(httpx.Response(200, json={"addressBook": []}))
    client = make_client(rec, field_ids={"birthDate": 101, "country": 1})
    with pytest.raises(ConfigError, match="loyaltyLevel"):
        client.resolve_fields()


def test_configured_ids_need_no_request():
    rec = Recorder(ok_bulk())
    client = make_client(rec)
    client.resolve_fields()
    assert rec.requests == []


def test_country_without_country_field_is_reported_as_dropped():
    client = make_client(Recorder(ok_bulk()), country_field=None)
    assert client.dropped_fields == ("address.country",)
    client.send_bulk([contact("a")])


def test_missing_key_is_a_config_error():
    settings = YespoSettings(base_url="https://yespo.test")
    with pytest.raises(ConfigError, match="API key"):
        YespoClient(httpx.Client(), settings, MAPPING)


def test_the_key_never_shows(caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(Recorder(httpx.Response(500, text="boom")))
    with pytest.raises(RetryableDeliveryError) as info:
        client.send_bulk([contact("a")])
    texts = [repr(client), str(info.value), repr(info.value), caplog.text]
    client2 = make_client(Recorder(httpx.Response(401)))
    with pytest.raises(AuthenticationError) as info2:
        client2.send_single(contact("a"))
    texts += [str(info2.value)]
    assert not any(KEY in t for t in texts)
    assert not any("a@example.com" in t for t in texts)


def test_retry_delay_uses_the_policy_and_settings_budget():
    client = make_client(Recorder(ok_bulk()), max_retry_seconds=5)
    assert 0.0 <= client.retry_delay(1, elapsed=0.0, retry_after=None) <= 0.5
    assert client.retry_delay(1, elapsed=5.0, retry_after=None) is None
    assert client.ready_in() >= 0.0


def test_every_request_waits_for_the_rate_limiter():
    clock = FakeClock()
    settings = YespoSettings(
        base_url="https://yespo.test",
        api_key=SecretStr(KEY),
        field_ids={"birthDate": 1, "loyaltyLevel": 2},
        max_requests_per_second=2,
    )
    http = httpx.Client(transport=httpx.MockTransport(Recorder(httpx.Response(200))))
    client = YespoClient(http, settings, MAPPING, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        client.delete("a", erase=False)
    assert clock.slept == pytest.approx(1.0)


def test_reasons_are_scrubbed_of_emails_and_phone_numbers():
    from connector.sink.outcomes import scrub_reason

    text = scrub_reason("Contact a.b@example.com with phone +380 50 123-45-67 rejected:\n  " + "x" * 400)
    assert "example.com" not in text
    assert "123" not in text
    assert text.startswith("Contact <email> with phone <number> rejected: x")
    assert len(text) == 300
