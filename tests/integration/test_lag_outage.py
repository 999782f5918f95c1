"""Consumer lag while the deliver stage waits out a Yespo outage (issue #6)."""

from __future__ import annotations

import time

import pytest

from connector.ops.lag import GroupLag, LagReader
from connector.ops.stages import stage_group
from connector.standin import StandIn
from tests.integration.deliver_support import (
    API_KEY,
    StageThread,
    deliver_settings,
    make_workload,
    produce_transactions,
    wait_until,
    with_key,
)

pytestmark = pytest.mark.integration


def _waiting(lag: GroupLag) -> dict[int, tuple[int | None, float | None]]:
    return {p.partition: (p.lag, p.lag_seconds) for p in lag.partitions}


def test_lag_seconds_grow_while_an_outage_pauses_delivery_and_drain_after(
    kafka_bootstrap, unique_topic, create_topic
) -> None:
    with StandIn(api_key=API_KEY) as standin:
        settings = deliver_settings(kafka_bootstrap, unique_topic, standin.url, batch_size=50)
        create_topic(settings.output.upserts_topic, partitions=3)
        create_topic(settings.output.dlq_topic)
        create_topic(settings.output.audit_topic)
        work = make_workload(60, 120, seed=5, delete_rate=0.0)
        group = stage_group(settings, "deliver")
        with LagReader(settings.kafka.as_librdkafka()) as reader, StageThread(with_key(settings)) as run:
            # 1. a first half is delivered: every partition has a committed offset
            produce_transactions(kafka_bootstrap, settings.output.upserts_topic, work.records[:60])

            def drained() -> bool:
                rows = _waiting(reader.read(group))
                return len(rows) == 3 and all(lag is not None and secs == 0.0 for lag, secs in rows.values())

            wait_until(lambda: run.error is not None or drained(), 120, "the first half delivered")
            assert run.error is None, run.error
            # 2. Yespo goes away; the second half waits
            standin.outage()
            produce_transactions(kafka_bootstrap, settings.output.upserts_topic, work.records[60:])
            time.sleep(3)
            first = reader.read(group)
            time.sleep(4)
            second = reader.read(group)
            assert run.error is None, run.error
            before, after = _waiting(first), _waiting(second)
            waiting = [p for p, (lag, _) in after.items() if lag]
            assert waiting, f"nothing is waiting: {after}"
            for p in waiting:
                assert before[p][0] == after[p][0], "records were consumed during the outage"
                assert before[p][1] is not None and after[p][1] is not None
                assert after[p][1] >= before[p][1] + 3.0, (
                    f"lag seconds did not grow: {before[p]} -> {after[p]}"
                )
            # the stage stayed in its group (paused, still polling): same single member throughout
            assert first.members == 1 and second.members == 1
            # 3. Yespo is back: the backlog drains
            standin.restore()
            wait_until(
                lambda: run.error is not None or drained(), 180, "the backlog drained after the outage"
            )
            assert run.error is None, run.error
        assert standin.contacts()["count"] == 60
