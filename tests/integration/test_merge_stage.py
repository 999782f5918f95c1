"""The merge stage on the real broker: a CDC workload folds to the reference, exactly once."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from connector.kafka.clients import producer_config
from connector.mapping import ContactMapper
from connector.merge_stage import MergeStage, new_instance_id
from connector.projection import MappingProjector
from tests.integration.merge_support import (
    final_states,
    fully_consumed,
    merge_settings,
    normalized_view,
    produce_workload,
    reference_view,
    upserts_by_customer,
)
from tests.schema_validation import validator
from tests.stubs import simple_json_decoder
from tests.workload import Workload, generate

pytestmark = pytest.mark.integration


def new_stage(settings) -> MergeStage:
    """A merge stage on `settings` with the production projector and a schemaless JSON decoder."""
    return MergeStage(
        settings,
        projector=MappingProjector(settings.contact),
        decoder=simple_json_decoder,
        instance_id=new_instance_id(),
        create_topics=True,
    )


def run_until(stage: MergeStage, done: Callable[[], bool], timeout: float = 240) -> None:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            stage.run()
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            if errors:
                raise errors[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"stage did not catch up in {timeout}s: {stage.stats}")
            time.sleep(1.0)
    finally:
        stage.stop()
        thread.join(60)
    if errors:
        raise errors[0]


def check_results(bootstrap, settings, workload) -> None:
    mapper = ContactMapper(settings.contact)
    states = final_states(bootstrap, settings.state.topic)
    upserts = upserts_by_customer(bootstrap, settings.output.upserts_topic)
    upsert_schema = validator("upsert.schema.json")
    for records in upserts.values():
        for record in records:
            upsert_schema.validate(record)
    for cid in sorted(workload.ever_live):
        key = str(cid)
        ref = reference_view(workload, cid)
        assert key in states, f"customer {cid} has no state"
        assert normalized_view(states[key]) == ref, f"state of customer {cid} differs from the reference"
        records = upserts.get(key, [])
        assert [r["version"] for r in records] == list(range(1, len(records) + 1)), f"versions of {cid}"
        for a, b in itertools.pairwise(records):
            assert (a["op"], a["contact"]) != (b["op"], b["contact"]), f"repeated emission for {cid}"
        expected = mapper.map(ref)
        if expected.contact is not None:
            assert records and records[-1]["op"] == "upsert"
            assert records[-1]["contact"] == expected.contact.to_json(), f"contact of {cid}"
        elif records:
            assert records[-1]["op"] == "delete", f"customer {cid} was deleted"


def produced_workload(
    bootstrap: str,
    create_topic,
    settings,
    *,
    partitions: tuple[int, int],
    seed: int,
    customers: int,
    events: int,
) -> tuple[Workload, int]:
    """Create the source topics (customers, groups partitions), publish a workload; (it, records)."""
    create_topic(settings.source.customers.topic, partitions=partitions[0])
    create_topic(settings.source.children[0].topic, partitions=partitions[1])
    workload = generate(
        seed=seed,
        customers=customers,
        events=events,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    return workload, sum(produce_workload(bootstrap, workload).values())


def inputs_consumed(bootstrap: str, settings) -> bool:
    """The group's committed offsets are at the end of the source and changes topics."""
    topics = [*settings.source.topics, settings.state.changes_topic]
    return fully_consumed(bootstrap, settings.kafka.group_id, topics)


def test_workload_folds_to_reference(kafka_bootstrap, unique_topic, create_topic) -> None:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=3)
    workload, total = produced_workload(
        kafka_bootstrap, create_topic, settings, partitions=(2, 3), seed=7, customers=1000, events=10_000
    )
    assert total >= 10_000
    stage = new_stage(settings)
    run_until(
        stage,
        lambda: stage.stats.source_records >= total and inputs_consumed(kafka_bootstrap, settings),
    )
    assert stage.stats.dlq == 0
    assert stage.stats.skipped.get("stale", 0) > 0  # the replays were recognised
    check_results(kafka_bootstrap, settings, workload)


def test_injected_abort_rolls_back_local_state(kafka_bootstrap, unique_topic, create_topic) -> None:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=2)
    workload, _ = produced_workload(
        kafka_bootstrap, create_topic, settings, partitions=(1, 1), seed=11, customers=200, events=3000
    )
    stage = new_stage(settings)
    stage.inject_abort(5)  # the first five commits abort: their state must never be seen
    run_until(stage, lambda: stage.stats.aborts >= 5 and inputs_consumed(kafka_bootstrap, settings))
    assert stage.stats.aborts >= 5
    # aborted transactions re-processed their input: the result is exactly the reference, no duplicates
    check_results(kafka_bootstrap, settings, workload)


def test_a_transaction_larger_than_the_producer_queue_completes(
    kafka_bootstrap, unique_topic, create_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka refuses a record (BufferError) while its queue holds `queue.buffering.max.messages`
    records not yet reported delivered; a poll round merging a backlog of many customers writes more
    than that in one transaction. The stage must wait for room, not die (a restart would die again)."""
    queue = 300
    monkeypatch.setattr(
        "connector.merge_stage.producer_config",
        lambda *a, **kw: {**producer_config(*a, **kw), "queue.buffering.max.messages": queue},
    )
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=2)
    workload, total = produced_workload(
        kafka_bootstrap, create_topic, settings, partitions=(1, 1), seed=5, customers=1500, events=4000
    )
    stage = new_stage(settings)
    run_until(
        stage,
        lambda: stage.stats.source_records >= total and inputs_consumed(kafka_bootstrap, settings),
    )
    assert stage.stats.upserts > queue  # more writes than the queue holds went through it
    assert stage.stats.aborts == 0 and stage.stats.dlq == 0
    check_results(kafka_bootstrap, settings, workload)
