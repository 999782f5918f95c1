"""The deliver stage on the real broker and the Yespo stand-in: faults, a crash, bad contacts, a bad key."""

from __future__ import annotations

import signal
import subprocess
import time

import orjson
import pytest

from connector.deliver.runner import MAX_IN_FLIGHT
from connector.standin import StandIn
from tests.integration.deliver_support import (
    API_KEY,
    StageThread,
    accounting,
    compare_with_standin,
    data_positions,
    deliver_settings,
    make_workload,
    member_ids,
    produce_transactions,
    wait_until,
    with_key,
)
from tests.integration.merge_support import committed, read_all, start_stage, write_config
from tests.integration.ops_helpers import commit

pytestmark = pytest.mark.integration


def _topics(create_topic, settings, partitions: int = 3) -> None:
    create_topic(settings.output.upserts_topic, partitions=partitions)
    create_topic(settings.output.dlq_topic)
    create_topic(settings.output.audit_topic)


class Progress:
    """The last produced data offset per partition, to tell when the stage's commits passed them."""

    def __init__(self, bootstrap: str, settings) -> None:
        self.bootstrap, self.settings = bootstrap, settings
        self.last: dict[int, int] = {}

    def add(self, positions) -> None:
        for p, o in positions:
            self.last[p] = max(self.last.get(p, -1), o)

    def caught_up(self) -> bool:
        done = committed(
            self.bootstrap, self.settings.kafka.deliver_group, self.settings.output.upserts_topic
        )
        return all(done.get(p, -1) > o for p, o in self.last.items())


def _deliver_all(bootstrap: str, settings, standin: StandIn, work):
    """Produce the workload, run the stage until it committed past it: (positions, stats, dump)."""
    progress = Progress(bootstrap, settings)
    progress.add(
        produce_transactions(bootstrap, settings.output.upserts_topic, work.records, per_transaction=400)
    )
    positions = data_positions(bootstrap, settings.output.upserts_topic)
    with StageThread(with_key(settings)) as run:
        wait_until(lambda: run.error is not None or progress.caught_up(), 120, "delivery")
        assert run.error is None, run.error
    return positions, standin.stats(), standin.contacts()


def test_bad_contacts_are_isolated_dead_lettered_and_the_rest_delivered(
    kafka_bootstrap, unique_topic, create_topic
):
    with StandIn(api_key=API_KEY) as standin:
        settings = deliver_settings(kafka_bootstrap, unique_topic, standin.url, batch_size=200)
        _topics(create_topic, settings)
        work = make_workload(150, 300, seed=11, bad_customers=2, delete_rate=0.0)
        # one more contact the official schema refuses: the whole bulk request gets a 400
        key, value = work.records[40]
        poisoned = orjson.loads(orjson.dumps(value))
        poisoned["contact"]["channels"].append(
            {"type": "mobilePush", "value": "token-1", "device": {"clientVersion": "not-an-enum-value"}}
        )
        work.records.append((key, poisoned))
        work.bad.add(key)
        positions, stats, dump = _deliver_all(kafka_bootstrap, settings, standin, work)

    assert compare_with_standin(work, dump) == []
    book = accounting(kafka_bootstrap, settings)
    assert book.missing(positions) == []
    refused = {positions[p].decode(): reason for p, reason in book.dlq.items()}
    assert set(refused) == work.bad
    assert refused[key].startswith("bulk update: HTTP 400") and "clientVersion" in refused[key]
    for bad in work.bad - {key}:
        assert refused[bad] == "channels: invalid email address"
    # the 400 was bisected: more bulk requests than batches, and only the poisoned contact was refused
    bulk_400 = sum(n for route, n in stats["requests"].items() if route.startswith("POST bulk_update 400"))
    assert bulk_400 >= 2, stats["requests"]


def test_a_contact_whose_imports_end_in_error_is_isolated_dead_lettered_and_the_rest_delivered(
    kafka_bootstrap, unique_topic, create_topic
):
    """Every bulk import holding one contact ends in ERROR (the stand-in applies none of them): the
    stage sends the chunks again in halves, delivers the others and dead-letters that contact."""
    with StandIn(api_key=API_KEY) as standin:
        settings = deliver_settings(kafka_bootstrap, unique_topic, standin.url, batch_size=200)
        assert settings.yespo.poll_import_status and settings.yespo.import_error_attempts == 3
        _topics(create_topic, settings)
        work = make_workload(150, 300, seed=12, delete_rate=0.0)
        key = "cust-7"
        ext = work.last_per_customer()[key]["external_customer_id"]
        standin.faults.fail_imports(external_ids=[ext])
        work.bad.add(key)
        positions, stats, dump = _deliver_all(kafka_bootstrap, settings, standin, work)

    assert compare_with_standin(work, dump) == []
    assert ext not in {c["externalCustomerId"] for c in dump["contacts"]}
    book = accounting(kafka_bootstrap, settings)
    assert book.missing(positions) == []
    refused = {(positions[p].decode(), reason) for p, reason in book.dlq.items()}
    assert refused == {(key, "bulk import ended in ERROR 3 times while other imports finished")}
    assert {result for p, results in book.audit.items() if p in book.dlq for result in results} == {
        "dlq:import_error"
    }
    assert stats["counters"]["imports_failed"] >= 3


def test_a_refused_api_key_stops_the_stage_with_one_line_and_nothing_committed_or_dead_lettered(
    kafka_bootstrap, unique_topic, create_topic, tmp_path, monkeypatch
):
    with StandIn(api_key=API_KEY) as standin:
        settings = deliver_settings(kafka_bootstrap, unique_topic, standin.url)
        _topics(create_topic, settings, partitions=1)
        work = make_workload(5, 8, seed=3)
        records = [*work.records[:4], ("junk", b"\x00not json"), *work.records[4:]]
        produce_transactions(kafka_bootstrap, settings.output.upserts_topic, records)
        commit(kafka_bootstrap, settings.kafka.deliver_group, {(settings.output.upserts_topic, 0): 2})
        config = tmp_path / "deliver.yaml"
        write_config(settings, config)
        monkeypatch.setenv("YESPO_API_KEY", "wrong-key")
        log = tmp_path / "deliver.log"
        proc = start_stage(config, "deliver", "it-401", log)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        stats = standin.stats()

    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    assert code == 1, lines
    errors = [line for line in lines if line.startswith("AuthenticationError:")]
    assert errors == [lines[-1]], lines
    assert "401" in lines[-1] and "API key" in lines[-1]
    assert "wrong-key" not in log.read_text(errors="replace")
    assert committed(kafka_bootstrap, settings.kafka.deliver_group, settings.output.upserts_topic) == {0: 2}
    assert read_all(kafka_bootstrap, settings.output.dlq_topic, committed_only=False) == []
    assert read_all(kafka_bootstrap, settings.output.audit_topic, committed_only=False) == []
    assert stats["counters"].get("contacts_received", 0) == 0


def test_20k_upserts_through_429_storms_a_crash_and_a_60s_outage(
    kafka_bootstrap, kafka_admin, unique_topic, create_topic, tmp_path, monkeypatch
):
    """20k records / 5k customers in transactions; the stage is a subprocess that is SIGKILLed once."""
    standin = StandIn(api_key=API_KEY)
    standin.start()
    procs: list[subprocess.Popen] = []
    try:
        settings = deliver_settings(
            kafka_bootstrap,
            unique_topic,
            standin.url,
            batch_size=500,
            max_requests_per_second=60,
        )
        settings = settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update={"session_timeout_ms": 10_000})}
        )
        _topics(create_topic, settings)
        work = make_workload(5000, 20_000, seed=2026, bad_customers=5)
        waves = work.waves(4)
        upserts = settings.output.upserts_topic
        # an aborted transaction first: read_committed must never hand these to the stage
        aborted = [(f"aborted-{i}", {**waves[0][i][1], "customer_key": f"aborted-{i}"}) for i in range(50)]
        for _, value in aborted:
            if value["contact"] is not None:
                value["contact"] = {
                    **value["contact"],
                    "externalCustomerId": f"aborted-{value['customer_key']}",
                }
            value["external_customer_id"] = f"aborted-{value['customer_key']}"
        aborted_positions = produce_transactions(kafka_bootstrap, upserts, aborted, abort=True)
        junk = [("junk-1", b"{not json"), ("junk-2", b'{"op": "merge"}')]

        config = tmp_path / "deliver.yaml"
        write_config(settings, config)
        monkeypatch.setenv("YESPO_API_KEY", API_KEY)
        log = tmp_path / "deliver.log"

        def start() -> subprocess.Popen:
            proc = start_stage(config, "deliver", "it-deliver", log)
            procs.append(proc)
            return proc

        def alive(proc: subprocess.Popen) -> bool:
            assert proc.poll() is None, f"stage exited with {proc.returncode}: {log.read_text()[-3000:]}"
            return True

        progress = Progress(kafka_bootstrap, settings)

        def caught_up(proc: subprocess.Popen) -> bool:
            return alive(proc) and progress.caught_up()

        def received() -> int:
            return standin.stats()["counters"].get("contacts_received", 0)

        # Wave 1 with a 429 storm that sends Retry-After.
        progress.add(
            produce_transactions(kafka_bootstrap, upserts, [*waves[0][:2000], *junk, *waves[0][2000:]])
        )
        proc = start()
        wait_until(lambda: alive(proc) and received() > 0, 60, "the first delivery")
        standin.faults.throttle(6, retry_after=2)
        wait_until(lambda: caught_up(proc), 300, "wave 1 delivered")

        # Wave 2: SIGKILL mid-run (latency keeps a batch in flight), then a restart.
        standin.faults.latency(0.05)
        before = received()
        progress.add(produce_transactions(kafka_bootstrap, upserts, waves[1]))
        wait_until(lambda: alive(proc) and received() > before, 60, "wave 2 under way")
        time.sleep(0.5)
        assert not progress.caught_up(), "killed too late to be mid-run"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        standin.faults.latency(0)
        proc = start()
        wait_until(lambda: caught_up(proc), 300, "wave 2 delivered after the restart")

        # Wave 3 with a 429 storm without Retry-After (the backoff policy decides).
        progress.add(produce_transactions(kafka_bootstrap, upserts, waves[2]))
        standin.faults.throttle(6)
        wait_until(lambda: caught_up(proc), 300, "wave 3 delivered")

        # Wave 4 during a 60 s outage (connection refused): the consumer stays in its group.
        group = settings.kafka.deliver_group
        members = member_ids(kafka_admin, group)
        assert len(members) == 1
        log_mark = len(log.read_text(errors="replace"))
        before_outage = committed(kafka_bootstrap, group, upserts)
        standin.outage(60)
        outage_started = time.monotonic()
        progress.add(produce_transactions(kafka_bootstrap, upserts, waves[3]))
        while time.monotonic() - outage_started < 55:
            alive(proc)
            assert member_ids(kafka_admin, group) == members
            # nothing reaches Yespo, so nothing of wave 4 may be committed
            assert committed(kafka_bootstrap, group, upserts) == before_outage
            time.sleep(5)
        wait_until(lambda: caught_up(proc), 300, "wave 4 delivered after the outage")
        assert member_ids(kafka_admin, group) == members, "the consumer left its group"
        during = log.read_text(errors="replace")[log_mark:]
        assert "partitions revoked" not in during and "partitions assigned" not in during
        assert "delivery failed; retrying" in during
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        dump = standin.contacts()
        stats = standin.stats()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        standin.stop()

    # Every customer's contact equals its last upsert (translated), deletes are deleted, erases gone.
    problems = compare_with_standin(work, dump)
    assert problems == [], f"{len(problems)} customers differ, e.g. {problems[:5]}"
    # Records of the aborted transaction never reached Yespo.
    assert not [c for c in dump["contacts"] if str(c["externalCustomerId"]).startswith("aborted-")]
    # Every committed input record is accounted for: audited as settled, or in the DLQ with a reason.
    positions = data_positions(kafka_bootstrap, upserts)
    assert len(positions) == len(work.records) + len(junk)
    book = accounting(kafka_bootstrap, settings)
    assert book.missing(positions) == []
    assert all(book.dlq.values()), "a DLQ record without a reason"
    assert not set(aborted_positions) & (set(book.audit) | set(book.dlq))
    # Delivered once: only the batches in flight at the SIGKILL (at most MAX_IN_FLIGHT of 500)
    # were delivered but not committed, so only they may be audited twice, and nothing thrice.
    again = [p for p, n in book.audited.items() if n > 1]
    assert max(book.audited.values()) <= 2, "a record delivered three times"
    assert len(again) <= MAX_IN_FLIGHT * 500, f"{len(again)} records delivered twice"
    dead_keys = {positions[p].decode() for p in book.dlq}
    assert dead_keys == work.bad | {"junk-1", "junk-2"}
    # The faults really happened and were retried: 429s (the first storm's Retry-After: 2 s as the
    # first wait) and connection failures during the outage.
    text = log.read_text(errors="replace")
    retries = [line for line in text.splitlines() if "delivery failed; retrying" in line]
    assert stats["faults_injected"] > 0
    assert any("status=429" in line and "retry_in_s=2.0" in line for line in retries)
    assert any("status=429" in line and "retry_in_s=2.0" not in line for line in retries)
    assert any("status=None" in line for line in retries)  # connection refused: no HTTP status
    assert text.count("partitions assigned") == 2  # first life, then the restart


def test_a_restarted_stage_reads_back_the_delivered_records_and_keeps_an_old_key_s_record_out(
    kafka_bootstrap, unique_topic, create_topic
):
    # customers.id 1018 -> 1053 (the contact keeps externalCustomerId c1018), then 1053 is deleted.
    # An earlier process delivered partition 0 (the new key's upsert and delete) and committed; the
    # old key's older upsert waits in partition 1. The next process must not bring the contact back.
    from confluent_kafka import Producer

    from connector.deliver import build_deliver_stage

    def at(record: dict, lsn: int) -> dict:
        return {
            **record,
            "source": {"topic": "t", "partition": 0, "offset": lsn, "position": ["pg", lsn, lsn]},
        }

    work = make_workload(1, 1, seed=5, delete_rate=0.0)
    contact = {**work.records[0][1]["contact"], "externalCustomerId": "c1018"}
    new_key = {
        "op": "upsert",
        "customer_key": "1053",
        "external_customer_id": "c1018",
        "contact": contact,
        "groups_removed": [],
        "erase": False,
        "version": 1,
    }
    records = [
        (0, "1053", at(new_key, 50)),
        (0, "1053", at({**new_key, "op": "delete", "contact": None, "version": 2}, 60)),
        (
            1,
            "1018",
            at({**new_key, "customer_key": "1018", "contact": {**contact, "firstName": "Stale"}}, 30),
        ),
    ]
    # filler below the new key's records: the read-back reaches past them
    filler = [
        (
            0,
            f"f{i}",
            at(
                {
                    **new_key,
                    "customer_key": f"f{i}",
                    "external_customer_id": f"f{i}",
                    "contact": {**contact, "externalCustomerId": f"f{i}"},
                },
                10,
            ),
        )
        for i in range(20)
    ]

    def setup(settings) -> None:
        _topics(create_topic, settings, partitions=2)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
        for partition, key, value in [*filler, *records]:
            producer.produce(
                settings.output.upserts_topic, key=key, value=orjson.dumps(value), partition=partition
            )
        assert producer.flush(30) == 0
        commit(kafka_bootstrap, settings.kafka.deliver_group, {(settings.output.upserts_topic, 0): 22})

    def run_once(read_back: int) -> tuple[list, list, int]:
        with StandIn(api_key=API_KEY) as standin:
            settings = deliver_settings(
                kafka_bootstrap, unique_topic, standin.url, partitions=2, read_back_records=read_back
            )
            setup(settings)
            group, topic = settings.kafka.deliver_group, settings.output.upserts_topic
            stage = build_deliver_stage(with_key(settings))
            with StageThread(stage=stage) as run:
                wait_until(
                    lambda: run.error is not None or committed(kafka_bootstrap, group, topic).get(1) == 1,
                    60,
                    "partition 1 delivered",
                )
                assert run.error is None, run.error
            audit = [orjson.loads(m.value()) for m in read_all(kafka_bootstrap, settings.output.audit_topic)]
            live = [c for c in standin.contacts()["contacts"] if not c["deleted"]]
            return (
                [(a["source"]["partition"], a["result"]) for a in audit],
                [c["externalCustomerId"] for c in live],
                standin.stats()["counters"].get("contacts_received", 0),
            )

    outcomes = {read_back: run_once(read_back) for read_back in (20_000, 0)}  # 0: what it did before
    assert outcomes[20_000] == ([(1, "superseded")], [], 0)
    # the same records without the read-back: the old key's upsert is sent and the contact comes back
    assert outcomes[0] == ([(1, "delivered")], ["c1018"], 1)


def test_read_history_reads_each_range_newest_chunk_first_and_stops_at_its_end_or_the_partition_s_end(
    kafka_bootstrap, unique_topic, create_topic
):
    import uuid

    from confluent_kafka import Producer

    from connector.deliver.history import read_history

    settings = deliver_settings(kafka_bootstrap, unique_topic, "http://127.0.0.1:9", partitions=3)
    topic = settings.output.upserts_topic
    create_topic(topic, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for partition, count in ((0, 30), (1, 5)):
        for i in range(count):
            producer.produce(topic, key=f"k{i}", value=f"{partition}:{i}", partition=partition)
    assert producer.flush(30) == 0
    # an aborted transaction after partition 1's records (offsets 5-7, its marker 8): never read
    txn = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"it-{uuid.uuid4().hex[:8]}"})
    txn.init_transactions(30)
    txn.begin_transaction()
    for _ in range(3):
        txn.produce(topic, key="x", value=b"aborted", partition=1)
    txn.flush(30)
    txn.abort_transaction(30)

    ranges = [(topic, 0, 10, 20), (topic, 1, 0, 9), (topic, 2, 0, 0)]
    expected = {0: [f"0:{o}".encode() for o in range(10, 20)], 1: [f"1:{o}".encode() for o in range(5)]}
    for chunk, order in ((5000, list(range(10, 20))), (4, [16, 17, 18, 19, 12, 13, 14, 15, 10, 11])):
        got: dict[int, list] = {}
        # ended by the ranges and the partitions' ends: past the budget (20 s) it raises KafkaError
        for r in read_history(settings, ranges, 20, chunk=chunk):
            if r is not None:
                got.setdefault(r.partition, []).append((r.offset, r.value))
        assert {p: sorted(v for _, v in got[p]) for p in got} == {p: sorted(v) for p, v in expected.items()}
        assert [o for o, _ in got[0]] == order  # newest chunk first, each chunk in offset order
