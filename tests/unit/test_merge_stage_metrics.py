"""The state_customers gauge counts only the customers this replica holds; each restore is timed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import CollectorRegistry

from connector.config import load_settings
from connector.merge import CustomerState
from connector.merge_stage import MergeStage
from connector.metrics import Metrics
from connector.projection import MappingProjector
from connector.state.recovery import Restorer
from tests.stubs import simple_json_decoder

from .test_config import REPO_EXAMPLE


class FakeConsumer:
    def assign(self, partitions: Any) -> None:
        pass

    def pause(self, partitions: Any) -> None:
        pass

    def resume(self, partitions: Any) -> None:
        pass


class InstantRestorer:
    """Restores at once: three customers per partition."""

    def __init__(self, store: Any) -> None:
        self.store, self._pending, self.records, self._done = store, [], 0, 0

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def begin(self, partitions: list[int]) -> None:
        for p in partitions:
            self.store.drop_partition(p)
            self._pending.append(p)

    def is_restoring(self, partition: int) -> bool:
        return partition in self._pending

    def cancel(self, partition: int) -> None:
        self._pending = [p for p in self._pending if p != partition]

    def drain_durations(self) -> list[float]:
        durations = [0.1] * self._done
        self._done = 0
        return durations

    def step(self, *, deadline: float = 0.0) -> list[int]:
        done, self._pending = self._pending, []
        self._done += len(done)
        for p in done:
            for k in "abc":
                self.store.put(p, f"{p}{k}", CustomerState(f"{p}{k}"))
        return done


def gauge(metrics: Metrics) -> dict[str, float]:
    lines = metrics.render().decode().splitlines()
    prefix = 'yespo_connector_state_customers{partition="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.split()[-1])
        for line in lines
        if line.startswith(prefix)
    }


def test_a_revoked_partition_leaves_the_gauge() -> None:
    settings = load_settings(REPO_EXAMPLE)
    changes = settings.state.changes_topic
    metrics = Metrics()
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, metrics=metrics
    )
    consumer = FakeConsumer()
    stage._consumer, stage._producer = consumer, object()  # type: ignore[assignment]
    stage._restorer = InstantRestorer(stage._store)  # type: ignore[assignment]
    stage._on_assign(consumer, [TopicPartition(changes, 0), TopicPartition(changes, 1)])  # type: ignore[arg-type]
    stage._restore_step()
    assert gauge(metrics) == {"0": 3.0, "1": 3.0}
    stage._on_revoke(consumer, [TopicPartition(changes, 0), TopicPartition(changes, 1)])  # type: ignore[arg-type]
    assert gauge(metrics) == {}
    stage._on_assign(consumer, [TopicPartition(changes, 1)])  # type: ignore[arg-type]  # 0 moved away
    stage._restore_step()
    assert gauge(metrics) == {"1": 3.0} and stage._store.size() == 3


class Eof:
    """The end of a state partition, as the restore consumer reads it."""

    def __init__(self, partition: int) -> None:
        self._partition = partition

    def error(self) -> Any:
        return SimpleNamespace(code=lambda: KafkaError._PARTITION_EOF)

    def partition(self) -> int:
        return self._partition


class StateTopic:
    """The restore consumer: state partitions of 5 records that end when `ends` says so."""

    def __init__(self) -> None:
        self.ends: list[Eof] = []

    def incremental_assign(self, parts: list[TopicPartition]) -> None: ...

    def incremental_unassign(self, parts: list[TopicPartition]) -> None: ...

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, 5

    def consume(self, num_messages: int, timeout: float) -> list[Eof]:
        ends, self.ends = self.ends, []
        return ends


def test_each_restored_partition_is_one_restore_duration_observation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connector.state.recovery.unstable_partitions", lambda admin, tps, **kw: [])
    settings = load_settings(REPO_EXAMPLE)
    changes = settings.state.changes_topic
    now = [0.0]
    metrics = Metrics(CollectorRegistry())
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, metrics=metrics
    )
    consumer, state_topic = FakeConsumer(), StateTopic()
    stage._consumer, stage._producer = consumer, object()  # type: ignore[assignment]
    restorer = Restorer(settings, stage._store, clock=lambda: now[0])
    restorer._consumer, restorer._admin = state_topic, object()  # type: ignore[assignment]
    stage._restorer = restorer
    stage._on_assign(consumer, [TopicPartition(changes, p) for p in (0, 1, 2)])  # type: ignore[arg-type]
    now[0] = 1.0
    state_topic.ends = [Eof(0)]
    stage._restore_step()
    now[0] = 9.0  # two partitions end in the same step: 9 s each
    state_topic.ends = [Eof(1), Eof(2)]
    stage._restore_step()
    assert not restorer.pending
    text = metrics.render().decode()
    assert "yespo_connector_restore_duration_seconds_count 3.0" in text
    assert "yespo_connector_restore_duration_seconds_sum 19.0" in text
    assert 'yespo_connector_restore_duration_seconds_bucket{le="1.0"} 1.0' in text


class StuckRestorer(InstantRestorer):
    """A restore that does not end (a long state partition): its changes partitions stay paused."""

    def restoring(self) -> list[int]:
        return list(self._pending)

    def step(self, *, deadline: float = 0.0) -> list[int]:
        return []


class PausedConsumer(FakeConsumer):
    """Polls nothing (its changes partitions are paused); the broker's ends grow meanwhile."""

    def __init__(self, ends: dict[int, int]) -> None:
        self.ends = ends
        self.asked: list[tuple[str, int, bool]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float, cached: bool) -> tuple[int, int]:
        self.asked.append((tp.topic, tp.partition, cached))
        return 0, self.ends[tp.partition]


def test_the_lag_of_changes_partitions_paused_for_a_restore_counts_what_arrives_meanwhile() -> None:
    """librdkafka's statistics freeze a paused partition's end: the step asks the broker for it."""
    from .test_metrics import lag_samples, partition, stats

    settings = load_settings(REPO_EXAMPLE)
    changes = settings.state.changes_topic
    metrics = Metrics(CollectorRegistry())
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, metrics=metrics
    )
    consumer = PausedConsumer({0: 700, 1: 40})
    stage._consumer, stage._producer = consumer, object()  # type: ignore[assignment]
    stage._restorer = StuckRestorer(stage._store)  # type: ignore[assignment]
    stage._on_assign(consumer, [TopicPartition(changes, 0), TopicPartition(changes, 1)])  # type: ignore[arg-type]
    stage.step()
    assert sorted(consumer.asked) == [(changes, 0, False), (changes, 1, False)]
    # what librdkafka reports of a partition paused before its first fetch: no end, no position
    # (-1001, RD_KAFKA_OFFSET_INVALID), only the committed offset it fetched on assignment
    unknown = dict.fromkeys(("lo_offset", "hi_offset", "ls_offset", "app_offset", "stored_offset"), -1001)
    frozen = [partition(0, **unknown, committed_offset=100), partition(1, **unknown)]
    metrics.update_from_librdkafka_stats(stats("merge", {changes: frozen}))
    samples = lag_samples(metrics)
    # p0 from its committed offset; p1 has none: from its low watermark (0, the double's answer)
    assert samples[("records", changes, "0")] == 600 and samples[("records", changes, "1")] == 40
