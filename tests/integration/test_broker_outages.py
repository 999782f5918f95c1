"""Both stages ride out a broker that stops answering for longer than the group session timeout.

The broker process (broker and KRaft controller) is frozen with SIGSTOP for 50 s: beyond
`session.timeout.ms` (45 s) and within `transaction.timeout.ms` (60 s). Requests in flight time out,
the consumers' sessions expire, commits are refused. Afterwards each stage must be running and its
result exact. The broker is the module's own (`private_broker`): the session's is never frozen.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from confluent_kafka.admin import AdminClient

from connector.standin import StandIn
from tests.integration.deliver_support import (
    API_KEY,
    StageThread,
    accounting,
    compare_with_standin,
    data_positions,
    deliver_settings,
    make_workload,
    produce_transactions,
    wait_until,
    with_key,
)
from tests.integration.kafka_helpers import create_topic
from tests.integration.merge_support import (
    committed,
    fully_consumed,
    merge_settings,
    produce_workload,
    start_stage,
    write_config,
)
from tests.integration.test_merge_stage import check_results, new_stage, run_until
from tests.workload import generate

pytestmark = pytest.mark.integration

HANG_S = 50


def test_a_50s_broker_hang_aborts_rejoins_and_the_merge_stage_stays_exactly_once(
    private_broker, unique_topic
) -> None:
    bootstrap = private_broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    settings = merge_settings(bootstrap, unique_topic, partitions=3)
    create_topic(admin, settings.source.customers.topic, 2)
    create_topic(admin, settings.source.children[0].topic, 3)
    workload = generate(
        seed=23,
        customers=1000,
        events=40_000,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    counts = produce_workload(bootstrap, workload)
    stage = new_stage(settings)
    topics = [*settings.source.topics, settings.state.changes_topic]
    frozen: list[float] = []

    def done() -> bool:
        if not frozen and stage.stats.source_records >= sum(counts.values()) // 4:
            frozen.append(time.monotonic())
            private_broker.freeze(HANG_S)
            return False
        return bool(frozen) and fully_consumed(bootstrap, settings.kafka.group_id, topics)

    run_until(stage, done, timeout=420)
    assert stage.stats.aborts >= 1  # the transaction open during the hang was rolled back
    assert stage.stats.rebalances >= 3  # assigned, revoked after the session expired, assigned again
    check_results(bootstrap, settings, workload)


def test_a_broker_crash_and_restart_mid_run_keeps_the_merge_stage_exactly_once(
    private_broker, unique_topic, tmp_path
) -> None:
    """SIGKILL of the broker process (as in a JVM crash: what it wrote survives in the OS page cache),
    10 s down, restart on the same data, while `yespo-connector run --stage merge` works; the test is
    its supervisor (it restarts the process when it exits). The end result is exactly the reference.

    librdkafka's `send_offsets_to_transaction` can block for ever after such a restart, ignoring its
    timeout (librdkafka#5456, #5511): the stage's watchdog (`observability.stall_exit_s`) then stops
    the process with an error, and the restart carries on from the committed state.
    """
    bootstrap = private_broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    settings = merge_settings(bootstrap, unique_topic, partitions=3)
    settings = settings.model_copy(
        update={"observability": settings.observability.model_copy(update={"stall_exit_s": 40})}
    )
    create_topic(admin, settings.source.customers.topic, 2)
    create_topic(admin, settings.source.children[0].topic, 3)
    workload = generate(
        seed=29,
        customers=1000,
        events=40_000,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    counts = produce_workload(bootstrap, workload)
    config = tmp_path / "merge.yaml"
    write_config(settings, config)
    log = tmp_path / "merge.log"
    group = settings.kafka.group_id
    topics = [*settings.source.topics, settings.state.changes_topic]

    def consumed() -> int:
        return sum(max(0, o) for t in settings.source.topics for o in committed(bootstrap, group, t).values())

    procs = [start_stage(config, "merge", "broker-crash", log)]
    exits: list[int] = []
    crashed = False
    deadline = time.monotonic() + 480
    try:
        while True:
            if procs[-1].poll() is not None:  # the supervisor's part: start it again
                exits.append(procs[-1].returncode)
                assert len(exits) <= 5, f"the stage keeps exiting: {log.read_text()[-3000:]}"
                procs.append(start_stage(config, "merge", "broker-crash", log))
            if not crashed and consumed() >= sum(counts.values()) // 4:
                assert consumed() < sum(counts.values()), "the crash came too late to be mid-run"
                private_broker.crash_and_restart(10)
                crashed = True
            elif crashed and fully_consumed(bootstrap, group, topics):
                break
            assert time.monotonic() < deadline, f"no end after the broker crash: {log.read_text()[-3000:]}"
            time.sleep(1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    check_results(bootstrap, settings, workload)
    text = log.read_text(errors="replace")
    # every exit was the watchdog's (never a crash of its own)
    assert text.count("made no progress") >= sum(1 for code in exits if code != 0), text[-3000:]


def test_a_50s_broker_hang_mid_delivery_loses_nothing_and_the_deliver_stage_goes_on(
    private_broker, unique_topic
) -> None:
    """After the hang the consumer's session has expired: it rejoins as a new member, and the group
    may wait for the old one up to its rebalance timeout (`max.poll.interval.ms`: 60 s here, 300 s by
    default; see the README's "Consumer groups after a broker hang")."""
    bootstrap = private_broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    with StandIn(api_key=API_KEY) as standin:
        # 10 requests/s (bulk, import status, segments): the run lasts beyond the freeze
        settings = deliver_settings(
            bootstrap, unique_topic, standin.url, batch_size=200, max_requests_per_second=10
        )
        kafka = settings.kafka.model_copy(update={"max_poll_interval_ms": 60_000})
        settings = settings.model_copy(update={"kafka": kafka})
        create_topic(admin, settings.output.upserts_topic, 3)
        create_topic(admin, settings.output.dlq_topic, 1)
        create_topic(admin, settings.output.audit_topic, 1)
        work = make_workload(1500, 6000, seed=31, bad_customers=3)
        upserts = settings.output.upserts_topic
        group = settings.kafka.deliver_group
        produce_transactions(bootstrap, upserts, work.records)
        positions = data_positions(bootstrap, upserts)
        last: dict[int, int] = {}
        for p, o in positions:
            last[p] = max(last.get(p, -1), o)

        def received() -> int:
            return int(standin.stats()["counters"].get("contacts_received", 0))

        def caught_up() -> bool:
            done = committed(bootstrap, group, upserts)
            return all(done.get(p, -1) > o for p, o in last.items())

        with StageThread(with_key(settings)) as run:
            wait_until(lambda: run.error is not None or received() >= 1000, 120, "deliveries under way")
            assert run.error is None, run.error
            private_broker.freeze(HANG_S)
            assert not caught_up(), "the freeze came too late to be mid-run"
            wait_until(lambda: run.error is not None or caught_up(), 300, "every record committed")
            assert run.error is None, run.error
            stats = run.stage.stats
        dump = standin.contacts()

    assert compare_with_standin(work, dump) == []
    book = accounting(bootstrap, settings)
    assert book.missing(positions) == []
    assert {positions[p].decode() for p in book.dlq} == work.bad
    assert stats.revocations >= 1  # the session did expire: the stage rejoined
