"""A primary-key change through the merge stage (client doubles, no broker).

`UPDATE customers SET id = 1065 WHERE id = 1030` reaches the stage as the old key's delete and the new
key's create, the group rows following by ON UPDATE CASCADE. The old key's delete is not emitted: the
new key answers for the contact. Found by test_e2e (CI, seed 2714546670): the moved customer was
deleted 4 statements later, the new key's create and delete were merged in one transaction, and the
contact stayed live in Yespo.
"""

from __future__ import annotations

import json
from typing import Any

from tests.unit.test_merge_stage_poison import CHANGES, DLQ, SETTINGS, Msg, make_stage, row, written

UPSERTS = SETTINGS.output.upserts_topic


def change(
    key: int, op: str, lsn: int, *, moved: bool = False, group: int | None = None, **values: Any
) -> dict[str, Any]:
    source, row_key = ("customers", f"[{key}]") if group is None else ("groups", f"[{key},{group}]")
    if op == "delete":
        value = None
    elif group is None:
        value = row(key, **values)
    else:
        value = {"customer_id": key, "group_id": group, "group_name": f"g{group}"}
    return {
        "c": str(key),
        "s": source,
        "k": row_key,
        "o": op,
        "r": value,
        "p": ["pg", [lsn - 1, lsn]],
        "ts": 1,
        "sn": False,
        "m": moved,
        "src": ["crm.public.customers", 0, lsn],
    }


def merge(stage: Any, consumer: Any, *records: list[dict[str, Any]]) -> None:
    """Each record (a list of changes) at its own offset, all in one consumed batch: one transaction."""
    consumer.batches.append([Msg(CHANGES, 0, 100 + i, json.dumps(r).encode()) for i, r in enumerate(records)])
    stage.step()


def upserts(producer: Any) -> list[dict[str, Any]]:
    return [json.loads(p["value"]) for p in written(producer, UPSERTS)]


def test_a_customer_moved_and_deleted_at_once_leaves_no_live_contact() -> None:
    stage, consumer, producer = make_stage()
    merge(stage, consumer, [change(1030, "upsert", 10), change(1030, "upsert", 11, group=23)])
    assert [(u["op"], u["external_customer_id"]) for u in upserts(producer)] == [("upsert", "e1030")]
    merge(
        stage,
        consumer,
        [change(1030, "delete", 20, moved=True), change(1030, "delete", 21, moved=True, group=23)],
        [
            change(1065, "upsert", 20, moved=True, external_id="e1030"),
            change(1065, "upsert", 21, moved=True, group=23),
        ],
        [change(1065, "delete", 30), change(1065, "delete", 31, group=23)],
    )
    out = [
        (u["customer_key"], u["op"], u["external_customer_id"], u["groups_removed"])
        for u in upserts(producer)
    ]
    assert out == [("1030", "upsert", "e1030", []), ("1065", "delete", "e1030", [23])]


def test_a_group_row_cascaded_before_its_customer_row_gives_a_handover_upsert() -> None:
    stage, consumer, producer = make_stage()
    merge(stage, consumer, [change(1030, "upsert", 10), change(1030, "upsert", 11, group=23)])
    merge(stage, consumer, [change(1030, "delete", 21, moved=True, group=23)])  # the cascade's half first
    merge(stage, consumer, [change(1030, "delete", 20, moved=True)])  # then the customers row's
    last = upserts(producer)[1:]
    assert [(u["op"], u["groups_removed"], u.get("handover")) for u in last] == [("upsert", [23], True)]
    assert written(producer, DLQ) == []


def test_a_record_carries_the_newest_position_of_the_changes_it_reflects() -> None:
    """The customers and groups topics interleave in no source order: the new key's group row (the
    cascade's half, later in the WAL) can be merged before its customers row. The upsert reflects
    both, so it carries the group row's position: the old key's handover record at that position
    must lose to it in the deliver stage."""
    stage, consumer, producer = make_stage()
    merge(
        stage,
        consumer,
        [
            change(1065, "upsert", 21, moved=True, group=23),
            change(1065, "upsert", 20, moved=True, external_id="e1030"),
        ],
    )
    (record,) = upserts(producer)
    assert record["contact"]["groups"] == [{"id": 23, "name": "g23"}]
    assert record["source"]["position"] == ["pg", 20, 21]


def handed_over(producer: Any) -> list[tuple[bytes, int, list[dict[str, Any]]]]:
    return [(p["key"], p["partition"], json.loads(p["value"])) for p in written(producer, CHANGES)]


def test_a_key_change_that_changes_the_id_retires_the_old_contact_through_the_changes_topic() -> None:
    """`UPDATE customers SET id = 1065, external_id = 'e1065' WHERE id = 1030`: the old key hands its
    contact over through the changes topic (in the same transaction), the new key retires it."""
    from connector.routing import partition_for

    stage, consumer, producer = make_stage()
    merge(stage, consumer, [change(1030, "upsert", 10), change(1030, "upsert", 11, group=23)])
    leaving = {**change(1030, "delete", 20, moved=True), "t": "1065"}
    merge(
        stage,
        consumer,
        [leaving, change(1030, "delete", 21, moved=True, group=23)],
        [change(1065, "upsert", 20, moved=True, external_id="e1065")],
    )
    ((key, partition, value),) = handed_over(producer)
    assert (key, partition) == (b"1065", partition_for("1065", SETTINGS.state.partitions))
    assert [(c["c"], c["s"], c["k"], c["o"], c["r"], c["p"]) for c in value] == [
        ("1065", "~handover", "1030", "handover", {"ext": "e1030", "groups": [23]}, ["pg", [19, 20]])
    ]
    assert stage.stats.handovers == 1
    merge(stage, consumer, value)  # the stage reads it back from the changes topic
    out = [
        (u["customer_key"], u["op"], u["external_customer_id"], u["groups_removed"], u.get("retires"))
        for u in upserts(producer)
    ]
    assert out == [
        ("1030", "upsert", "e1030", [], None),
        ("1065", "upsert", "e1065", [], None),
        ("1065", "delete", "e1030", [23], True),
    ]
    assert [u["version"] for u in upserts(producer)[1:]] == [1, 2]
    assert upserts(producer)[-1]["inherited_from"] == "1030"  # sent over key 1030's last upsert
    assert written(producer, DLQ) == []


def test_a_handover_of_another_shape_is_dead_lettered() -> None:
    stage, consumer, producer = make_stage()
    bad = {**change(1065, "upsert", 20), "s": "~handover", "o": "handover", "r": {"ext": 5}}
    merge(stage, consumer, [bad], [change(1066, "upsert", 30)])
    assert len(written(producer, DLQ)) == 1
    assert [u["customer_key"] for u in upserts(producer)] == ["1066"]  # the others go on
