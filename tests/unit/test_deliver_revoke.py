"""Deliver stage revocations: what finished is committed, only the revoked partitions' work is dropped.

Eager protocol: the partitions stay this member's while the revoke callback runs, so batches whose
attempts finished meanwhile are committed there, not thrown away and sent again by the next owner.
Cooperative protocol (an incremental revocation of some partitions): the kept partitions' work goes
on, and a kept partition whose records sat in a dropped batch is read again from the first of them.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaError as ConfluentError

from connector.deliver import inline_runner
from connector.errors import AuthenticationError, KafkaError, StateError
from tests.unit.test_deliver_rebalance import RebalancingConsumer, _rig
from tests.unit.test_deliver_stage import TOPIC, TP, ManualRunner, Rig, _WindowedYespo, accounted, up


def _bulk_ids(rig: Rig) -> list[list[str]]:
    return [[c["externalCustomerId"] for c in body["contacts"]] for body in rig.yespo.bulk_bodies()]


def _run(rig: Rig, turns: int = 5, seconds: float = 1.0) -> None:
    for _ in range(turns):
        rig.clock.now += seconds
        rig.steps()


def _on_the_wire(rig: Rig, turns: int = 1) -> ManualRunner:
    """Attempts wait for the test (`ManualRunner`); the rig is started and has stepped `turns` times."""
    runner = ManualRunner()
    rig.stage._runner = runner
    rig.steps(turns)
    return runner


# -- eager: the whole assignment is revoked ----------------------------------------------------------


def test_a_bulk_batch_that_finished_during_the_revocation_is_committed_not_sent_again():
    rig = _rig(batch_size=2)
    rig.consumer.add(0, "a", up("a"))
    rig.consumer.add(0, "b", up("b"))
    runner = _on_the_wire(rig)
    assert len(runner.pending) == 1
    runner.run(0)  # Yespo took both contacts; the rebalance comes before the loop collects it
    rig.consumer.rebalance()
    assert rig.consumer.commits == [{0: 2}], "committed inside the revoke callback"
    assert accounted(rig) == {0: "delivered", 1: "delivered"}
    rig.stage._runner = inline_runner
    _run(rig)
    assert _bulk_ids(rig) == [["ext-a", "ext-b"]]
    assert rig.consumer.committed_offsets() == {0: 2}


def test_single_mode_commits_a_write_finished_during_the_revocation_then_forgets_its_writes():
    """Sent again after the revocation emptied the client's memory, the body would meet Yespo's 409
    ("repeated request within 1 minute"), which it can no longer trust: a 61 s wait, every partition
    paused. Committed in the callback, nothing is sent again; the memory is emptied after the commit."""
    rig = _rig(mode="single", batch_size=1)
    yespo = _WindowedYespo(rig.clock)
    rig.client._http = httpx.Client(transport=httpx.MockTransport(yespo))
    forget = rig.client.forget_recent_writes

    def forget_logged() -> None:
        rig.log.append("forget")
        forget()

    rig.client.forget_recent_writes = forget_logged  # type: ignore[method-assign]
    rig.consumer.add(0, "a", up("a", 1, name="Anna"))
    runner = _on_the_wire(rig)
    runner.run(0)  # POST /contact 200
    rig.consumer.rebalance()
    assert rig.consumer.commits == [{0: 1}]
    assert rig.log.index("forget") > rig.log.index("commit")
    rig.stage._runner = inline_runner
    rig.consumer.add(0, "a", up("a", 2, name="Berta"))
    _run(rig, turns=3)
    assert rig.consumer.committed_offsets() == {0: 2}, "no minute-long wait for a 409"
    assert yespo.first_names == {"ext-a": "Berta"}


def test_a_batch_whose_attempt_failed_retryably_is_dropped_and_sent_again_after_the_rebalance():
    rig = _rig()
    rig.consumer.add(0, "a", up("a"))
    runner = _on_the_wire(rig)
    rig.yespo.script = [(503, {}, "")]
    runner.run(0)
    rig.consumer.rebalance()
    assert rig.consumer.commits == [] and rig.producer.written == []
    assert rig.stage._window == [] and not rig.stage.paused
    rig.stage._runner = inline_runner
    _run(rig)
    assert _bulk_ids(rig) == [["ext-a"], ["ext-a"]]
    assert rig.consumer.committed_offsets() == {0: 1}
    assert accounted(rig) == {0: "delivered"}


def test_a_batch_finished_behind_an_open_batch_of_another_partition_is_committed():
    """a (partition 0) waits for its retry, b (partition 1) finished behind it: b's offsets are safe to
    commit (no open batch before it holds records of partition 1); a is read again."""
    rig = _rig(partitions=2, batch_size=1)
    rig.consumer = RebalancingConsumer(rig.log, partitions=2)
    rig.stage._history = rig.consumer.history
    rig.consumer.add(0, "a", up("a"))
    rig.consumer.add(1, "b", up("b"))
    runner = _on_the_wire(rig, turns=2)
    assert len(runner.pending) == 2
    rig.yespo.script = [(503, {}, "")]
    runner.run(0)  # a: 503, a retry is due later
    runner.run(0)  # b: delivered
    rig.consumer.rebalance()
    assert rig.consumer.commits == [{1: 1}]
    rig.stage._runner = inline_runner
    _run(rig)
    assert _bulk_ids(rig) == [["ext-a"], ["ext-b"], ["ext-a"]]
    assert rig.consumer.committed_offsets() == {0: 1, 1: 1}


def test_a_final_batch_behind_an_open_batch_of_its_partition_is_not_committed():
    rig = _rig(batch_size=1)
    rig.consumer.add(0, "a", up("a"))
    rig.consumer.add(0, "b", up("b"))
    runner = _on_the_wire(rig, turns=2)
    assert len(runner.pending) == 2
    rig.yespo.script = [(503, {}, "")]
    runner.run(0)
    runner.run(0)
    rig.consumer.rebalance()
    assert rig.consumer.commits == [], "offset 1 is not final: nothing of partition 0 is committed"
    rig.stage._runner = inline_runner
    _run(rig)
    assert rig.consumer.committed_offsets() == {0: 2}
    assert accounted(rig) == {0: "delivered", 1: "delivered"}


@pytest.mark.parametrize(
    ("refuse", "raised"),
    [
        pytest.param(
            {"commit": ConfluentError(ConfluentError.ILLEGAL_GENERATION, fatal=True)},
            KafkaError,
            id="commit-refused",
        ),
        pytest.param({"unacked": 1}, StateError, id="dlq-unacked"),
    ],
)
def test_a_failure_of_the_revocation_s_commit_stops_the_stage_on_its_next_turn(refuse, raised):
    """A rebalance callback cannot raise (librdkafka drops the exception): the loop raises it."""
    rig = _rig()
    rig.consumer.add(0, "a", up("a", email="bad-address"))  # dead-lettered: a DLQ write to flush
    runner = _on_the_wire(rig)
    runner.run(0)
    rig.consumer.refuse_commit = refuse.get("commit")
    rig.producer.unacked = refuse.get("unacked", 0)
    rig.consumer.rebalance()  # returns normally
    with pytest.raises(raised):
        rig.stage.step()
    assert rig.consumer.commits == []


def test_a_fatal_attempt_error_seen_by_the_revocation_stops_the_stage_with_nothing_written():
    rig = _rig()
    rig.consumer.add(0, "a", up("a"))
    runner = _on_the_wire(rig)
    rig.yespo.script = [(401, {}, "Unauthorized")]
    runner.run(0)
    rig.consumer.rebalance()
    with pytest.raises(AuthenticationError):
        rig.stage.step()
    assert rig.consumer.commits == [] and rig.producer.written == []


def test_lost_partitions_drop_the_finished_batch_without_a_commit_or_a_write():
    """The session expired: another member may own the partitions already, and will write the DLQ
    and audit records of what it reads again."""
    rig = _rig()
    rig.consumer.add(0, "a", up("a", email="bad-address"))
    runner = _on_the_wire(rig)
    runner.run(0)
    rig.consumer.on_lost(rig.consumer, [TP(TOPIC, 0)])
    assert rig.consumer.commits == [] and rig.producer.written == []
    assert rig.stage._window == [] and rig.stage.stats.revocations == 1


# -- cooperative: some partitions are revoked --------------------------------------------------------


class IncrementalConsumer(RebalancingConsumer):
    """RebalancingConsumer with the cooperative protocol's incremental revoke/assign, and seek()."""

    def __init__(self, log: list[str], partitions: int = 2) -> None:
        super().__init__(log, partitions)
        self.owned = set(self.data)
        self.seeks: list[tuple[int, int]] = []

    def consume(self, num_messages: int = 1, timeout: Any = None) -> list[Any]:
        self.consume_calls += 1
        if not self.assigned:
            self.assigned = True
            self.on_assign(self, [TP(TOPIC, p) for p in sorted(self.owned)])
        out: list[Any] = []
        for p in sorted(self.owned - self.paused):
            msgs = self.data[p]
            while self.position[p] < len(msgs) and len(out) < num_messages:
                out.append(msgs[self.position[p]])
                self.position[p] += 1
        return out

    def seek(self, tp: Any) -> None:
        assert tp.partition in self.owned, "a seek on a partition no longer assigned"
        self.seeks.append((tp.partition, tp.offset))
        self.position[tp.partition] = tp.offset

    def incremental_revoke(self, *partitions: int) -> None:
        self.revoking = True
        try:
            self.on_revoke(self, [TP(TOPIC, p) for p in partitions])
        finally:
            self.revoking = False
        self.owned -= set(partitions)

    def incremental_assign(self, *partitions: int) -> None:
        committed = self.committed_offsets()
        for p in partitions:
            self.position[p] = committed.get(p, 0)
        self.owned |= set(partitions)
        self.on_assign(self, [TP(TOPIC, p) for p in partitions])


def _incremental_rig(**yespo: Any) -> Rig:
    rig = Rig(partitions=2, **yespo)
    rig.consumer = IncrementalConsumer(rig.log)
    rig.stage._consumer_factory = lambda conf: rig.consumer
    rig.stage._history = rig.consumer.history
    return rig


def test_an_incremental_revocation_keeps_the_kept_partitions_batches():
    rig = _incremental_rig(batch_size=1)
    rig.consumer.add(0, "a", up("a"))
    rig.consumer.add(1, "b", up("b"))
    runner = _on_the_wire(rig, turns=2)
    assert len(runner.pending) == 2
    rig.yespo.script = [(503, {}, ""), (503, {}, "")]
    runner.run(0)
    runner.run(0)
    rig.steps()  # collected: both wait for their retry, the partitions are paused
    assert rig.consumer.paused == {0, 1} and rig.stage.paused
    rig.consumer.incremental_revoke(1)
    assert [b.starts for b in rig.stage._window] == [{(TOPIC, 0): 0}], "a's batch is kept, b's dropped"
    assert rig.consumer.seeks == [] and rig.consumer.paused == {0}, "the leaving partition is resumed"
    rig.consumer.incremental_assign(1)  # back (from the committed offset): paused with the kept one
    assert rig.consumer.paused == {0, 1}
    rig.stage._runner = inline_runner
    _run(rig, turns=4, seconds=30)
    assert _bulk_ids(rig) == [["ext-a"], ["ext-b"], ["ext-a"], ["ext-b"]]
    assert rig.consumer.committed_offsets() == {0: 1, 1: 1}
    assert {(a["source"]["partition"], a["result"]) for a in rig.producer.audit()} == {
        (0, "delivered"),
        (1, "delivered"),
    }


def test_an_incremental_revocation_reads_a_kept_partition_s_records_of_a_dropped_batch_again():
    """A batch holding records of the revoked partition is dropped whole: the kept partition is
    sought back to its first record there, so nothing of it is skipped."""
    rig = _incremental_rig(batch_size=2)
    rig.consumer.add(0, "a", up("a"))
    rig.consumer.add(1, "b", up("b"))
    rig.consumer.add(1, "c", up("c"))
    rig.yespo.script = [(503, {}, "")]
    rig.steps()  # one batch: a (partition 0) and b (partition 1); 503: a retry is due later
    assert _bulk_ids(rig) == [["ext-a", "ext-b"]] and rig.stage.paused
    rig.consumer.incremental_revoke(1)
    assert rig.stage._window == []
    assert rig.consumer.seeks == [(0, 0)]
    assert rig.consumer.paused == {0}  # resumed by the next turn, nothing waits any more
    _run(rig)
    assert _bulk_ids(rig) == [["ext-a", "ext-b"], ["ext-a"]]
    assert rig.consumer.committed_offsets() == {0: 1}
    assert accounted(rig) == {0: "delivered"}
    assert rig.consumer.paused == set()


def test_an_incremental_revocation_commits_the_revoked_partition_s_finished_batch():
    rig = _incremental_rig(batch_size=1)
    rig.consumer.add(0, "a", up("a"))
    rig.consumer.add(1, "b", up("b"))
    runner = _on_the_wire(rig, turns=2)
    runner.run(1)  # b (partition 1) finished first
    runner.run(0)  # then a (partition 0): the revocation comes before the loop collects them
    rig.consumer.incremental_revoke(1)
    assert rig.consumer.commits == [{0: 1, 1: 1}]
    assert rig.consumer.seeks == [] and rig.stage._window == []
