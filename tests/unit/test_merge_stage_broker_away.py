"""The merge stage and its restorer while the broker is away or slow (client doubles, no broker).

A restore that meets a broker which does not answer in time retries at a later step instead of
stopping the stage or holding the loop; the commit's retries fit in `max.poll.interval.ms`; a fatal
error met while committing inside the revocation callback stops the stage at its next step instead of
being lost in the callback; a transaction that consumed nothing still lets the group fence a member it
has dropped, and one with no offsets at all to send is never committed.
"""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException, TopicPartition

from connector.config import load_settings
from connector.errors import KafkaError, StateError
from connector.merge_stage import MergeStage
from connector.projection import MappingProjector
from connector.state.recovery import Restorer
from connector.state.store import MemoryStore
from tests.stubs import simple_json_decoder
from tests.unit.test_config import REPO_EXAMPLE
from tests.unit.test_merge_stage_abort import Clock


class _NoAnswer:
    """An admin future whose request has not finished: `result(timeout)` times out."""

    def result(self, timeout: float | None = None) -> Any:
        raise concurrent.futures.TimeoutError()


class SlowAdmin:
    def __init__(self) -> None:
        self.calls = 0

    def list_offsets(self, specs: dict[Any, Any], **kw: Any) -> dict[Any, Any]:
        self.calls += 1
        assert kw.get("request_timeout"), "the request must time out on its own"
        return {tp: _NoAnswer() for tp in specs}


class IdleRestoreConsumer:
    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def incremental_assign(self, parts: list[Any]) -> None:
        raise AssertionError("the partition is not known to be stable yet")


def _restorer_on(admin: Any, store: MemoryStore | None = None) -> Restorer:
    restorer = Restorer(load_settings(REPO_EXAMPLE), store or MemoryStore())
    restorer._consumer = IdleRestoreConsumer()  # type: ignore[assignment]
    restorer._admin = admin
    restorer.begin([0])
    return restorer


def test_a_restore_waits_for_a_broker_that_does_not_answer_in_time() -> None:
    restorer = _restorer_on(SlowAdmin())
    assert restorer.step() == []  # no TimeoutError: asked again later
    assert restorer.is_restoring(0)


def test_the_stage_keeps_stepping_while_its_restore_waits_for_the_broker() -> None:
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)

    class IdleConsumer:
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            return []

    stage._consumer, stage._producer = IdleConsumer(), object()  # type: ignore[assignment]
    admin = SlowAdmin()
    stage._restorer = _restorer_on(admin, stage._store)
    stage.step()
    stage.step()
    assert admin.calls >= 2 and stage._restorer.is_restoring(0)


class BrokerAwayThenBack:
    """The restore consumer of an empty state partition whose ends answer after `failures` reads."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def incremental_assign(self, parts: list[Any]) -> None:
        pass

    def incremental_unassign(self, parts: list[Any]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.failures:
            # what a real consumer raises with the broker down or hanging: retriable() is False
            code = CKError._ALL_BROKERS_DOWN if self.calls % 2 else CKError._TIMED_OUT
            raise KafkaException(CKError(code, "broker away"))
        return 42, 42  # compacted away: finished from its ends


def _restoring(monkeypatch: pytest.MonkeyPatch, consumer: Any, clock: Clock, partitions: int = 1) -> Restorer:
    monkeypatch.setattr("connector.state.recovery.unstable_partitions", lambda admin, tps, **kw: [])
    monkeypatch.setattr("connector.state.recovery.time.sleep", lambda s: setattr(clock, "now", clock.now + s))
    restorer = Restorer(load_settings(REPO_EXAMPLE), MemoryStore(), clock=clock)
    restorer._consumer, restorer._admin = consumer, object()  # type: ignore[assignment]
    restorer.begin(list(range(partitions)))
    return restorer


def test_reading_a_partition_s_ends_rides_out_a_broker_blip(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    consumer = BrokerAwayThenBack(failures=3)
    restorer = _restoring(monkeypatch, consumer, clock)
    done: list[int] = []
    for _ in range(10):
        done += restorer.step()
        clock.now += 1  # a poll round of the stage's loop
    assert done == [0] and consumer.calls == 4  # each failed read is made again at a later step


def test_reading_a_partition_s_ends_gives_up_after_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    restorer = _restoring(monkeypatch, BrokerAwayThenBack(failures=10**6), clock)
    with pytest.raises(StateError, match="cannot read the end"):
        for _ in range(1000):
            restorer.step()
            clock.now += 1
    assert 60 <= clock.now - 100 <= 62


class BrokerHanging(BrokerAwayThenBack):
    """Until `back_at` (clock time) each read of a partition's ends waits its whole timeout, then fails."""

    def __init__(self, clock: Clock, back_at: float) -> None:
        super().__init__(failures=0)
        self.clock, self.back_at = clock, back_at

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        self.calls += 1
        if self.clock.now < self.back_at:
            self.clock.now += timeout
            raise KafkaException(CKError(CKError._TIMED_OUT, "timed out"))
        return 42, 42


def test_a_restore_step_reads_the_partitions_ends_only_until_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    consumer = BrokerHanging(clock, back_at=clock.now + 45)
    restorer = _restoring(monkeypatch, consumer, clock, partitions=6)
    done: list[int] = []
    while clock.now < 100 + 120 and len(done) < 6:
        start = clock.now
        done += restorer.step(deadline=start + 5)  # each partition's ends waited 10 s before
        assert clock.now - start <= 5
        clock.now += 0.5  # the stage polls between its steps
    assert sorted(done) == list(range(6))  # no partition unreadable for a minute: none gave up


def test_the_stage_polls_again_within_max_poll_interval_while_a_restore_waits_for_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    settings = load_settings(REPO_EXAMPLE)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_poll_interval_ms": 60_000})}
    )
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )

    class MainConsumer:
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            clock.now += timeout
            return []

        def resume(self, parts: list[Any]) -> None:
            pass

    stage._consumer, stage._producer = MainConsumer(), object()  # type: ignore[assignment]
    consumer = BrokerHanging(clock, back_at=clock.now + 50)
    stage._restorer = _restoring(monkeypatch, consumer, clock, partitions=settings.state.partitions)
    steps = 0
    while stage._restorer.pending:
        start = clock.now
        stage.step()
        steps += 1
        assert clock.now - start < 60 * 0.8  # max.poll.interval.ms, less a fifth
    assert stage.ready and steps > 1


class CommitTimingOut:
    """`commit_transaction` times out (the broker is slow) `fail` times, then succeeds."""

    def __init__(self, clock: Clock, fail: int) -> None:
        self.clock, self.fail, self.commits = clock, fail, 0
        self.timeouts: list[float] = []

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self.clock.now += timeout  # the worst case: the whole timeout, then an answer

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1
        self.timeouts.append(timeout)
        self.clock.now += timeout  # librdkafka waits the whole timeout
        if self.commits <= self.fail:
            raise KafkaException(
                CKError(CKError._TIMED_OUT, "Timed out, retry call to resume", retriable=True)
            )

    def abort_transaction(self, timeout: float) -> None:
        pass


class GroupMember:
    def consumer_group_metadata(self) -> object:
        return object()


@pytest.mark.parametrize("max_poll_interval_ms", [300_000, 60_000])
def test_commit_retries_fit_in_max_poll_interval(
    monkeypatch: pytest.MonkeyPatch, max_poll_interval_ms: int
) -> None:
    clock = Clock()
    monkeypatch.setattr(
        "connector.merge_stage.transactions.time.sleep", lambda s: setattr(clock, "now", clock.now + s)
    )
    settings = load_settings(REPO_EXAMPLE)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_poll_interval_ms": max_poll_interval_ms})}
    )
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )
    producer = CommitTimingOut(clock, fail=4)
    stage._consumer, stage._producer = GroupMember(), producer  # type: ignore[assignment]
    stage._transactions.begin(producer)  # type: ignore[arg-type]
    stage._positions.offsets[(settings.source.customers.topic, 0)] = 10
    start = clock.now
    stage._transactions.commit_or_recover()  # four attempts time out, the fifth commits
    assert producer.commits == 5 and not stage._transactions.in_txn and stage.stats.commits == 1
    assert clock.now - start < max_poll_interval_ms / 1000


class Fenced:
    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        raise KafkaException(CKError(CKError._FENCED, "producer fenced", fatal=True))

    def abort_transaction(self, timeout: float) -> None:
        raise KafkaException(CKError(CKError._FENCED, "producer fenced", fatal=True))


def test_a_fatal_error_while_committing_on_revocation_stops_the_stage_at_its_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("connector.merge_stage.transactions.time.sleep", lambda s: None)
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)

    class Member(GroupMember):
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            return []

    consumer, producer = Member(), Fenced()
    stage._consumer, stage._producer = consumer, producer  # type: ignore[assignment]
    stage._transactions.begin(producer)  # type: ignore[arg-type]
    stage._positions.offsets[(settings.source.customers.topic, 0)] = 10
    stage._on_revoke(consumer, [TopicPartition(settings.source.customers.topic, 0)])  # type: ignore[arg-type]
    assert not stage._transactions.in_txn
    with pytest.raises(StateError, match="fenced"):
        stage.step()


class Recording:
    def __init__(self) -> None:
        self.sent: list[list[tuple[str, int, int]]] = []
        self.commits = 0

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self.sent.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1

    def abort_transaction(self, timeout: float) -> None:
        pass


def test_a_transaction_that_consumed_nothing_sends_the_committed_offsets_again_to_be_fenced() -> None:
    # the delete-marker sweep writes without consuming: its offsets (the ones already committed)
    # let the group fence a member it has dropped, as every other transaction of the stage is
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)
    consumer, producer = GroupMember(), Recording()
    stage._consumer, stage._producer = consumer, producer  # type: ignore[assignment]
    topic = settings.source.customers.topic
    stage._transactions.begin(producer)  # type: ignore[arg-type]
    stage._positions.offsets[(topic, 0)] = 10
    stage._transactions.commit()
    stage._transactions.begin(producer)  # type: ignore[arg-type]  # e.g. a sweep: records written, none consumed
    stage._transactions.commit()
    assert producer.sent == [[(topic, 0, 10)], [(topic, 0, 10)]]
    stage._on_revoke(consumer, [TopicPartition(topic, 0)])  # type: ignore[arg-type]
    # A new assignment has committed nothing yet: with no offsets to send, a commit would not be
    # fenced, so it is refused (to be aborted) instead; the sweep waits for the assignment's
    # committed offsets (test_merge_stage_sweep.py). This used to commit unfenced.
    stage._transactions.begin(producer)  # type: ignore[arg-type]
    with pytest.raises(KafkaError, match="could not fence") as info:
        stage._transactions.commit()
    assert info.value.txn_requires_abort
    assert len(producer.sent) == 2 and producer.commits == 2


def test_an_abort_whose_committed_offsets_come_back_with_an_error_does_not_seek_to_the_start() -> None:
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)
    topic = settings.source.customers.topic

    class Rewinding:
        def __init__(self) -> None:
            # as librdkafka reports a partition whose offset it could not read (TopicPartition
            # takes no error from Python)
            unread = SimpleNamespace(
                topic=topic, partition=0, offset=-1001, error=CKError(CKError._TIMED_OUT)
            )
            self.answers = [[unread], [TopicPartition(topic, 0, 7)]]
            self.seeks: list[tuple[int, int]] = []

        def committed(self, partitions: Any, timeout: float) -> list[Any]:
            return self.answers.pop(0)

        def seek(self, tp: TopicPartition) -> None:
            self.seeks.append((tp.partition, tp.offset))

    consumer = Rewinding()
    stage._consumer, stage._producer = consumer, Recording()  # type: ignore[assignment]
    stage._assigned = [TopicPartition(topic, 0)]
    stage._positions.rewind_pending = True
    stage._positions.rewind()
    # asked again later, not read from the start
    assert consumer.seeks == [] and stage._positions.rewind_pending
    stage._positions.rewind()
    assert consumer.seeks == [(0, 7)] and not stage._positions.rewind_pending
