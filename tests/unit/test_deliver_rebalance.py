"""Deliver stage across an eager rebalance that gives the member its partitions back (review D1).

librdkafka keeps a partition's *application* pause flag across an unassign/assign: it resets only the
flag it set itself (rdkafka_assignment.c; librdkafka issue #1849). A partition the stage paused for a
retry backoff or a held full batch must not come back paused for good.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka import KafkaException

from connector.deliver_stage import inline_runner
from tests.unit.test_deliver_stage import TOPIC, TP, FakeConsumer, ManualRunner, Rig, accounted, up


class RebalancingConsumer(FakeConsumer):
    """FakeConsumer with librdkafka's eager rebalance: on_revoke, unassign, on_assign.

    `paused` is the application pause flag: the rebalance leaves it as it is. Fetching restarts at
    the committed offsets. `refuse_resume` makes the next resume calls raise (a client error).
    """

    def __init__(self, log: list[str], partitions: int = 1) -> None:
        super().__init__(log, partitions)
        self.revoking = False
        self.resumed_while_revoking: set[int] = set()
        self.refuse_resume = 0

    def resume(self, partitions: Any) -> None:
        if self.refuse_resume:
            self.refuse_resume -= 1
            raise KafkaException(ConfluentError(ConfluentError._STATE))
        if self.revoking:
            self.resumed_while_revoking |= {tp.partition for tp in partitions}
        super().resume(partitions)

    def rebalance(self) -> None:
        partitions = [TP(TOPIC, p) for p in self.data]
        self.revoking = True
        try:
            self.on_revoke(self, partitions)
        finally:
            self.revoking = False
        committed = self.committed_offsets()
        for p in self.data:
            self.position[p] = committed.get(p, 0)
        self.on_assign(self, partitions)


def _rig(**yespo: Any) -> Rig:
    rig = Rig(**yespo)
    rig.consumer = RebalancingConsumer(rig.log)
    rig.stage._consumer_factory = lambda conf: rig.consumer
    rig.stage._history = rig.consumer.history
    return rig


def _run(rig: Rig, turns: int = 20) -> None:
    for _ in range(turns):
        rig.clock.now += 3
        rig.steps()


def test_a_rebalance_during_a_retry_backoff_leaves_the_partitions_fetched():
    rig = _rig()
    rig.consumer.add(0, "a", up("a"))
    rig.yespo.script = [(429, {}, "")]
    rig.steps()
    assert rig.stage.paused and rig.consumer.paused == {0}
    rig.consumer.rebalance()
    assert rig.consumer.resumed_while_revoking == {0}, "resumed while still assigned"
    assert rig.consumer.paused == set() and not rig.stage.paused
    rig.consumer.add(0, "b", up("b"))
    _run(rig)
    assert rig.consumer.committed_offsets() == {0: 2}
    assert accounted(rig) == {0: "delivered", 1: "delivered"}


def test_a_rebalance_while_a_full_batch_is_held_leaves_the_partitions_fetched():
    rig = _rig(batch_size=1)
    runner = ManualRunner()
    rig.stage._runner = runner
    for cid in "abcd":
        rig.consumer.add(0, cid, up(cid))
    rig.steps(3)
    assert len(runner.pending) == 2 and rig.stage.stats.consumed == 3, "two on the wire, one full"
    rig.clock.now += 6  # the gathering batch has been full long enough: the partitions pause
    rig.steps()
    assert rig.consumer.paused == {0} and not rig.stage.paused
    runner.run(0)
    runner.run(0)  # both attempts end; the rebalance comes before the loop collects them
    rig.consumer.rebalance()
    assert rig.consumer.paused == set()
    rig.stage._runner = inline_runner  # the attempts after the rebalance run at once
    _run(rig)
    assert rig.consumer.committed_offsets() == {0: 4}
    assert {a["source"]["offset"] for a in rig.producer.audit()} == {0, 1, 2, 3}


def test_an_assignment_resumes_a_partition_still_paused_from_before():
    """A revocation whose resume failed leaves the flag set: the assignment resumes it anyway."""
    rig = _rig()
    rig.consumer.add(0, "a", up("a"))
    rig.yespo.script = [(503, {}, "")]
    rig.steps()
    assert rig.consumer.paused == {0}
    rig.consumer.refuse_resume = 1  # the revocation's resume raises; it is logged, not fatal
    rig.consumer.rebalance()
    assert rig.consumer.paused == set()
    _run(rig)
    assert rig.consumer.committed_offsets() == {0: 1}
    assert accounted(rig) == {0: "delivered"}
