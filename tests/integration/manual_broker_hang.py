"""The merge stage rides out a broker that stops answering for longer than the group session timeout.

The broker process is frozen (SIGSTOP) for 50 s, beyond `session.timeout.ms` (45 s) and within
`transaction.timeout.ms` (60 s): the consumer's session expires, the open transaction's offsets are
refused (UNKNOWN_MEMBER_ID), the stage aborts, drops the buffered state, rejoins and re-reads from the
committed offsets. The result must still be exactly the reference fold, with no duplicated version.

Not part of the default suite (the file name does not match `test_*.py`): freezing the session's
broker left it unusable for the tests after it in a CI run (KRaft fences a broker that misses its
controller heartbeats, and it had not recovered there). Run it on its own, against a broker nothing
else uses:

    .venv/bin/pytest tests/integration/manual_broker_hang.py
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.kafka_helpers import listening_pid
from tests.integration.merge_support import fully_consumed, merge_settings, produce_workload
from tests.integration.test_merge_stage import check_results, new_stage, run_until
from tests.workload import generate

pytestmark = pytest.mark.integration

HANG_S = 50


def _broker_pid(bootstrap: str) -> int:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    pid = listening_pid(int(port)) if host in ("127.0.0.1", "localhost", "") else None
    if pid is None:
        message = f"needs a broker process on this machine to freeze (bootstrap {bootstrap})"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI starts the local stack: never skip there
        pytest.skip(message)
    return pid


def test_a_50s_broker_hang_aborts_rejoins_and_stays_exactly_once(
    kafka_bootstrap, unique_topic, create_topic
) -> None:
    broker = _broker_pid(kafka_bootstrap)
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=3)
    create_topic(settings.source.customers.topic, partitions=2)
    create_topic(settings.source.children[0].topic, partitions=3)
    workload = generate(
        seed=23,
        customers=1000,
        events=40_000,
        customers_topic=settings.source.customers.topic,
        groups_topic=settings.source.children[0].topic,
    )
    counts = produce_workload(kafka_bootstrap, workload)
    stage = new_stage(settings)
    topics = [*settings.source.topics, settings.state.changes_topic]
    frozen: list[float] = []

    def done() -> bool:
        if not frozen and stage.stats.source_records >= sum(counts.values()) // 4:
            frozen.append(time.monotonic())
            os.kill(broker, signal.SIGSTOP)
            try:
                time.sleep(HANG_S)
            finally:
                os.kill(broker, signal.SIGCONT)
            return False
        return bool(frozen) and fully_consumed(kafka_bootstrap, settings.kafka.group_id, topics)

    try:
        run_until(stage, done, timeout=420)
    finally:
        os.kill(broker, signal.SIGCONT)
    assert stage.stats.aborts >= 1  # the transaction open during the hang was rolled back
    assert stage.stats.rebalances >= 3  # assigned, revoked after the session expired, assigned again
    check_results(kafka_bootstrap, settings, workload)
