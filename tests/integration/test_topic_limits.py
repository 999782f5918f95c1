"""Writes the broker refuses: a DLQ topic whose `max.message.bytes` is below the connector's limit.

The broker checks each record batch against the topic's `max.message.bytes` (default: the broker's
`message.max.bytes`). Before this was read at start-up, the deliver stage lost such a DLQ record (its
delivery report was not checked: the offsets were committed) and the merge stage aborted the same
transaction for ever. Now both fit their writes under the topic's own limit, and the merge stage
stops (for its restart to apply it) when a limit is lowered while it runs.
"""

from __future__ import annotations

import random

import orjson
import pytest

from connector.standin import StandIn
from tests.integration.deliver_support import (
    API_KEY,
    StageThread,
    accounting,
    data_positions,
    deliver_settings,
    make_workload,
    produce_transactions,
    wait_until,
    with_key,
)
from tests.integration.merge_support import committed, fully_consumed, merge_settings, read_all
from tests.integration.test_merge_stage import new_stage, run_until

pytestmark = pytest.mark.integration

SMALL = 4096
"""The DLQ topic's max.message.bytes in these tests."""

# incompressible (the broker checks the compressed batch) and not JSON
BIG_JUNK = b"{" + random.Random(4).randbytes(3 * SMALL)


def _dlq_copies(bootstrap: str, topic: str) -> list[dict[str, bytes]]:
    return [
        {**{k: v or b"" for k, v in m.headers() or ()}, "value": m.value() or b""}
        for m in read_all(bootstrap, topic, committed_only=True)
    ]


def test_deliver_stage_fits_dlq_copies_under_the_dlq_topics_own_limit(
    kafka_bootstrap, unique_topic, create_topic
):
    with StandIn(api_key=API_KEY) as standin:
        settings = deliver_settings(kafka_bootstrap, unique_topic, standin.url, batch_size=50)
        create_topic(settings.output.upserts_topic, partitions=1)
        create_topic(settings.output.dlq_topic, config={"max.message.bytes": str(SMALL)})
        create_topic(settings.output.audit_topic)
        work = make_workload(20, 40, seed=5, delete_rate=0.0)
        records = [*work.records[:20], ("junk-big", BIG_JUNK), ("junk-small", b"{"), *work.records[20:]]
        produce_transactions(kafka_bootstrap, settings.output.upserts_topic, records)
        positions = data_positions(kafka_bootstrap, settings.output.upserts_topic)
        last = max(o for _, o in positions)
        with StageThread(with_key(settings)) as run:
            wait_until(
                lambda: (
                    run.error is not None
                    or committed(kafka_bootstrap, settings.kafka.deliver_group, settings.output.upserts_topic)
                    == {0: last + 1}
                ),
                90,
                "the deliver stage to commit every record",
            )
            assert run.error is None, run.error

    book = accounting(kafka_bootstrap, settings)
    assert book.missing(positions) == []  # nothing committed without its outcome written
    copies = {c["yespo.source.offset"]: c for c in _dlq_copies(kafka_bootstrap, settings.output.dlq_topic)}
    by_key = {key.decode(): (p, o) for (p, o), key in positions.items()}
    big = copies[str(by_key["junk-big"][1]).encode()]
    assert big["value"] == b"" and b"max.message.bytes" in big["yespo.error.value_dropped"]
    small = copies[str(by_key["junk-small"][1]).encode()]
    assert small["value"] == b"{"  # a copy that fits keeps the original bytes


def test_merge_stage_fits_dlq_copies_under_the_dlq_topics_own_limit(
    kafka_bootstrap, unique_topic, create_topic
):
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=1)
    customers = create_topic(settings.source.customers.topic)
    create_topic(settings.source.children[0].topic)
    create_topic(settings.output.dlq_topic, config={"max.message.bytes": str(SMALL)})
    good = {
        "before": None,
        "after": {"id": 1, "first_name": "Ana", "email": "ana@example.com"},
        "source": {"schema": "public", "table": "customers", "sequence": '["0","100"]'},
        "op": "c",
    }
    records = [
        (b'{"id":2}', BIG_JUNK),  # not JSON, too large for the DLQ topic
        (b'{"id":1}', orjson.dumps(good)),
    ]
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for key, value in records:
        producer.produce(customers, key=key, value=value)
    assert producer.flush(30) == 0
    stage = new_stage(settings)
    topics = [*settings.source.topics, settings.state.changes_topic]
    run_until(stage, lambda: fully_consumed(kafka_bootstrap, settings.kafka.group_id, topics), timeout=90)
    copies = _dlq_copies(kafka_bootstrap, settings.output.dlq_topic)
    assert len(copies) == 1
    assert copies[0]["value"] == b"" and b"max.message.bytes" in copies[0]["yespo.error.value_dropped"]
    assert stage.stats.upserts == 1


def test_merge_stage_stops_when_a_topics_limit_is_lowered_while_it_runs(
    kafka_bootstrap, unique_topic, create_topic
):
    """Writes are fitted under the limits read at start-up. A topic's `max.message.bytes` lowered
    while the stage runs made it abort the same transaction for ever (the broker refuses the record at
    every retry); now it stops with an error naming the topic, and the restart applies the new limit
    (the change that no longer fits goes to the DLQ)."""
    import string

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    from connector.errors import StateError
    from connector.kafka.topics import topic_limits

    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=1)
    customers = create_topic(settings.source.customers.topic)
    create_topic(settings.source.children[0].topic)
    upserts = settings.output.upserts_topic

    def customer(cid: int, loyalty: str) -> bytes:
        after = {"id": cid, "first_name": "Ana", "email": f"c{cid}@example.com", "loyalty_level": loyalty}
        source = {"schema": "public", "table": "customers", "sequence": f'["0","{100 + cid}"]'}
        return orjson.dumps({"before": None, "after": after, "source": source, "op": "c"})

    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def produce(cid: int, loyalty: str) -> None:
        producer.produce(customers, key=orjson.dumps({"id": cid}), value=customer(cid, loyalty))
        assert producer.flush(30) == 0

    produce(1, "gold")
    with StageThread(stage=new_stage(settings)) as run:
        wait_until(lambda: run.error or run.stage.stats.upserts == 1, 90, "the first upsert")
        assert run.error is None, run.error
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        entry = ConfigEntry("max.message.bytes", "2048", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(ConfigResource.Type.TOPIC, upserts, incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)
        wait_until(lambda: topic_limits(admin, [upserts]) == {upserts: 2048}, 30, "the new limit")
        # incompressible enough that the upsert record stays above 2048 bytes after zstd
        produce(2, "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=4000)))
        assert run.join(90), f"the stage kept running: {run.stage.stats}"
    assert isinstance(run.error, StateError), run.error
    assert f"topic {upserts}: max.message.bytes is now 2048" in str(run.error)
    assert run.stage.stats.aborts >= 1

    restarted = new_stage(settings)
    topics = [*settings.source.topics, settings.state.changes_topic]
    run_until(restarted, lambda: fully_consumed(kafka_bootstrap, settings.kafka.group_id, topics), timeout=90)
    copies = _dlq_copies(kafka_bootstrap, settings.output.dlq_topic)
    assert len(copies) == 1, copies
    assert b"max.message.bytes" in copies[0]["yespo.error.reason"]
    assert [orjson.loads(m.value())["customer_key"] for m in read_all(kafka_bootstrap, upserts)] == ["1"]
