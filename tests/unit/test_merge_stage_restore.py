"""Records of a changes partition still being restored are read again after the restore, all of them."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKError
from confluent_kafka import TopicPartition

from connector.config import load_settings
from connector.merge import CustomerState
from connector.merge_stage import MergeStage
from connector.projection import MappingProjector
from connector.state.codec import encode_state
from connector.state.recovery import Restorer
from connector.state.store import MemoryStore
from tests.stubs import ManualClock, simple_json_decoder

from .test_config import REPO_EXAMPLE


class Msg:
    """A consumed record (an empty changes batch unless `value` says otherwise)."""

    def __init__(
        self, topic: str, partition: int, offset: int, value: bytes | None = b"[]", key: bytes | None = None
    ) -> None:
        self._t, self._p, self._o, self._v, self._k = topic, partition, offset, value, key

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def error(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def value(self) -> bytes | None:
        return self._v

    def key(self) -> bytes | None:
        return self._k

    def headers(self) -> None:
        return None


class OneBatchConsumer:
    """Hands out one poll batch, then nothing; records the seeks."""

    def __init__(self, batch: list[Msg]) -> None:
        self.batch = batch
        self.seeks: list[tuple[str, int, int]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        batch, self.batch = self.batch, []
        return batch

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


class IdleProducer:
    def begin_transaction(self) -> None:
        raise AssertionError("nothing of a restoring partition is processed")


def test_a_poll_batch_of_restoring_partitions_is_sought_back_to_its_first_records() -> None:
    """The last seek of a partition wins: one per partition, at the batch's lowest offset."""
    settings = load_settings(REPO_EXAMPLE)
    changes = settings.state.changes_topic
    stage = MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)
    batch = [Msg(changes, 2, 100), Msg(changes, 1, 7), Msg(changes, 2, 101), Msg(changes, 2, 102)]
    consumer = OneBatchConsumer(batch)
    stage._consumer, stage._producer = consumer, IdleProducer()  # type: ignore[assignment]
    restorer = Restorer(settings, stage._store)
    restorer.begin([1, 2])
    restorer.step = lambda *a, **k: []  # type: ignore[method-assign]  # restoring, no broker
    stage._restorer = restorer
    stage.step()
    assert sorted(consumer.seeks) == [(changes, 1, 7), (changes, 2, 100)]
    consumer.batch = [Msg(changes, 2, 100), Msg(changes, 2, 101)]  # fetched again before the pause
    stage.step()
    assert consumer.seeks[-1] == (changes, 2, 100)


class _Msg:
    def __init__(
        self, partition: int, key: bytes | None = None, value: bytes | None = None, eof: bool = False
    ):
        self._partition, self._key, self._value, self._eof = partition, key, value, eof

    def error(self) -> Any:
        if not self._eof:
            return None
        return SimpleNamespace(code=lambda: CKError._PARTITION_EOF)

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return 0

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class _StateTopicConsumer:
    """Partition 0 holds three customers, partition 1 one; each ends with EOF."""

    def __init__(self) -> None:
        def state(key: str) -> bytes:
            return encode_state(CustomerState(customer_key=key))

        self.batches = [
            [_Msg(0, b"a", state("a")), _Msg(1, b"d", state("d")), _Msg(0, b"b", state("b"))],
            [_Msg(0, b"c", state("c")), _Msg(1, eof=True), _Msg(0, eof=True)],
        ]

    def incremental_assign(self, parts: list[TopicPartition]) -> None: ...

    def incremental_unassign(self, parts: list[TopicPartition]) -> None: ...

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, 5

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        return self.batches.pop(0) if self.batches else []


def test_each_restored_partition_reports_its_own_customers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("connector.state.recovery.unstable_partitions", lambda admin, tps, **kw: [])
    restorer = Restorer(load_settings(REPO_EXAMPLE), MemoryStore())
    restorer._consumer = _StateTopicConsumer()  # type: ignore[assignment]
    restorer._admin = object()  # type: ignore[assignment]
    restorer.begin([0, 1])
    with caplog.at_level(logging.INFO, logger="connector.state.recovery"):
        done = restorer.step() + restorer.step()
    assert sorted(done) == [0, 1]
    reports = {r.partition: r for r in caplog.records if r.getMessage() == "state partition restored"}  # type: ignore[attr-defined]
    # partition 1 finishes first, while partition 0's customers are already in the store
    assert reports[1].customers == 1  # type: ignore[attr-defined]
    assert reports[0].customers == 3  # type: ignore[attr-defined]
    assert reports[0].customers_held == 4  # type: ignore[attr-defined]


class _QuietStateTopic:
    """A restore consumer with nothing to deliver; records what it was assigned."""

    def __init__(self) -> None:
        self.assigned: list[TopicPartition] = []

    def incremental_assign(self, parts: list[TopicPartition]) -> None:
        self.assigned.extend(parts)

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, 5

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []


def test_an_open_transaction_outliving_the_transaction_timeout_is_warned_about_as_hanging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a crashed owner's transaction is aborted by the broker once kafka.transaction_timeout_ms has
    # passed; one still open a minute later is a hanging transaction only an operator can end
    monkeypatch.setattr("connector.state.recovery.unstable_partitions", lambda admin, tps, **kw: [tps[0]])
    settings = load_settings(REPO_EXAMPLE)
    clock = ManualClock(1000.0)
    restorer = Restorer(settings, MemoryStore(), clock=clock)
    restorer._consumer = _QuietStateTopic()  # type: ignore[assignment]
    restorer._admin = object()  # type: ignore[assignment]
    restorer.begin([0])
    limit = settings.kafka.transaction_timeout_ms / 1000 + 60

    def hanging_warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "hanging transaction" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="connector.state.recovery"):
        assert restorer.step() == []  # partition 0 waits for its open transaction
        clock.sleep(limit - 1)
        restorer.step()
        assert hanging_warnings() == []  # within the timeout and its grace: an ordinary wait
        clock.sleep(2)
        restorer.step()
        restorer.step()
        warned = hanging_warnings()
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING  # once, not at every step
        assert warned[0].partitions == [0]  # type: ignore[attr-defined]
        assert "kafka-transactions.sh" in warned[0].getMessage()
        clock.sleep(61)
        restorer.step()
        assert len(hanging_warnings()) == 2  # repeated a minute later while it still hangs
    assert restorer.is_restoring(0) and restorer._consumer.assigned == []  # type: ignore[attr-defined]
