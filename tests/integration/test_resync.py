"""replay, resync and rebuild-state against a merge stage's real output on the broker."""

from __future__ import annotations

import collections
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.config import Settings
from connector.kafka.topics import internal_topics
from connector.mapping import ContactMapper
from connector.merge import CustomerState, view_of
from connector.merge_stage import MergeStage, new_instance_id
from connector.projection import MappingProjector
from connector.routing import partition_for
from tests.integration.merge_support import (
    final_states,
    fully_consumed,
    merge_settings,
    normalized_view,
    produce_workload,
    read_all,
    reference_view,
    write_config,
)
from tests.integration.ops_helpers import LiveMember, run_cli
from tests.integration.test_merge_stage import run_until
from tests.schema_validation import validator
from tests.stubs import simple_json_decoder
from tests.workload import Event, Workload, generate

pytestmark = pytest.mark.integration


@dataclass
class Merged:
    """A workload merged once by the stage; `config` is its config file for the CLI."""

    settings: Settings
    workload: Workload
    records: int
    config: str
    bootstrap: str

    def run_stage(self, expect: int) -> MergeStage:
        """A fresh merge stage until it read `expect` source records and all input is committed."""
        settings = self.settings
        stage = MergeStage(
            settings,
            projector=MappingProjector(settings.contact),
            decoder=simple_json_decoder,
            instance_id=new_instance_id(),
        )
        topics = [*settings.source.topics, settings.state.changes_topic]
        run_until(
            stage,
            lambda: (
                stage.stats.source_records >= expect
                and fully_consumed(self.bootstrap, settings.kafka.group_id, topics)
            ),
        )
        return stage


def upserts(bootstrap: str, topic: str) -> dict[tuple[int, int], dict[str, Any]]:
    """(partition, offset) -> upsert record, in partition/offset order."""
    return {(m.partition(), m.offset()): orjson.loads(m.value()) for m in read_all(bootstrap, topic)}


def new_since(before: dict[tuple[int, int], Any], after: dict[tuple[int, int], Any]) -> list[dict[str, Any]]:
    """Records written after `before` was read (the old ones must be unchanged)."""
    assert {k: after[k] for k in before} == before
    return [r for k, r in after.items() if k not in before]


def last_per_customer(records: Any) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for r in records:
        last[r["customer_key"]] = r
    return last


@pytest.fixture
def merged(kafka_bootstrap, unique_topic, create_topic, tmp_path: Path) -> Merged:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=2)
    create_topic(settings.source.customers.topic, partitions=2)
    create_topic(settings.source.children[0].topic, partitions=2)
    for spec in internal_topics(settings):
        create_topic(spec.name, partitions=spec.partitions or 1, config=spec.config)
    workload = generate(
        seed=23,
        customers=120,
        events=1200,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    counts = produce_workload(kafka_bootstrap, workload)
    config = tmp_path / "connector.yaml"
    write_config(settings, config)
    m = Merged(settings, workload, sum(counts.values()), str(config), kafka_bootstrap)
    first = m.run_stage(m.records)
    assert first.stats.upserts > 0 and first.stats.dlq == 0
    return m


def test_replay_from_earliest_then_run_emits_no_duplicate_upserts(merged: Merged, capsys) -> None:
    s = merged.settings
    before = upserts(merged.bootstrap, s.output.upserts_topic)
    states_before = final_states(merged.bootstrap, s.state.topic)

    code, out, err = run_cli(capsys, "replay", "--config", merged.config, "--from", "earliest")
    assert code == 0, err
    assert "to earliest" in out

    stage = merged.run_stage(merged.records)
    # everything was read again (sources re-routed, old changes re-merged) and deduped by positions
    assert stage.stats.source_records >= merged.records
    assert stage.stats.changes > 0 and stage.stats.skipped.get("stale", 0) > 0
    assert (stage.stats.upserts, stage.stats.deletes, stage.stats.dlq) == (0, 0, 0)
    assert upserts(merged.bootstrap, s.output.upserts_topic) == before
    states_after = final_states(merged.bootstrap, s.state.topic)
    assert {k: v.version for k, v in states_after.items()} == {k: v.version for k, v in states_before.items()}


def _resync(capsys, config: str, *args: str) -> str:
    code, out, err = run_cli(capsys, "resync", "--config", config, *args)
    assert code == 0, err
    return out


def test_resync_force_re_emits_one_upsert_per_live_customer(merged: Merged, capsys) -> None:
    s = merged.settings
    topic = s.output.upserts_topic
    before = upserts(merged.bootstrap, topic)
    states = final_states(merged.bootstrap, s.state.topic)
    live = {k: st for k, st in states.items() if st.fingerprint is not None}
    assert len(live) > 50
    last = last_per_customer(before.values())

    # nothing changed: nothing to emit
    out = _resync(capsys, merged.config)
    assert "emitted: 0 upsert(s), 0 delete(s)" in out
    assert f"skipped: {len(states)} " in out
    assert len(upserts(merged.bootstrap, topic)) == len(before)

    out = _resync(capsys, merged.config, "--force", "--batch-size", "25")
    per_partition = collections.Counter(partition_for(k, s.state.partitions) for k in live)
    batches = sum(-(-n // 25) for n in per_partition.values())  # transactions of <= 25 customers
    assert f"emitted: {len(live)} upsert(s), 0 delete(s) in {batches} transaction(s)" in out
    after = upserts(merged.bootstrap, topic)
    added = new_since(before, after)
    assert len(added) == len(live)
    for (partition, _), r in after.items():  # every upsert sits at its customer's partition
        assert partition == partition_for(r["customer_key"], s.state.partitions)
    schema = validator("upsert.schema.json")
    by_key: dict[str, dict[str, Any]] = {}
    for r in added:
        schema.validate(r)
        assert r["customer_key"] not in by_key, "two upserts for one customer"
        by_key[r["customer_key"]] = r
    assert set(by_key) == set(live)
    for key, r in by_key.items():
        assert r["op"] == "upsert"
        assert r["version"] == live[key].version + 1
        assert r["contact"] == last[key]["contact"]
        assert r["groups_removed"] == []
        assert r["source"]["topic"] == s.state.topic and r["source"]["position"] is None
        assert r["source"]["partition"] == partition_for(key, s.state.partitions)
    resynced = final_states(merged.bootstrap, s.state.topic)
    for key, st in live.items():
        assert resynced[key].version == st.version + 1
        assert resynced[key].fingerprint == st.fingerprint
        assert view_of(resynced[key]) == view_of(st)

    # and again without --force: nothing
    out = _resync(capsys, merged.config)
    assert "emitted: 0 upsert(s), 0 delete(s)" in out
    assert len(upserts(merged.bootstrap, topic)) == len(after)

    # the merge stage continues from the resynced versions
    key = sorted(live, key=int)[0]
    cid = int(key)
    row = merged.workload.customers[cid]
    newer = {**row, "first_name": "Zacarias"}
    envelope = {
        "before": row,
        "after": newer,
        "source": {"schema": "public", "table": "customers", "sequence": '["9000000000", "9000000001"]'},
        "op": "u",
    }
    more = Workload(
        events=[Event(s.source.customers.topic, orjson.dumps({"id": cid}), orjson.dumps(envelope))]
    )
    produce_workload(merged.bootstrap, more)
    stage = merged.run_stage(1)
    assert stage.stats.upserts == 1
    final = new_since(after, upserts(merged.bootstrap, topic))
    assert [(r["customer_key"], r["version"]) for r in final] == [(key, live[key].version + 2)]
    assert final[0]["contact"]["firstName"] == "Zacarias"


def test_resync_after_a_mapping_change_emits_only_changed_contacts(merged: Merged, capsys, tmp_path) -> None:
    s = merged.settings
    before = upserts(merged.bootstrap, s.output.upserts_topic)
    states = final_states(merged.bootstrap, s.state.topic)
    contact = s.contact.model_copy(update={"fields": {"birthDate": "birth_date"}})  # loyaltyLevel dropped
    changed = s.model_copy(update={"contact": contact})
    config = tmp_path / "changed.yaml"
    write_config(changed, config)
    mapper = ContactMapper(contact)
    expected: dict[str, dict[str, Any]] = {}
    for key, st in states.items():
        if st.fingerprint is None:
            continue
        result = mapper.map(view_of(st))
        assert result.contact is not None
        if result.fingerprint != st.fingerprint:
            expected[key] = result.contact.to_json()
    assert len(expected) > 20

    out = _resync(capsys, str(config), "--dry-run")
    assert f"would emit: {len(expected)} upsert(s), 0 delete(s)" in out
    assert len(upserts(merged.bootstrap, s.output.upserts_topic)) == len(before)

    out = _resync(capsys, str(config))
    assert f"emitted: {len(expected)} upsert(s), 0 delete(s)" in out
    added = new_since(before, upserts(merged.bootstrap, s.output.upserts_topic))
    assert {r["customer_key"]: r["contact"] for r in added} == expected
    assert all("loyaltyLevel" not in str(r["contact"]) for r in added)
    assert all(r["version"] == states[r["customer_key"]].version + 1 for r in added)


def test_resync_and_rebuild_refuse_while_the_merge_group_has_members(merged: Merged, capsys) -> None:
    s = merged.settings
    member = LiveMember(merged.bootstrap, s.kafka.group_id, [s.state.changes_topic])
    try:
        for args in (["resync", "--force"], ["rebuild-state", "--yes"]):
            code, _, err = run_cli(capsys, args[0], "--config", merged.config, *args[1:])
            assert code == 1
            assert err.strip().splitlines() == [
                f"GroupActiveError: consumer group '{s.kafka.group_id}' has 1 live member(s); "
                "stop the connector's stage first"
            ]
        # a dry run is read-only and allowed
        code, out, err = run_cli(capsys, "resync", "--config", merged.config, "--force", "--dry-run")
        assert code == 0, err
        assert "would emit" in out
        assert f"note: group {s.kafka.group_id} has 1 live member(s)" in out
        code, out, err = run_cli(capsys, "rebuild-state", "--config", merged.config, "--dry-run")
        assert code == 0, err
        assert "would write" in out and "1 live member(s)" in out
    finally:
        member.close()


def test_rebuild_state_then_a_run_ends_with_the_same_contacts(merged: Merged, capsys) -> None:
    s = merged.settings
    before = upserts(merged.bootstrap, s.output.upserts_topic)
    last_before = last_per_customer(before.values())
    states_before = final_states(merged.bootstrap, s.state.topic)

    code, out, err = run_cli(capsys, "rebuild-state", "--config", merged.config, "--dry-run")
    assert code == 0, err
    assert f"would write {len(states_before)} tombstone(s)" in out
    code, out, err = run_cli(capsys, "rebuild-state", "--config", merged.config)
    assert code == 1 and "pass --yes" in err  # no TTY, no --yes: refused
    code, out, err = run_cli(capsys, "rebuild-state", "--config", merged.config, "--yes")
    assert code == 0, err
    assert f"wrote {len(states_before)} tombstone(s)" in out
    assert final_states(merged.bootstrap, s.state.topic) == {}

    stage = merged.run_stage(merged.records)
    assert stage.stats.restored_records > 0  # the tombstones were read back
    live = [k for k, st in states_before.items() if st.fingerprint is not None]
    assert stage.stats.upserts >= len(live)  # a full re-sync: fingerprints were lost
    states_after: dict[str, CustomerState] = final_states(merged.bootstrap, s.state.topic)
    for cid in sorted(merged.workload.ever_live):
        key = str(cid)
        assert normalized_view(states_after[key]) == reference_view(merged.workload, cid)
    last_after = last_per_customer(new_since(before, upserts(merged.bootstrap, s.output.upserts_topic)))
    for key, record in last_before.items():
        if record["op"] == "upsert":
            assert last_after[key]["op"] == "upsert" and last_after[key]["contact"] == record["contact"], key
        else:
            assert key not in last_after or last_after[key]["op"] == "delete", key
    assert set(last_after) <= set(last_before)


def test_missing_internal_topics_are_one_clear_line(kafka_bootstrap, unique_topic, tmp_path, capsys) -> None:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=2)
    config = tmp_path / "c.yaml"
    write_config(settings, config)
    for command in (["resync"], ["rebuild-state", "--yes"]):
        code, _, err = run_cli(capsys, command[0], "--config", str(config), *command[1:])
        assert code == 1
        [line] = err.strip().splitlines()
        assert (
            line.startswith("ConfigError: missing topics: ")
            and f"{settings.state.topic} (state.topic)" in line
            and "`yespo-connector run --create-topics`" in line  # these commands create nothing
        )


def _dead_letter(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None, str]]) -> None:
    """Write DLQ copies as the stages do: original key and value, `yespo.*` headers (stage given)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value, stage in records:
        headers = [
            ("yespo.error.class", b"DeliveryError"),
            ("yespo.error.reason", b"gave up after 3600 s: 503 from Yespo"),
            ("yespo.source.topic", b"upserts"),
            ("yespo.source.partition", b"0"),
            ("yespo.source.offset", b"1"),
            ("yespo.stage", stage.encode()),
        ]
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def _open_dlq_transaction(bootstrap: str, topic: str, key: str, record: dict[str, Any]) -> Any:
    """A transactional producer with a deliver-stage DLQ copy of `record` in an open transaction."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"dlq-open-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(
        topic, key=key.encode(), value=orjson.dumps(record), headers=[("yespo.stage", b"deliver")]
    )
    assert producer.flush(30) == 0
    return producer


def test_resync_from_dlq_re_drives_the_dead_lettered_customers_only(merged: Merged, capsys) -> None:
    s = merged.settings
    topic = s.output.upserts_topic
    states = final_states(merged.bootstrap, s.state.topic)
    live = sorted((k for k, st in states.items() if st.fingerprint is not None), key=int)
    assert len(live) >= 5
    older, dropped, merge_only, gone = live[:4]
    # `gone` is deleted in the database: the stage emits its delete (to be dead-lettered below)
    row = merged.workload.customers[int(gone)]
    envelope = {
        "before": row,
        "after": None,
        "source": {"schema": "public", "table": "customers", "sequence": '["9000000000", "9000000001"]'},
        "op": "d",
    }
    key = orjson.dumps({"id": int(gone)})
    produce_workload(
        merged.bootstrap,
        Workload(events=[Event(s.source.customers.topic, key, orjson.dumps(envelope))]),
    )
    assert merged.run_stage(1).stats.deletes == 1
    before = upserts(merged.bootstrap, topic)
    states = final_states(merged.bootstrap, s.state.topic)
    last = last_per_customer(before.values())
    assert last[gone]["op"] == "delete" and states[gone].version == last[gone]["version"]
    # an older upsert of `older` (another first name, a segment to detach), dead-lettered
    stale = {
        **last[older],
        "contact": {**last[older]["contact"], "firstName": "Stale"},
        "version": last[older]["version"],
        "groups_removed": [999],
    }
    _dead_letter(
        merged.bootstrap,
        s.output.dlq_topic,
        [
            (older.encode(), orjson.dumps(stale), "deliver"),
            (dropped.encode(), None, "deliver"),  # a copy without its value (too large)
            (gone.encode(), orjson.dumps(last[gone]), "deliver"),  # the customer's final delete
            (merge_only.encode(), orjson.dumps(last[merge_only]), "merge"),  # not re-driven
        ],
    )

    code, out, err = run_cli(capsys, "dlq", "--config", merged.config)
    assert code == 0, err
    assert "DLQ records: 4 " in out and "by stage: deliver 3, merge 1" in out
    assert "customers a `resync --from-dlq` would re-drive (deliver-stage records): 3" in out
    for key in (older, dropped, gone):  # keys and values are customer data: never printed
        assert last[key]["external_customer_id"] not in out

    # one more, written by a transaction still open when the re-drive starts (a merge stage killed
    # mid-transaction): the re-drive waits for it to end instead of reading past it
    late = live[4]
    pending = _open_dlq_transaction(merged.bootstrap, s.output.dlq_topic, late, last[late])
    timer = threading.Timer(3.0, pending.commit_transaction)
    timer.start()
    try:
        out = _resync(capsys, merged.config, "--from-dlq")
    finally:
        timer.join()
    assert "customers named by the DLQ: 4" in out
    assert "emitted: 3 upsert(s), 1 delete(s)" in out
    added = new_since(before, upserts(merged.bootstrap, topic))
    by_key = {r["customer_key"]: r for r in added}
    assert len(added) == 4 and set(by_key) == {older, dropped, gone, late}
    schema = validator("upsert.schema.json")
    for r in added:
        schema.validate(r)
    # the current contact, never the stale one; the dead-lettered detachment is kept
    assert by_key[older]["op"] == "upsert" and by_key[older]["contact"] == last[older]["contact"]
    assert by_key[older]["version"] == states[older].version + 1
    assert 999 in by_key[older]["groups_removed"]
    assert by_key[dropped]["contact"] == last[dropped]["contact"]
    assert by_key[gone]["op"] == "delete" and by_key[gone]["version"] == states[gone].version + 1
    assert by_key[gone]["external_customer_id"] == last[gone]["external_customer_id"]
    resynced = final_states(merged.bootstrap, s.state.topic)
    assert {k: resynced[k].version for k in by_key} == {k: states[k].version + 1 for k in by_key}

    # records written before --since are left alone
    out = _resync(capsys, merged.config, "--from-dlq", "--since", "2999-01-01T00:00:00Z")
    assert "customers named by the DLQ: 0" in out
    assert len(upserts(merged.bootstrap, topic)) == len(before) + 4


def test_an_outage_past_max_retry_seconds_then_resync_from_dlq_ends_with_every_contact_in_yespo(
    merged: Merged, capsys
) -> None:
    """Yespo down longer than max_retry_seconds: everything is dead-lettered; the re-drive delivers it."""
    from pydantic import SecretStr

    from connector.standin import StandIn
    from tests.integration.deliver_support import (
        API_KEY,
        FIELD_IDS,
        StageThread,
        UpsertWorkload,
        compare_with_standin,
        wait_until,
    )
    from tests.integration.merge_support import committed

    s = merged.settings
    topic = s.output.upserts_topic

    def caught_up() -> bool:
        ends = {m.partition(): m.offset() for m in read_all(merged.bootstrap, topic)}
        done = committed(merged.bootstrap, s.kafka.deliver_group, topic)
        return all(done.get(p, -1) > o for p, o in ends.items())

    with StandIn(api_key=API_KEY) as standin:
        data = s.model_dump(exclude={"yespo": {"api_key"}})
        data["yespo"].update(
            {
                "base_url": standin.url,
                "field_ids": FIELD_IDS,
                "country_field": "country",
                "batch_linger_ms": 100,
                "request_timeout_s": 5,
                "max_retry_seconds": 3,
            }
        )
        data["observability"].update({"metrics_port": 0})
        settings = Settings(**data)
        settings = settings.model_copy(
            update={"yespo": settings.yespo.model_copy(update={"api_key": SecretStr(API_KEY)})}
        )
        standin.faults.outage_503(None)
        with StageThread(settings) as run:
            wait_until(lambda: run.error is not None or caught_up(), 120, "everything dead-lettered")
            assert run.error is None, run.error
        assert standin.contacts()["contacts"] == []
        standin.faults.clear()

        code, out, err = run_cli(capsys, "dlq", "--config", merged.config)
        assert code == 0, err
        assert "by stage: deliver" in out
        out = _resync(capsys, merged.config, "--from-dlq")
        assert "emitted: 0 upsert(s)" not in out

        with StageThread(settings) as run:
            wait_until(lambda: run.error is not None or caught_up(), 120, "the re-driven upserts delivered")
            assert run.error is None, run.error
        dump = standin.contacts()

    records = [(r["customer_key"], r) for r in upserts(merged.bootstrap, topic).values()]
    work = UpsertWorkload(records=records)
    # customers without email and phone: Yespo requires a channel, so they stay in the DLQ
    work.bad = {
        k
        for k, r in work.last_per_customer().items()
        if r["op"] == "upsert" and not r["contact"].get("channels")
    }
    assert compare_with_standin(work, dump) == []
    live = [c for c in dump["contacts"] if not c["deleted"]]
    states = final_states(merged.bootstrap, s.state.topic)
    assert (
        len(live)
        == sum(1 for k, st in states.items() if st.fingerprint is not None and k not in work.bad)
        > 50
    )
