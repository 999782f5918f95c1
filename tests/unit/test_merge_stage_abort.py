"""A producer whose aborts or commits keep timing out (no broker: fake clients, fake clock, white-box).

Every step of the loop ends its blocking calls by one deadline, so the loop polls again within
`kafka.max_poll_interval_ms`; what a step cannot finish (an abort, the seek back) the next one does.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from connector.config import load_settings
from connector.errors import KafkaError as ConnectorKafkaError
from connector.errors import StateError
from connector.merge import CustomerState
from connector.merge_stage import MergeStage
from connector.merge_stage.repartition import Outgoing
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
    monkeypatch.setattr("connector.merge_stage.transactions.time.sleep", lambda s: None)
    settings = load_settings(REPO_EXAMPLE)  # transaction_timeout_ms: 60000
    clock = Clock()
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )
    producer = WedgedProducer(clock, failures=producer_failures)
    stage._producer = producer  # type: ignore[assignment]
    stage._consumer = object()  # type: ignore[assignment]
    stage._transactions.begin(producer)  # type: ignore[arg-type]
    return stage, producer


def test_aborts_failing_for_the_transaction_timeout_stop_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = stage_with(10, monkeypatch)
    with pytest.raises(StateError, match=r"could not abort its transaction for 60 s \(_TIMED_OUT"):
        stage._transactions.abort_quietly()
    assert producer.aborts == 3  # 0 s, 30 s, 60 s: the third failure is the last
    assert not stage._transactions.in_txn and stage._transactions.abort_pending


def test_an_abort_that_succeeds_resets_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = stage_with(1, monkeypatch)
    stage._transactions.abort_quietly()  # fails once (30 s), then succeeds
    assert producer.aborts == 2 and not stage._transactions.abort_pending
    producer.failures = 4  # the next transaction's abort fails twice (60 s since the first failure
    stage._transactions.begin(producer)  # type: ignore[arg-type]  # of all, 30 s in this row), then succeeds
    stage._transactions.abort_quietly()
    assert producer.aborts == 5 and not stage._transactions.abort_pending


def test_while_closing_a_failing_abort_is_only_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = stage_with(10, monkeypatch)
    stage._transactions.closing = True
    stage._transactions.abort_quietly()  # no raise: close() must not hide why the stage stops
    assert producer.aborts == 3 and stage._transactions.abort_pending


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
    monkeypatch.setattr("connector.merge_stage.transactions.time.sleep", lambda s: None)
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
    stage._transactions.begin(producer)  # type: ignore[arg-type]
    stage._positions.offsets[("customers", 0)] = 10


def test_commits_failing_for_the_transaction_timeout_stop_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = offsets_stage(monkeypatch)
    transaction(stage, producer)
    stage._transactions.commit_or_recover()  # 60 s, aborted: the input is read again
    assert stage.stats.aborts == 1
    transaction(stage, producer)
    with pytest.raises(StateError, match=r"failed to commit for 120 s \(_TIMED_OUT"):
        stage._transactions.commit_or_recover()
    assert stage.stats.aborts == 2 and producer.commits == 0


def test_a_commit_that_succeeds_resets_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = offsets_stage(monkeypatch)
    transaction(stage, producer)
    stage._transactions.commit_or_recover()  # fails (60 s)
    producer.ok = True
    transaction(stage, producer)
    stage._transactions.commit_or_recover()  # commits
    producer.ok = False
    transaction(stage, producer)
    stage._transactions.commit_or_recover()  # fails again: 60 s after the first failure, but not in a row
    assert stage.stats.aborts == 2 and producer.commits == 1


def test_failed_commits_far_apart_or_across_a_rebalance_are_not_a_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage, producer = offsets_stage(monkeypatch)
    transaction(stage, producer)
    stage._transactions.commit_or_recover()  # fails (60 s)
    stage._clock.now += 400  # type: ignore[attr-defined]  # nothing to commit for a while
    transaction(stage, producer)
    stage._transactions.commit_or_recover()  # fails: a new row, not 460 s of failures
    stage._on_revoke(Member(), [])  # type: ignore[arg-type]
    transaction(stage, producer)
    stage._transactions.commit_or_recover()  # fails right after the last one, but in a new assignment
    assert stage.stats.aborts == 3


class AfterAHang:
    """A broker after a hang: `commit_transaction` times out 4 times, then the transaction must abort;
    an abort needs 29 s and the first one times out; reading the committed offsets needs 10 s. A call
    whose timeout is shorter than what it needs waits its whole timeout and fails."""

    def __init__(self, clock: Clock, topic: str, *, abort_failures: int = 1) -> None:
        self.clock, self.topic = clock, topic
        self.commits = self.aborts = 0
        self.abort_failures = abort_failures
        self.seeks: list[tuple[str, int, int]] = []
        self.step_started = clock.now

    def _wait(self, need: float, timeout: float, error: KafkaError) -> None:
        if timeout < need:
            self.clock.now += timeout
            raise KafkaException(error)
        self.clock.now += need

    # the producer
    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: object, meta: object, timeout: float) -> None:
        self.clock.now += 1

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1
        self.clock.now += timeout
        if self.commits < 5:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True))
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "must abort", txn_requires_abort=True))

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1
        timed_out = KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True)
        self._wait(10**6 if self.aborts <= self.abort_failures else 29, timeout, timed_out)

    # the consumer
    def consume(self, num_messages: int, timeout: float) -> list[object]:
        self.clock.now += timeout
        return []

    def consumer_group_metadata(self) -> object:
        return object()

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self._wait(10, timeout, KafkaError(KafkaError._TIMED_OUT, "timed out"))
        return [TopicPartition(tp.topic, tp.partition, 10) for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def hung_stage(
    monkeypatch: pytest.MonkeyPatch, max_poll_interval_ms: int, **kw: int
) -> tuple[MergeStage, AfterAHang, Clock]:
    clock = Clock()
    monkeypatch.setattr(
        "connector.merge_stage.transactions.time.sleep", lambda s: setattr(clock, "now", clock.now + s)
    )
    settings = load_settings(REPO_EXAMPLE)  # transaction_timeout_ms: 60000
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_poll_interval_ms": max_poll_interval_ms})}
    )
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )
    topic = settings.source.customers.topic
    client = AfterAHang(clock, topic, **kw)
    stage._producer = stage._consumer = client  # type: ignore[assignment]
    stage._assigned = [TopicPartition(topic, 0)]
    stage._transactions.begin(client)  # type: ignore[arg-type]
    stage._positions.offsets[(topic, 0)] = 11
    stage._transactions.txn_started = clock.now - 1  # the commit interval has passed
    return stage, client, clock


@pytest.mark.parametrize("max_poll_interval_ms", [300_000, 60_000])
def test_a_failed_commit_its_aborts_and_rewind_leave_the_loop_polling_within_max_poll_interval(
    monkeypatch: pytest.MonkeyPatch, max_poll_interval_ms: int
) -> None:
    stage, client, clock = hung_stage(monkeypatch, max_poll_interval_ms)
    for _ in range(10):
        start = clock.now
        stage.step()
        assert clock.now - start <= 0.8 * max_poll_interval_ms / 1000  # polls again in time
        if not (stage._transactions.abort_pending or stage._positions.rewind_pending):
            break
    # what a step could not finish, the next ones did: aborted once, read again from the committed offset
    assert client.commits == 5 and stage.stats.aborts == 1 and not stage._transactions.in_txn
    assert client.aborts >= 2 and client.seeks == [(client.topic, 0, 10)]


def test_aborts_failing_across_steps_still_stop_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, _, clock = hung_stage(monkeypatch, 60_000, abort_failures=10**6)
    with pytest.raises(StateError, match=r"could not abort its transaction for 6\d s"):
        for _ in range(10):
            start = clock.now
            stage.step()
            assert clock.now - start <= 48
    assert stage._transactions.abort_pending


def test_a_pending_abort_that_fails_fatally_stops_the_stage_at_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage, client, _ = hung_stage(monkeypatch, 60_000)
    # e.g. an abort left by the revocation
    stage._transactions.in_txn, stage._transactions.abort_pending = False, True

    def fenced(timeout: float) -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED, "producer fenced", fatal=True))

    client.abort_transaction = fenced  # type: ignore[method-assign]
    with pytest.raises(ConnectorKafkaError, match="fenced") as info:
        stage.step()
    assert info.value.fatal


class CommitTimingOut(OffsetsTimingOut):
    """Offsets join; `commit_transaction` times out (outcome unknown) and stays resumable, so librdkafka
    refuses an abort (`_CONFLICT`) as long as the commit can be resumed."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.ok = True
        self.aborts = 0

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1
        self.clock.now += timeout
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to flush", retriable=True))

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1
        raise KafkaException(
            KafkaError(KafkaError._CONFLICT, "Conflicting commit_transaction in progress", retriable=True)
        )


def test_a_commit_on_revoke_with_an_unknown_outcome_stops_the_stage_without_aborting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the refused abort stayed pending: every batch was dropped until "could not abort"."""
    stage, producer = offsets_stage(monkeypatch)
    producer = CommitTimingOut(stage._clock)  # type: ignore[arg-type]
    stage._producer = producer  # type: ignore[assignment]
    transaction(stage, producer)  # type: ignore[arg-type]
    stage._budget.deadline = stage._clock() + stage._budget.step_s
    stage._on_revoke(stage._consumer, [])  # type: ignore[arg-type]
    assert producer.aborts == 0 and not stage._transactions.abort_pending
    assert isinstance(stage._stopping_error, StateError) and "outcome unknown" in str(stage._stopping_error)


class CommitResumable(CommitTimingOut):
    """`commit_transaction` times out `timeouts` times, then the resumed commit completes; while a
    commit is in progress librdkafka refuses to add offsets and to abort. As librdkafka 2.16 does on
    the real broker (checked with the broker SIGSTOPped during a commit): both `_CONFLICT`,
    "Conflicting commit_transaction API call is already in progress"; the next commit completes it."""

    def __init__(self, clock: Clock, timeouts: int) -> None:
        super().__init__(clock)
        self.timeouts = timeouts
        self.calls: list[str] = []

    def send_offsets_to_transaction(self, offsets: object, meta: object, timeout: float) -> None:
        self.calls.append("send_offsets")
        if self.commits:
            raise KafkaException(
                KafkaError(KafkaError._CONFLICT, "Conflicting commit_transaction in progress", retriable=True)
            )

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.timeouts:
            self.timeouts -= 1
            super().commit_transaction(min(timeout, 5.0))  # the broker answers, retriable, within 5 s
        self.commits += 1

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        super().abort_transaction(timeout)

    def flush(self, timeout: float) -> int:
        return 0


def _closing_stage(monkeypatch: pytest.MonkeyPatch, timeouts: int) -> tuple[MergeStage, CommitResumable]:
    stage, _ = offsets_stage(monkeypatch)
    producer = CommitResumable(stage._clock, timeouts)  # type: ignore[arg-type]
    stage._producer = producer  # type: ignore[assignment]
    transaction(stage, producer)  # type: ignore[arg-type]
    stage._budget.deadline = stage._clock() + stage._budget.step_s
    return stage, producer


def test_close_resumes_a_commit_on_revoke_whose_outcome_was_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Else the transaction stays open on the broker until its timeout: the partitions' next owner
    cannot restore them (read_committed) meanwhile. Only commit_transaction may be called again."""
    stage, producer = _closing_stage(monkeypatch, timeouts=2)
    stage._on_revoke(stage._consumer, [])  # type: ignore[arg-type]
    assert isinstance(stage._stopping_error, StateError)
    stage._consumer = SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    stage.close()
    assert producer.calls == ["send_offsets", "commit", "commit", "commit"]
    assert producer.commits == 3 and producer.timeouts == 0  # the third call completed it


def test_close_resumes_a_step_s_commit_whose_outcome_was_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, producer = _closing_stage(monkeypatch, timeouts=5)
    with pytest.raises(StateError, match="outcome unknown"):
        stage._transactions.commit_or_recover()  # five attempts, each timed out
    assert producer.calls == ["send_offsets"] + ["commit"] * 5
    stage._consumer = SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    stage.close()
    assert producer.calls[6:] == ["commit"] and producer.timeouts == 0 and "abort" not in producer.calls


def test_a_commit_still_unknown_on_close_is_neither_aborted_nor_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stage, producer = _closing_stage(monkeypatch, timeouts=10**6)
    stage._on_revoke(stage._consumer, [])  # type: ignore[arg-type]
    stage._consumer = SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    started = stage._clock()
    stage.close()
    assert set(producer.calls[1:]) == {"commit"} and len(producer.calls) > 2
    assert 30 <= stage._clock() - started <= 31  # bounded: a broker still away holds the stop
    assert "commit outcome still unknown on close" in caplog.text


def test_close_ends_an_abort_the_last_step_left_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """Else the transaction stays open on the broker until its timeout, holding read_committed readers."""
    stage, producer = stage_with(producer_failures=1, monkeypatch=monkeypatch)
    stage._budget.deadline = stage._clock() + 10  # the first abort waits its whole timeout: out of time
    stage._transactions.abort_quietly()
    assert stage._transactions.abort_pending and producer.aborts == 1
    stage._consumer = SimpleNamespace(close=lambda: None)  # type: ignore[assignment]
    producer.flush = lambda *args: 0  # type: ignore[attr-defined]
    stage.close()
    assert producer.aborts == 2 and not stage._transactions.abort_pending


def test_commit_attempts_keep_a_floor_after_a_long_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A projection that used the step's time must not leave the commit attempts a second each."""
    stage, producer = offsets_stage(monkeypatch)
    producer.ok = True
    timeouts: list[float] = []
    producer.commit_transaction = timeouts.append  # type: ignore[method-assign,assignment]
    transaction(stage, producer)
    stage._budget.deadline = stage._clock() + 0.5  # the projection took the step's time
    stage._transactions.commit(commit_attempts=5)
    assert timeouts and timeouts[0] >= stage._budget.step_s / 4 / 5 - 1


def test_an_abort_drops_the_state_buffered_in_the_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise the rewound records merge as stale against the aborted state and never emit."""
    stage, _ = stage_with(0, monkeypatch)
    stage._merger.txn.put(0, "42", CustomerState("42"))
    assert stage._merger.txn.get(0, "42") is not None
    stage._transactions.abort_quietly()
    assert stage._merger.txn.get(0, "42") is None


def test_an_abort_drops_the_routed_changes_not_yet_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mid-step abort (registry outage, produce error) must not write them with the next transaction
    and then route them again when the records are read once more."""
    stage, _ = stage_with(0, monkeypatch)
    stage._repartitioner.routed[0] = Outgoing([b'{"c":"42"}'])
    stage._transactions.abort_quietly()
    assert stage._repartitioner.routed == {}


def test_a_rewind_without_a_committed_offset_seeks_to_the_beginning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first transaction of a new group aborts: no committed offset (-1001) means from the start."""
    stage, client, _ = hung_stage(monkeypatch, 300_000)
    client.committed = lambda parts, timeout: [  # type: ignore[method-assign]
        TopicPartition(t.topic, t.partition, OFFSET_INVALID) for t in parts
    ]
    stage._positions.rewind()
    assert client.seeks == [(client.topic, 0, OFFSET_BEGINNING)]
