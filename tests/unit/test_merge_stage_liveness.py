"""A merge step on a slow broker: alive for /healthz, within max.poll.interval.ms, and a clean close.

Client doubles on a fake clock (no broker): each blocking call waits its whole timeout and fails as
librdkafka does when the broker does not answer (retriable `_TIMED_OUT`, "retry to resume").
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException, TopicPartition

from connector.config import Settings, load_settings
from connector.errors import ConfigError, StateError
from connector.health import Health
from connector.merge_stage import MergeStage
from connector.projection import MappingProjector
from tests.stubs import simple_json_decoder
from tests.unit.test_config import REPO_EXAMPLE
from tests.unit.test_merge_stage_abort import Clock, CommitResumable, offsets_stage, transaction


def _timed_out(what: str) -> KafkaException:
    return KafkaException(CKError(CKError._TIMED_OUT, f"{what}: timed out, retry to resume", retriable=True))


class SlowBroker:
    """Producer and consumer on a broker that answers late: every call waits its whole timeout.

    `commit_transaction` times out `commit_failures` times, then commits (or, with `must_abort`, the
    next one says the transaction must abort); aborts and reads of the committed offsets time out
    too. `alive` holds what /healthz answered at the end of each call (the longest since a tick).
    """

    def __init__(self, clock: Clock, health: Health, topic: str, *, commit_failures: int) -> None:
        self.clock, self.health, self.topic = clock, health, topic
        self.commit_failures = commit_failures
        self.must_abort = False
        self.commits = self.aborts = 0
        self.alive: list[tuple[str, bool]] = []

    def _wait(self, what: str, timeout: float) -> None:
        self.clock.now += timeout
        self.alive.append((what, self.health.liveness()[0]))

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self._wait("send_offsets", timeout * 0.999)  # answered just in time

    def commit_transaction(self, timeout: float) -> None:
        self.commits += 1
        self._wait("commit", timeout)
        if self.commits <= self.commit_failures:
            raise _timed_out("commit")
        if self.must_abort:
            raise KafkaException(CKError(CKError._TIMED_OUT, "must abort", txn_requires_abort=True))

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1
        self._wait("abort", timeout)
        raise _timed_out("abort")

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.clock.now += timeout
        return []

    def consumer_group_metadata(self) -> object:
        return object()

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self._wait("committed", timeout)
        raise _timed_out("committed")

    def seek(self, tp: TopicPartition) -> None:
        pass


def with_kafka(settings: Settings, **kafka: Any) -> Settings:
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update=kafka)})


def slow_stage(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, *, commit_failures: int
) -> tuple[MergeStage, SlowBroker, Health, Clock]:
    clock = Clock()
    monkeypatch.setattr(
        "connector.merge_stage.transactions.time.sleep", lambda s: setattr(clock, "now", clock.now + s)
    )
    health = Health(liveness_timeout_s=settings.observability.liveness_timeout_s, clock=clock)
    stage = MergeStage(
        settings,
        projector=MappingProjector(settings.contact),
        decoder=simple_json_decoder,
        clock=clock,
        on_tick=lambda: health.tick("merge"),
    )
    topic = settings.source.customers.topic
    broker = SlowBroker(clock, health, topic, commit_failures=commit_failures)
    stage._producer = stage._consumer = broker  # type: ignore[assignment]
    stage._assigned = [TopicPartition(topic, 0)]
    stage._transactions.begin(broker)  # type: ignore[arg-type]
    stage._positions.offsets[(topic, 0)] = 11
    stage._transactions.txn_started = clock.now - 1  # the commit interval has passed
    return stage, broker, health, clock


def test_healthz_stays_alive_through_a_commit_retried_for_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step used to tick once, at its start: its attempts (up to 44 s each) outlived the 60 s."""
    settings = load_settings(REPO_EXAMPLE)  # liveness_timeout_s 60, max_poll_interval_ms 300000
    stage, broker, health, clock = slow_stage(monkeypatch, settings, commit_failures=4)
    start = clock.now
    stage.step()  # four attempts time out, the fifth commits
    assert broker.commits == 5 and stage.stats.commits == 1 and not stage._transactions.in_txn
    assert clock.now - start > 2 * settings.observability.liveness_timeout_s  # one step, minutes long
    assert broker.alive and all(alive for _, alive in broker.alive), broker.alive
    assert health.liveness() == (True, "ok")


def test_healthz_stays_alive_through_a_commit_that_must_abort_and_its_aborts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(REPO_EXAMPLE)
    stage, broker, _, _ = slow_stage(monkeypatch, settings, commit_failures=4)
    broker.must_abort = True
    with pytest.raises(StateError, match="could not abort"):  # after kafka.transaction_timeout_ms
        for _ in range(5):
            stage.step()  # the commit must abort; the aborts keep timing out
    assert broker.aborts >= 3 and stage._transactions.abort_pending
    assert all(alive for _, alive in broker.alive), broker.alive


def test_the_stall_watchdog_still_sees_a_call_that_does_not_return(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka#5456: `send_offsets_to_transaction` ignoring its timeout must still stop the process."""
    settings = load_settings(REPO_EXAMPLE)  # stall_exit_s 600
    stage, broker, health, clock = slow_stage(monkeypatch, settings, commit_failures=0)
    stalled: list[list[tuple[str, float]]] = []

    def hangs(offsets: Any, meta: Any, timeout: float) -> None:
        clock.now += 700  # far past its timeout: nothing ticks meanwhile
        stalled.append(health.stalled(settings.observability.stall_exit_s))

    broker.send_offsets_to_transaction = hangs  # type: ignore[method-assign]
    stage.step()
    assert [c for c, _ in stalled[0]] == ["merge"]


def test_each_wait_is_at_most_half_the_liveness_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(REPO_EXAMPLE)
    settings = settings.model_copy(
        update={"observability": settings.observability.model_copy(update={"liveness_timeout_s": 20})}
    )
    stage, broker, _, _ = slow_stage(monkeypatch, settings, commit_failures=10)
    timeouts: list[float] = []
    commit = broker.commit_transaction

    def recording(timeout: float) -> None:
        timeouts.append(timeout)
        commit(timeout)

    broker.commit_transaction = recording  # type: ignore[method-assign]
    with pytest.raises(StateError, match="outcome unknown"):
        stage.step()
    assert timeouts and max(timeouts) <= 10
    assert all(alive for _, alive in broker.alive), broker.alive


# -- kafka.max_poll_interval_ms ------------------------------------------------------------------


def test_a_max_poll_interval_below_30_s_is_refused_naming_the_key() -> None:
    env = {"YESPO_CONNECTOR_KAFKA__MAX_POLL_INTERVAL_MS": "29999"}
    with pytest.raises(ConfigError, match=r"^kafka\.max_poll_interval_ms: must be at least 30000"):
        load_settings(REPO_EXAMPLE, environ=env)
    ok = {
        "YESPO_CONNECTOR_KAFKA__MAX_POLL_INTERVAL_MS": "30000",
        "YESPO_CONNECTOR_KAFKA__SESSION_TIMEOUT_MS": "30000",
    }
    assert load_settings(REPO_EXAMPLE, environ=ok).kafka.max_poll_interval_ms == 30_000


@pytest.mark.parametrize("max_poll_interval_ms", [30_000, 60_000, 300_000])
@pytest.mark.parametrize("must_abort", [False, True])
def test_a_step_on_a_broker_that_never_answers_polls_again_within_max_poll_interval(
    monkeypatch: pytest.MonkeyPatch, max_poll_interval_ms: int, must_abort: bool
) -> None:
    """Every blocking call waits its whole timeout: still, each step ends within the poll interval."""
    settings = with_kafka(load_settings(REPO_EXAMPLE), max_poll_interval_ms=max_poll_interval_ms)
    stage, broker, _, clock = slow_stage(monkeypatch, settings, commit_failures=4 if must_abort else 10)
    broker.must_abort = must_abort
    for _ in range(4):
        start = clock.now
        with contextlib.suppress(StateError):  # the commit's outcome stayed unknown: the stage stops
            stage.step()
        assert clock.now - start < max_poll_interval_ms / 1000
    assert all(alive for _, alive in broker.alive), broker.alive


# -- close ---------------------------------------------------------------------------------------


def test_close_resumes_its_own_commit_when_the_outcome_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to abort, which librdkafka refuses (_CONFLICT) while the commit can be resumed: the
    transaction stayed open until kafka.transaction_timeout_ms, holding read_committed readers."""
    stage, _ = offsets_stage(monkeypatch)
    producer = CommitResumable(stage._clock, timeouts=1)  # type: ignore[arg-type]
    stage._producer = producer  # type: ignore[assignment]
    transaction(stage, producer)  # type: ignore[arg-type]
    stage._consumer = SimpleNamespace(close=lambda: None, consumer_group_metadata=lambda: object())  # type: ignore[assignment]
    stage.close()
    assert producer.calls == ["send_offsets", "commit", "commit"]  # resumed, never aborted
    assert (
        producer.timeouts == 0
        and not stage._transactions.commit_unresolved
        and not stage._transactions.abort_pending
    )


def test_close_still_aborts_a_final_commit_that_must_abort(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, _ = offsets_stage(monkeypatch)
    producer = CommitResumable(stage._clock, timeouts=0)  # type: ignore[arg-type]
    aborts: list[float] = []

    def must_abort(timeout: float) -> None:
        producer.calls.append("commit")
        raise KafkaException(CKError(CKError._TIMED_OUT, "must abort", txn_requires_abort=True))

    producer.commit_transaction = must_abort  # type: ignore[method-assign]
    producer.abort_transaction = aborts.append  # type: ignore[method-assign,assignment]
    stage._producer = producer  # type: ignore[assignment]
    transaction(stage, producer)  # type: ignore[arg-type]
    stage._consumer = SimpleNamespace(close=lambda: None, consumer_group_metadata=lambda: object())  # type: ignore[assignment]
    stage.close()
    assert producer.calls == ["send_offsets", "commit"] and len(aborts) == 1
    assert not stage._transactions.abort_pending
