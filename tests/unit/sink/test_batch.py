import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import DecodeError
from connector.models import RawRecord, SourcePosition, older
from connector.sink.batch import (
    GroupCall,
    LastWrites,
    PendingRecord,
    fallback,
    plan,
    plan_group_calls,
)
from connector.sink.upserts import parse_upsert


def raw(value, offset=0):
    """`value` as a record of the upserts topic."""
    return RawRecord("upserts", 0, offset, None, orjson.dumps(value))


def parsed(value):
    """`value` as the deliver stage reads it off the upserts topic (`parse_upsert`)."""
    return parse_upsert(raw(value))


def up(key, ref, groups=(), removed=(), ext=None):
    contact = {"externalCustomerId": ext or f"x{key}", "groups": [{"id": g, "name": f"g{g}"} for g in groups]}
    return PendingRecord(key, ref, "upsert", contact=contact, groups_removed=tuple(removed))


def delete(key, ref, erase=False, ext=None):
    return PendingRecord(key, ref, "delete", external_id=ext or f"x{key}", erase=erase)


def every_ref(p):
    refs = [r.ref for u in p.upserts for r in u.covered]
    refs += [r.ref for d in p.deletes for r in d.covered]
    refs += [r.ref for r, _ in p.rejected] + [r.ref for r in p.deferred]
    return sorted(refs)


def test_last_upsert_per_customer_wins_and_covers_the_earlier_ones():
    p = plan([up("a", 1), up("b", 2), up("a", 3)], batch_size=10)
    assert [u.record.ref for u in p.upserts] == [3, 2]
    assert [r.ref for r in p.upserts[0].covered] == [1, 3]
    assert p.deletes == ()
    assert every_ref(p) == [1, 2, 3]


def test_delete_after_upsert_sends_only_the_delete():
    p = plan([up("a", 1), delete("a", 2, erase=True)], batch_size=10)
    assert p.upserts == ()
    assert len(p.deletes) == 1
    assert p.deletes[0].erase is True
    assert [r.ref for r in p.deletes[0].covered] == [1, 2]


def test_upsert_after_soft_delete_sends_only_the_upsert():
    p = plan([delete("a", 1), up("a", 2)], batch_size=10)
    assert p.deletes == ()
    assert [r.ref for r in p.upserts[0].covered] == [1, 2]


def test_a_rejected_upsert_after_a_soft_delete_falls_back_to_the_delete():
    # the last delete settles the records up to it; the ones after it share the upsert's rejection
    (restore,) = plan(
        [up("a", 1), delete("a", 2), up("a", 3), delete("a", 4), up("a", 5)], batch_size=10
    ).upserts
    gone, rejected = fallback(restore)
    assert gone is not None and gone.erase is False
    assert gone.record.ref == 4 and [r.ref for r in gone.covered] == [1, 2, 3, 4]
    assert [r.ref for r in rejected] == [5]


def test_a_rejected_upsert_after_a_delete_without_an_id_rejects_every_record():
    # the delete addresses no contact: nothing to fall back to (batch.fallback's case 3)
    (upsert,) = plan([PendingRecord("a", 1, "delete"), up("a", 2)], batch_size=10).upserts
    assert fallback(upsert) == (None, upsert.covered)


def test_records_after_an_erase_are_deferred_not_collapsed():
    p = plan([up("a", 1), delete("a", 2, erase=True), up("a", 3), up("b", 4)], batch_size=10)
    assert [d.record.ref for d in p.deletes] == [2]
    assert [r.ref for r in p.deletes[0].covered] == [1, 2]
    assert [r.ref for r in p.deferred] == [3]
    assert [u.record.ref for u in p.upserts] == [4]
    again = plan(p.deferred, batch_size=10)
    assert [u.record.ref for u in again.upserts] == [3]


def test_a_plan_addresses_each_contact_from_one_customer_key_and_defers_the_other_keys():
    """Old key deleted, new key upserted, one contact (x-e): upserts go out before deletes, so the
    new key's records wait for the next plan; deferred records keep the consumption order."""
    records = [delete("old", 1, ext="x-e"), up("new", 2, ext="x-e"), up("b", 3), up("new", 4, ext="x-e")]
    first = plan(records, batch_size=10)
    assert [d.record.ref for d in first.deletes] == [1] and [u.record.ref for u in first.upserts] == [3]
    assert [r.ref for r in first.deferred] == [2, 4] and every_ref(first) == [1, 2, 3, 4]
    second = plan(first.deferred, batch_size=10)
    assert [u.record.ref for u in second.upserts] == [4] and second.deferred == ()


def test_deferred_records_of_two_keys_keep_their_order_across_an_erase_cut():
    # a: upsert, erase, (upsert 5 deferred by the erase); b (same contact) at 3, deferred by a's claim
    records = [up("a", 1, ext="x-e"), delete("a", 2, erase=True, ext="x-e"), up("b", 3, ext="x-e")]
    records.append(up("a", 5, ext="x-e"))
    first = plan(records, batch_size=10)
    assert [r.ref for r in first.deferred] == [3, 5]
    second = plan(first.deferred, batch_size=10)
    assert [u.record.ref for u in second.upserts] == [3] and [r.ref for r in second.deferred] == [5]


def test_a_key_s_records_after_another_key_s_record_of_its_contact_wait_for_the_next_plan():
    # a, b, then a again on one contact: a's delete at 3 is the source's last word, after b's upsert
    records = [up("a", 1, ext="x-e"), up("b", 2, ext="x-e"), delete("a", 3, ext="x-e")]
    first = plan(records, batch_size=10)
    assert [u.record.ref for u in first.upserts] == [1] and first.deletes == ()
    assert [r.ref for r in first.deferred] == [2, 3]
    second = plan(first.deferred, batch_size=10)
    assert [u.record.ref for u in second.upserts] == [2] and [r.ref for r in second.deferred] == [3]
    assert [d.record.ref for d in plan(second.deferred, batch_size=10).deletes] == [3]


def test_a_delete_then_the_same_key_s_upsert_of_another_contact_keeps_the_delete():
    # the row deleted (contact x) and re-created under the same key with another id (contact y)
    first = plan([delete("a", 1, ext="x"), up("a", 2, ext="y")], batch_size=10)
    assert [d.record.ref for d in first.deletes] == [1] and first.upserts == ()
    assert [r.ref for r in first.deferred] == [2]
    # the same contact again: a restore, collapsed as before
    (restore,) = plan([delete("a", 1, ext="x"), up("a", 2, ext="x")], batch_size=10).upserts
    assert [r.ref for r in restore.covered] == [1, 2]


def test_a_third_key_never_overtakes_a_waiting_key_of_a_contact_they_share():
    # b waits for a (contact e); b and c share contact y: c waits behind b, not in a's plan
    records = [up("a", 1, ext="e"), up("b", 2, ext="e"), up("b", 3, ext="y"), up("c", 4, ext="y")]
    first = plan(records, batch_size=10)
    assert [u.record.ref for u in first.upserts] == [1] and [r.ref for r in first.deferred] == [2, 3, 4]


def _record(i, key, op, ext, erase):
    if op == "upsert":
        return PendingRecord(key, i, "upsert", contact={"externalCustomerId": ext})
    return PendingRecord(key, i, "delete", external_id=ext, erase=erase)


@settings(max_examples=600, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.sampled_from(["upsert", "delete"]),
            st.sampled_from("xy"),
            st.booleans(),
        ),
        max_size=9,
    ),
    st.integers(1, 3),
)
def test_plans_run_one_after_another_apply_each_contact_s_records_in_consumption_order(ops, size):
    """Plans over the deferred records until none is left (as the deliver stage runs them), keys
    moving between two contacts: every record is planned once, a plan addresses each contact once,
    and each contact ends as the last record that addresses it says, when that record is a delete
    or its key's last (a key's upserts collapse to its last, so an earlier one of another contact is
    never sent)."""
    records = [_record(i, key, op, ext, erase) for i, (key, op, ext, erase) in enumerate(ops)]
    state: dict[str, str] = {}
    todo, plans, planned = records, 0, []
    while todo:
        plans += 1
        assert plans <= len(records)
        p = plan(todo, batch_size=size)
        assert every_ref(p) == sorted(r.ref for r in todo)
        assert [r.ref for r in p.deferred] == sorted(r.ref for r in p.deferred)
        addressed = [u.record.contact["externalCustomerId"] for u in p.upserts]
        addressed += [d.record.external_id for d in p.deletes]
        assert len(addressed) == len(set(addressed))  # one item per contact and plan
        for u in p.upserts:
            state[u.record.contact["externalCustomerId"]] = "live"
        for d in p.deletes:
            state[d.record.external_id] = "gone"
        planned += [r.ref for u in p.upserts for r in u.covered] + [
            r.ref for d in p.deletes for r in d.covered
        ]
        todo = list(p.deferred)
    assert sorted(planned) == [r.ref for r in records]
    last_of_key = {r.customer_key: r for r in records}
    last_on = {r.external_id or r.contact["externalCustomerId"]: r for r in records}
    for ext, r in last_on.items():
        if last_of_key[r.customer_key] is r or r.op == "delete":
            assert state.get(ext) == ("live" if r.op == "upsert" else "gone"), (ext, ops)


def test_delete_without_external_id_is_rejected():
    record = PendingRecord("a", 1, "delete")
    p = plan([record], batch_size=10)
    assert p.rejected == ((record, "delete without externalCustomerId"),)
    assert p.deletes == ()


@pytest.mark.parametrize(
    ("n", "size", "chunks"), [(0, 3, []), (1, 3, [1]), (7, 3, [3, 3, 1]), (6, 3, [3, 3])]
)
def test_chunks_never_exceed_the_batch_size(n, size, chunks):
    p = plan([up(str(i), i) for i in range(n)], batch_size=size)
    assert [len(c) for c in p.upsert_chunks] == chunks


def test_groups_removed_accumulate_across_collapsed_records_minus_rejoined():
    p = plan(
        [up("a", 1, groups=[1, 2], removed=[5]), up("a", 2, groups=[5, 7], removed=[1, 2])], batch_size=10
    )
    (u,) = p.upserts
    assert u.attach == (5, 7)
    assert u.detach == (1, 2)


def test_group_calls_detach_first_split_at_500_and_skip_contacts_without_external_id():
    records = [up(str(i), i, groups=[9], removed=[3]) for i in range(1201)]
    no_ext = PendingRecord("z", -1, "upsert", contact={"groups": [{"id": 9}]})
    p = plan([*records, no_ext], batch_size=3000)
    calls = plan_group_calls(p.upserts)
    assert [(c.action, c.group_id, len(c.external_ids)) for c in calls] == [
        ("detach", 3, 500),
        ("detach", 3, 500),
        ("detach", 3, 201),
        ("attach", 9, 500),
        ("attach", 9, 500),
        ("attach", 9, 201),
    ]
    assert all(isinstance(c, GroupCall) and c.external_ids for c in calls)


def test_group_ids_as_strings_are_accepted_and_junk_skipped():
    contact = {"externalCustomerId": "e", "groups": [{"id": "12"}, {"id": "x"}, {"name": "n"}, {"id": 12}]}
    p = plan([PendingRecord("a", 1, "upsert", contact=contact)], batch_size=5)
    assert p.upserts[0].attach == (12,)
    assert plan_group_calls(p.upserts) == (GroupCall("attach", 12, ("e",)),)


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        plan([], batch_size=0)
    with pytest.raises(ValueError):
        plan_group_calls([], max_ids=501)


def test_parse_upsert_value():
    value = {
        "op": "delete",
        "customer_key": "42",
        "external_customer_id": "EM42",
        "contact": None,
        "groups_removed": [3, "4"],
        "erase": True,
        "version": 7,
        "source": {"topic": "t", "partition": 0, "offset": 1, "position": None},
    }
    record = parse_upsert(ref := raw(value, offset=9))
    assert record == PendingRecord("42", ref, "delete", None, "EM42", True, (3, 4))
    assert record.ref.offset == 9
    upsert = parsed({"op": "upsert", "customer_key": "1", "contact": {"externalCustomerId": "x"}})
    assert (upsert.op, upsert.external_id, upsert.contact) == ("upsert", None, {"externalCustomerId": "x"})
    with pytest.raises(DecodeError, match='op is not "upsert" or "delete"'):
        parsed({"op": "merge", "customer_key": "1"})


def _rec(key, ext, position, op="upsert"):
    return PendingRecord(key, 0, op, external_id=ext, position=position)


def test_last_writes_supersedes_only_another_key_s_older_record_of_the_same_contact():
    pg = lambda lsn: SourcePosition("pg", (lsn, lsn))  # noqa: E731
    writes = LastWrites()
    assert not writes.is_stale(_rec("1053", "x", pg(50)))
    assert not writes.is_stale(_rec("1053", "x", pg(60), op="delete"))
    assert writes.is_stale(_rec("1018", "x", pg(30)))  # the old key, older: stale
    assert not writes.is_stale(_rec("1053", "x", pg(40)))  # the same key: its partition orders it
    assert not writes.is_stale(_rec("1018", "x", pg(70)))  # the old key again, newer: it applies
    assert not writes.is_stale(_rec("other", "y", pg(1)))  # another contact
    assert not writes.is_stale(_rec("1018", "x", None))  # no position (resync): never compared
    assert not writes.is_stale(_rec("9", "x", SourcePosition("mysql", (1, 1, 0))))  # another log


def test_last_writes_keeps_a_bounded_memory():
    writes = LastWrites(max_size=2)
    pos = SourcePosition("pg", (5, 5))
    for ext in ("a", "b", "c"):
        writes.is_stale(_rec("k", ext, pos))
    # "a" was forgotten: an older record of another key is no longer recognized as stale
    assert not writes.is_stale(_rec("other", "a", SourcePosition("pg", (1, 1))))
    assert writes.is_stale(_rec("other", "c", SourcePosition("pg", (1, 1))))


def test_a_re_snapshot_row_is_not_older_than_the_changes_streamed_before_it():
    # customers.id 1018 -> 1053; later Debezium loses its offsets and snapshots again: 1053's row
    # comes as (0, snapshot LSN), which as a tuple ranks below every streamed (commit LSN, LSN)
    writes = LastWrites()
    assert not writes.is_stale(_rec("1018", "x", SourcePosition("pg", (900, 910))))
    assert not writes.is_stale(_rec("1053", "x", SourcePosition("pg", (0, 5000))))
    # and a streamed change of the old key from before that snapshot is older than it
    assert writes.is_stale(_rec("1018", "x", SourcePosition("pg", (900, 920))))
    # pg-lsn positions (every one is (0, lsn)) compare by LSN too
    lsn = lambda n: SourcePosition("pg-lsn", (0, n))  # noqa: E731
    assert not writes.is_stale(_rec("1053", "y", lsn(50)))
    assert writes.is_stale(_rec("1018", "y", lsn(40)))
    assert not writes.is_stale(_rec("1018", "y", lsn(60)))


def test_the_first_transaction_streamed_after_a_snapshot_is_newer_than_the_read_whatever_its_lsn():
    """No previous commit: `(lsn, lsn)`; begun before the snapshot point, its LSN is below the read's."""
    read, first = SourcePosition("pg", (0, 500)), SourcePosition("pg", (400, 400))
    assert not older(first, read) and older(read, first)
    # a change streamed before a re-snapshot, with its previous commit, is still older than the read
    assert older(SourcePosition("pg", (390, 400)), read)
    writes = LastWrites()
    assert not writes.is_stale(_rec("1053", "x", read))
    assert not writes.is_stale(_rec("1018", "x", first))  # not superseded: it is the source's last word


def test_seed_keeps_each_contact_s_latest_record_whatever_the_reading_order():
    writes = LastWrites()
    for key, parts in (("1053", (0, 5000)), ("1018", (900, 910)), ("1053", (100, 120))):
        writes.seed(_rec(key, "x", SourcePosition("pg", parts)))
    # the re-snapshot row (LSN 5000) is the latest: an old key's record below it is stale
    assert writes.is_stale(_rec("1018", "x", SourcePosition("pg", (900, 4000))))
    assert not writes.is_stale(_rec("1018", "x", SourcePosition("pg", (5000, 5010))))


def test_reserve_makes_room_for_a_read_back_beside_the_usual_memory():
    writes = LastWrites(max_size=2)
    writes.reserve(3)
    pos = SourcePosition("pg", (5, 5))
    for ext in "abcde":
        writes.seed(_rec("k", ext, pos))
    assert len(writes) == 5
    writes.reserve(1)  # never shrinks below what a larger read-back reserved
    writes.seed(_rec("k", "f", pos))
    assert len(writes) == 5  # the usual eviction beyond max_size + the largest reserve


def test_a_retiring_delete_never_removes_a_contact_another_customer_upserted_last():
    """Customer 2 leaves EXT-2 while customer 1 holds it (no unique constraint; overlapping id ranges)."""
    pg = lambda lsn: SourcePosition("pg", (lsn, lsn))  # noqa: E731

    def retire(key, lsn):
        return PendingRecord(key, 0, "delete", external_id="EXT-2", position=pg(lsn), retires=True)

    writes = LastWrites()
    assert not writes.is_stale(_rec("1", "EXT-2", pg(11)))  # customer 1 takes EXT-2
    assert writes.is_stale(retire("2", 12))  # newer, but customer 1's contact now: not sent
    assert writes.is_stale(PendingRecord("2", 0, "delete", external_id="EXT-2", retires=True))  # no position
    assert not writes.is_stale(retire("1", 13))  # its own holder retires it: sent
    # once the holder left it (its own retiring delete is the last record), another key's goes
    assert not writes.is_stale(retire("2", 14))
    # a plain delete (the customer deleted) is compared by position only, as before
    assert not writes.is_stale(_rec("1", "EXT-9", pg(20)))
    assert not writes.is_stale(_rec("2", "EXT-9", pg(21), op="delete"))


def test_a_retiring_delete_of_an_inherited_contact_is_sent_over_the_old_key_s_upsert():
    """`UPDATE customers SET id = 2, external_id = 'EXT-2' WHERE id = 1`: key 1's upsert of EXT-1 is
    the contact's last record; key 2 retires EXT-1, inherited from key 1, which left it."""
    pg = lambda lsn: SourcePosition("pg", (lsn, lsn))  # noqa: E731

    def retire(inherited_from):
        return PendingRecord(
            "2",
            0,
            "delete",
            external_id="EXT-1",
            position=pg(20),
            retires=True,
            inherited_from=inherited_from,
        )

    writes = LastWrites()
    assert not writes.is_stale(_rec("1", "EXT-1", pg(10)))
    assert writes.is_stale(retire(None))  # without the handover's key: key 1 would still hold it
    assert writes.is_stale(retire("3"))  # another key left it: key 1 holds it
    assert not writes.is_stale(retire("1"))
    # key 1's upsert read again after it (another partition) is older: not sent
    assert writes.is_stale(_rec("1", "EXT-1", pg(10)))


def test_parse_upsert_reads_inherited_from_on_retiring_deletes_only():
    base = {"customer_key": "2", "external_customer_id": "x", "source": None, "inherited_from": "1"}
    assert parsed({**base, "op": "delete", "retires": True}).inherited_from == "1"
    assert parsed({**base, "op": "delete"}).inherited_from is None
    assert parsed({**base, "op": "delete", "retires": True, "inherited_from": 1}).inherited_from is None
    assert parsed({**base, "op": "upsert", "contact": {}, "retires": True}).inherited_from is None


def test_parse_upsert_reads_retires_on_deletes_only():
    base = {"customer_key": "1", "external_customer_id": "x", "source": None}
    assert parsed({**base, "op": "delete", "retires": True}).retires
    assert not parsed({**base, "op": "delete"}).retires
    assert not parsed({**base, "op": "delete", "retires": "true"}).retires
    assert not parsed({**base, "op": "upsert", "contact": {}, "retires": True}).retires


def test_a_refusal_about_the_contact_falls_back_to_a_delete_only():
    # an import that ended in ERROR again and again: an earlier upsert of the contact would too
    (upsert,) = plan([up("a", 1), up("a", 2)], batch_size=10).upserts
    assert fallback(upsert, to_upsert=False) == (None, upsert.covered)
    instead, rejected = fallback(upsert)
    assert instead is not None and instead.record.ref == 1 and [r.ref for r in rejected] == [2]
    (restore,) = plan([up("a", 1), delete("a", 2), up("a", 3)], batch_size=10).upserts
    gone, rejected = fallback(restore, to_upsert=False)
    assert gone is not None and gone.record.ref == 2 and [r.ref for r in rejected] == [3]


def test_a_handover_record_loses_a_tie_with_the_new_key_s_record():
    """customers.id 1 -> 2 with a group cascaded: the old key upserted its contact without the group
    (a `handover` record) at the position of the new key's create, which holds the group."""
    at = SourcePosition("pg", (90, 100))

    def old_key(position, handover=True):
        return PendingRecord("1", 0, "upsert", external_id="x", position=position, handover=handover)

    writes = LastWrites()
    assert not writes.is_stale(_rec("2", "x", at))
    assert writes.is_stale(old_key(at))  # the same point: the new key's record is the newer one
    assert not writes.is_stale(old_key(at, handover=False))  # without the flag, ties are not stale
    assert not writes.is_stale(old_key(SourcePosition("pg", (100, 110))))  # a later change applies
    # read in the other order, the new key's record goes after it: sent, and so it wins too
    writes = LastWrites()
    assert not writes.is_stale(old_key(at))
    assert not writes.is_stale(_rec("2", "x", at))
    # the read-back keeps the new key's record whatever the order
    for records in ([_rec("2", "x", at), old_key(at)], [old_key(at), _rec("2", "x", at)]):
        writes = LastWrites()
        for record in records:
            writes.seed(record)
        assert writes.is_stale(old_key(at))


def test_parse_upsert_reads_handover():
    base = {"customer_key": "1", "external_customer_id": "x", "source": None, "op": "upsert", "contact": {}}
    assert parsed({**base, "handover": True}).handover
    assert not parsed(base).handover
    assert not parsed({**base, "handover": 1}).handover
