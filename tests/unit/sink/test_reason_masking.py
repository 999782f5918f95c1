"""What Yespo's refusals may quote never reaches a DLQ header, an audit reason or a stopping error.

The order matters: contact values are masked on the server's whole text, then emails and numbers,
and the text is cut to 300 characters last; a value holding digits or an email, or one cut in two,
would otherwise no longer be found whole and leave the rest of itself behind.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import orjson
import pytest
from pydantic import SecretStr

from connector.config import ContactMapping, YespoSettings
from connector.errors import PermanentDeliveryError
from connector.models import RawRecord
from connector.sink.batch_state import Batch
from connector.sink.client import USERNAME, YespoClient
from connector.sink.delivery import BatchDelivery
from connector.sink.outcomes import scrub_reason
from connector.sink.recorder import DeliverStats, OutcomeRecorder
from connector.sink.upserts import read_upsert
from tests.stubs import ManualClock

KEY = "KEYCANARY123"
CANARIES = ("Canaryname", "Canarystreet", "Canarycity", "Canaryco", "Canarynote", "leak.canary", "501234567")

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "external_id",
        "firstName": "first_name",
        "channels": [{"type": "email", "column": "email"}, {"type": "sms", "column": "phone"}],
        "address": {"city": "city", "addressLine": "street"},
        "fields": {"company": "company", "note": "note"},
    }
)

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, mode: str = "bulk") -> YespoClient:
    settings = YespoSettings(
        base_url="https://yespo.test",
        api_key=SecretStr(KEY),
        field_ids={"company": 101, "note": 102},
        max_requests_per_second=200,
        mode=mode,
    )
    clock = ManualClock()
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return YespoClient(http, settings, MAPPING, clock=clock, sleep=clock.sleep)


def person(ext: str = "crm-1", **over: Any) -> dict[str, Any]:
    contact = {
        "externalCustomerId": ext,
        "firstName": "Canaryname",
        "channels": [
            {"type": "email", "value": "leak.canary@example.com"},
            {"type": "sms", "value": "+380501234567"},
        ],
        "address": {"city": "Canarycity", "addressLine": "Canarystreet 10"},
        "fields": [{"name": "company", "value": "Canaryco"}, {"name": "note", "value": "Canarynote"}],
    }
    contact.update(over)
    return contact


def leaked(text: object) -> list[str]:
    return [c for c in CANARIES if c.lower() in str(text).lower()]


# -- contact values holding digits or emails, values cut by the 300-character limit -------------------

RANGE_STREET = {"address": {"city": "Canarycity", "addressLine": "Canarystreet 10 - 12"}}
NOTE_EMAIL = {"fields": [{"name": "note", "value": "Canarynote, mail leak.canary@example.com"}]}
NOTE_PHONE = {"fields": [{"name": "note", "value": "Canarynote +380501234567"}]}
TRICKY: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], str]]] = {
    "an address line with a digit range": (RANGE_STREET, lambda w: w["address"]["address"]),
    "a field text holding an email": (NOTE_EMAIL, lambda w: w["fields"][0]["value"]),
    "a field text holding a phone": (NOTE_PHONE, lambda w: w["fields"][0]["value"]),
}


@pytest.mark.parametrize("case", list(TRICKY))
def test_a_quoted_value_holding_digits_or_an_email_is_masked_whole(case: str) -> None:
    over, quoted = TRICKY[case]

    def failed_contacts(request: httpx.Request) -> httpx.Response:
        wire = json.loads(request.content)["contacts"][0]
        echo = {"channels": wire["channels"], "error": f"invalid value '{quoted(wire)}'"}
        return httpx.Response(200, json={"asyncSessionId": "s1", "failedContacts": echo})

    def refused(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        wire = body["contacts"][0] if "contacts" in body else body
        return httpx.Response(400, text=f"field value '{quoted(wire)}' is invalid")

    reasons = [
        client(failed_contacts).send_bulk_isolating([person(**over)]).contacts[0].reason,
        client(refused).send_bulk_isolating([person(**over)]).contacts[0].reason,
        client(refused, mode="single").send_single(person(**over)).reason,
    ]
    for reason in reasons:
        assert reason is not None and "'<value>'" in reason, reason
        assert leaked(reason) == [], reason


def test_a_value_cut_by_the_300_character_limit_leaves_nothing_of_itself() -> None:
    filler = "Bad request: JSON parse error (through reference chain: " + "x" * 190
    street = "742 Evergreen Terrace Springfield"
    body = f'{filler} address="{street}" and more'
    assert len(f"add contact: HTTP 400: {body}") > 300 > len(f"add contact: HTTP 400: {filler}")
    over = {"address": {"city": "Canarycity", "addressLine": street}}
    long_note = "Canarynote " + "prefers evening calls, " * 20  # itself longer than 300 characters

    def long_echo(request: httpx.Request) -> httpx.Response:
        wire = json.loads(request.content)["contacts"][0]
        echo = {"channels": wire["channels"], "error": f"field 102 value '{long_note}' too long"}
        return httpx.Response(200, json={"asyncSessionId": "s1", "failedContacts": echo})

    reasons = [
        client(lambda r: httpx.Response(400, text=body), mode="single").send_single(person(**over)).reason,
        client(lambda r: httpx.Response(400, text=body))
        .send_bulk_isolating([person(**over)])
        .contacts[0]
        .reason,
        client(long_echo)
        .send_bulk_isolating([person(fields=[{"name": "note", "value": long_note}])])
        .contacts[0]
        .reason,
    ]
    for reason in reasons:
        assert reason is not None and len(reason) <= 300
        assert not {"Evergreen", "Terrace", "Springfield", "evening"} & set(reason.replace('"', " ").split())
        assert leaked(reason) == [], reason


def test_scrub_reason_masks_values_then_emails_and_numbers_then_cuts() -> None:
    text = "refused: 'Flat 12, 4 Main St' and 'a.b@example.com' for +380 50 123 45 67; " + "y" * 400
    scrubbed = scrub_reason(text, {"address": "Flat 12, 4 Main St", "email": "a.b@example.com"})
    assert scrubbed.startswith("refused: '<value>' and '<email>' for <number>; y")
    assert len(scrubbed) == 300
    # beyond what is read (4096 characters), a value cut at the end leaves nothing of itself either
    value = "Canarystreet " + "z" * 300
    for at in (3800, 4000, 4090):
        huge = "a" * at + " " + value + " tail"
        assert "Canarystreet" not in scrub_reason(huge, {"street": value}), at
        assert "Canarystreet" not in scrub_reason("b " * 60 + huge, {"street": value}), at


# -- the API key and the Basic credentials a body echoes ----------------------------------------------


def test_the_api_key_and_its_basic_credentials_are_masked_wherever_a_body_echoes_them() -> None:
    credentials = base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()

    def echo(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Basic {credentials}"
        text = f"rejected request with authorization {request.headers['authorization']} key={KEY.lower()}"
        return httpx.Response(405 if request.method == "DELETE" else 400, text=text)

    texts: list[str] = [
        client(echo).send_bulk_isolating([person()]).contacts[0].reason or "",
        client(echo, mode="single").send_single(person()).reason or "",
    ]
    with pytest.raises(PermanentDeliveryError) as stopped:
        client(echo).delete("crm-1", erase=False)
    texts.append(str(stopped.value))
    for text in texts:
        assert KEY.lower() not in text.lower() and credentials not in text, text
        assert "Basic <secret>" in text and "key=<secret>" in text, text


# -- whole-request refusals that stop the stage (405, 415, ...) -----------------------------------------


@pytest.mark.parametrize("status", [405, 415, 404])
def test_a_whole_request_refusal_that_stops_the_stage_keeps_no_value_of_any_contact(status: int) -> None:
    # a 4xx that does not blame a contact stops the stage, and the CLI prints the error's text
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="Unsupported; request was: " + request.content.decode())

    people = [person("crm-1"), person("crm-2", firstName="Othername", address={"city": "Othercity"})]
    calls = {
        "bulk": lambda: client(echo).send_bulk_isolating(people),
        "bulk, not isolating": lambda: client(echo).send_bulk(people),
        "single": lambda: client(echo, mode="single").send_single(people[0]),
    }
    for name, call in calls.items():
        with pytest.raises(PermanentDeliveryError) as stopped:
            call()
        text = str(stopped.value)
        assert stopped.value.status_code == status and f"HTTP {status}: Unsupported" in text, name
        assert leaked(text) == [] and "Other" not in text, (name, text)
        assert stopped.value.__cause__ is None, name


# -- URL-encoded forms: a delete sends its externalCustomerId in the query string ----------------------


@pytest.mark.parametrize("ext", ["leak.canary@example.com", "crm 4711/Canaryco", "crm+4711&Canaryco"])
@pytest.mark.parametrize("status", [400, 405])
def test_a_delete_refusal_quoting_its_url_keeps_no_form_of_the_id(ext: str, status: int) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=f"cannot process {request.method} {request.url}")

    yespo = client(echo)
    if status == 400:
        outcome = yespo.delete(ext, erase=False)
        assert not outcome.ok and outcome.reason is not None
        text = outcome.reason
    else:
        with pytest.raises(PermanentDeliveryError) as stopped:
            yespo.delete(ext, erase=False)
        text = str(stopped.value)
    assert "cannot process DELETE https://yespo.test/api/v1/contact?externalCustomerId=<" in text
    for form in (ext, quote(ext, safe=""), quote_plus(ext), "canary", "4711"):
        assert form.lower() not in text.lower(), (form, text)


def test_url_encoded_emails_of_no_known_contact_are_masked_too() -> None:
    text = scrub_reason("GET /contacts?email=john.doe%40example.org&maxrows=5 failed")
    assert text == "GET /contacts?email=<email>&maxrows=5 failed"


# -- deletes and segment calls in the deliver stage: what the batch holds of their contacts -------------


def test_refused_deletes_and_segment_calls_mask_what_the_batch_holds_of_their_contacts() -> None:
    def yespo(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/contacts"):
            return httpx.Response(200, json={"asyncSessionId": "s1"})
        if request.url.path.endswith("/attach"):
            return httpx.Response(400, text="contact Canaryname of Canarystreet 10 - 12 cannot join")
        return httpx.Response(400, text="contact Othername (Otherstreet 5/7, +380 50 765 43 21) cannot go")

    joining = {**person("crm-a", **RANGE_STREET), "groups": [{"id": 5}]}
    leaving = person("crm-b", firstName="Othername", address={"addressLine": "Otherstreet 5/7"})
    values = [
        {"op": "upsert", "customer_key": "a", "contact": joining},
        {"op": "upsert", "customer_key": "b", "contact": leaving},
        {"op": "delete", "customer_key": "b", "external_customer_id": "crm-b"},
    ]
    records = [read_upsert(RawRecord("upserts", 0, i, b"k", orjson.dumps(v))) for i, v in enumerate(values)]
    batch = Batch("b1", [r for r in records if r is not None], {("upserts", 0): 3}, [])
    recorder = OutcomeRecorder(DeliverStats(), dlq_topic="dlq", audit_topic="audit")
    delivery = BatchDelivery(
        client(yespo), recorder, mode="bulk", batch_size=10, poll_import_status=False, sleep=lambda s: None
    )
    delivery.attempt(batch)
    reasons = [dict(headers)["yespo.error.reason"] for topic, _, _, headers in batch.outbox if topic == "dlq"]
    assert len(reasons) == 3
    for reason in reasons:
        text = reason.decode() if isinstance(reason, bytes) else reason
        assert "<value>" in text and leaked(text) == [] and "Other" not in text, text


MULTILINE = "12 Canarystreet Road\nFlat  3"


@pytest.mark.parametrize(
    "quoted",
    [
        pytest.param(lambda v: json.dumps({"error": f"address {v} is invalid"}), id="JSON body"),
        pytest.param(
            lambda v: json.dumps({"error": f"address {json.dumps(v)} is invalid"}), id="JSON-quoted in JSON"
        ),
        pytest.param(
            lambda v: json.dumps({"error": f"адреса {v} is invalid"}, ensure_ascii=False), id="not ASCII"
        ),
        pytest.param(lambda v: f"address {v} is invalid", id="plain text"),
    ],
)
def test_a_multi_line_value_is_masked_also_where_it_is_quoted_json_escaped(quoted: Any) -> None:
    """A JSON body keeps a line break as the two characters `\\n` (whitespace collapsing does not
    touch them), and a run of spaces as it is: the forms searched for must be the raw value's."""
    for value in (MULTILINE, MULTILINE.replace("Road", "Дорога")):
        reason = scrub_reason(quoted(value), {"addressLine": value})
        assert "canarystreet" not in reason.lower() and "flat" not in reason.lower(), reason
        assert "<value>" in reason


def test_a_refusal_quoting_a_multi_line_address_json_escaped_keeps_none_of_it() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        address = json.loads(request.content)["address"]["address"]
        return httpx.Response(
            400, text=json.dumps({"error": f"address.address {json.dumps(address)} is invalid"})
        )

    over = {"address": {"city": "Canarycity", "addressLine": MULTILINE}}
    reason = client(refused, mode="single").send_single(person(**over)).reason
    assert reason is not None and "<value>" in reason and leaked(reason) == [], reason
