"""Records near and above `message.max.bytes`: the merge stage neither crashes nor stalls, nor loses them.

Rows with large (TOASTed) columns made a changes-topic batch exceed the producer's limit, and the stage
died on every restart. Now the re-keying batches are capped by bytes, and what cannot be written at all
(a change, or a customer's whole state, above the limit) goes to the DLQ with the reason while the
stage goes on; a DLQ copy above the limit keeps only its headers, which name the original record.
"""

from __future__ import annotations

import random
import string

import orjson
import pytest
from confluent_kafka import Producer

from tests.integration.merge_support import final_states, fully_consumed, merge_settings, read_all
from tests.integration.test_merge_stage import new_stage, run_until

pytestmark = pytest.mark.integration

LIMIT = 1_000_000  # librdkafka's default message.max.bytes, which the stage keeps


def _envelope(table: str, after: dict, lsn: int) -> bytes:
    source = {
        "connector": "postgresql",
        "schema": "public",
        "table": table,
        "sequence": orjson.dumps([str(lsn - 1), str(lsn)]).decode(),
    }
    return orjson.dumps({"before": None, "after": after, "source": source, "op": "c", "ts_ms": lsn})


def _customer(cid: int, notes: str) -> dict:
    return {
        "id": cid,
        "external_id": f"EXT-{cid}",
        "first_name": "Ana",
        "email": f"u{cid}@example.com",
        "notes": notes,
    }


def test_large_rows_are_batched_and_oversized_records_dead_lettered(
    kafka_bootstrap, unique_topic, create_topic
) -> None:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=1)
    customers = create_topic(settings.source.customers.topic, config={"max.message.bytes": "4000000"})
    groups = create_topic(settings.source.children[0].topic, partitions=2)
    rng = random.Random(5)

    def text(n: int) -> str:
        return "".join(rng.choices(string.ascii_letters, k=n))

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4_000_000, "linger.ms": 20}
    )
    lsn = 100
    # 1. 300 customers with a 20 kB column: 6 MB to re-key, far more than one changes record can hold
    for cid in range(1, 301):
        lsn += 10
        producer.produce(
            customers,
            key=orjson.dumps({"id": cid}),
            value=_envelope("customers", _customer(cid, text(20_000)), lsn),
        )
    # 2. one customer whose single change is above the limit (the source topic allows 4 MB)
    lsn += 10
    big = _envelope("customers", _customer(7777, text(1_500_000)), lsn)
    producer.produce(customers, key=orjson.dumps({"id": 7777}), value=big)
    # 3. a customer whose state outgrows the limit: 300 group rows of 5 kB each
    lsn += 10
    producer.produce(
        customers, key=orjson.dumps({"id": 9999}), value=_envelope("customers", _customer(9999, "n"), lsn)
    )
    for gid in range(1, 301):
        lsn += 10
        row = {"customer_id": 9999, "group_id": gid, "group_name": text(5_000)}
        producer.produce(
            groups,
            key=orjson.dumps({"customer_id": 9999, "group_id": gid}),
            value=_envelope("customer_groups", row, lsn),
        )
    assert producer.flush(60) == 0
    total = 300 + 1 + 1 + 300

    stage = new_stage(settings)
    topics = [*settings.source.topics, settings.state.changes_topic]
    run_until(
        stage,
        lambda: (
            stage.stats.source_records >= total
            and fully_consumed(kafka_bootstrap, settings.kafka.group_id, topics)
        ),
        timeout=180,
    )

    changes = read_all(kafka_bootstrap, settings.state.changes_topic)
    assert len(changes) > 6  # the re-keying hop split 6 MB of changes into records under the limit
    assert all(len(m.value()) <= LIMIT for m in changes)
    states = final_states(kafka_bootstrap, settings.state.topic)
    assert {str(c) for c in range(1, 301)} <= set(states)
    upserted = {
        orjson.loads(m.value())["customer_key"]
        for m in read_all(kafka_bootstrap, settings.output.upserts_topic)
    }
    assert {str(c) for c in range(1, 301)} | {"9999"} <= upserted
    assert "7777" not in states and "7777" not in upserted

    dlq = read_all(kafka_bootstrap, settings.output.dlq_topic)
    assert stage.stats.dlq == len(dlq)
    headers = [dict(m.headers()) for m in dlq]
    too_big = [
        (m, h) for m, h in zip(dlq, headers, strict=True) if h["yespo.source.topic"] == customers.encode()
    ]
    ((record, head),) = too_big  # the 1.5 MB change: its copy keeps only the headers, naming the original
    assert (
        record.value() is None and b"above the record size limit (1000000 bytes" in head["yespo.error.reason"]
    )
    assert b"the original is at yespo.source" in head["yespo.error.value_dropped"]
    original = read_all(kafka_bootstrap, customers)[int(head["yespo.source.offset"])]
    assert original.value() == big
    # the customer whose state outgrew the limit: every group row is in its state or in the DLQ
    whale = [h for h in headers if h["yespo.source.topic"] == groups.encode()]
    assert whale and all(b"state record would be" in h["yespo.error.reason"] for h in whale)
    kept = states["9999"].children.get("groups", {})
    assert kept and len(kept) + len(whale) == 300
    assert len(read_all(kafka_bootstrap, settings.state.topic)[-1].value() or b"") <= LIMIT
