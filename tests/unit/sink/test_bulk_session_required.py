"""A bulk 200 without an `asyncSessionId` queued no import: nothing of it counts as delivered.

Yespo's bulk 200 always carries the session of the import it queued (spec section 4, "Response and
asynchrony"); the stand-in's does too. Without one the request is sent again, with import polling on
or off, unless `failedContacts` rejected every contact (no import is owed then).
"""

from __future__ import annotations

import logging

import httpx
import pytest

from connector.errors import RetryableDeliveryError
from tests.unit.sink.test_client import Recorder, contact, make_client
from tests.unit.test_deliver_stage import Rig, accounted, up

NO_SESSION = ["", "{}", '{"failedContacts": []}', '{"failedContacts": {}}', '{"failedContacts": ""}', "[]"]


@pytest.mark.parametrize("poll", [True, False])
@pytest.mark.parametrize("body", NO_SESSION)
@pytest.mark.parametrize("send", ["send_bulk", "send_bulk_isolating"])
def test_a_bulk_200_without_a_session_is_retried(send: str, body: str, poll: bool) -> None:
    rec = Recorder(httpx.Response(200, text=body, headers={"content-type": "application/json"}))
    client = make_client(rec, poll_import_status=poll)
    with pytest.raises(RetryableDeliveryError, match="without an asyncSessionId") as err:
        getattr(client, send)([contact("a", "anna@example.com"), contact("b")])
    assert err.value.status_code == 200
    assert "anna" not in str(err.value)
    assert len(rec.requests) == 1  # not bisected: the halves would meet the same answer


def test_the_retry_reason_is_logged_without_contact_data(caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(Recorder(httpx.Response(200, json={})))
    with caplog.at_level(logging.WARNING), pytest.raises(RetryableDeliveryError):
        client.send_bulk([contact("a", "anna@example.com"), contact("b")])
    (line,) = [r.getMessage() for r in caplog.records if "asyncSessionId" in r.getMessage()]
    assert "HTTP 200 without an asyncSessionId" in line and "2 of 2" in line
    assert "anna" not in caplog.text and "example.com" not in caplog.text


def test_a_200_without_a_session_that_rejects_every_contact_fails_them_without_a_retry() -> None:
    client = make_client(Recorder(httpx.Response(200)))
    wire = [client.translate(contact(x)) for x in "ab"]
    answer = {"failedContacts": [{"channels": w["channels"], "error": "invalid email"} for w in wire]}
    outcome = make_client(Recorder(httpx.Response(200, json=answer))).send_bulk([contact("a"), contact("b")])
    assert [(c.ok, c.reason) for c in outcome.contacts] == [(False, "invalid email")] * 2
    assert outcome.session_ids == ()
    # one contact, rejected by an entry that names nothing: it was the request's only contact
    one = {"failedContacts": {"error": "invalid email"}}
    outcome = make_client(Recorder(httpx.Response(200, json=one))).send_bulk([contact("a")])
    assert [c.ok for c in outcome.contacts] == [False]


def test_a_200_without_a_session_that_rejects_only_some_contacts_is_retried() -> None:
    client = make_client(Recorder(httpx.Response(200)))
    channels = client.translate(contact("a"))["channels"]
    answer = {"failedContacts": {"channels": channels, "error": "invalid email"}}
    with pytest.raises(RetryableDeliveryError, match=r"no import was queued for 1 contacts"):
        make_client(Recorder(httpx.Response(200, json=answer))).send_bulk([contact("a"), contact("b")])


def test_an_error_message_without_a_session_is_still_retried_when_every_contact_is_listed() -> None:
    client = make_client(Recorder(httpx.Response(200)))
    channels = client.translate(contact("a"))["channels"]
    answer = {"errorMessage": "failed", "failedContacts": {"channels": channels, "error": "invalid"}}
    with pytest.raises(RetryableDeliveryError, match="errorMessage"):
        make_client(Recorder(httpx.Response(200, json=answer))).send_bulk([contact("a")])


def test_a_200_with_a_session_still_counts_as_taken_with_polling_off() -> None:
    answer = {"asyncSessionId": "s-1"}
    client = make_client(Recorder(httpx.Response(200, json=answer)), poll_import_status=False)
    outcome = client.send_bulk([contact("a")])
    assert [c.ok for c in outcome.contacts] == [True] and outcome.session_ids == ("s-1",)


@pytest.mark.parametrize("poll", [True, False])
@pytest.mark.parametrize("body", ["", "{}", '{"failedContacts": []}'])
def test_the_stage_retries_a_200_without_a_session_then_commits(body: str, poll: bool) -> None:
    rig = Rig(poll_import_status=poll)
    rig.consumer.add(0, "a", up("a"))
    rig.consumer.add(0, "b", up("b"))
    rig.yespo.script = [(200, {"content-type": "application/json"}, body)]
    rig.steps(2)
    assert rig.consumer.commits == [] and accounted(rig) == {}
    assert rig.stage.paused
    rig.clock.now += 60
    rig.steps(2)
    bulk = [k for k in rig.yespo.kinds() if k == "POST /contacts"]
    assert len(bulk) == 2
    assert ("GET /importstatus/s1" in rig.yespo.kinds()) is poll
    assert rig.consumer.committed_offsets() == {0: 2}
    assert accounted(rig) == {0: "delivered", 1: "delivered"}
