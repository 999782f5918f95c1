from __future__ import annotations

import pytest

from connector.config import load_settings
from connector.merge import CustomerState, merge_change
from connector.models import RecordRef, SourcePosition
from connector.projection import MappingProjector, upsert_records
from connector.routing import CUSTOMERS, RoutedChange
from tests.schema_validation import validator

from .test_config import REPO_EXAMPLE

ROW = {
    "id": 1,
    "external_id": "EXT-1",
    "first_name": "Ana",
    "email": "ana@example.com",
    "updated_at": "2026-01-01T00:00:00Z",
    "notes": "x",
}


def change(row, *, source=CUSTOMERS, row_key="[1]", op="upsert", pos=(0, 10), moved=False) -> RoutedChange:
    return RoutedChange(
        "1", source, row_key, op, row, SourcePosition("pg", pos), 1, False, moved, RecordRef("t", 0, 0)
    )


@pytest.fixture
def projector() -> MappingProjector:
    return MappingProjector(load_settings(REPO_EXAMPLE).contact)


def fold(projector, *changes):
    state = None
    emitted = []
    for c in changes:
        out = merge_change(state, c, now_ms=1)
        if not out.applied:
            continue
        if state is not None and not projector.affects_contact(state, out.state, c):
            state = out.state
            continue
        p = projector.project(out.state, moved=c.moved)
        state = p.state
        emitted += upsert_records(p, c)
    return state, emitted


def test_unmapped_column_change_skips_mapping(projector) -> None:
    s0, _ = fold(projector, change(ROW))
    s1 = merge_change(
        s0, change({**ROW, "updated_at": "2027-01-01T00:00:00Z", "notes": "y"}, pos=(10, 20)), now_ms=1
    )
    assert not projector.affects_contact(s0, s1.state, change(ROW))


@pytest.mark.parametrize("column", ["first_name", "email", "external_id"])
def test_mapped_column_change_is_seen(projector, column) -> None:
    s0, _ = fold(projector, change(ROW))
    c = change({**ROW, column: "other"}, pos=(10, 20))
    assert projector.affects_contact(s0, merge_change(s0, c, now_ms=1).state, c)


def test_group_rows(projector) -> None:
    s0, _ = fold(projector, change(ROW))
    g = change(
        {"customer_id": 1, "group_id": 7, "group_name": "VIP"}, source="groups", row_key="[1,7]", pos=(1, 2)
    )
    s1 = merge_change(s0, g, now_ms=1).state
    assert projector.affects_contact(s0, s1, g)  # joined
    same = change(
        {"customer_id": 1, "group_id": 7, "group_name": "VIP", "x": 1}, source="groups", row_key="[1,7]"
    )
    assert not projector.affects_contact(s1, merge_change(s1, same, now_ms=1).state, same)
    gone = change(None, source="groups", row_key="[1,7]", op="delete", pos=(3, 4))
    assert projector.affects_contact(s1, merge_change(s1, gone, now_ms=1).state, gone)


def test_unmapped_child_table_never_affects(projector) -> None:
    s0, _ = fold(projector, change(ROW))
    c = change({"customer_id": 1, "k": 2}, source="orders", row_key="[2]")
    assert not projector.affects_contact(s0, merge_change(s0, c, now_ms=1).state, c)


def test_skipping_gives_the_same_stream_as_mapping_everything(projector) -> None:
    changes = [
        change(ROW),
        change({**ROW, "updated_at": "b"}, pos=(10, 20)),
        change({**ROW, "updated_at": "c", "first_name": "Bea"}, pos=(20, 30)),
        change({**ROW, "updated_at": "d", "first_name": "Bea"}, pos=(30, 40)),
        change(None, op="delete", pos=(40, 50)),
    ]
    _, emitted = fold(projector, *changes)
    assert [(e["op"], e["version"]) for e in emitted] == [("upsert", 1), ("upsert", 2), ("delete", 3)]
    assert emitted[1]["contact"]["firstName"] == "Bea"


def test_pk_change_delete_is_suppressed(projector) -> None:
    state, emitted = fold(projector, change(ROW), change(None, op="delete", pos=(10, 20), moved=True))
    assert [e["op"] for e in emitted] == ["upsert"]
    assert isinstance(state, CustomerState) and state.fingerprint is None


def test_recreated_customer_detaches_groups_its_soft_deleted_contact_kept(projector) -> None:
    """A soft-deleted Yespo contact keeps its segments and a re-insert restores it (found by test_e2e)."""
    joined = change(
        {"customer_id": 1, "group_id": 7, "group_name": "VIP"}, source="groups", row_key="[1,7]", pos=(1, 2)
    )
    _, emitted = fold(
        projector,
        change(ROW),
        joined,
        change(None, op="delete", pos=(3, 4)),  # ON DELETE CASCADE: the customer row first, then its groups
        change(None, source="groups", row_key="[1,7]", op="delete", pos=(3, 5)),
        change({**ROW, "first_name": "Bea"}, pos=(10, 20)),
    )
    assert [(e["op"], e["groups_removed"]) for e in emitted] == [
        ("upsert", []),
        ("upsert", []),
        ("delete", [7]),  # detached before the soft delete: a restore must not bring it back
        ("upsert", [7]),  # again, in case the delete never reached Yespo (harmless otherwise)
    ]
    for record in emitted:
        validator("upsert.schema.json").validate(record)


def _joined(group_id: int, pos: tuple[int, int]):
    row = {"customer_id": 1, "group_id": group_id, "group_name": f"g{group_id}"}
    return change(row, source="groups", row_key=f"[1,{group_id}]", pos=pos)


@pytest.mark.parametrize(("on_delete", "detached"), [("delete", [7, 8]), ("erase", [])])
def test_a_delete_detaches_the_contact_s_segments_unless_it_erases(on_delete, detached) -> None:
    """Yespo keeps a soft-deleted contact's segments and restores them with it (restoreDeleted, a
    single add): a customer re-created after its delete marker expired, with a fresh state, would
    get them back. An erase removes the memberships with the contact."""
    mapping = load_settings(REPO_EXAMPLE).contact.model_copy(update={"on_delete": on_delete})
    state, emitted = fold(
        MappingProjector(mapping),
        change(ROW),
        _joined(7, (1, 2)),
        _joined(8, (1, 3)),
        change(None, op="delete", pos=(3, 4)),
    )
    assert [(e["op"], e["groups_removed"], e["erase"]) for e in emitted][-1] == (
        "delete",
        detached,
        on_delete == "erase",
    )
    assert state.groups == tuple(detached)
    # the delete marker expired: the re-created customer starts from nothing and detaches nothing
    _, again = fold(MappingProjector(mapping), change({**ROW, "first_name": "Bea"}, pos=(10, 20)))
    assert [(e["op"], e["groups_removed"]) for e in again] == [("upsert", [])]


def test_a_retired_contact_is_deleted_with_its_segments_detached(projector) -> None:
    """A -> B under one key: A is soft-deleted; a later restore of A (a customer taking that id
    again) must not bring back the segments the customer had then."""
    _, emitted = fold(
        projector,
        change(ROW),
        _joined(7, (1, 2)),
        change({**ROW, "external_id": "EXT-2"}, pos=(10, 20)),
    )
    assert [(e["op"], e["external_customer_id"], e["groups_removed"]) for e in emitted][-2:] == [
        ("delete", "EXT-1", [7]),
        ("upsert", "EXT-2", []),
    ]
    assert emitted[-1]["contact"]["groups"] == [{"id": 7, "name": "g7"}]


def test_unknown_toast_value_is_kept_until_known_then_cleared_when_null(projector) -> None:
    # The first change the connector sees of this customer is an update whose first_name Debezium
    # left out (unchanged TOAST, REPLICA IDENTITY DEFAULT): Yespo must keep its first name.
    from connector.jsonvalues import UNCHANGED_MARKER

    _, emitted = fold(projector, change({**ROW, "first_name": UNCHANGED_MARKER}))
    assert [e["keep_fields"] for e in emitted] == [["firstName"]]
    assert "firstName" not in emitted[0]["contact"]
    # the value arrives: a new upsert carries it and keeps nothing
    _, later = fold(projector, change({**ROW, "first_name": UNCHANGED_MARKER}), change(ROW, pos=(10, 20)))
    assert [e.get("keep_fields") for e in later] == [["firstName"], None]
    assert later[1]["contact"]["firstName"] == "Ana"
    # a real NULL after the unknown value is a change too: the upsert clears it (no keep_fields)
    _, nulled = fold(
        projector,
        change({**ROW, "first_name": UNCHANGED_MARKER}),
        change({**ROW, "first_name": None}, pos=(10, 20)),
    )
    assert [e.get("keep_fields") for e in nulled] == [["firstName"], None]
    assert nulled[0]["contact"] == nulled[1]["contact"]


def test_a_changed_external_id_retires_the_previous_contact_first(projector) -> None:
    """A -> B under one key: bulk imports dedupe on externalCustomerId and never rewrite it (review)."""
    state, emitted = fold(projector, change(ROW), change({**ROW, "external_id": "EXT-2"}, pos=(10, 20)))
    assert [(e["op"], e["external_customer_id"], e["version"]) for e in emitted] == [
        ("upsert", "EXT-1", 1),
        ("delete", "EXT-1", 2),
        ("upsert", "EXT-2", 3),
    ]
    assert emitted[1]["erase"] is False and emitted[1]["contact"] is None
    assert emitted[1]["retires"] is True and "retires" not in emitted[0] and "retires" not in emitted[2]
    for record in emitted:
        validator("upsert.schema.json").validate(record)
    assert (state.version, state.external_id) == (3, "EXT-2")
    # then a delete of the customer deletes the contact it addresses now
    _, after = fold(
        projector,
        change(ROW),
        change({**ROW, "external_id": "EXT-2"}, pos=(10, 20)),
        change(None, op="delete", pos=(30, 40)),
    )
    assert (after[-1]["op"], after[-1]["external_customer_id"], after[-1]["version"]) == (
        "delete",
        "EXT-2",
        4,
    )


def test_a_contact_whose_id_is_cleared_is_still_addressed_by_its_id(projector) -> None:
    """A -> NULL: the upsert without an id is matched by email and Yespo's contact keeps id A, so a
    later id B retires A, and a delete of the customer deletes A (an erase must reach it; review)."""
    cleared = change({**ROW, "external_id": None}, pos=(10, 20))
    state, emitted = fold(projector, change(ROW), cleared)
    assert [(e["op"], e["external_customer_id"]) for e in emitted] == [("upsert", "EXT-1"), ("upsert", None)]
    assert state.external_id == "EXT-1"
    _, emitted = fold(projector, change(ROW), cleared, change({**ROW, "external_id": "EXT-2"}, pos=(20, 30)))
    assert [(e["op"], e["external_customer_id"]) for e in emitted[2:]] == [
        ("delete", "EXT-1"),
        ("upsert", "EXT-2"),
    ]
    assert emitted[2]["retires"] is True
    _, emitted = fold(projector, change(ROW), cleared, change(None, op="delete", pos=(20, 30)))
    assert [(e["op"], e["external_customer_id"]) for e in emitted[2:]] == [("delete", "EXT-1")]
    # and the id coming back is no change of contact: nothing retired
    _, emitted = fold(projector, change(ROW), cleared, change(ROW, pos=(20, 30)))
    assert [(e["op"], e["external_customer_id"]) for e in emitted[2:]] == [("upsert", "EXT-1")]


@pytest.mark.parametrize(("on_delete", "retired"), [("erase", [("delete", True)]), ("ignore", [])])
def test_the_retired_contact_follows_on_delete(on_delete, retired) -> None:
    mapping = load_settings(REPO_EXAMPLE).contact.model_copy(update={"on_delete": on_delete})
    _, emitted = fold(
        MappingProjector(mapping), change(ROW), change({**ROW, "external_id": "EXT-2"}, pos=(10, 20))
    )
    assert [(e["op"], e["erase"]) for e in emitted[1:-1]] == retired
    assert emitted[-1]["external_customer_id"] == "EXT-2"
    assert [e["version"] for e in emitted] == list(range(1, len(emitted) + 1))


def test_no_retirement_without_a_live_previous_contact_or_a_new_id(projector) -> None:
    # re-created with another id after a delete: the old contact is already deleted
    _, emitted = fold(
        projector,
        change(ROW),
        change(None, op="delete", pos=(3, 4)),
        change({**ROW, "external_id": "EXT-2"}, pos=(10, 20)),
    )
    assert [(e["op"], e["external_customer_id"]) for e in emitted] == [
        ("upsert", "EXT-1"),
        ("delete", "EXT-1"),
        ("upsert", "EXT-2"),
    ]


@pytest.mark.parametrize(
    ("old", "new"), [(1, True), (0, False), (1, 1.0), ({"vip": 1}, {"vip": True}), ([0], [False])]
)
def test_a_value_changing_type_but_equal_in_python_still_changes_the_contact(projector, old, new) -> None:
    """1 == 1.0 == True in Python, not in the contact (a jsonb column going from 1 to true; review)."""
    s0, _ = fold(projector, change({**ROW, "loyalty_level": old}))
    c = change({**ROW, "loyalty_level": new}, pos=(10, 20))
    s1 = merge_change(s0, c, now_ms=1).state
    assert projector.affects_contact(s0, s1, c) == (projector.project(s1, moved=False).emitted is not None)


# -- primary-key changes ------------------------------------------------------------------------------
# `UPDATE customers SET id = 2 WHERE id = 1` reaches the merge stage as the old key's delete and the
# new key's create (one source event, one position), the group rows following by ON UPDATE CASCADE.


def keyed(
    key: str, row, *, source=CUSTOMERS, op="upsert", pos=(0, 10), moved=False, group=None
) -> RoutedChange:
    row_key = f"[{key}]" if group is None else f"[{key},{group}]"
    return RoutedChange(
        key, source, row_key, op, row, SourcePosition("pg", pos), 1, False, moved, RecordRef("t", 0, 0)
    )


def project_once(projector, state, *changes):
    """Merge `changes` into `state` and project once, as the merge stage does per transaction."""
    from connector.projection import adopted_rows, customer_leaves, hands_over

    for c in changes:
        out = merge_change(state, c, now_ms=1)
        if out.applied:
            state = out.state
    moved = any(map(customer_leaves, changes))
    p = projector.project(state, moved=moved, adopted=adopted_rows(changes))
    return p.state, upsert_records(p, changes[-1], handover=hands_over(changes))


MOVED_ROW = {**ROW, "id": 2}
GROUP_1 = {"customer_id": 1, "group_id": 7, "group_name": "VIP"}
GROUP_2 = {**GROUP_1, "customer_id": 2}


def test_a_customer_moved_in_and_deleted_before_it_emitted_deletes_the_contact_the_old_key_left(
    projector,
) -> None:
    """Found by test_e2e: the old key's delete is suppressed (the new key takes the contact over); a
    new key that is created and deleted within one transaction emitted nothing, so nothing deleted the
    contact in Yespo."""
    old, emitted = project_once(
        projector, None, keyed("1", ROW), keyed("1", GROUP_1, source="groups", group=7)
    )
    assert [(e["op"], e["external_customer_id"]) for e in emitted] == [("upsert", "EXT-1")]
    _, emitted = project_once(projector, old, keyed("1", None, op="delete", pos=(10, 20), moved=True))
    assert emitted == []  # suppressed: the new key answers for EXT-1
    _, emitted = project_once(
        projector,
        None,
        keyed("2", MOVED_ROW, pos=(10, 20), moved=True),
        keyed("2", GROUP_2, source="groups", pos=(10, 21), moved=True, group=7),
        keyed("2", None, op="delete", pos=(30, 40)),
        keyed("2", None, source="groups", op="delete", pos=(30, 41), group=7),
    )
    assert [(e["op"], e["external_customer_id"], e["groups_removed"]) for e in emitted] == [
        ("delete", "EXT-1", [7])  # its segments detached, as any soft delete's
    ]
    assert emitted[0]["customer_key"] == "2" and "handover" not in emitted[0]
    validator("upsert.schema.json").validate(emitted[0])


@pytest.mark.parametrize(("on_delete", "expected"), [("erase", [("delete", "EXT-1", True)]), ("ignore", [])])
def test_the_adopted_contact_s_delete_follows_on_delete(on_delete, expected) -> None:
    mapping = load_settings(REPO_EXAMPLE).contact.model_copy(update={"on_delete": on_delete})
    _, emitted = project_once(
        MappingProjector(mapping),
        None,
        keyed("2", MOVED_ROW, pos=(10, 20), moved=True),
        keyed("2", None, op="delete", pos=(30, 40)),
    )
    assert [(e["op"], e["external_customer_id"], e["erase"]) for e in emitted] == expected


def test_a_new_customer_created_and_deleted_in_one_transaction_emits_nothing(projector) -> None:
    _, emitted = project_once(
        projector, None, keyed("2", MOVED_ROW, pos=(10, 20)), keyed("2", None, op="delete", pos=(30, 40))
    )
    assert emitted == []


def test_a_moved_in_customer_whose_external_id_changed_retires_the_adopted_contact(projector) -> None:
    _, emitted = project_once(
        projector,
        None,
        keyed("2", MOVED_ROW, pos=(10, 20), moved=True),
        keyed("2", {**MOVED_ROW, "external_id": "EXT-2"}, pos=(30, 40)),
    )
    assert [(e["op"], e["external_customer_id"], e.get("retires")) for e in emitted] == [
        ("delete", "EXT-1", True),
        ("upsert", "EXT-2", None),
    ]


def test_a_moved_in_customer_upserts_as_a_new_one(projector) -> None:
    state, emitted = project_once(projector, None, keyed("2", MOVED_ROW, pos=(10, 20), moved=True))
    assert [(e["op"], e["external_customer_id"]) for e in emitted] == [("upsert", "EXT-1")]
    # from then on it is the contact's customer: a later delete is an ordinary one
    _, emitted = project_once(projector, state, keyed("2", None, op="delete", pos=(30, 40)))
    assert [(e["op"], e["external_customer_id"]) for e in emitted] == [("delete", "EXT-1")]


def test_the_old_key_s_records_of_rows_leaving_carry_handover(projector) -> None:
    """The cascade moves a group row before the customers row follows: the old key upserts its contact
    without that group at the same position as the new key's create. The record says so."""
    old, _ = project_once(projector, None, keyed("1", ROW), keyed("1", GROUP_1, source="groups", group=7))
    _, emitted = project_once(
        projector, old, keyed("1", None, source="groups", op="delete", pos=(10, 21), moved=True, group=7)
    )
    assert [(e["op"], e["groups_removed"], e.get("handover")) for e in emitted] == [("upsert", [7], True)]
    validator("upsert.schema.json").validate(emitted[0])
    _, plain = project_once(
        projector, old, keyed("1", None, source="groups", op="delete", pos=(10, 21), group=7)
    )
    assert "handover" not in plain[0]


# -- handing the contact over to the new key ----------------------------------------------------------
# The old key knows the contact it leaves live (id and segments); the new key knows its own rows. The
# merge stage passes the first to the second (a `HANDOVER` change through the changes topic), and the
# new key settles it against what it holds, whichever arrives first.


def leaving(key: str = "1", to: str | None = "2", pos=(10, 20)) -> RoutedChange:
    from msgspec.structs import replace

    return replace(keyed(key, None, op="delete", pos=pos, moved=True), to=to)


def hand_over(projector, old_state, *, to: str | None = "2", pos=(10, 20)):
    """The old key's customers row leaves: what it emits and the handover change for the new key."""
    from connector.projection import handover_change

    left = leaving(to=to, pos=pos)
    state = merge_change(old_state, left, now_ms=1).state
    p = projector.project(state, moved=True)
    assert p.emissions() == ()  # the old key's delete is never emitted
    return handover_change(left, p.handover) if p.handover is not None else None


def ops(emitted):
    for e in emitted:
        validator("upsert.schema.json").validate(e)
        # a delete that settles an inherited contact names the key it came from (`LastWrites`)
        assert ("inherited_from" in e) == (e["customer_key"] == "2" and e["op"] == "delete"), e
        assert e.get("inherited_from", "1") == "1"
    return [(e["op"], e["external_customer_id"], e["groups_removed"], e.get("retires")) for e in emitted]


def live_old(projector, *groups: int):
    rows = [keyed("1", {**GROUP_1, "group_id": g}, source="groups", group=g) for g in groups]
    state, emitted = project_once(projector, None, keyed("1", ROW), *rows)
    assert ops(emitted) == [("upsert", "EXT-1", [], None)]
    return state


def test_the_old_key_hands_over_the_contact_it_leaves_live(projector) -> None:
    handover = hand_over(projector, live_old(projector, 7))
    assert handover is not None
    assert (handover.customer_key, handover.row_key, handover.op) == ("2", "1", "handover")
    assert handover.row == {"ext": "EXT-1", "groups": [7]}
    assert handover.position == SourcePosition("pg", (10, 20))
    # an event that does not name the new key hands nothing over
    assert hand_over(projector, live_old(projector), to=None) is None


@pytest.mark.parametrize("handover_first", [False, True])
def test_a_key_change_that_changes_the_id_retires_the_old_contact(projector, handover_first) -> None:
    """`UPDATE customers SET id = 2, external_id = 'EXT-2' WHERE id = 1`: EXT-1 was left live."""
    handover = hand_over(projector, live_old(projector, 7))
    create = keyed("2", {**MOVED_ROW, "external_id": "EXT-2"}, pos=(10, 20), moved=True)
    if handover_first:
        state, first = project_once(projector, None, handover)
        assert first == [] and state.inherited is not None  # its row has not arrived: it waits
        state, emitted = project_once(projector, state, create)
    else:
        state, first = project_once(projector, None, create)
        assert ops(first) == [("upsert", "EXT-2", [], None)]
        state, emitted = project_once(projector, state, handover)
    assert ops(emitted) == [("delete", "EXT-1", [7], True)] + (
        [("upsert", "EXT-2", [], None)] if handover_first else []
    )
    assert [e["version"] for e in first + emitted] == [1, 2]
    assert state.inherited is None and state.external_id == "EXT-2" and state.version == 2
    for e in emitted:
        validator("upsert.schema.json").validate(e)


@pytest.mark.parametrize("handover_first", [False, True])
def test_a_key_change_without_cascade_detaches_the_segments_of_the_old_contact(
    projector, handover_first
) -> None:
    """Without ON UPDATE CASCADE the group rows stay behind: the same contact loses segments 7 and 8."""
    handover = hand_over(projector, live_old(projector, 7, 8))
    create = keyed("2", MOVED_ROW, pos=(10, 20), moved=True)
    if handover_first:
        state, _ = project_once(projector, None, handover)
        state, emitted = project_once(projector, state, create)
        assert ops(emitted) == [("upsert", "EXT-1", [7, 8], None)]
    else:
        state, emitted = project_once(projector, None, create)
        assert ops(emitted) == [("upsert", "EXT-1", [], None)]
        state, emitted = project_once(projector, state, handover)
        assert ops(emitted) == [("upsert", "EXT-1", [7, 8], None)]  # the same contact, sent again
    assert state.inherited is None and state.groups == ()


def test_a_key_change_with_cascade_hands_over_nothing_to_do(projector) -> None:
    handover = hand_over(projector, live_old(projector, 7))
    state, emitted = project_once(
        projector,
        None,
        keyed("2", MOVED_ROW, pos=(10, 20), moved=True),
        keyed("2", GROUP_2, source="groups", pos=(10, 21), moved=True, group=7),
    )
    assert ops(emitted) == [("upsert", "EXT-1", [], None)]
    state, emitted = project_once(projector, state, handover)
    assert emitted == [] and state.inherited is None and state.version == 1


def test_a_new_key_deleted_before_the_handover_arrives_deletes_the_old_contact(projector) -> None:
    handover = hand_over(projector, live_old(projector, 7))
    state, _ = project_once(
        projector,
        None,
        keyed("2", {**MOVED_ROW, "external_id": "EXT-2"}, pos=(10, 20), moved=True),
        keyed("2", None, op="delete", pos=(30, 40)),
    )
    state, emitted = project_once(projector, state, handover)
    assert ops(emitted) == [("delete", "EXT-1", [7], True)]
    assert state.inherited is None


def test_a_handover_to_a_key_deleted_long_before_waits_for_its_row(projector) -> None:
    """Key 2 existed once and was deleted before key 1 moved to it: its marker is older than the move."""
    old2, _ = project_once(projector, None, keyed("2", MOVED_ROW, pos=(1, 2)))
    old2, _ = project_once(projector, old2, keyed("2", None, op="delete", pos=(3, 4)))
    handover = hand_over(projector, live_old(projector))
    state, emitted = project_once(projector, old2, handover)
    assert emitted == [] and state.inherited is not None
    state, emitted = project_once(
        projector, state, keyed("2", {**MOVED_ROW, "external_id": "EXT-2"}, pos=(10, 20), moved=True)
    )
    assert ops(emitted) == [("delete", "EXT-1", [], True), ("upsert", "EXT-2", [], None)]


@pytest.mark.parametrize(
    ("on_delete", "expected"), [("erase", [("delete", "EXT-1", [], True)]), ("ignore", [])]
)
def test_settling_an_inherited_contact_follows_on_delete(on_delete, expected) -> None:
    projector = MappingProjector(
        load_settings(REPO_EXAMPLE).contact.model_copy(update={"on_delete": on_delete})
    )
    handover = hand_over(projector, live_old(projector, 7))
    state, _ = project_once(
        projector, None, keyed("2", {**MOVED_ROW, "external_id": "EXT-2"}, pos=(10, 20), moved=True)
    )
    state, emitted = project_once(projector, state, handover)
    assert ops(emitted) == expected
    assert state.inherited is None


def test_a_key_that_moves_on_before_its_row_arrived_hands_the_inherited_contact_on(projector) -> None:
    """1 -> 2 -> 3: the handover from 1 reaches 2 before 2's row, and 2 has already left for 3."""
    from connector.projection import handover_change

    handover = hand_over(projector, live_old(projector, 7))
    state, _ = project_once(projector, None, handover)
    from msgspec.structs import replace

    left = replace(keyed("2", None, op="delete", pos=(30, 40), moved=True), to="3")
    state = merge_change(state, left, now_ms=1).state
    p = projector.project(state, moved=True)
    assert p.emissions() == () and p.state.inherited is None
    onward = handover_change(left, p.handover)
    assert onward is not None and onward.customer_key == "3" and onward.row == {"ext": "EXT-1", "groups": [7]}


def test_an_older_handover_does_not_replace_a_newer_one(projector) -> None:
    newer = hand_over(projector, live_old(projector, 7), pos=(50, 60))
    older_one = hand_over(projector, live_old(projector, 8), pos=(10, 20))
    state = merge_change(None, newer, now_ms=1).state
    out = merge_change(state, older_one, now_ms=1)
    assert not out.applied and out.reason == "stale" and out.state.inherited.groups == (7,)


@pytest.mark.parametrize(
    "value", [None, {"ext": 1, "groups": []}, {"ext": "E", "groups": ["x"]}, {"groups": []}]
)
def test_a_handover_of_another_shape_is_refused(projector, value) -> None:
    from msgspec.structs import replace

    bad = replace(hand_over(projector, live_old(projector)), row=value)
    with pytest.raises((ValueError, TypeError, KeyError)):
        merge_change(None, bad, now_ms=1)
