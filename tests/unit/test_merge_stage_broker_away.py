"""The merge stage and its restorer while the broker is away or slow (client doubles, no broker).

A restore that meets a broker which does not answer in time retries instead of stopping the stage;
the commit's retries fit in `max.poll.interval.ms`; a fatal error met while committing inside the
revocation callback stops the stage at its next step instead of being lost in the callback; a
transaction that consumed nothing still lets the group fence a member it has dropped.
"""

from __future__ import annotations

import concurrent.futures
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException, TopicPartition

from connector.config import load_settings
from connector.errors import StateError
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
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        self.calls += 1
        if self.calls <= self.failures:
            # what a real consumer raises with the broker down or hanging: retriable() is False
            code = CKError._ALL_BROKERS_DOWN if self.calls % 2 else CKError._TIMED_OUT
            raise KafkaException(CKError(code, "broker away"))
        return 3, 42


def test_reading_a_partition_s_ends_rides_out_a_broker_blip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connector.state.recovery.time.sleep", lambda s: None)
    restorer = Restorer(load_settings(REPO_EXAMPLE), MemoryStore(), clock=Clock())
    consumer = BrokerAwayThenBack(failures=3)
    assert restorer._watermarks(consumer, 0) == (3, 42)  # type: ignore[arg-type]
    assert consumer.calls == 4


def test_reading_a_partition_s_ends_gives_up_after_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("connector.state.recovery.time.sleep", lambda s: setattr(clock, "now", clock.now + s))
    restorer = Restorer(load_settings(REPO_EXAMPLE), MemoryStore(), clock=clock)
    with pytest.raises(StateError, match="cannot read the end"):
        restorer._watermarks(BrokerAwayThenBack(failures=10**6), 0)  # type: ignore[arg-type]
    assert 60 <= clock.now - 100 <= 61


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
    monkeypatch.setattr("connector.merge_stage.time.sleep", lambda s: setattr(clock, "now", clock.now + s))
    settings = load_settings(REPO_EXAMPLE)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_poll_interval_ms": max_poll_interval_ms})}
    )
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )
    producer = CommitTimingOut(clock, fail=4)
    stage._consumer, stage._producer = GroupMember(), producer  # type: ignore[assignment]
    stage._begin(producer)  # type: ignore[arg-type]
    stage._offsets[(settings.source.customers.topic, 0)] = 10
    start = clock.now
    stage._commit_or_recover()  # four attempts time out, the fifth commits
    assert producer.commits == 5 and not stage._in_txn and stage.stats.commits == 1
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
    monkeypatch.setattr("connector.merge_stage.time.sleep", lambda s: None)
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)

    class Member(GroupMember):
        def consume(self, num_messages: int, timeout: float) -> list[Any]:
            return []

    consumer, producer = Member(), Fenced()
    stage._consumer, stage._producer = consumer, producer  # type: ignore[assignment]
    stage._begin(producer)  # type: ignore[arg-type]
    stage._offsets[(settings.source.customers.topic, 0)] = 10
    stage._on_revoke(consumer, [TopicPartition(settings.source.customers.topic, 0)])  # type: ignore[arg-type]
    assert not stage._in_txn
    with pytest.raises(StateError, match="fenced"):
        stage.step()


class Recording:
    def __init__(self) -> None:
        self.sent: list[list[tuple[str, int, int]]] = []

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self.sent.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def commit_transaction(self, timeout: float) -> None:
        pass

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
    stage._begin(producer)  # type: ignore[arg-type]
    stage._offsets[(topic, 0)] = 10
    stage._commit()
    stage._begin(producer)  # type: ignore[arg-type]  # e.g. a sweep: records written, none consumed
    stage._commit()
    assert producer.sent == [[(topic, 0, 10)], [(topic, 0, 10)]]
    stage._on_revoke(consumer, [TopicPartition(topic, 0)])  # type: ignore[arg-type]
    stage._begin(producer)  # type: ignore[arg-type]
    stage._commit()
    assert len(producer.sent) == 2  # a new assignment has committed nothing yet


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
    stage._rewind_pending = True
    stage._rewind()
    assert consumer.seeks == [] and stage._rewind_pending  # asked again later, not read from the start
    stage._rewind()
    assert consumer.seeks == [(0, 7)] and not stage._rewind_pending
