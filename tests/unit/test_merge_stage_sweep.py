"""The merge stage's marker sweep inside an open transaction (no broker: fake clients, white-box)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

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
    stage._begin(producer)  # type: ignore[arg-type]
    stage._merge_one(None, change, 0, producer)  # type: ignore[arg-type]
    return stage, producer


def test_sweep_in_an_open_transaction_keeps_the_pending_change() -> None:
    now = 1000 * 24 * HOUR_MS
    stage, producer = stage_with_pending_change(now)
    stage._sweep()
    pending = stage._txn.get(0, "1")
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
    stage._sweep()
    written = [p for p in producer.produced if p["topic"] == stage.settings.state.topic]
    assert [p["key"] for p in written] == [b"2"]
    swept = stage._txn.get(0, "2")
    assert swept is not None and swept.children.get("groups", {}) == {}
