"""The state_customers gauge counts only the customers this replica holds."""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from connector.config import load_settings
from connector.merge import CustomerState
from connector.merge_stage import MergeStage
from connector.metrics import Metrics
from connector.projection import MappingProjector
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
        self.store, self._pending, self.records, self.last_duration = store, [], 0, 0.1

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

    def step(self) -> list[int]:
        done, self._pending = self._pending, []
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
