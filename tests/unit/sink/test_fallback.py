"""`fallback`: what a rejected winning upsert falls back to, so a batch ends as records sent one by one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connector.sink.batch import PendingRecord, PlannedDelete, PlannedUpsert, fallback, plan


def up(ref: int, groups: tuple[int, ...] = (), removed: tuple[int, ...] = ()) -> PendingRecord[int]:
    contact = {"externalCustomerId": "xa", "groups": [{"id": g, "name": f"g{g}"} for g in groups]}
    return PendingRecord("a", ref, "upsert", contact=contact, groups_removed=removed)


def delete(ref: int, ext: str | None = "xa") -> PendingRecord[int]:
    return PendingRecord("a", ref, "delete", external_id=ext)


def winner(*records: PendingRecord[int]) -> PlannedUpsert[int]:
    (upsert,) = plan(list(records), batch_size=10).upserts
    return upsert


def refs(records: tuple[PendingRecord[int], ...]) -> list[int]:
    return [r.ref for r in records]


def test_a_rejected_upsert_falls_back_to_the_upsert_before_it() -> None:
    # B then C of one customer, Yespo rejects C: sent one by one, Yespo would end with B
    call, rejected = fallback(winner(up(1), up(2)))
    assert isinstance(call, PlannedUpsert)
    assert call.record.ref == 1 and refs(call.covered) == [1]
    assert refs(rejected) == [2]


def test_the_fallback_settles_the_records_before_it_and_goes_further_back_when_rejected_too() -> None:
    call, rejected = fallback(winner(up(1), up(2), up(3)))
    assert isinstance(call, PlannedUpsert)
    assert call.record.ref == 2 and refs(call.covered) == [1, 2] and refs(rejected) == [3]
    again, rejected = fallback(call)
    assert isinstance(again, PlannedUpsert)
    assert again.record.ref == 1 and refs(again.covered) == [1] and refs(rejected) == [2]
    assert fallback(again) == (None, again.covered)  # the customer's first record: nothing before it


def test_a_rejected_restore_falls_back_to_the_soft_delete_before_it() -> None:
    call, rejected = fallback(winner(up(1), delete(2), up(3)))
    assert isinstance(call, PlannedDelete) and call.erase is False
    assert call.record.ref == 2 and refs(call.covered) == [1, 2] and refs(rejected) == [3]


def test_delete_restore_and_a_rejected_change_sends_the_restore_then_the_delete() -> None:
    # the customer is live at 3: that restore is sent; only if Yespo rejects it too, the delete
    call, rejected = fallback(winner(up(1), delete(2), up(3), up(4)))
    assert isinstance(call, PlannedUpsert)
    assert call.record.ref == 3 and refs(call.covered) == [1, 2, 3] and refs(rejected) == [4]
    gone, rejected = fallback(call)
    assert isinstance(gone, PlannedDelete)
    assert gone.record.ref == 2 and refs(gone.covered) == [1, 2] and refs(rejected) == [3]


def test_the_fallback_upsert_carries_its_own_segments() -> None:
    # 1 joins 5; 2 leaves 5 and joins 6; 3 (rejected) leaves 6 and joins 7
    call, _ = fallback(winner(up(1, (5,)), up(2, (6,), removed=(5,)), up(3, (7,), removed=(6,))))
    assert isinstance(call, PlannedUpsert)
    assert call.attach == (6,) and call.detach == (5,)


def test_nothing_to_fall_back_to_dead_letters_every_record() -> None:
    only = winner(up(1))
    assert fallback(only) == (None, only.covered)
    # a delete without an externalCustomerId addresses no contact
    idless = winner(delete(1, ext=None), up(2))
    assert fallback(idless) == (None, idless.covered)


@given(st.lists(st.booleans(), min_size=1, max_size=8), st.integers(min_value=0, max_value=8))
def test_a_chain_of_rejections_settles_every_record_exactly_once(ops: list[bool], rejections: int) -> None:
    # True: an upsert, False: a soft delete; the last record is an upsert (the plan's winner)
    records = [up(i) if is_upsert else delete(i) for i, is_upsert in enumerate([*ops, True])]
    call: PlannedUpsert[int] | PlannedDelete[int] | None = plan(records, batch_size=10).upserts[0]
    dead: list[int] = []
    for _ in range(rejections):
        if not isinstance(call, PlannedUpsert):
            break
        call, rejected = fallback(call)
        assert call is None or call.covered[-1] is call.record
        dead += refs(rejected)
    settled = refs(call.covered) if call is not None else []
    assert sorted(dead + settled) == list(range(len(records)))
    assert all(r.op == "upsert" for r in records if r.ref in dead) or call is None
