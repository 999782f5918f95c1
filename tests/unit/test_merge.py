from __future__ import annotations

import msgspec
import pytest

from connector.decode.position import source_position
from connector.jsonvalues import UNCHANGED_MARKER
from connector.merge import CustomerState, RowState, expire_markers, merge_change, view_of
from connector.models import RecordRef, SourcePosition
from connector.routing import CUSTOMERS, RoutedChange
from connector.state.codec import decode_state, encode_state
from connector.state.store import MemoryStore, StateTransaction


def ch(op="upsert", row=None, pos=(0, 10), source=CUSTOMERS, row_key="[1]", key="1", snapshot=False):
    return RoutedChange(
        customer_key=key,
        source=source,
        row_key=row_key,
        op=op,
        row=row,
        position=SourcePosition("pg", pos) if pos is not None else None,
        ts_ms=1,
        snapshot=snapshot,
        moved=False,
        origin=RecordRef("t", 0, 0),
    )


def fold(*changes, state=None, now=1000):
    for c in changes:
        state = merge_change(state, c, now_ms=now).state
    return state


def test_upsert_then_update_replaces_row() -> None:
    s = fold(ch(row={"id": 1, "a": "x"}, pos=(0, 10)), ch(row={"id": 1, "a": "y"}, pos=(10, 20)))
    assert s.customer == RowState({"id": 1, "a": "y"}, SourcePosition("pg", (10, 20)))


def test_stale_event_is_skipped() -> None:
    s = fold(ch(row={"id": 1, "a": "new"}, pos=(10, 20)))
    out = merge_change(s, ch(row={"id": 1, "a": "old"}, pos=(0, 10)), now_ms=1)
    assert not out.applied and out.reason == "stale"
    assert out.state.customer.values == {"id": 1, "a": "new"}
    # equal position (an exact replay) is skipped too
    assert merge_change(s, ch(row={"id": 1, "a": "new"}, pos=(10, 20)), now_ms=1).reason == "stale"


def test_sequence_pair_orders_interleaved_transactions() -> None:
    # raw lsn 15 < 20 but its transaction committed later: (20, 15) > (10, 20)
    s = fold(ch(row={"v": 1}, pos=(10, 20)), ch(row={"v": 2}, pos=(20, 15)))
    assert s.customer.values == {"v": 2}


def test_delete_marker_blocks_stale_resurrection() -> None:
    s = fold(
        ch(row={"v": 1}, pos=(0, 10)), ch(op="delete", row={"v": 1}, pos=(10, 20), snapshot=False), now=5
    )
    assert s.customer == RowState(None, SourcePosition("pg", (10, 20)), 5)
    replay = merge_change(s, ch(row={"v": 1}, pos=(0, 10)), now_ms=6)
    assert not replay.applied
    recreate = merge_change(s, ch(row={"v": 2}, pos=(20, 30)), now_ms=7)
    assert recreate.applied and recreate.state.customer.values == {"v": 2}


def test_toast_unchanged_keeps_old_value() -> None:
    s = fold(
        ch(row={"id": 1, "notes": "long text", "a": 1}, pos=(0, 10)),
        ch(row={"id": 1, "notes": UNCHANGED_MARKER, "a": 2}, pos=(10, 20)),
    )
    assert s.customer.values == {"id": 1, "notes": "long text", "a": 2}


def test_toast_unchanged_without_old_value_stays_unknown() -> None:
    # never seen: the value is unknown (the marker stays), which is not a NULL
    s = fold(ch(row={"id": 1, "notes": UNCHANGED_MARKER}))
    assert s.customer.values == {"id": 1, "notes": UNCHANGED_MARKER}
    # an older row without that column (added later): unknown as well
    s = fold(ch(row={"id": 1}, pos=(0, 10)), ch(row={"id": 1, "notes": UNCHANGED_MARKER}, pos=(10, 20)))
    assert s.customer.values == {"id": 1, "notes": UNCHANGED_MARKER}
    # unknown until a real value arrives; a known NULL is kept as NULL
    s = fold(ch(row={"id": 1, "notes": "text"}, pos=(20, 30)), state=s)
    assert s.customer.values == {"id": 1, "notes": "text"}
    s = fold(
        ch(row={"id": 1, "notes": None}, pos=(0, 10)),
        ch(row={"id": 1, "notes": UNCHANGED_MARKER}, pos=(10, 20)),
    )
    assert s.customer.values == {"id": 1, "notes": None}


def test_snapshot_row_without_position_applies_and_marks_the_row_read() -> None:
    s = fold(ch(row={"v": 1}, pos=(10, 20)), ch(row={"v": 2}, pos=None, snapshot=True))
    assert s.customer == RowState({"v": 2}, SourcePosition("pg", (10, 20)), None, read=True)
    # a later change ends the mark
    assert fold(ch(row={"v": 3}, pos=(20, 30)), state=s).customer == RowState(
        {"v": 3}, SourcePosition("pg", (20, 30))
    )
    # a row of a positionless topic stays positionless
    assert fold(ch(row={"v": 1}, pos=None), ch(row={"v": 2}, pos=None)).customer == RowState({"v": 2}, None)


def test_tombstone_after_delete_is_noop_and_never_deletes_recreated_row() -> None:
    s = fold(ch(row={"v": 1}, pos=(0, 10)), ch(op="delete", pos=(10, 20)), ch(row={"v": 2}, pos=(20, 30)))
    out = merge_change(s, ch(op="tombstone", pos=None), now_ms=1)
    assert not out.applied and out.state.customer.values == {"v": 2}


def test_tombstone_deletes_positionless_row() -> None:
    s = fold(ch(row={"v": 1}, pos=None))
    out = merge_change(s, ch(op="tombstone", pos=None), now_ms=9)
    assert out.applied and not out.state.customer.live


def test_resnapshot_applies_over_rows_streamed_before_it() -> None:
    # streamed change at lsn 20; Debezium lost its offsets and re-snapshots at lsn 30
    s = fold(ch(row={"v": 1}, pos=(10, 20)), ch(row={"v": 2}, pos=(0, 30), snapshot=True))
    # the read keeps the LSN of the row's last streamed change (20) below its own
    assert s.customer == RowState({"v": 2}, SourcePosition("pg", (0, 30, 20)))
    # a replay of the change before it (`replay --from earliest`) is stale: it does not undo the read
    assert merge_change(s, ch(row={"v": 1}, pos=(10, 20)), now_ms=1).reason == "stale"
    # the first transaction after the re-snapshot (no previous commit: `(lsn, lsn)`) began before
    # the snapshot point (22 < 30) and committed after it: it applies
    s = fold(ch(row={"v": 3}, pos=(22, 22)), state=s)
    assert s.customer == RowState({"v": 3}, SourcePosition("pg", (22, 22, 30)))


def test_replayed_snapshot_row_is_stale() -> None:
    s = fold(ch(row={"v": 1}, pos=(0, 30), snapshot=True), ch(row={"v": 2}, pos=(40, 50)))
    old = merge_change(s, ch(row={"v": 1}, pos=(0, 30), snapshot=True), now_ms=1)
    assert not old.applied and old.reason == "stale" and old.state.customer.values == {"v": 2}
    # the same snapshot row twice (a snapshot re-run after a crash) is skipped too
    once = fold(ch(row={"v": 1}, pos=(0, 30), snapshot=True))
    assert merge_change(once, ch(row={"v": 1}, pos=(0, 30), snapshot=True), now_ms=1).reason == "stale"


def test_positionless_delete_removes_a_positioned_row_and_replays_converge() -> None:
    s = fold(ch(row={"v": 1}, pos=(0, 10)), ch(row={"v": 2}, pos=(10, 20)))
    deleted = merge_change(s, ch(op="delete", pos=None), now_ms=5)
    assert deleted.applied and deleted.state.customer == RowState(None, None, 5)
    # Debezium replays the delete and then the re-creation that followed it: the row ends alive
    recreated = fold(ch(op="delete", pos=None), ch(row={"v": 3}, pos=(20, 30)), state=deleted.state)
    assert recreated.customer.values == {"v": 3}
    replayed = fold(ch(op="delete", pos=None), ch(row={"v": 3}, pos=(20, 30)), state=recreated)
    assert replayed.customer.values == {"v": 3}
    again = merge_change(deleted.state, ch(op="delete", pos=None), now_ms=6)
    assert not again.applied and again.reason == "already-deleted"
    assert merge_change(None, ch(op="delete", pos=None), now_ms=6).reason == "already-deleted"


def test_children_rows_and_view() -> None:
    s = fold(
        ch(row={"id": 1, "name": "A"}),
        ch(source="groups", row_key="[1,7]", row={"customer_id": 1, "group_id": 7}, pos=(0, 11)),
        ch(source="groups", row_key="[1,3]", row={"customer_id": 1, "group_id": 3}, pos=(0, 12)),
        ch(op="delete", source="groups", row_key="[1,7]", row=None, pos=(12, 13)),
    )
    view = view_of(s)
    assert view.customer == {"id": 1, "name": "A"}
    assert view.children == {"groups": [{"customer_id": 1, "group_id": 3}]}


def test_child_before_customer_is_kept() -> None:
    s = fold(ch(source="groups", row_key="[1,3]", row={"customer_id": 1, "group_id": 3}))
    assert view_of(s).customer is None
    assert view_of(s).children["groups"] == [{"customer_id": 1, "group_id": 3}]


def test_expire_markers() -> None:
    s = fold(ch(row={"v": 1}, pos=(0, 10)), ch(op="delete", pos=(10, 20)), now=1000)
    assert expire_markers(s, now_ms=1500, ttl_ms=1000) is s
    assert expire_markers(s, now_ms=2500, ttl_ms=1000) is None
    assert expire_markers(s, now_ms=1999, ttl_ms=1000) is s
    assert expire_markers(s, now_ms=2000, ttl_ms=1000) is None  # exactly the TTL old: expired
    live = fold(ch(row={"v": 1}))
    assert expire_markers(live, now_ms=10**12, ttl_ms=1) is live


def test_expired_marker_kept_while_contact_live_in_yespo() -> None:
    s = fold(ch(row={"v": 1}, pos=(0, 10)), ch(op="delete", pos=(10, 20)), now=1000)
    s = CustomerState(s.customer_key, s.customer, s.children, fingerprint="abc", version=3)
    out = expire_markers(s, now_ms=10**9, ttl_ms=1)
    assert out is not None and out.customer is None and out.version == 3


def test_codec_roundtrip() -> None:
    s = fold(
        ch(row={"id": 1, "d": "2020-01-01", "n": None}),
        ch(source="groups", row_key="[1,7]", row={"customer_id": 1, "group_id": 7}),
        ch(op="delete", source="groups", row_key="[1,8]", pos=(1, 2)),
    )
    s = CustomerState(
        s.customer_key, s.customer, s.children, fingerprint="f", groups=(7,), version=4, external_id="E1"
    )
    assert decode_state(encode_state(s)) == s


def test_transaction_overlay_visible_only_after_commit() -> None:
    store = MemoryStore()
    txn = StateTransaction(store)
    s = CustomerState("1")
    txn.put(0, "1", s)
    assert txn.get(0, "1") == s and store.get(0, "1") is None
    txn.abort()
    assert txn.get(0, "1") is None
    txn.put(0, "1", s)
    txn.commit()
    assert store.get(0, "1") == s
    txn.put(0, "1", None)
    txn.commit()
    assert store.get(0, "1") is None and store.size() == 0


def test_replay_after_a_positionless_snapshot_row_keeps_the_streamed_change() -> None:
    # An incremental-snapshot row (no position) between two streamed changes; Debezium then replays
    # from the snapshot row. The replayed change after it must apply again, not be "stale" against a
    # position the snapshot row inherited.
    stream = [
        ch(row={"v": 1, "notes": "x1"}, pos=(0, 10)),
        ch(row={"v": "snap", "notes": "xs"}, pos=None, snapshot=True),
        ch(row={"v": 7, "notes": "x7"}, pos=(10, 20)),
        ch(row={"v": 9, "notes": UNCHANGED_MARKER}, pos=(20, 30)),
    ]
    clean = fold(*stream)
    assert clean.customer.values == {"v": 9, "notes": "x7"}
    for start in range(len(stream)):
        assert fold(*stream[start:], state=clean) == clean, start


def test_replayed_snapshot_row_is_stale_after_a_change_committed_after_the_snapshot() -> None:
    # Transaction T began before the snapshot point (its change has LSN 90 < 100) and committed after
    # it (the previous commit is at 120): the snapshot does not contain T's change.
    s = fold(ch(row={"v": "snap"}, pos=(0, 100), snapshot=True), ch(row={"v": "T"}, pos=(120, 90)))
    assert s.customer.values == {"v": "T"}
    out = merge_change(s, ch(row={"v": "snap"}, pos=(0, 100), snapshot=True), now_ms=1)
    assert not out.applied and out.reason == "stale" and out.state.customer.values == {"v": "T"}
    # a later snapshot (Debezium re-snapshots at 130) still applies
    assert fold(ch(row={"v": "s2"}, pos=(0, 130), snapshot=True), state=s).customer.values == {"v": "s2"}


def test_a_replayed_tombstone_never_deletes_a_row_read_by_an_incremental_snapshot() -> None:
    # d + tombstone, the row re-created, then read by an incremental snapshot; Debezium replays from
    # the tombstone. The row must stay live at every step: a transient delete reaches Yespo (with
    # on_delete=erase, the contact would be erased).
    stream = [
        ch(row={"v": 1}, pos=(0, 10)),
        ch(op="delete", pos=(10, 20)),
        ch(op="tombstone", pos=None),
        ch(row={"v": 3}, pos=(20, 30)),
        ch(row={"v": 3}, pos=None, snapshot=True),
    ]
    s = fold(*stream)
    for c in stream[2:]:
        s = merge_change(s, c, now_ms=2).state
        assert s.customer.live and s.customer.values == {"v": 3}, c
    # later streamed changes and a later snapshot still apply over the snapshot row
    assert fold(ch(row={"v": 4}, pos=(30, 40)), state=s).customer.values == {"v": 4}
    assert fold(ch(row={"v": 5}, pos=(0, 50), snapshot=True), state=s).customer.values == {"v": 5}


def test_a_replayed_incremental_snapshot_row_never_resurrects_a_deleted_row() -> None:
    # Debezium emits an incremental-snapshot row only for a key no change touched during its read
    # window, so such a row never follows the row's delete in a clean stream: on a delete marker it
    # is a replay, and applying it would re-create the contact until the replayed delete.
    stream = [
        ch(row={"v": 1}, pos=(0, 10)),
        ch(row={"v": 1}, pos=None, snapshot=True),
        ch(op="delete", pos=(10, 20)),
        ch(op="tombstone", pos=None),
    ]
    s = fold(*stream)
    for c in stream[1:]:
        out = merge_change(s, c, now_ms=2)
        assert not out.state.customer.live, c
        s = out.state
    # a positionless upsert that is not a snapshot read (an unwrapped topic without __lsn) re-creates
    assert fold(ch(row={"v": 2}, pos=None), state=s).customer.values == {"v": 2}


def lsn(op="upsert", row=None, at=10, snapshot=False):
    """A change positioned by its LSN alone (`pg-lsn`: an unwrapped record with `__lsn`)."""
    return msgspec.structs.replace(
        ch(op=op, row=row, snapshot=snapshot), position=SourcePosition("pg-lsn", (0, at))
    )


def test_lsn_only_change_begun_before_the_snapshot_and_committed_after_it_applies() -> None:
    """Its LSN (900) is below the snapshot read's (1000), yet it is newer: it must not be skipped."""
    s = fold(lsn(row={"v": "snapshot"}, at=1000, snapshot=True), lsn(row={"v": "straddler"}, at=900))
    assert s.customer.values == {"v": "straddler"}
    for replay in (lsn(row={"v": "snapshot"}, at=1000, snapshot=True), lsn(row={"v": "straddler"}, at=900)):
        assert merge_change(s, replay, now_ms=1).reason == "stale"
    assert fold(lsn(row={"v": "later"}, at=1001), state=s).customer.values == {"v": "later"}


@pytest.mark.parametrize(
    ("first", "second", "live", "values"),
    [
        ("upsert", "upsert", True, {"v": "second"}),  # the later update wins
        ("delete", "upsert", True, {"v": "second"}),  # deleted then re-inserted: alive
        ("upsert", "delete", False, None),  # updated then deleted: deleted
    ],
)
def test_lsn_only_transaction_straddling_the_snapshot_changes_the_row_twice(
    first: str, second: str, live: bool, values: dict[str, str] | None
) -> None:
    """One transaction changes the row at LSN 900 and 950, before the read (1000), commits after it."""
    s = fold(
        lsn(row={"v": "snapshot"}, at=1000, snapshot=True),
        lsn(op=first, row={"v": "first"}, at=900),
        lsn(op=second, row={"v": "second"}, at=950),
    )
    assert s.customer is not None and s.customer.live == live
    if values is not None:
        assert s.customer.values == values
    replays = (
        lsn(row={"v": "snapshot"}, at=1000, snapshot=True),
        lsn(op=first, row={"v": "first"}, at=900),
        lsn(op=second, row={"v": "second"}, at=950),
    )
    for replay in replays:
        assert merge_change(s, replay, now_ms=1).reason == "stale", replay.position
    assert fold(lsn(row={"v": "later"}, at=1001), state=s).customer.values == {"v": "later"}
    assert decode_state(encode_state(s)) == s


def test_lsn_only_delete_begun_before_the_snapshot_deletes_and_stays_deleted() -> None:
    s = fold(lsn(row={"v": 1}, at=1000, snapshot=True), lsn(op="delete", row={"v": 1}, at=950))
    assert s.customer is not None and not s.customer.live
    assert merge_change(s, lsn(row={"v": 1}, at=1000, snapshot=True), now_ms=1).reason == "stale"
    assert decode_state(encode_state(s)) == s


def test_lsn_only_streamed_changes_still_skip_their_replays() -> None:
    s = fold(lsn(row={"v": 1}, at=10, snapshot=True), lsn(row={"v": 2}, at=20), lsn(row={"v": 3}, at=30))
    assert merge_change(s, lsn(row={"v": 2}, at=20), now_ms=1).reason == "stale"
    assert merge_change(s, lsn(row={"v": 1}, at=10, snapshot=True), now_ms=1).reason == "stale"
    # a re-snapshot above the last change applies (Debezium lost its offsets and read the table again)
    assert fold(lsn(row={"v": 4}, at=40, snapshot=True), state=s).customer.values == {"v": 4}


@pytest.mark.parametrize("op", ["upsert", "delete"])
def test_a_replayed_read_stays_stale_after_the_first_transaction_streamed_without_a_previous_commit(
    op: str,
) -> None:
    """Debezium's first transaction after the snapshot has no previous commit: `(lsn, lsn)` (review).

    Begun before the snapshot point (LSN 400 < read 500) and committed after it, it must stay above
    a replay of the read: `replay --from earliest` re-delivers the snapshot row after it.
    """
    read = ch(row={"id": 1, "city": "Lisboa"}, pos=(0, 500), snapshot=True)
    t1 = ch(op=op, row={"id": 1, "city": "Porto"} if op == "upsert" else None, pos=(400, 400))
    s = fold(read, t1)
    assert s.customer is not None and s.customer.position == SourcePosition("pg", (400, 400, 500))
    replay = merge_change(s, read, now_ms=2000)
    assert not replay.applied and replay.reason == "stale"
    assert merge_change(s, t1, now_ms=2000).reason == "stale"  # T1 itself replayed
    # the state record keeps the read's LSN across a restore
    assert decode_state(encode_state(s)).customer == s.customer
    # T1's next change of the row (same transaction, LSN above) and the next transaction apply
    # (no previous commit for any of its changes: `(lsn, lsn)`, as `decode.position` writes them)
    later = fold(ch(row={"id": 1, "city": "Faro"}, pos=(450, 450)), state=s)
    assert later.customer.values == {"id": 1, "city": "Faro"}
    assert later.customer.position == SourcePosition("pg", (450, 450, 500))
    assert merge_change(later, read, now_ms=2000).reason == "stale"
    t2 = fold(ch(row={"id": 1, "city": "Braga"}, pos=(600, 610)), state=later)
    assert t2.customer.values == {"id": 1, "city": "Braga"}
    assert t2.customer.position == SourcePosition("pg", (600, 610))


def read_at(source: dict[str, object], row: dict[str, object]) -> RoutedChange:
    """A snapshot read with the position `decode.position` gives its `source` block."""
    position = source_position({"snapshot": "true", **source})
    assert position is not None
    return msgspec.structs.replace(ch(row=row, snapshot=True), position=position)


def streamed(sequence: str, row: dict[str, object] | None, op: str = "upsert") -> RoutedChange:
    position = source_position({"snapshot": "false", "sequence": sequence})
    assert position is not None
    return msgspec.structs.replace(ch(op=op, row=row), position=position)


@pytest.mark.parametrize("sequence", ['["1000","1000"]', '["1000","1005"]'])
def test_a_blocking_snapshot_read_ranks_below_every_change_streamed_after_it(sequence: str) -> None:
    """Debezium reads a blocking snapshot with the streaming offset: `sequence = [last commit, LSN]`.

    (3.6.1: `AbstractSnapshotChangeEventSource` gives an on-demand snapshot the previous offset and
    `RelationalSnapshotChangeEventSource` skips "Determining snapshot offset".) A transaction that
    wrote the row at LSN 990, before the pause, and commits after the read is streamed next with
    that same previous commit, `(1000, 990)`: it must apply, and a replayed read must not undo it.
    """
    s = fold(ch(row={"v": "old"}, pos=(900, 950)))
    read = read_at({"sequence": sequence}, {"v": "old"})
    s = fold(read, state=s)
    assert s.customer == RowState({"v": "old"}, SourcePosition("pg", (0, 1000, 950)))
    t = streamed('["1000","990"]', {"v": "T"})
    s = fold(t, state=s)
    assert s.customer.values == {"v": "T"}
    for replay in (read, t, ch(row={"v": "old"}, pos=(900, 950))):
        assert merge_change(s, replay, now_ms=1).reason == "stale", replay.position
    assert fold(streamed('["1200","1210"]', {"v": "later"}), state=s).customer.values == {"v": "later"}


def test_history_before_a_blocking_snapshot_does_not_undo_its_read() -> None:
    """`replay --from earliest` re-reads the changes before a blocking snapshot: all stale."""
    history = [
        read_at({"sequence": '[null,"100"]'}, {"v": "initial"}),
        streamed('[null,"90"]', {"v": "first"}),  # the first transaction after it: no previous commit
        streamed('["120","130"]', {"v": "second"}),
    ]
    read = read_at({"sequence": '["140","140"]'}, {"v": "blocking"})
    s = fold(*history, read)
    assert s.customer is not None and s.customer.values == {"v": "blocking"}
    for replay in (*history, read):
        out = merge_change(s, replay, now_ms=1)
        assert not out.applied and out.reason == "stale", replay.position


@pytest.mark.parametrize("kind", ["pg", "pg-lsn"])
def test_a_replay_over_a_resnapshot_does_not_undo_it(kind: str) -> None:
    """Debezium lost its offsets and re-snapshots; `replay --from earliest` then re-reads a change
    streamed before that: it is stale, and so is the replayed read (the row keeps the read's value).
    """

    def at(pos: tuple[int, int], row: dict[str, object], snapshot: bool = False) -> RoutedChange:
        return msgspec.structs.replace(
            ch(row=row, snapshot=snapshot),
            position=SourcePosition(kind, pos if kind == "pg" else (0, pos[1])),
        )

    stream = [at((0, 50), {"v": "s1"}, True), at((80, 90), {"v": "old"}), at((0, 500), {"v": "s2"}, True)]
    s = fold(*stream)
    assert s.customer is not None and s.customer.values == {"v": "s2"}
    for replay in stream:
        out = merge_change(s, replay, now_ms=1)
        assert not out.applied and out.reason == "stale", replay.position
    # the first transaction after the re-snapshot began before it (LSN 400 < 500) and applies
    straddler = at((400, 400), {"v": "T"})
    s = fold(straddler, state=s)
    assert s.customer.values == {"v": "T"}
    for replay in (*stream, straddler):
        assert merge_change(s, replay, now_ms=1).reason == "stale", replay.position


def test_a_first_transaction_replayed_after_a_later_read_is_stale() -> None:
    """The first transaction after a snapshot `(lsn, lsn)`, replayed after a later read, is history."""
    first = ch(row={"v": "first"}, pos=(90, 90))
    s = fold(ch(row={"v": "s1"}, pos=(0, 100), snapshot=True), first)
    assert s.customer.position == SourcePosition("pg", (90, 90, 100))
    s = fold(ch(row={"v": "s2"}, pos=(0, 500), snapshot=True), state=s)
    assert s.customer.position == SourcePosition("pg", (0, 500, 90))
    assert merge_change(s, first, now_ms=1).reason == "stale"
    # a transaction open across the re-snapshot (it wrote the row after LSN 90) applies
    assert fold(ch(row={"v": "T"}, pos=(300, 300)), state=s).customer.values == {"v": "T"}


def test_a_read_stored_by_an_earlier_version_compares_as_before() -> None:
    """`(0, lsn)` without a floor (state written before reads kept one) ranks as it always did."""
    legacy = CustomerState("1", RowState({"v": "read"}, SourcePosition("pg", (0, 500))))
    out = merge_change(legacy, ch(row={"v": "x"}, pos=(80, 90)), now_ms=1)
    assert out.applied and out.state.customer.position == SourcePosition("pg", (80, 90))
    # a replayed read then applies again and ends the replay where it was
    assert fold(ch(row={"v": "read"}, pos=(0, 500), snapshot=True), state=out.state).customer.values == {
        "v": "read"
    }


@pytest.mark.parametrize("parts", [(), (1,), (1, 2, 3)])
def test_a_postgresql_position_of_odd_length_cannot_be_merged(parts: tuple[int, ...]) -> None:
    change = msgspec.structs.replace(ch(row={"v": 1}), position=SourcePosition("pg-lsn", parts))
    with pytest.raises(ValueError, match="two parts"):
        merge_change(None, change, now_ms=1)
