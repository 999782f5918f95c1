"""A server's `Retry-After` is honoured above the backoff cap, within the retry budget."""

from __future__ import annotations

import random

import pytest

from connector.sink.retry import RetryPolicy, backoff_delay
from tests.unit.test_deliver_stage import Rig, accounted, up


class Top:
    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize("retry_after", [61.0, 120.0, 900.0])
def test_a_retry_after_above_the_cap_is_waited_for_in_full(retry_after: float) -> None:
    assert backoff_delay(1, retry_after, random.Random(1), cap=60.0) == retry_after
    assert RetryPolicy().next_delay(1, 0.0, retry_after, random.Random(1)) == retry_after
    # the computed backoff stays capped when the server's floor is below it
    assert backoff_delay(30, 5.0, Top(), cap=60.0) == 60.0


def test_a_retry_after_past_the_budget_retries_at_the_budget_s_end_then_gives_up() -> None:
    policy = RetryPolicy(max_retry_seconds=100.0)
    assert policy.next_delay(1, 30.0, 500.0, Top()) == 70.0  # never past max_retry_seconds
    assert policy.next_delay(2, 100.0, 500.0, Top()) is None  # the retry failed too: give up


def test_the_stage_waits_a_long_retry_after_before_sending_again() -> None:
    rig = Rig()
    rig.consumer.add(0, "a", up("a"))
    rig.yespo.script = [(429, {"Retry-After": "120"}, "slow down")]
    rig.steps()
    (batch,) = rig.stage._window
    assert batch.retry_at - rig.clock.now == pytest.approx(120.0)
    rig.clock.now += 119
    rig.steps()
    assert len(rig.yespo.bulk_bodies()) == 1 and rig.consumer.commits == []
    rig.clock.now += 2
    rig.steps()
    assert len(rig.yespo.bulk_bodies()) == 2
    assert rig.consumer.commits == [{0: 1}] and accounted(rig) == {0: "delivered"}


def test_a_retry_after_beyond_the_retry_budget_ends_in_the_dead_letter_queue() -> None:
    rig = Rig(max_retry_seconds=100)
    rig.consumer.add(0, "a", up("a"))
    rig.yespo.always = (429, {"Retry-After": "500"}, "slow down")
    rig.steps()
    (batch,) = rig.stage._window
    assert batch.retry_at - rig.clock.now == pytest.approx(100.0)  # cut to the budget, not to 60 s
    rig.clock.now += 99
    rig.steps()
    assert len(rig.yespo.bulk_bodies()) == 1
    rig.clock.now += 2
    rig.steps(2)
    assert len(rig.yespo.bulk_bodies()) == 2  # the retry at the budget's end, then the give-up
    assert accounted(rig) == {0: "dlq:gave_up"}
    (dead,) = rig.producer.dlq()
    assert "HTTP 429" in dead["yespo.error.reason"]
    assert rig.consumer.committed_offsets() == {0: 1}
