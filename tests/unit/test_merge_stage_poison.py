"""Records of odd shape go to the DLQ and the merge stage goes on (client doubles, no broker).

Values that decode cleanly can still fail later: a JSON value nested deeper than the encoders
write, an integer beyond 64 bits in a position, a changes-topic record no router of ours wrote, a
state record of odd shape. Each must cost its own record a DLQ copy, never the stage (a crash
would come back with every restart: the offset was not committed).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector.config import load_settings
from connector.decode import DecodeOptions, decode_event
from connector.jsonvalues import UNCHANGED_MARKER
from connector.merge import CustomerState, RowState
from connector.merge_stage import MergeStage
from connector.models import SourcePosition
from connector.projection import MappingProjector
from tests.unit.decode_fixtures import pg_insert
from tests.unit.test_config import REPO_EXAMPLE
from tests.unit.test_merge_stage_restore import Msg
from tests.unit.test_merge_stage_sweep import FakeProducer


class Consumer:
    def __init__(self) -> None:
        self.batches: list[list[Msg]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        return self.batches.pop(0) if self.batches else []

    def consumer_group_metadata(self) -> object:
        return object()


class Producer(FakeProducer):
    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        pass

    def commit_transaction(self, timeout: float | None = None) -> None:
        pass

    def poll(self, timeout: float = 0) -> int:
        return 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0  # every look moves on: each step commits
        return self.now


SETTINGS = load_settings(REPO_EXAMPLE)
CUSTOMERS = SETTINGS.source.customers.topic
CHANGES = SETTINGS.state.changes_topic
DLQ = SETTINGS.output.dlq_topic
STATE = SETTINGS.state.topic


def make_stage(
    column_types: dict[str, dict[str, str]] | None = None,
) -> tuple[MergeStage, Consumer, Producer]:
    options = DecodeOptions(column_types=column_types or {}, key_columns={CUSTOMERS: ("id",)})
    stage = MergeStage(
        SETTINGS,
        projector=MappingProjector(SETTINGS.contact),
        decoder=lambda raw: decode_event(raw, options=options),
        clock=Clock(),
        wall_ms=lambda: 1_700_000_000_000,
    )
    consumer, producer = Consumer(), Producer()
    stage._consumer, stage._producer = consumer, producer  # type: ignore[assignment]
    return stage, consumer, producer


def envelope(after: dict[str, Any], *, sequence: list[str] | None = None, lsn: Any = 200) -> bytes:
    value = pg_insert("customers", after, sequence=sequence, lsn=lsn).value
    assert value is not None
    return value


def run_through(
    stage: MergeStage, consumer: Consumer, producer: Producer, value: bytes, key: int = 1
) -> None:
    """One source record through both hops: routed in one step, its changes merged in the next."""
    start = len(producer.produced)
    consumer.batches.append([Msg(CUSTOMERS, 0, key, value, json.dumps({"id": key}).encode())])
    stage.step()
    routed = [p for p in producer.produced[start:] if p["topic"] == CHANGES]
    consumer.batches.append([Msg(CHANGES, r["partition"], i, r["value"]) for i, r in enumerate(routed)])
    stage.step()


def written(producer: Producer, topic: str) -> list[dict[str, Any]]:
    return [p for p in producer.produced if p["topic"] == topic]


def row(key: int, **extra: Any) -> dict[str, Any]:
    return {"id": key, "external_id": f"e{key}", "email": f"c{key}@example.com", **extra}


@pytest.mark.parametrize("depth", [300, 990])  # past orjson's 255 levels; past Python's recursion
def test_a_json_column_nested_too_deep_is_dead_lettered_and_others_go_on(depth: int) -> None:
    stage, consumer, producer = make_stage({"public.customers": {"prefs": "json"}})
    run_through(stage, consumer, producer, envelope(row(1, prefs="[" * depth + "]" * depth)))
    run_through(stage, consumer, producer, envelope(row(2)), key=2)
    dlq = written(producer, DLQ)
    assert len(dlq) == 1 and dlq[0]["value"] is not None
    assert [p["key"] for p in written(producer, STATE)] == [b"2"]  # the other customer went on


@pytest.mark.parametrize(
    "source",
    [{"sequence": ["100", str(2**64)]}, {"lsn": str(2**64), "sequence": ["100", str(2**64)]}],
    ids=["sequence", "lsn"],
)
def test_a_position_beyond_64_bits_is_dead_lettered(source: dict[str, Any]) -> None:
    stage, consumer, producer = make_stage()
    run_through(stage, consumer, producer, envelope(row(1), **source))
    run_through(stage, consumer, producer, envelope(row(2)), key=2)
    assert len(written(producer, DLQ)) == 1
    assert [p["key"] for p in written(producer, STATE)] == [b"2"]


def _change(**overrides: Any) -> dict[str, Any]:
    change = {
        "c": "1",
        "s": "customers",
        "k": "[1]",
        "o": "upsert",
        "r": row(1),
        "p": ["pg", [100, 200]],
        "ts": 1,
        "sn": False,
        "m": False,
        "src": [CUSTOMERS, 0, 1],
    }
    return change | overrides


@pytest.mark.parametrize(
    "bad",
    [
        {"p": ["pg-lsn", []]},  # a position without parts
        {"r": row(1, big=2**70)},  # an integer the state record cannot carry
        {"src": [CUSTOMERS, 0, 2**70]},  # ... nor the upsert record
    ],
    ids=["no-position-parts", "huge-int-in-row", "huge-offset"],
)
def test_a_changes_record_no_router_of_ours_wrote_is_dead_lettered_and_its_batch_goes_on(
    bad: dict[str, Any],
) -> None:
    stage, consumer, producer = make_stage()
    good = _change(c="2", k="[2]", r=row(2), src=[CUSTOMERS, 0, 2])
    text = "[" + json.dumps(_change(**bad)) + "," + json.dumps(good) + "]"
    consumer.batches.append([Msg(CHANGES, 0, 1, text.encode())])
    stage.step()
    stage.step()
    assert len(written(producer, DLQ)) == 1
    assert [p["key"] for p in written(producer, STATE)] == [b"2"]


def test_a_changes_record_nested_too_deep_is_dead_lettered() -> None:
    stage, consumer, producer = make_stage()
    deep = json.dumps(_change()).replace('"r": {', '"r": {"x": ' + "[" * 3000 + "]" * 3000 + ", ", 1)
    consumer.batches.append([Msg(CHANGES, 0, 1, ("[" + deep + "]").encode())])
    stage.step()
    assert len(written(producer, DLQ)) == 1


def _odd_state(customer: RowState) -> CustomerState:
    return CustomerState("9", customer, {}, "fp", (), 3, "e9")


_POS = SourcePosition("pg", (1, 2))


@pytest.mark.parametrize(
    "state",
    [
        _odd_state(RowState("abc", _POS)),  # type: ignore[arg-type]  # row values not an object
        _odd_state(RowState(["e9", "c9@example.com"], _POS)),  # type: ignore[arg-type]  # ... a list
        _odd_state(RowState(None, _POS, "x")),  # type: ignore[arg-type]  # a marker time not a number
    ],
    ids=["values", "values-list", "deleted-at"],
)
@pytest.mark.parametrize("toast", [False, True], ids=["full-row", "unchanged-toast-column"])
def test_a_state_of_odd_shape_stops_neither_the_sweep_nor_the_next_change(
    state: CustomerState, toast: bool
) -> None:
    """Restore refuses such a record (`decode_state`); should one reach the store, the stage goes on.

    An update with an unchanged TOAST column looks its previous value up in the state: on a list of
    values that raised AttributeError out of the step (the loop died, again at every restart).
    """
    from confluent_kafka import TopicPartition

    stage, consumer, producer = make_stage()
    stage._store.put(0, "9", state)
    stage._assigned = [TopicPartition(CHANGES, 0)]
    stage._sweeper.sweep()  # does not raise
    values = row(9, notes=UNCHANGED_MARKER) if toast else row(9)
    change = _change(c="9", k="[9]", r=values, src=[CUSTOMERS, 0, 9])
    consumer.batches.append([Msg(CHANGES, 0, 1, ("[" + json.dumps(change) + "]").encode())])
    stage.step()
    stage.step()  # does not raise: the change either applies or goes to the DLQ
    assert len(written(producer, DLQ)) + len(written(producer, STATE)) >= 1
