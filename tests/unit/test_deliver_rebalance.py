"""Deliver stage across an eager rebalance that gives the member its partitions back (review D1).

librdkafka keeps a partition's *application* pause flag across an unassign/assign: it resets only the
flag it set itself (rdkafka_assignment.c; librdkafka issue #1849). A partition the stage paused for a
retry backoff or a held full batch must not come back paused for good.
"""

from __future__ import annotations

from typing import Any

import httpx
from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka import KafkaException

from connector.deliver import inline_runner
from tests.unit.test_deliver_stage import (
    TOPIC,
    TP,
    FakeConsumer,
    ManualRunner,
    Rig,
    _WindowedYespo,
    accounted,
    up,
)


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


def test_single_mode_does_not_trust_a_409_for_its_writes_from_before_the_partition_left() -> None:
    """A writes Anna; the partition goes to B, which writes Berta; it comes back to A within the minute
    and the customer is Anna again: Yespo answers 409 (A's body of 10 s ago) and keeps Berta. A must
    send it again after the window, not count its memory of a write from before the move."""
    a, b = Rig(mode="single"), Rig(mode="single")
    yespo = _WindowedYespo(a.clock)  # the two clocks move together below
    for rig in (a, b):
        rig.client._http = httpx.Client(transport=httpx.MockTransport(yespo))
    a.consumer.add(0, "a", up("a", 1, name="Anna"))
    a.steps()
    assert yespo.first_names == {"ext-a": "Anna"} and a.consumer.commits == [{0: 1}]
    a.consumer.on_revoke(a.consumer, [TP(TOPIC, 0)])  # the partition moves to B
    for rig in (a, b):
        rig.clock.now += 5
    b.consumer.add(0, "a", up("a", 1, name="Anna"))
    b.consumer.add(0, "a", up("a", 2, name="Berta"))
    b.consumer.position[0] = 1  # from the group's committed offset
    b.steps()
    assert yespo.first_names == {"ext-a": "Berta"}
    for rig in (a, b):
        rig.clock.now += 10
    a.consumer.add(0, "a", up("a", 2, name="Berta"))  # back to A, from B's committed offset 2
    a.consumer.add(0, "a", up("a", 3, name="Anna"))
    a.consumer.position[0] = 2
    a.consumer.on_assign(a.consumer, [TP(TOPIC, 0)])
    a.steps()
    assert yespo.first_names == {"ext-a": "Berta"}
    assert a.consumer.commits == [{0: 1}], "a 409 for a write from before the move was counted delivered"
    for rig in (a, b):
        rig.clock.now += 61
    a.steps(3)
    assert yespo.first_names == {"ext-a": "Anna"}
    assert a.consumer.commits[-1] == {0: 3}


def _slow_first_import(rig: Rig) -> Any:
    """Yespo with queued imports (the first due 30 s after the rig's start) behind the rig's client."""
    from tests.unit.sink.test_import_sessions import QueueingYespo

    yespo = QueueingYespo(rig.clock, slow_until=rig.clock.now + 30)  # type: ignore[arg-type]
    yespo.answers = [(200, True)]
    rig.start()
    rig.client._http = httpx.Client(transport=httpx.MockTransport(yespo))
    return yespo


def test_an_import_of_a_batch_dropped_by_a_revocation_is_awaited_before_the_next_write():
    """The revocation drops the batch, not its import still queued at Yespo: once the partition is
    back, the customer's newer write waits for that import (which would otherwise apply last)."""
    rig = _rig(poll_import_status=True, import_status_timeout_s=12)  # awaited up to 36 s
    yespo = _slow_first_import(rig)
    rig.consumer.add(0, "a", up("a", 1, name="Anna"))
    rig.steps()  # Anna's import accepted (s1); its wait times out: a retry is scheduled
    assert list(rig.stage._window[0].sessions) == ["s1"]
    polls = len(yespo.log)
    rig.consumer.rebalance()  # the partition comes back
    assert len(yespo.log) == polls, "the revocation callback polled Yespo"
    assert list(rig.stage._delivery.orphan_sessions) == ["s1"]
    rig.consumer.add(0, "a", up("a", 2, name="Berta"))
    for _ in range(60):
        rig.clock.now += 1
        rig.steps()
    yespo.settle(until=float("inf"))  # Yespo applies what it still holds
    assert rig.consumer.committed_offsets() == {0: 2}
    assert yespo.names == {"ext-a": "Berta"} and yespo.applied[0] == "s1"
    assert [line for line in yespo.log if line.startswith("post")][-1] == "post ['Berta'] -> 200"
    assert rig.stage._delivery.orphan_sessions == {}


def test_a_stop_keeps_the_imports_its_batches_awaited_for_the_stage_s_next_run():
    rig = _rig(poll_import_status=True, import_status_timeout_s=12)
    yespo = _slow_first_import(rig)
    rig.consumer.add(0, "a", up("a", 1, name="Anna"))
    rig.steps()
    polls = len(yespo.log)
    rig.stage.close()  # what run() does on a stop: the uncommitted batch is dropped
    assert len(yespo.log) == polls and rig.stage._window == []
    assert list(rig.stage._delivery.orphan_sessions) == ["s1"]
