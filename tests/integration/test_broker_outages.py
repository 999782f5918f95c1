"""Both stages ride out a broker that hangs or crashes mid-run, on a broker of this module's own.

Hang: the broker process (broker and KRaft controller) is frozen with SIGSTOP for 50 s, beyond
`session.timeout.ms` (45 s) and within `transaction.timeout.ms` (60 s): requests time out, sessions
expire, commits are refused. Crash: SIGKILL, 10 s down, restart on the same data. The merge stage runs
as `yespo-connector run` under a supervisor (this test), since a fatal client error stops it by design;
its end result must be exactly the reference. The deliver stage must lose nothing.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import threading
import time
import warnings
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from connector.standin import StandIn
from connector.state.recovery import HANGING_WARNING
from tests.integration.deliver_support import (
    API_KEY,
    StageThread,
    accounting,
    compare_with_standin,
    data_positions,
    deliver_settings,
    log_tail,
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
    start_stage,
    write_config,
)
from tests.integration.test_merge_stage import check_results
from tests.workload import generate

pytestmark = pytest.mark.integration

HANG_S = 50


def _produce_paced(bootstrap: str, workload: Any) -> None:
    """The workload's events in order (idempotent producer), about 4000 per second."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i, ev in enumerate(workload.events):
        producer.produce(ev.topic, key=ev.key, value=ev.value)
        producer.poll(0)
        if i % 200 == 199:
            time.sleep(0.05)
    assert producer.flush(300) == 0


def _merge_under_supervision(
    private_broker, unique_topic, tmp_path, seed: int, disrupt, stall_exit_s: float
) -> str:
    """Run `yespo-connector run --stage merge` under `_supervise`, `disrupt()` once a quarter of the
    input is committed. Returns the stage's log after checking the end result against the reference.
    """
    bootstrap = private_broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    settings = merge_settings(bootstrap, unique_topic, partitions=3)
    settings = settings.model_copy(
        update={"observability": settings.observability.model_copy(update={"stall_exit_s": stall_exit_s})}
    )
    create_topic(admin, settings.source.customers.topic, 2)
    create_topic(admin, settings.source.children[0].topic, 3)
    workload = generate(
        seed=seed,
        customers=1000,
        events=40_000,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    total = len(workload.events)
    config = tmp_path / "merge.yaml"
    write_config(settings, config)
    log = tmp_path / "merge.log"
    group = settings.kafka.group_id
    topics = [*settings.source.topics, settings.state.changes_topic]

    def consumed() -> int:
        return sum(max(0, o) for t in settings.source.topics for o in committed(bootstrap, group, t).values())

    # the input arrives while the stage runs (about 4000 events/s), so a transaction is open when the
    # disruption comes; the producer's retries carry its records over the disruption
    producing = threading.Thread(target=_produce_paced, args=(bootstrap, workload), daemon=True)
    operated: list[list[tuple[str, int, int]]] = []
    tool_failures: list[str] = []

    def operator() -> None:
        """The README's procedure once the stage warns of a hanging transaction: a broker race that
        CI met twice after the 50 s hang (the broker skipped the markers of an aborted transaction),
        which no client call ends. Every partition the transaction wrote hangs, changes and upserts
        too, so the whole broker is searched."""
        if operated or HANGING_WARNING not in log.read_text(errors="replace"):
            return
        try:
            aborted = private_broker.abort_hanging()
        except AssertionError as exc:  # the tool failed (the broker busy?): the next round asks again
            tool_failures.append(str(exc))
            assert len(tool_failures) < 5, tool_failures
            return
        operated.append(aborted)
        warnings.warn(f"a hanging transaction after the disruption, aborted: {aborted}", stacklevel=1)

    producing.start()
    try:
        exits = _supervise(
            lambda: start_stage(config, "merge", "outage", log),
            log,
            ready=lambda: consumed() >= total // 4,
            disrupt=disrupt,
            done=lambda: not producing.is_alive() and fully_consumed(bootstrap, group, topics),
            in_time=producing.is_alive,
            operator=operator,
        )
    finally:
        producing.join(300)
    check_results(bootstrap, settings, workload)
    return _clean_exits(log, exits)


def _supervise(
    start, log, *, ready, disrupt, done, in_time, operator=lambda: None, timeout: float = 480
) -> list[int]:
    """Run a stage process with this test as its supervisor; returns the exit codes it saw.

    `start()` starts the process; the supervisor starts it again whenever it exits (a fatal client
    error or the watchdog: the stage stops with a clear error line, as designed). `disrupt()` is
    called once `ready()`, which must happen while `in_time()` (mid-run); the run ends when `done()`.
    `operator()` runs every round: what an operator does on the stage's warnings.
    """
    procs = [start()]
    exits: list[int] = []
    disrupted = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            if procs[-1].poll() is not None:  # the supervisor's part: start it again
                exits.append(procs[-1].returncode)
                assert len(exits) <= 5, f"the stage keeps exiting: {log.read_text()[-3000:]}"
                procs.append(start())
            try:
                operator()
                if not disrupted and ready():
                    assert in_time(), "the disruption came too late to be mid-run"
                    disrupt()
                    disrupted = True
                elif disrupted and done():
                    break
            except KafkaException:  # the broker is not back yet: ask again
                pass
            assert time.monotonic() < deadline, f"no end after the disruption: {log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return exits


def _clean_exits(log, exits: list[int]) -> str:
    """Each exit was a clean stop on a named error (fatal client error, watchdog), never a crash."""
    text = log.read_text(errors="replace")
    assert all(code == 1 for code in exits), exits
    assert len(re.findall(r"^[A-Za-z]*Error: ", text, re.MULTILINE)) == len(exits), text[-3000:]
    assert "Traceback" not in text
    return text


class _DeliverRun:
    """A deliver-stage run on the private broker: topics created, 6000 upserts of 1500 customers
    committed to the upserts topic (3 of them unmappable), settings at 10 requests/s to `standin`."""

    def __init__(self, bootstrap: str, unique_topic, standin: StandIn, *, seed: int, **observability) -> None:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        settings = deliver_settings(
            bootstrap, unique_topic, standin.url, batch_size=200, max_requests_per_second=10
        )
        kafka = settings.kafka.model_copy(update={"max_poll_interval_ms": 60_000})
        obs = settings.observability.model_copy(update=observability)
        self.settings = settings.model_copy(update={"kafka": kafka, "observability": obs})
        create_topic(admin, self.settings.output.upserts_topic, 3)
        create_topic(admin, self.settings.output.dlq_topic, 1)
        create_topic(admin, self.settings.output.audit_topic, 1)
        self.work = make_workload(1500, 6000, seed=seed, bad_customers=3)
        self._bootstrap = bootstrap
        self._standin = standin
        upserts = self.settings.output.upserts_topic
        produce_transactions(bootstrap, upserts, self.work.records)
        self.positions = data_positions(bootstrap, upserts)
        self._last: dict[int, int] = {}
        for p, o in self.positions:
            self._last[p] = max(self._last.get(p, -1), o)

    def received(self) -> int:
        return int(self._standin.stats()["counters"].get("contacts_received", 0))

    def _committed(self) -> dict[int, int] | KafkaException:
        """The deliver group's committed offsets, or why they could not be read."""
        try:
            return committed(
                self._bootstrap, self.settings.kafka.deliver_group, self.settings.output.upserts_topic
            )
        except KafkaException as exc:
            return exc

    def progress(self) -> str:
        """The group's committed offsets against the last record of each partition."""
        done = self._committed()
        if isinstance(done, KafkaException):
            return f"committed offsets not read: {done}"
        return f"committed {dict(sorted(done.items()))}, last records {dict(sorted(self._last.items()))}"

    def caught_up(self) -> bool:
        """Every record's offset committed by the deliver group (False while the coordinator is away)."""
        done = self._committed()
        if isinstance(done, KafkaException):
            return False
        return all(done.get(p, -1) > o for p, o in self._last.items())


def test_a_50s_broker_hang_aborts_rejoins_and_the_merge_stage_stays_exactly_once(
    private_broker, unique_topic, tmp_path
) -> None:
    """SIGSTOP of the broker for 50 s, beyond the 45 s session timeout, within the 60 s transaction
    timeout: the open transaction is aborted and its input read again, the consumer rejoins."""
    # the watchdog stays above the hang: the stage itself must ride it out (or stop on a fatal error)
    _merge_under_supervision(
        private_broker, unique_topic, tmp_path, 23, lambda: private_broker.freeze(HANG_S), 300
    )


def test_a_broker_crash_and_restart_mid_run_keeps_the_merge_stage_exactly_once(
    private_broker, unique_topic, tmp_path
) -> None:
    """SIGKILL of the broker process (as in a JVM crash: what it wrote survives in the OS page cache),
    10 s down, restart on the same data.

    librdkafka's `send_offsets_to_transaction` can block for ever after such a restart, ignoring its
    timeout (librdkafka#5456, #5511): the stage's watchdog (`observability.stall_exit_s`) then stops
    the process with StageStuckError, and the restart carries on from the committed state.
    """
    _merge_under_supervision(
        private_broker, unique_topic, tmp_path, 29, lambda: private_broker.crash_and_restart(10), 40
    )


def test_a_50s_broker_hang_mid_delivery_loses_nothing_and_the_deliver_stage_goes_on(
    private_broker, unique_topic, caplog
) -> None:
    """After the hang the consumer's session has expired: it rejoins as a new member, and the group
    may wait for the old one up to its rebalance timeout (`max.poll.interval.ms`: 60 s here, 300 s by
    default; see the README's "Consumer groups after a broker hang")."""
    bootstrap = private_broker.bootstrap
    with StandIn(api_key=API_KEY) as standin:
        # 10 requests/s (bulk, import status, segments): the run lasts beyond the freeze
        case = _DeliverRun(bootstrap, unique_topic, standin, seed=31)
        settings, work, positions = case.settings, case.work, case.positions
        received, caught_up = case.received, case.caught_up

        # librdkafka's group protocol log, and the stage's, for a failure message
        debug = settings.kafka.model_copy(update={"extra": {**settings.kafka.extra, "debug": "cgrp"}})
        stage_modules = ("stage", "window", "commits", "outbox", "flow", "rebalance", "history", "gathering")
        logs = ("librdkafka", *(f"connector.deliver.{module}" for module in stage_modules))
        for name in logs:
            caplog.set_level(logging.DEBUG, logger=name)
        with StageThread(with_key(settings.model_copy(update={"kafka": debug}))) as run:
            wait_until(lambda: run.error is not None or received() >= 1000, 120, "deliveries under way")
            assert run.error is None, run.error
            private_broker.freeze(HANG_S)
            assert not caught_up(), "the freeze came too late to be mid-run"
            # about 100 s in the runs seen: up to 60 s for the group to let the new member in, then
            # a minute of deliveries at 10 requests/s; the margin is for a slow, loaded machine
            wait_until(
                lambda: run.error is not None or caught_up(),
                480,
                "every record committed",
                explain=lambda: f"{case.progress()}\n{run.snapshot()}\n{log_tail(caplog, logs, 300)}",
            )
            assert run.error is None, run.error
            stats = run.stage.stats
        dump = standin.contacts()

    assert compare_with_standin(work, dump) == []
    book = accounting(bootstrap, settings)
    assert book.missing(positions) == []
    assert {positions[p].decode() for p in book.dlq} == work.bad
    assert stats.revocations >= 1  # the session did expire: the stage rejoined


def test_a_broker_crash_and_restart_mid_delivery_loses_nothing(
    private_broker, unique_topic, tmp_path
) -> None:
    """SIGKILL of the broker mid-delivery, 10 s down, restart on the same data: the deliver stage
    (`yespo-connector run --stage deliver` under a supervisor, this test) rides it out or stops on a
    clear error and is started again; every record ends delivered or dead-lettered, and the stand-in
    holds exactly the expected contacts."""
    bootstrap = private_broker.bootstrap
    with StandIn(api_key=API_KEY) as standin:
        case = _DeliverRun(bootstrap, unique_topic, standin, seed=37, stall_exit_s=40)
        settings, work, positions = case.settings, case.work, case.positions
        received, caught_up = case.received, case.caught_up

        config = tmp_path / "deliver.yaml"
        write_config(settings, config)
        log = tmp_path / "deliver.log"
        exits = _supervise(
            lambda: start_stage(config, "deliver", "outage", log, api_key=API_KEY),
            log,
            ready=lambda: received() >= 1000,
            disrupt=lambda: private_broker.crash_and_restart(10),
            done=caught_up,
            in_time=lambda: not caught_up(),
        )
        dump = standin.contacts()

    _clean_exits(log, exits)
    assert compare_with_standin(work, dump) == []
    book = accounting(bootstrap, settings)
    assert book.missing(positions) == []
    assert {positions[p].decode() for p in book.dlq} == work.bad


def test_a_commit_timed_out_in_a_broker_hang_can_only_be_resumed(private_broker, unique_topic) -> None:
    """The librdkafka behaviour the merge stage's `close` relies on (`TransactionControl.resume_commit`):
    after a `commit_transaction` that timed out, adding offsets and aborting are refused while the
    commit can resume, and the next `commit_transaction` completes it (the stage's unit doubles copy
    this)."""
    import os
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    bootstrap = private_broker.bootstrap
    topic = unique_topic("resume")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    create_topic(admin, topic)
    member = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "enable.auto.commit": False})
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"{topic}-{uuid.uuid4().hex[:6]}"}
    )
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce(topic, b"committed after the hang")
        producer.flush(10)
        offsets = [TopicPartition(topic, 0, 1)]
        producer.send_offsets_to_transaction(offsets, member.consumer_group_metadata(), 10)
        refused = {}
        os.kill(private_broker.pid, signal.SIGSTOP)
        try:
            with pytest.raises(KafkaException) as timed_out:
                producer.commit_transaction(3)
            with pytest.raises(KafkaException) as info:
                producer.send_offsets_to_transaction(offsets, member.consumer_group_metadata(), 2)
            refused["send_offsets"] = info.value.args[0].name()
            with pytest.raises(KafkaException) as info:
                producer.abort_transaction(2)
            refused["abort"] = info.value.args[0].name()
        finally:
            os.kill(private_broker.pid, signal.SIGCONT)
        error = timed_out.value.args[0]
        assert error.retriable() and not error.txn_requires_abort() and not error.fatal(), error
        assert refused == {"send_offsets": "_CONFLICT", "abort": "_CONFLICT"}
        producer.commit_transaction(60)  # resumes the same commit
        reader.assign([TopicPartition(topic, 0, 0)])
        message = reader.poll(30)
        assert message is not None and message.error() is None
        assert message.value() == b"committed after the hang"
    finally:
        member.close()
        reader.close()
        producer.flush(5)
        del producer  # destroyed now, not after the module's broker stops
