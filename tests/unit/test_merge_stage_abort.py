"""A producer whose aborts keep timing out (no broker: fake clients, fake clock, white-box)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from connector.config import load_settings
from connector.errors import StateError
from connector.merge_stage import MergeStage
from connector.projection import MappingProjector
from tests.stubs import simple_json_decoder

from .test_config import REPO_EXAMPLE


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class WedgedProducer:
    """Each abort waits its whole timeout on the clock, then fails as librdkafka's did after a hang."""

    def __init__(self, clock: Clock, *, failures: int) -> None:
        self.clock = clock
        self.failures = failures
        self.aborts = 0

    def begin_transaction(self) -> None:
        pass

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1
        if self.aborts > self.failures:
            return
        self.clock.now += timeout
        raise KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT,
                "Timed out waiting for operation to finish, retry call to resume",
                retriable=True,
            )
        )


def stage_with(producer_failures: int, monkeypatch: pytest.MonkeyPatch) -> tuple[MergeStage, WedgedProducer]:
    monkeypatch.setattr("connector.merge_stage.time.sleep", lambda s: None)
    settings = load_settings(REPO_EXAMPLE)  # transaction_timeout_ms: 60000
    clock = Clock()
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )
    producer = WedgedProducer(clock, failures=producer_failures)
    stage._producer = producer  # type: ignore[assignment]
    stage._consumer = object()  # type: ignore[assignment]
    stage._begin(producer)  # type: ignore[arg-type]
    return stage, producer


def test_aborts_failing_for_the_transaction_timeout_stop_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = stage_with(10, monkeypatch)
    with pytest.raises(StateError, match=r"could not abort its transaction for 60 s \(_TIMED_OUT"):
        stage._abort_quietly()
    assert producer.aborts == 3  # 0 s, 30 s, 60 s: the third failure is the last
    assert not stage._in_txn and stage._abort_pending


def test_an_abort_that_succeeds_resets_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = stage_with(1, monkeypatch)
    stage._abort_quietly()  # fails once (30 s), then succeeds
    assert producer.aborts == 2 and not stage._abort_pending
    producer.failures = 4  # the next transaction's abort fails twice (60 s since the first failure
    stage._begin(producer)  # type: ignore[arg-type]  # of all, 30 s in this row), then succeeds
    stage._abort_quietly()
    assert producer.aborts == 5 and not stage._abort_pending


def test_while_closing_a_failing_abort_is_only_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = stage_with(10, monkeypatch)
    stage._closing = True
    stage._abort_quietly()  # no raise: close() must not hide why the stage stops
    assert producer.aborts == 3 and stage._abort_pending


class OffsetsTimingOut:
    """`send_offsets_to_transaction` waits 60 s on the clock and times out (its request to the
    coordinator queued, never sent, as after a 50 s broker hang); aborts succeed; `ok` lets it pass."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ok = False
        self.commits = 0

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: object, meta: object, timeout: float) -> None:
        if self.ok:
            return
        self.clock.now += 60
        raise KafkaException(
            KafkaError(KafkaError._TIMED_OUT, "Failed to add offsets to transaction", retriable=True)
        )

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1

    def abort_transaction(self, timeout: float) -> None:
        pass


class Member:
    def consumer_group_metadata(self) -> object:
        return object()


def offsets_stage(monkeypatch: pytest.MonkeyPatch) -> tuple[MergeStage, OffsetsTimingOut]:
    monkeypatch.setattr("connector.merge_stage.time.sleep", lambda s: None)
    settings = load_settings(REPO_EXAMPLE)  # transaction_timeout_ms: 60000
    clock = Clock()
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )
    producer = OffsetsTimingOut(clock)
    stage._producer, stage._consumer = producer, Member()  # type: ignore[assignment]
    return stage, producer


def transaction(stage: MergeStage, producer: OffsetsTimingOut) -> None:
    """A transaction that consumed a record (its offset joins the transaction)."""
    stage._begin(producer)  # type: ignore[arg-type]
    stage._offsets[("customers", 0)] = 10


def test_commits_failing_for_the_transaction_timeout_stop_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = offsets_stage(monkeypatch)
    transaction(stage, producer)
    stage._commit_or_recover()  # 60 s, aborted: the input is read again
    assert stage.stats.aborts == 1
    transaction(stage, producer)
    with pytest.raises(StateError, match=r"failed to commit for 120 s \(_TIMED_OUT"):
        stage._commit_or_recover()
    assert stage.stats.aborts == 2 and producer.commits == 0


def test_a_commit_that_succeeds_resets_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = offsets_stage(monkeypatch)
    transaction(stage, producer)
    stage._commit_or_recover()  # fails (60 s)
    producer.ok = True
    transaction(stage, producer)
    stage._commit_or_recover()  # commits
    producer.ok = False
    transaction(stage, producer)
    stage._commit_or_recover()  # fails again: 60 s after the first failure, but not in a row
    assert stage.stats.aborts == 2 and producer.commits == 1


def test_failed_commits_far_apart_or_across_a_rebalance_are_not_a_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage, producer = offsets_stage(monkeypatch)
    transaction(stage, producer)
    stage._commit_or_recover()  # fails (60 s)
    stage._clock.now += 400  # type: ignore[attr-defined]  # nothing to commit for a while
    transaction(stage, producer)
    stage._commit_or_recover()  # fails: a new row, not 460 s of failures
    stage._on_revoke(Member(), [])  # type: ignore[arg-type]
    transaction(stage, producer)
    stage._commit_or_recover()  # fails right after the last one, but in a new assignment
    assert stage.stats.aborts == 3
