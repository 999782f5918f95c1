"""Reading upserts records: each refusal names its field and type, never a value; blank ids are absent."""

from __future__ import annotations

import json

import orjson
import pytest

from connector.errors import DecodeError
from connector.models import RawRecord
from connector.sink.batch import external_id
from connector.sink.upserts import parse_upsert, read_upsert
from tests.unit.test_deliver_stage import DLQ, Rig, accounted, up

PII = "ana.silva@example.com"


def _raw(value: object, key: bytes | None = b"k") -> RawRecord:
    body = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return RawRecord("upserts", 0, 3, key, body)


CASES = [
    pytest.param(b"{" + PII.encode(), "value is not valid JSON", id="not-json"),
    pytest.param([PII], "value is an array, not an object", id="array"),
    pytest.param(None, "value is null (a tombstone)", id="tombstone"),
    pytest.param({**up("a"), "op": PII}, 'op is not "upsert" or "delete" (it is a string)', id="op"),
    pytest.param({**up("a"), "op": None}, 'op is not "upsert" or "delete" (it is null)', id="no-op"),
    pytest.param(
        {**up("a"), "contact": PII}, "contact of an upsert is a string, not an object", id="contact"
    ),
    pytest.param(
        {**up("a"), "external_customer_id": {"email": PII}},
        "external_customer_id is an object, not a string",
        id="ext-object",
    ),
    pytest.param({**up("a"), "customer_key": 5}, "customer_key is a number, not a string", id="key-number"),
    pytest.param(
        {**up("a"), "groups_removed": [4, 5.5]},
        "groups_removed[1] is a number, not a segment id (1..2147483647)",
        id="group-float",
    ),
    pytest.param(
        {**up("a"), "groups_removed": [PII]},
        "groups_removed[0] is a string, not a segment id (1..2147483647)",
        id="group-text",
    ),
    pytest.param(
        {**up("a"), "groups_removed": [True]},
        "groups_removed[0] is a boolean, not a segment id (1..2147483647)",
        id="group-bool",
    ),
    pytest.param({**up("a"), "groups_removed": PII}, "groups_removed is a string, not an array", id="groups"),
    pytest.param(
        {**up("a"), "keep_fields": PII}, "keep_fields is a string, not an array of strings", id="keep-text"
    ),
    pytest.param(
        {**up("a"), "keep_fields": ["firstName", 7]},
        "keep_fields[1] is a number, not a string",
        id="keep-item",
    ),
    pytest.param(
        orjson.dumps(up("a")).replace(b'"email"', b'"email","device":' + b'{"d":' * 300 + b"1" + b"}" * 300),
        "value is nested too deep to be sent again",
        id="too-deep",
    ),
]


@pytest.mark.parametrize(("value", "reason"), CASES)
def test_parse_upsert_names_the_field_and_type_at_fault(value, reason):
    with pytest.raises(DecodeError) as err:
        parse_upsert(_raw(value))
    assert err.value.reason == reason
    assert read_upsert(_raw(value)) is None  # the read-back skips it


def test_a_record_without_any_customer_key_names_both():
    value = {k: v for k, v in up("a").items() if k != "customer_key"}
    with pytest.raises(DecodeError, match="neither a customer_key nor a record key"):
        parse_upsert(_raw(value, key=None))


@pytest.mark.parametrize(("value", "reason"), CASES)
def test_the_dlq_reason_says_why_and_holds_no_record_value(value, reason):
    rig = Rig()
    rig.consumer.add(0, "x", value)
    rig.consumer.add(0, "b", up("b"))
    rig.steps()
    (dead,) = rig.producer.dlq()
    assert dead["yespo.error.class"] == "DecodeError"
    assert dead["yespo.error.reason"] == f"upserts record is not readable: {reason}"
    assert "ana" not in "".join(v for k, v in dead.items() if k.startswith("yespo."))
    (audit,) = [a for a in rig.producer.audit() if a["result"] == "dlq:unreadable"]
    assert audit["reason"] == dead["yespo.error.reason"] and "ana" not in json.dumps(audit)
    assert rig.producer.topic(DLQ)[0][2] == _raw(value).value  # the original bytes, as they were
    assert accounted(rig) == {0: "dlq:unreadable", 1: "delivered"}
    assert rig.consumer.commits == [{0: 2}]


# -- blank ids are absent ----------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_contact_external_id_is_read_as_absent(blank):
    value = {**up("n"), "external_customer_id": None}
    value["contact"]["externalCustomerId"] = blank
    record = parse_upsert(_raw(value))
    assert "externalCustomerId" not in record.contact  # type: ignore[operator]
    assert record.external_id is None and external_id(record) is None
    assert record.contact["channels"] == value["contact"]["channels"]  # type: ignore[index]


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_record_external_id_is_read_as_absent(blank):
    record = parse_upsert(_raw({**up("a"), "external_customer_id": blank}))
    assert record.external_id is None
    assert external_id(record) == "ext-a"  # the contact's own id still addresses it


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_contact_with_a_blank_external_id_is_matched_on_its_email_every_time(blank):
    """Sent with `dedupeOn: externalCustomerId` and no id on the wire, each write made a new Yespo
    contact; read as absent, it goes the way of a contact without an id: matched on its email."""
    rig = Rig()
    for version in (1, 2):
        value = up("n", version, email="nina@example.com")
        value["external_customer_id"] = None
        value["contact"]["externalCustomerId"] = blank
        rig.consumer.add(0, "n", value)
        rig.steps()
    bodies = rig.yespo.bulk_bodies()
    assert len(bodies) == 2
    for body in bodies:
        assert body["dedupeOn"] == "email"
        assert "externalCustomerId" not in body["contactFields"]
        assert [c.get("externalCustomerId") for c in body["contacts"]] == [None]
    assert accounted(rig) == {0: "delivered", 1: "delivered"}


def test_single_mode_sends_a_contact_with_a_blank_external_id_without_one():
    rig = Rig(mode="single")
    value = {**up("n"), "external_customer_id": "  "}
    value["contact"]["externalCustomerId"] = ""
    rig.consumer.add(0, "n", value)
    rig.steps()
    (request,) = [r for r in rig.yespo.requests if r.url.path.endswith("/contact")]
    sent = json.loads(request.content)
    assert sent.get("externalCustomerId") is None
    assert accounted(rig) == {0: "delivered"}
