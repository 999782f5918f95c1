"""Every ops transaction committed under the group fence carries offsets, so the broker checks it.

KIP-447 checks the committing member's generation only when offsets join the transaction. A merge
group with no committed offsets (new, or its offsets expired) used to get none: a resync that lost
the group unnoticed (its session expired while the process stalled) could commit after a merge stage
restored the partition, and that stage would merge on without resync's records.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import TopicPartition

from connector.errors import KafkaError
from connector.ops.fence import GroupFence
from connector.ops.transactions import commit_fenced

GENERATION = object()  # what consumer_group_metadata() returns: carries the member's generation


class _Member:
    """The fence's consumer: it holds every partition; `lows` are the partitions' earliest offsets."""

    def __init__(self, lows: dict[tuple[str, int], int]) -> None:
        self.lows = lows
        self.watermark_reads = 0

    def poll(self, timeout: float) -> None:
        return None

    def consumer_group_metadata(self) -> object:
        return GENERATION

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        self.watermark_reads += 1
        return self.lows[(tp.topic, tp.partition)], self.lows[(tp.topic, tp.partition)] + 100


class _Producer:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def send_offsets_to_transaction(self, offsets: list[TopicPartition], meta: Any, timeout: float) -> None:
        self.calls.append(("offsets", sorted((tp.topic, tp.partition, tp.offset) for tp in offsets), meta))

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")


def _fence(lows: dict[tuple[str, int], int]) -> tuple[GroupFence, _Member]:
    member = _Member(lows)
    fence = GroupFence.__new__(GroupFence)  # joined: the group's only member, holding every partition
    fence.group = "yespo-connector"
    fence._consumer = member  # type: ignore[assignment]
    fence._revoked = False
    fence._assigned = [TopicPartition(t, p) for t, p in lows]
    return fence, member


LOWS = {("crm.public.customers", 0): 40, ("crm.public.customers", 1): 0, ("yespo-connector.changes", 0): 7}


def test_a_group_without_committed_offsets_sends_the_earliest_ones_with_its_generation() -> None:
    fence, _ = _fence(LOWS)
    producer = _Producer()
    commit_fenced(producer, fence, [])  # type: ignore[arg-type]
    assert producer.calls == [
        ("offsets", sorted((t, p, o) for (t, p), o in LOWS.items()), GENERATION),
        "commit",
    ]


def test_committed_offsets_are_sent_as_they_are() -> None:
    fence, member = _fence(LOWS)
    producer = _Producer()
    commit_fenced(producer, fence, [TopicPartition("yespo-connector.changes", 0, 9)])  # type: ignore[arg-type]
    assert producer.calls == [("offsets", [("yespo-connector.changes", 0, 9)], GENERATION), "commit"]
    assert member.watermark_reads == 0


def test_a_transaction_with_no_offsets_at_all_is_aborted_not_committed_unfenced() -> None:
    fence, _ = _fence({})
    fence._assigned = []
    fence.check = lambda: None  # type: ignore[method-assign]
    producer = _Producer()
    with pytest.raises(KafkaError, match="could not fence"):
        commit_fenced(producer, fence, [])  # type: ignore[arg-type]
    assert producer.calls == ["abort"]
