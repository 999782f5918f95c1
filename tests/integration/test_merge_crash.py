"""Exactly-once under SIGKILL: the merge stage killed at random moments, then checked end to end."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from connector.kafka.clients import unstable_partitions
from tests.integration.merge_support import (
    committed,
    fully_consumed,
    merge_settings,
    produce_workload,
    read_all,
    start_stage,
    write_config,
)
from tests.integration.test_merge_stage import check_results
from tests.workload import Workload, generate

pytestmark = pytest.mark.integration


def _chunks(workload: Workload, n: int) -> list[Workload]:
    size = -(-len(workload.events) // n)
    return [Workload(events=workload.events[i : i + size]) for i in range(0, len(workload.events), size)]


def _wait_caught_up(bootstrap: str, settings, proc, timeout: float) -> None:
    topics = [*settings.source.topics, settings.state.changes_topic]
    deadline = time.monotonic() + timeout
    while not fully_consumed(bootstrap, settings.kafka.group_id, topics):
        assert proc.poll() is None, f"stage exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the stage did not consume every input offset"
        time.sleep(1.0)


def _feed(bootstrap: str, part: Workload, seconds: float) -> None:
    """Produce `part` in small slices spread over about `seconds` (input keeps flowing)."""
    pieces = _chunks(part, 20)
    for piece in pieces:
        produce_workload(bootstrap, piece)
        time.sleep(seconds / len(pieces))


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


def _stage_partitions(admin: AdminClient, settings) -> list[TopicPartition]:
    """Every partition the merge stage writes transactionally: changes, state, upserts."""
    topics = [settings.state.changes_topic, settings.state.topic, settings.output.upserts_topic]
    meta = admin.list_topics(timeout=10).topics
    return [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]


def _freeze(proc) -> None:
    """SIGSTOP `proc` and wait until the kernel shows it stopped (state T)."""
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 5
    stat = Path(f"/proc/{proc.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.monotonic() < deadline, "the stage did not stop"
        time.sleep(0.001)


def _kill_in_open_transaction(proc, admin: AdminClient, settings, rng, seconds: float = 8.0) -> bool:
    """SIGKILL `proc` at a moment its transaction is open with records on the broker.

    Freezes the stage, looks at the last stable offsets; kills it frozen when a transaction is open,
    otherwise lets it run a few milliseconds more and looks again. Returns False (and kills anyway)
    when no open transaction was seen within `seconds`.
    """
    partitions = _stage_partitions(admin, settings)  # the stage has committed: its topics exist
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _freeze(proc)
        if unstable_partitions(admin, partitions):  # last stable offset < high watermark
            proc.send_signal(signal.SIGKILL)
            return True
        proc.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.005, 0.05))
    proc.send_signal(signal.SIGKILL)
    return False


def _wait_assigned(log, before: int, proc, timeout: float = 60) -> None:
    """Wait until this life of the stage got its partitions (a new "partitions assigned" line)."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("partitions assigned") <= before:
        assert proc.poll() is None, f"stage exited early with {proc.returncode}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the stage was never assigned partitions"
        time.sleep(0.1)


def _setup(kafka_bootstrap, unique_topic, create_topic, tmp_path, *, seed: int, events: int, customers: int):
    settings = merge_settings(
        kafka_bootstrap,
        unique_topic,
        partitions=3,
        session_timeout_ms=6000,
        transaction_timeout_ms=20000,
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
    in_transaction = 0  # kills that froze the stage with an open transaction on the broker
    targeted = 0
    # Each life of the stage gets a slice of the workload fed *while it runs* (over ~4 s), so input
    # keeps flowing. Even lives are killed at a random moment; odd lives are frozen (SIGSTOP) until
    # the broker shows their transaction open (last stable offset < high watermark), then killed.
    for life, part in enumerate(_chunks(workload, 12)):
        before = log.read_text(errors="replace").count("partitions assigned") if log.exists() else 0
        proc = start_stage(config, "merge", "crash-1", log)
        _wait_assigned(log, before, proc)
        progress = _source_progress(kafka_bootstrap, settings)
        feeder = threading.Thread(target=_feed, args=(kafka_bootstrap, part, 4.0), daemon=True)
        feeder.start()
        # kill only once this life is really processing (it committed), while input still flows
        _wait_progress(kafka_bootstrap, settings, progress, proc)
        time.sleep(rng.uniform(0.1, 1.0))
        assert proc.poll() is None, f"stage exited early with {proc.returncode}: {log.read_text()[-2000:]}"
        if life % 2:
            targeted += 1
            in_transaction += _kill_in_open_transaction(proc, admin, settings, rng)
        else:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += 1
        feeder.join(60)
    assert kills >= 10
    # The targeted kills really landed inside transactions (nearly every one: a life whose input
    # ran out before a transaction was caught is the only excuse).
    assert in_transaction >= targeted - 1, f"only {in_transaction} of {targeted} kills caught a transaction"
    final = start_stage(config, "merge", "crash-1", log)
    try:
        _wait_caught_up(kafka_bootstrap, settings, final, timeout=300)
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(60)
    assert final.returncode == 0, log.read_text()[-3000:]
    check_results(kafka_bootstrap, settings, workload)
    # Those transactions were aborted (fenced by the next life): the stage's topics hold records that
    # read_committed never shows.
    counts = {}
    for topic in (settings.state.changes_topic, settings.state.topic, settings.output.upserts_topic):
        counts[topic] = (
            len(read_all(kafka_bootstrap, topic, committed_only=False)),
            len(read_all(kafka_bootstrap, topic)),
        )
    aborted = sum(everything - committed_only for everything, committed_only in counts.values())
    assert aborted > 0, f"no aborted record in the stage's topics (all, committed): {counts}"


def test_second_instance_takes_over_after_kill(kafka_bootstrap, unique_topic, create_topic, tmp_path) -> None:
    settings, workload, config = _setup(
        kafka_bootstrap, unique_topic, create_topic, tmp_path, seed=31, events=8000, customers=800
    )
    parts = _chunks(workload, 2)
    produce_workload(kafka_bootstrap, parts[0])
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_stage(config, "merge", "inst-a", log_a)
    b = start_stage(config, "merge", "inst-b", log_b)
    try:
        time.sleep(8)
        produce_workload(kafka_bootstrap, parts[1])
        time.sleep(1.5)
        a.send_signal(signal.SIGKILL)  # mid-run: b must take over a's partitions after restoring state
        a.wait(30)
        _wait_caught_up(kafka_bootstrap, settings, b, timeout=300)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
    text = log_b.read_text()
    assert "state partition restored" in text
    check_results(kafka_bootstrap, settings, workload)
