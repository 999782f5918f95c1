"""The merge stage's marker sweep (no broker: fake clients, white-box).

Inside an open transaction it leaves the pending changes alone; a transaction it opens is fenced by
the group like any other (its offsets join it), also right after an assignment.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException, TopicPartition

from connector.config import load_settings
from connector.merge import CustomerState, RowState
from connector.merge_stage import MergeStage
from connector.models import RecordRef, SourcePosition
from connector.projection import MappingProjector
from connector.routing import CUSTOMERS, RoutedChange
from tests.stubs import simple_json_decoder

from .test_config import REPO_EXAMPLE

HOUR_MS = 3_600_000


class FakeProducer:
    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []

    def begin_transaction(self) -> None:
        pass

    def produce(self, topic: str, **kw: Any) -> None:
        self.produced.append({"topic": topic, **kw})


def stage_with_pending_change(now_ms: int) -> tuple[MergeStage, FakeProducer]:
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(
        settings,
        projector=MappingProjector(settings.contact),
        decoder=simple_json_decoder,
        wall_ms=lambda: now_ms,
    )
    producer = FakeProducer()
    stage._producer = producer  # type: ignore[assignment]
    stage._consumer = object()  # type: ignore[assignment]
    stage._assigned = [TopicPartition(settings.state.changes_topic, 0)]
    pos = SourcePosition("pg", (10, 20))
    committed = CustomerState(
        "1",
        RowState({"id": 1, "first_name": "Ana"}, pos),
        # a group membership deleted long ago: its marker has expired
        {"groups": {"[1,7]": RowState(None, pos, 0)}},
    )
    stage._store.put(0, "1", committed)
    change = RoutedChange(
        "1", CUSTOMERS, "[1]", "upsert", {"id": 1, "first_name": "Bea"}, SourcePosition("pg", (20, 30)),
        1, False, False, RecordRef(settings.source.customers.topic, 0, 5),
    )  # fmt: skip
    stage._transactions.begin(producer)  # type: ignore[arg-type]
    stage._merger.merge_one(None, change, 0, producer)  # type: ignore[arg-type]
    return stage, producer


def test_sweep_in_an_open_transaction_keeps_the_pending_change() -> None:
    now = 1000 * 24 * HOUR_MS
    stage, producer = stage_with_pending_change(now)
    stage._sweeper.sweep()
    pending = stage._merger.txn.get(0, "1")
    assert pending is not None and pending.customer is not None
    assert pending.customer.values == {"id": 1, "first_name": "Bea"}  # not the committed "Ana"
    # the pending customer is projected (and its state written) at commit: the sweep leaves it alone
    assert not [p for p in producer.produced if p["topic"] == stage.settings.state.topic]


def test_sweep_expires_markers_of_customers_not_changed_in_the_transaction() -> None:
    now = 1000 * 24 * HOUR_MS
    stage, producer = stage_with_pending_change(now)
    pos = SourcePosition("pg", (1, 2))
    stage._store.put(
        0, "2", CustomerState("2", RowState({"id": 2}, pos), {"groups": {"[2,7]": RowState(None, pos, 0)}})
    )
    stage._sweeper.sweep()
    written = [p for p in producer.produced if p["topic"] == stage.settings.state.topic]
    assert [p["key"] for p in written] == [b"2"]
    swept = stage._merger.txn.get(0, "2")
    assert swept is not None and swept.children.get("groups", {}) == {}


class GroupMember:
    """The consumer of a member just assigned its partitions; `committed` answers what the group holds."""

    def __init__(self, committed: dict[tuple[str, int], int] | None) -> None:
        self.offsets = committed  # None: not readable (the group coordinator does not answer)

    def consumer_group_metadata(self) -> object:
        return object()

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.offsets is None:
            raise KafkaException(CKError(CKError._TIMED_OUT, "timed out"))
        return [
            TopicPartition(tp.topic, tp.partition, self.offsets.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]


class TransactionalProducer(FakeProducer):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[list[tuple[str, int, int]]] = []
        self.commits = 0

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self.sent.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1


def idle_member_with_an_expired_marker(
    committed: dict[tuple[str, int], int] | None,
) -> tuple[MergeStage, TransactionalProducer, GroupMember]:
    """A member just assigned changes partition 0 (restored) and a source partition: nothing consumed."""
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(
        settings,
        projector=MappingProjector(settings.contact),
        decoder=simple_json_decoder,
        wall_ms=lambda: 1000 * 24 * HOUR_MS,
    )
    consumer, producer = GroupMember(committed), TransactionalProducer()
    stage._consumer, stage._producer = consumer, producer  # type: ignore[assignment]
    stage._assigned = [
        TopicPartition(settings.state.changes_topic, 0),
        TopicPartition(settings.source.customers.topic, 0),
    ]
    pos = SourcePosition("pg", (1, 2))
    stage._store.put(0, "7", CustomerState("7", RowState(None, pos, 0)))  # a delete marker, expired
    return stage, producer, consumer


def test_a_sweep_right_after_an_assignment_sends_the_assignment_s_committed_offsets() -> None:
    # a member the group has dropped must not commit its tombstones after the new owner's writes:
    # KIP-447 checks the member's generation only when offsets join the transaction
    changes = load_settings(REPO_EXAMPLE).state.changes_topic
    stage, producer, _ = idle_member_with_an_expired_marker({(changes, 0): 7})
    stage._sweeper.sweep()
    stage._transactions.commit()
    assert [p["key"] for p in producer.produced if p["topic"] == stage.settings.state.topic] == [b"7"]
    assert producer.sent == [[(changes, 0, 7)]] and producer.commits == 1


def test_a_sweep_waits_while_the_assignment_s_committed_offsets_are_unknown() -> None:
    changes = load_settings(REPO_EXAMPLE).state.changes_topic
    stage, producer, consumer = idle_member_with_an_expired_marker(None)  # not readable
    stage._sweeper.sweep()
    assert not stage._transactions.in_txn and producer.produced == []
    consumer.offsets = {}  # readable, but none committed on any assigned partition
    stage._sweeper.sweep()
    assert not stage._transactions.in_txn and producer.produced == []
    consumer.offsets = {(changes, 0): 7}
    stage._sweeper.sweep()  # the next sweep
    assert stage._transactions.in_txn and [p["key"] for p in producer.produced] == [b"7"]


class IdleMember(GroupMember):
    """A member with nothing to read: every step only sweeps (and commits what the sweep wrote)."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []


class CountingProducer(TransactionalProducer):
    """Records the state records of each committed transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.transactions: list[int] = []
        self._open = 0

    def produce(self, topic: str, **kw: Any) -> None:
        super().produce(topic, **kw)
        self._open += 1

    def commit_transaction(self, timeout: float) -> None:
        super().commit_transaction(timeout)
        self.transactions.append(self._open)
        self._open = 0


def test_a_mass_expiry_is_written_in_transactions_of_commit_max_records_following_each_other() -> None:
    # a mass delete expiring at once: one transaction for all would outlive transaction.timeout.ms
    # (the broker aborts it, the producer is fenced, and so again after every restart)
    base = load_settings(REPO_EXAMPLE)
    settings = base.model_copy(update={"kafka": base.kafka.model_copy(update={"commit_max_records": 4})})
    changes = settings.state.changes_topic
    now = [1000.0]
    stage = MergeStage(
        settings,
        projector=MappingProjector(settings.contact),
        decoder=simple_json_decoder,
        clock=lambda: now[0],
        wall_ms=lambda: 1000 * 24 * HOUR_MS,
    )
    consumer, producer = IdleMember({(changes, 0): 7}), CountingProducer()
    stage._consumer, stage._producer = consumer, producer  # type: ignore[assignment]
    stage._assigned = [TopicPartition(changes, 0)]
    pos = SourcePosition("pg", (1, 2))
    for i in range(10):
        stage._store.put(0, str(i), CustomerState(str(i), RowState(None, pos, 0)))  # markers, expired
    now[0] += 61  # the minute since the last sweep has passed
    for _ in range(5):
        stage.step()
        now[0] += 1  # seconds, not the minute between full sweeps
    assert producer.transactions == [4, 4, 2]
    assert sorted(p["key"] for p in producer.produced) == sorted(str(i).encode() for i in range(10))
    assert [p["value"] for p in producer.produced] == [None] * 10
    assert list(stage._store.items(0)) == []
