"""read_upsert (the stage's reading of upserts-topic records) and OutcomeRecorder's audit/DLQ writes."""

from __future__ import annotations

import json

import httpx
import orjson
import pytest
from pydantic import SecretStr

from connector.config import ContactMapping, YespoSettings
from connector.errors import RetryableDeliveryError
from connector.models import RawRecord, SourcePosition
from connector.sink.batch_state import Batch
from connector.sink.client import YespoClient
from connector.sink.delivery import BatchDelivery
from connector.sink.recorder import DeliverStats, OutcomeRecorder
from connector.sink.upserts import read_upsert


def raw(value: object, key: bytes | None = b"k1", offset: int = 7) -> RawRecord:
    body = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return RawRecord("upserts", 2, offset, key, body)


UPSERT = {
    "op": "upsert",
    "customer_key": "c1",
    "external_customer_id": 42,
    "contact": {"externalCustomerId": "42", "channels": []},
    "groups_removed": ["3", 4],
    "erase": False,
    "version": 2,
    "source": {"topic": "changes", "partition": 0, "offset": 1, "position": None},
}


def test_read_upsert_keeps_what_the_planner_needs():
    record = read_upsert(raw(UPSERT))
    assert record is not None
    assert (record.customer_key, record.op, record.external_id) == ("c1", "upsert", "42")
    assert record.contact == UPSERT["contact"]
    assert record.groups_removed == (3, 4)
    assert record.erase is False
    assert (record.ref.partition, record.ref.offset) == (2, 7)
    assert not record.retires
    retire = {**UPSERT, "op": "delete", "contact": None, "retires": True}
    assert read_upsert(raw(retire)).retires  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        (["pg", 10, 12], SourcePosition("pg", (10, 12))),
        (["mysql", 3, 154, 0], SourcePosition("mysql", (3, 154, 0))),
        (None, None),
        (["pg"], None),
        (["pg", "10", 12], None),
        (["pg", True, 1], None),
        ({"kind": "pg"}, None),
    ],
)
def test_read_upsert_keeps_a_readable_source_position_only(position, expected):
    record = read_upsert(raw({**UPSERT, "source": {**UPSERT["source"], "position": position}}))
    assert record is not None and record.position == expected


def test_read_upsert_of_a_delete_falls_back_to_the_record_key():
    value = {"op": "delete", "contact": None, "external_customer_id": "e9", "erase": True}
    record = read_upsert(raw(value, key=b"cust-9"))
    assert record is not None
    assert (record.customer_key, record.op, record.erase, record.contact) == ("cust-9", "delete", True, None)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"not json",
        [UPSERT],
        {**UPSERT, "op": "merge"},
        {**UPSERT, "contact": None},
        {**UPSERT, "contact": ["x"]},
        {**UPSERT, "groups_removed": ["vip"]},
        {**UPSERT, "groups_removed": [5.9]},  # int() would name segment 5
        {**UPSERT, "groups_removed": [True]},  # int() would name segment 1
        {**UPSERT, "groups_removed": "3"},
        {**UPSERT, "customer_key": 5},
    ],
)
def test_unreadable_records_are_none(value):
    assert read_upsert(raw(value)) is None


def test_an_upsert_without_any_customer_key_is_unreadable():
    assert read_upsert(raw({k: v for k, v in UPSERT.items() if k != "customer_key"}, key=None)) is None


def test_recorder_audits_delivered_records_and_counts_them_once_per_tally():
    stats = DeliverStats()
    recorder = OutcomeRecorder(stats, dlq_topic="dlq", audit_topic="audit", wall_ms=lambda: 123)
    record = read_upsert(raw(UPSERT))
    assert record is not None
    outbox: list = []
    tally: dict[str, int] = {}
    recorder.settled(outbox, record, "delivered", 200, 1, "b1", tally)
    recorder.settled(outbox, record, "superseded", 200, 1, "b1", tally)
    assert stats.delivered == 0  # counted when the tally is added
    recorder.count_settled(tally)
    assert (stats.delivered, stats.results, tally) == (2, {"delivered": 1, "superseded": 1}, {})
    topic, key, value, headers = outbox[0]
    assert (topic, key, headers) == ("audit", b"c1", None)
    assert orjson.loads(value) == {
        "customer_key": "c1",
        "externalCustomerId": "42",
        "op": "upsert",
        "result": "delivered",
        "http_status": 200,
        "attempts": 1,
        "batch_id": "b1",
        "time": 123,
        "source": {"topic": "upserts", "partition": 2, "offset": 7},
    }


def test_recorder_dead_letters_the_original_bytes_with_a_reason_and_audits_it():
    stats = DeliverStats()
    recorder = OutcomeRecorder(stats, dlq_topic="dlq", audit_topic="audit", wall_ms=lambda: 5)
    original = raw(b"not json", key=b"cust-3")
    outbox: list = []
    recorder.dead_letter(outbox, original, "DecodeError", "not readable", None, "unreadable", 0, "")
    (dlq_topic, dlq_key, dlq_value, dlq_headers), (audit_topic, audit_key, audit_value, _) = outbox
    assert (dlq_topic, dlq_key, dlq_value) == ("dlq", b"cust-3", b"not json")
    headers = dict(dlq_headers)
    assert any(v in (b"not readable", "not readable") for v in headers.values())
    assert (audit_topic, audit_key) == ("audit", b"cust-3")
    audit = orjson.loads(audit_value)
    assert (audit["result"], audit["reason"], audit["op"]) == ("dlq:unreadable", "not readable", None)
    assert (stats.dead_lettered, stats.results) == (1, {"dlq": 1})


def test_read_upsert_reads_keep_fields_and_refuses_unreadable_ones():
    record = read_upsert(raw({**UPSERT, "keep_fields": ["firstName", "fields.notes"]}))
    assert record is not None and record.keep_fields == ("firstName", "fields.notes")
    assert read_upsert(raw(UPSERT)).keep_fields == ()  # type: ignore[union-attr]
    # sent without them, the fields would be cleared in Yespo: dead-letter instead
    assert read_upsert(raw({**UPSERT, "keep_fields": "firstName"})) is None
    assert read_upsert(raw({**UPSERT, "keep_fields": [1]})) is None


def test_a_record_too_deep_to_write_again_is_unreadable():
    deep = b'{"d":' * 300 + b"1" + b"}" * 300  # orjson reads it; no request body could carry it
    value = orjson.dumps(UPSERT).replace(b'"channels":[]', b'"channels":[{"type":"email","x":' + deep + b"}]")
    assert orjson.loads(value)["contact"]["channels"][0]["type"] == "email"
    assert read_upsert(raw(value)) is None


def test_an_empty_contact_external_id_addresses_nothing():
    from connector.sink.batch import external_id

    record = read_upsert(raw({**UPSERT, "external_customer_id": None, "contact": {"externalCustomerId": ""}}))
    assert record is not None
    assert external_id(record) is None


def test_a_probe_answered_409_proves_nothing_and_the_retry_waits_for_the_window():
    # a retry first sends again a contact the batch delivered (the probe): its body repeats a
    # request of the last minute, and Yespo's 409 says only that, not that the import applied
    seen: set[bytes] = set()
    posts: list[tuple[list[str], int]] = []
    imports: dict[str, str] = {}

    def yespo(request: httpx.Request) -> httpx.Response:
        if "/importstatus/" in request.url.path:
            return httpx.Response(200, json={"status": imports[request.url.path.rsplit("/", 1)[1]]})
        names = [c["externalCustomerId"] for c in json.loads(request.content)["contacts"]]
        if request.content in seen:  # the clock does not move: every repeat is within the minute
            posts.append((names, 409))
            return httpx.Response(409, text="Duplicated request")
        seen.add(request.content)
        posts.append((names, 200))
        sid = f"s{len(imports) + 1}"
        imports[sid] = "ERROR" if "b" in names else "FINISHED"  # b's imports always fail
        return httpx.Response(200, json={"asyncSessionId": sid})

    mapping = ContactMapping.model_validate(
        {"externalCustomerId": "id", "channels": [{"type": "email", "column": "email"}]}
    )
    settings = YespoSettings(
        base_url="https://yespo.test", api_key=SecretStr("k-1234"), max_requests_per_second=200
    )
    client = YespoClient(
        httpx.Client(transport=httpx.MockTransport(yespo)), settings, mapping, sleep=lambda s: None
    )
    recorder = OutcomeRecorder(DeliverStats(), dlq_topic="dlq", audit_topic="audit")
    delivery = BatchDelivery(
        client, recorder, mode="bulk", batch_size=10, poll_import_status=True, sleep=lambda s: None
    )
    records = []
    for i, cid in enumerate("ab"):
        contact = {"externalCustomerId": cid, "channels": [{"type": "email", "value": f"{cid}@x.io"}]}
        value = {"op": "upsert", "customer_key": cid, "external_customer_id": cid, "contact": contact}
        records.append(read_upsert(raw(value, key=cid.encode(), offset=i)))
    batch = Batch("b1", records, {("upserts", 2): 2}, [])
    with pytest.raises(RetryableDeliveryError):
        delivery.attempt(batch)  # a and b in ERROR, split: a FINISHED, b in ERROR again (waits)
    assert posts == [(["a", "b"], 200), (["a"], 200), (["b"], 200)]
    with pytest.raises(RetryableDeliveryError) as err:
        delivery.attempt(batch)
    assert err.value.status_code == 409 and err.value.retry_after is not None and err.value.retry_after > 60
    assert posts[3:] == [(["a"], 409)]  # the probe only: nothing else goes after a 409
