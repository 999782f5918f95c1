"""Exactly-once under SIGKILL: the merge stage killed at random moments, then checked end to end."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from connector.routing import partition_for
from tests.integration.merge_support import (
    committed,
    feed_workload,
    fully_consumed,
    merge_settings,
    produce_workload,
    read_all,
    split_workload,
    start_stage,
    write_config,
)
from tests.integration.test_merge_stage import check_results
from tests.workload import generate

pytestmark = pytest.mark.integration


def _wait_caught_up(bootstrap: str, settings, proc, timeout: float) -> None:
    topics = [*settings.source.topics, settings.state.changes_topic]
    deadline = time.monotonic() + timeout
    while not fully_consumed(bootstrap, settings.kafka.group_id, topics):
        assert proc.poll() is None, f"stage exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the stage did not consume every input offset"
        time.sleep(1.0)


def _source_progress(bootstrap: str, settings) -> int:
    """Sum of the merge group's committed offsets on the source topics (-1s ignored)."""
    return sum(
        max(o, 0)
        for topic in settings.source.topics
        for o in committed(bootstrap, settings.kafka.group_id, topic).values()
    )


def _wait_progress(bootstrap: str, settings, before: int, proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while _source_progress(bootstrap, settings) <= before:
        assert proc.poll() is None, f"stage exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "the stage made no progress"
        time.sleep(0.05)


def _written_partitions(admin: AdminClient, settings, held: list[int] | None = None) -> list[TopicPartition]:
    """The state and upserts partitions (only `held` ones, if given): written by a transaction only
    at its commit, when it projects the customers it merged (the changes topic gets routed changes)."""
    topics = [settings.state.topic, settings.output.upserts_topic]
    meta = admin.list_topics(timeout=10).topics
    return [
        TopicPartition(t, p)
        for t in topics
        if t in meta
        for p in meta[t].partitions
        if held is None or p in held
    ]


OpenRanges = dict[tuple[str, int], tuple[int, int]]


def _open_ranges(admin: AdminClient, partitions: list[TopicPartition]) -> OpenRanges:
    """(topic, partition) -> (last stable offset, high watermark) where a transaction is open."""
    wanted = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    specs = {tp: OffsetSpec.latest() for tp in wanted}
    stable = admin.list_offsets(specs, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=15)
    high = admin.list_offsets(specs, isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=15)
    ranges = {}
    for tp in wanted:
        lso, hw = stable[tp].result(timeout=20).offset, high[tp].result(timeout=20).offset
        if lso < hw:
            ranges[(tp.topic, tp.partition)] = (lso, hw)
    return ranges


def _assert_aborted(bootstrap: str, kills: list[OpenRanges]) -> None:
    """The records each kill left open were aborted: read_uncommitted shows some, read_committed none."""
    for topic in {topic for ranges in kills for topic, _ in ranges}:
        everything = {(m.partition(), m.offset()) for m in read_all(bootstrap, topic, committed_only=False)}
        committed_only = {(m.partition(), m.offset()) for m in read_all(bootstrap, topic)}
        for ranges in kills:
            for (t, p), (lso, hw) in ranges.items():
                if t != topic:
                    continue
                window = {(p, o) for o in range(lso, hw)}
                assert window & everything, f"{t}[{p}] holds no record in [{lso}, {hw})"
                assert not window & committed_only, f"{t}[{p}]: records in [{lso}, {hw}) were committed"


def _freeze(proc) -> None:
    """SIGSTOP `proc` and wait until the kernel shows it stopped (state T)."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 5
    stat = Path(f"/proc/{proc.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.monotonic() < deadline, "the stage did not stop"
        time.sleep(0.001)


def _kill_in_open_transaction(
    proc, admin: AdminClient, partitions: list[TopicPartition], rng, seconds: float = 8.0
) -> OpenRanges:
    """SIGKILL `proc` at a moment its transaction is open with records on `partitions`.

    Freezes the stage and looks at the last stable offsets; when a transaction is open, looks again
    0.2 s later (a transaction being committed gets its markers within milliseconds) and kills the
    stage still frozen if it is still open. Otherwise lets it run a few milliseconds more and looks
    again. Returns the open ranges it was killed with; none (after killing it anyway) when no open
    transaction was seen within `seconds`.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _freeze(proc)
        if _open_ranges(admin, partitions):
            time.sleep(0.2)
            ranges = _open_ranges(admin, partitions)
            if ranges:
                proc.send_signal(signal.SIGKILL)
                return ranges
        proc.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.005, 0.05))
    proc.send_signal(signal.SIGKILL)
    return {}


def _wait_assigned(log, before: int, proc, timeout: float = 60) -> None:
    """Wait until this life of the stage got its partitions (a new "partitions assigned" line)."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("partitions assigned") <= before:
        assert proc.poll() is None, f"stage exited early with {proc.returncode}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the stage was never assigned partitions"
        time.sleep(0.1)


def _setup(
    kafka_bootstrap,
    unique_topic,
    create_topic,
    tmp_path,
    *,
    seed: int,
    events: int,
    customers: int,
    transaction_timeout_ms: int = 20000,
):
    settings = merge_settings(
        kafka_bootstrap,
        unique_topic,
        partitions=3,
        session_timeout_ms=6000,
        transaction_timeout_ms=transaction_timeout_ms,
        commit_interval_ms=100,
    )
    create_topic(settings.source.customers.topic, partitions=2)
    create_topic(settings.source.children[0].topic, partitions=3)
    workload = generate(
        seed=seed,
        customers=customers,
        events=events,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    config = tmp_path / "connector.yaml"
    write_config(settings, config)
    return settings, workload, config


def test_sigkill_mid_transaction_is_exactly_once(
    kafka_bootstrap, unique_topic, create_topic, tmp_path
) -> None:
    settings, workload, config = _setup(
        kafka_bootstrap, unique_topic, create_topic, tmp_path, seed=23, events=12_000, customers=1000
    )
    rng = random.Random(5)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    log = tmp_path / "stage.log"
    kills = 0
    caught: list[OpenRanges] = []  # per targeted kill: the state/upserts records it left open
    targeted = 0
    # Each life of the stage gets a slice of the workload fed *while it runs* (over ~4 s), so input
    # keeps flowing. Even lives are killed at a random moment; odd lives are frozen (SIGSTOP) until
    # the broker shows their transaction open on the state or upserts topic (last stable offset <
    # high watermark: it has projected merged customers), then killed.
    for life, part in enumerate(split_workload(workload, 12)):
        before = log.read_text(errors="replace").count("partitions assigned") if log.exists() else 0
        proc = start_stage(config, "merge", "crash-1", log)
        _wait_assigned(log, before, proc)
        progress = _source_progress(kafka_bootstrap, settings)
        feeder = threading.Thread(target=feed_workload, args=(kafka_bootstrap, part, 4.0), daemon=True)
        feeder.start()
        # kill only once this life is really processing (it committed), while input still flows
        _wait_progress(kafka_bootstrap, settings, progress, proc)
        time.sleep(rng.uniform(0.1, 1.0))
        assert proc.poll() is None, f"stage exited early with {proc.returncode}: {log.read_text()[-2000:]}"
        if life % 2:
            targeted += 1
            ranges = _kill_in_open_transaction(proc, admin, _written_partitions(admin, settings), rng)
            if ranges:
                caught.append(ranges)
        else:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += 1
        feeder.join(60)
    assert kills >= 10
    # The targeted kills really landed inside transactions that had written state or upserts (nearly
    # every one: a life whose input ran out before a transaction was caught is the only excuse).
    assert len(caught) >= targeted - 1, f"only {len(caught)} of {targeted} kills caught a transaction"
    assert any(t == settings.output.upserts_topic for ranges in caught for t, _ in ranges), caught
    final = start_stage(config, "merge", "crash-1", log)
    try:
        _wait_caught_up(kafka_bootstrap, settings, final, timeout=300)
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(60)
    assert final.returncode == 0, log.read_text()[-3000:]
    check_results(kafka_bootstrap, settings, workload, exact=True)
    # Those transactions were aborted (fenced by the next life): what each kill left open is in the
    # log, and read_committed never shows it; the upserts topic holds aborted records.
    _assert_aborted(kafka_bootstrap, caught)
    upserts = settings.output.upserts_topic
    everything = len(read_all(kafka_bootstrap, upserts, committed_only=False))
    committed_only = len(read_all(kafka_bootstrap, upserts))
    assert everything > committed_only, f"no aborted upsert (all {everything}, committed {committed_only})"


_ASSIGNED = re.compile(r'partitions assigned changes_partitions="?\[([0-9, ]*)\]"?')
_RESTORED = re.compile(r"state partition restored partition=(\d+) seconds=\S+ customers=(\d+)")


def _assigned(text: str) -> list[list[int]]:
    """The changes partitions of every "partitions assigned" line of a stage's log, in order."""
    return [[int(p) for p in found.split(",") if p.strip()] for found in _ASSIGNED.findall(text)]


def _holds_changes_partitions(log: Path) -> bool:
    """The stage's last assignment (in its log) includes changes partitions."""
    assigned = _assigned(log.read_text(errors="replace"))
    return bool(assigned and assigned[-1])


def _customer_of(event, settings) -> int:
    key = orjson.loads(event.key)
    return key["id"] if event.topic == settings.source.customers.topic else key["customer_id"]


def test_second_instance_takes_over_after_kill(kafka_bootstrap, unique_topic, create_topic, tmp_path) -> None:
    """Instance a is killed inside a transaction while input flows; b takes its partitions over,
    restores their state (not empty) and merges the changes that come after on top of it."""
    settings, workload, config = _setup(
        kafka_bootstrap,
        unique_topic,
        create_topic,
        tmp_path,
        seed=31,
        events=8000,
        customers=800,
        transaction_timeout_ms=10000,  # b restores a's partitions once a's open transaction timed out
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    rng = random.Random(3)
    first, second, third = split_workload(workload, 3)
    produce_workload(kafka_bootstrap, first)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_stage(config, "merge", "inst-a", log_a)
    b = start_stage(config, "merge", "inst-b", log_b)
    feeder = threading.Thread(target=feed_workload, args=(kafka_bootstrap, second, 6.0, 30), daemon=True)
    try:
        # the group has settled on both: each holds changes partitions, the first part is merged
        deadline = time.monotonic() + 120
        while not (
            all(_holds_changes_partitions(log) for log in (log_a, log_b))
            and fully_consumed(kafka_bootstrap, settings.kafka.group_id, settings.source.topics)
        ):
            assert a.poll() is None and b.poll() is None, "a stage exited early"
            assert time.monotonic() < deadline, "the instances did not share the partitions"
            time.sleep(0.5)
        feeder.start()
        progress = _source_progress(kafka_bootstrap, settings)
        _wait_progress(kafka_bootstrap, settings, progress, a)
        held = _assigned(log_a.read_text(errors="replace"))[-1]
        assert held and set(held) != set(range(settings.state.partitions)), f"a holds {held}"
        mark = len(log_b.read_bytes())
        # a is killed frozen inside a transaction that wrote merged customers of its own partitions
        killed = _kill_in_open_transaction(a, admin, _written_partitions(admin, settings, held), rng)
        a.wait(30)
        assert killed, "a was never caught inside a transaction"
        assert feeder.is_alive(), "the input ran out before a was killed"
        feeder.join(60)
        # b takes a's partitions over and restores their state from the state topic
        deadline = time.monotonic() + 120
        while True:
            after = log_b.read_bytes()[mark:].decode(errors="replace")
            taken = set(held) <= {p for assigned in _assigned(after) for p in assigned}
            restored = {int(p): int(n) for p, n in _RESTORED.findall(after)}
            if taken and set(held) <= set(restored):
                break
            assert b.poll() is None, f"b exited with {b.returncode}: {log_b.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"b did not take {held} over: {after[-2000:]}"
            time.sleep(0.5)
        assert all(restored[p] > 0 for p in held), f"b restored {restored} (a held {held})"
        # then changes to customers of a's former partitions: b merges them on top of that state
        customers = {_customer_of(ev, settings) for ev in third.events}
        moved = {c for c in customers if partition_for(str(c), settings.state.partitions) in held}
        assert len(moved) >= 50, f"the third part changes only {len(moved)} of a's customers"
        produce_workload(kafka_bootstrap, third)
        _wait_caught_up(kafka_bootstrap, settings, b, timeout=300)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
    try:
        check_results(kafka_bootstrap, settings, workload, exact=True)
    except AssertionError as exc:  # which instance held what, and b's view of the take-over
        raise AssertionError(
            f"{exc}\na held {held}; b restored {restored}; b's log after a's kill:\n"
            f"{log_b.read_bytes()[mark:].decode(errors='replace')[-6000:]}"
        ) from exc
    _assert_aborted(kafka_bootstrap, [killed])  # a's open transaction was aborted, not committed
