from __future__ import annotations

from collections import Counter

import pytest

from connector.config import load_settings
from connector.errors import ConfigError
from connector.models import UNCHANGED, ChangeEvent, Op, RecordRef, SourcePosition
from connector.routing import (
    CUSTOMERS,
    Router,
    RoutingFailure,
    customer_key_of,
    decode_change,
    decode_changes,
    encode_change,
    encode_changes,
    partition_for,
)

from .test_config import REPO_EXAMPLE

CUST = "crm.public.customers"
GROUPS = "crm.public.customer_groups"


@pytest.fixture
def router() -> Router:
    return Router(load_settings(REPO_EXAMPLE))


def event(topic: str, op: Op, key, before=None, after=None, pos=(1, 2), **kw) -> ChangeEvent:
    return ChangeEvent(
        table="public.x",
        op=op,
        key=key,
        before=before,
        after=after,
        position=SourcePosition("pg", pos) if pos else None,
        ts_ms=1000,
        ref=RecordRef(topic, 0, 7),
        **kw,
    )


def test_partition_for_is_deterministic_and_spread() -> None:
    # Fixed expectations: the hash must never change between releases (state would move partitions).
    assert partition_for("42", 6) == partition_for("42", 6)
    counts = Counter(partition_for(str(i), 6) for i in range(6000))
    assert set(counts) == set(range(6))
    assert min(counts.values()) > 800  # roughly uniform


def test_partition_for_known_values() -> None:
    import hashlib

    for key in ["1", "42", "abc", "[1,2]"]:
        expected = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 12
        assert partition_for(key, 12) == expected


def test_customer_key_forms() -> None:
    assert customer_key_of([42]) == "42"
    assert customer_key_of(["EM1"]) == "EM1"
    assert customer_key_of([1, "a"]) == '[1,"a"]'


def test_customers_upsert_routes_to_own_key(router: Router) -> None:
    out = router.route(event(CUST, Op.CREATE, {"id": 42}, after={"id": 42, "email": "a@b.c"}))
    assert isinstance(out, list) and len(out) == 1
    ch = out[0]
    assert (ch.customer_key, ch.source, ch.op, ch.row_key) == ("42", CUSTOMERS, "upsert", "[42]")
    assert ch.row == {"id": 42, "email": "a@b.c"}


def test_child_routes_by_customer_column(router: Router) -> None:
    ev = event(
        GROUPS, Op.CREATE, {"customer_id": 42, "group_id": 7}, after={"customer_id": 42, "group_id": 7}
    )
    (ch,) = router.route(ev)  # type: ignore[misc]
    assert (ch.customer_key, ch.source, ch.row_key) == ("42", "groups", "[42,7]")


def test_child_moving_between_customers_emits_delete_then_upsert(router: Router) -> None:
    ev = event(
        GROUPS,
        Op.UPDATE,
        {"customer_id": 43, "group_id": 7},
        before={"customer_id": 42, "group_id": 7, "group_name": "VIP"},
        after={"customer_id": 43, "group_id": 7, "group_name": "VIP"},
    )
    out = router.route(ev)
    assert isinstance(out, list)
    assert [(c.customer_key, c.op) for c in out] == [("42", "delete"), ("43", "upsert")]


def test_delete_uses_key_when_before_is_partial(router: Router) -> None:
    ev = event(
        GROUPS, Op.DELETE, {"customer_id": 42, "group_id": 7}, before={"customer_id": 42, "group_id": 7}
    )
    (ch,) = router.route(ev)  # type: ignore[misc]
    assert (ch.customer_key, ch.op, ch.moved) == ("42", "delete", False)


def test_pk_change_delete_is_marked_moved(router: Router) -> None:
    ev = event(CUST, Op.DELETE, {"id": 42}, before={"id": 42}, new_key={"id": 43})
    (ch,) = router.route(ev)  # type: ignore[misc]
    assert ch.moved and ch.to == "43"  # the key the merge stage hands the contact over to
    assert decode_change(encode_change(ch)) == ch


def test_a_change_that_names_no_new_key_writes_none() -> None:
    """`to` is left out of the changes record when None: records keep their size and older readers
    read them."""
    ev = event(CUST, Op.DELETE, {"id": 42}, before={"id": 42})
    (ch,) = _router_with_children().route(ev)  # type: ignore[misc]
    assert ch.to is None and b'"t"' not in encode_change(ch)
    assert decode_change(encode_change(ch)) == ch


def test_tombstone_routes_without_position(router: Router) -> None:
    ev = event(CUST, Op.DELETE, {"id": 42}, pos=None, tombstone=True)
    (ch,) = router.route(ev)  # type: ignore[misc]
    assert ch.op == "tombstone" and ch.position is None


def test_missing_customer_column_fails_without_content(router: Router) -> None:
    ev = event(GROUPS, Op.CREATE, {"group_id": 7}, after={"group_id": 7, "group_name": "secret@x.com"})
    out = router.route(ev)
    assert isinstance(out, RoutingFailure)
    assert "secret" not in out.reason


def test_unknown_topic_fails(router: Router) -> None:
    assert isinstance(router.route(event("other", Op.CREATE, {"id": 1}, after={"id": 1})), RoutingFailure)


def test_unchanged_values_survive_encoding(router: Router) -> None:
    ev = event(CUST, Op.UPDATE, {"id": 1}, after={"id": 1, "notes": UNCHANGED})
    (ch,) = router.route(ev)  # type: ignore[misc]
    back = decode_change(encode_change(ch))
    assert back == ch
    assert back.row == {"id": 1, "notes": "__debezium_unavailable_value"}


def test_batches_round_trip_and_keep_order(router: Router) -> None:
    changes = []
    for i in range(5):
        ev = event(CUST, Op.UPDATE, {"id": i}, after={"id": i, "tags": [i, "x"], "meta": {"n": None}})
        changes.extend(router.route(ev))  # type: ignore[arg-type]
    assert decode_changes(encode_changes(changes)) == changes
    assert decode_changes(encode_change(changes[0])) == changes[:1]


def test_records_of_the_previous_wire_form_still_decode() -> None:
    # before the msgspec form, positions were flat `[kind, part, part]`
    old = (
        b'[{"c":"7","s":"customers","k":"[7]","o":"upsert","r":{"id":7},"p":["pg",10,20],'
        b'"ts":5,"sn":false,"m":false,"src":["crm.public.customers",1,99]}]'
    )
    (change,) = decode_changes(old)
    assert change.position == SourcePosition("pg", (10, 20))
    assert change.origin == RecordRef("crm.public.customers", 1, 99)
    assert change.row == {"id": 7}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1]",
        b'{"c":"7"}',
        b'[{"c":"7","s":"x","k":"[7]","o":"upsert","r":[],"p":null,'
        b'"ts":null,"sn":false,"m":false,"src":["t",0,1]}]',
    ],
)
def test_foreign_changes_records_raise_value_or_lookup_errors(data: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError, IndexError)):
        decode_changes(data)


def test_tombstone_on_a_tombstone_deletes_topic_routes_a_positionless_delete() -> None:
    settings = load_settings(REPO_EXAMPLE)
    source = settings.source.model_copy(
        update={
            "children": [c.model_copy(update={"tombstone_deletes": True}) for c in settings.source.children]
        }
    )
    router = Router(settings.model_copy(update={"source": source}))
    (group_delete,) = router.route(  # type: ignore[misc]
        event(GROUPS, Op.DELETE, {"customer_id": 42, "group_id": 7}, pos=None, tombstone=True)
    )
    assert (group_delete.op, group_delete.position, group_delete.row) == ("delete", None, None)
    assert group_delete.customer_key == "42"
    (customer,) = router.route(event(CUST, Op.DELETE, {"id": 42}, pos=None, tombstone=True))  # type: ignore[misc]
    assert customer.op == "tombstone"  # the customers topic keeps the default


def _router_with_children(**update) -> Router:
    settings = load_settings(REPO_EXAMPLE)
    children = [c.model_copy(update=update) for c in settings.source.children]
    customers = settings.source.customers.model_copy(
        update={"tombstone_deletes": update.get("tombstone_deletes", False)}
    )
    source = settings.source.model_copy(update={"children": children, "customers": customers})
    return Router(settings.model_copy(update={"source": source}))


def test_a_tombstone_delete_that_names_no_customer_is_a_failure_not_silently_lost() -> None:
    # The child's key is its own id: the tombstone's key cannot say whose row it was. On a
    # tombstone_deletes topic that tombstone is the delete itself: dropping it would keep the row.
    router = _router_with_children(key=["id"], tombstone_deletes=True)
    out = router.route(event(GROUPS, Op.DELETE, {"id": 5}, pos=None, tombstone=True))
    assert isinstance(out, RoutingFailure)
    # an ordinary tombstone (the delete came before it) that names no customer stays a no-op
    plain = _router_with_children(key=["id"])
    assert plain.route(event(GROUPS, Op.DELETE, {"id": 5}, pos=None, tombstone=True)) == []


def test_a_keyless_table_s_tombstone_routes_nothing_unless_it_is_the_delete_itself() -> None:
    # a keyless child table: Debezium's tombstone after each delete has a null key (decoded as {})
    plain = _router_with_children(key=["id"])
    assert plain.route(event(GROUPS, Op.DELETE, {}, pos=None, tombstone=True)) == []
    deleting = _router_with_children(key=["id"], tombstone_deletes=True)
    assert isinstance(deleting.route(event(GROUPS, Op.DELETE, {}, pos=None, tombstone=True)), RoutingFailure)


def test_a_tombstone_delete_of_a_primary_key_change_is_marked_moved() -> None:
    # unwrap tombstone mode: the `d` of a primary-key change becomes a tombstone with its headers
    router = _router_with_children(tombstone_deletes=True)
    (ch,) = router.route(  # type: ignore[misc]
        event(CUST, Op.DELETE, {"id": 42}, pos=None, tombstone=True, new_key={"id": 43})
    )
    assert (ch.customer_key, ch.op, ch.moved, ch.to) == ("42", "delete", True, "43")


def test_a_moved_child_row_takes_unchanged_toast_values_from_before() -> None:
    # REPLICA IDENTITY FULL: `before` holds the value the WAL left out of `after`; the new owner has
    # no earlier copy of the row to keep it from.
    router = _router_with_children(key=["id"])
    ev = event(
        GROUPS,
        Op.UPDATE,
        {"id": 5},
        before={"id": 5, "customer_id": 42, "group_id": 7, "group_name": "VIP", "notes": "long"},
        after={"id": 5, "customer_id": 43, "group_id": 7, "group_name": "VIP", "notes": UNCHANGED},
    )
    out = router.route(ev)
    assert isinstance(out, list)
    assert [(c.customer_key, c.op) for c in out] == [("42", "delete"), ("43", "upsert")]
    assert out[1].row is not None and out[1].row["notes"] == "long"


def test_unchanged_stays_the_marker_without_a_before_value() -> None:
    router = _router_with_children(key=["id"])
    after = {"id": 5, "customer_id": 43, "group_id": 7, "notes": UNCHANGED}
    (ch,) = router.route(event(GROUPS, Op.UPDATE, {"id": 5}, after=after))  # type: ignore[misc]
    assert ch.row is not None and ch.row["notes"] == "__debezium_unavailable_value"
    for old in (UNCHANGED, None):  # not sent, or a USING INDEX identity's null filler
        before = {"id": 5, "customer_id": 43, "group_id": 7, "notes": old}
        (ch,) = router.route(event(GROUPS, Op.UPDATE, {"id": 5}, before=before, after=after))  # type: ignore[misc]
        assert ch.row is not None and ch.row["notes"] == "__debezium_unavailable_value"


def test_a_child_row_detached_from_its_customer_is_deleted_there() -> None:
    # UPDATE customer_groups SET customer_id = NULL (or ON DELETE SET NULL): the row leaves customer 42.
    router = _router_with_children(key=["id"])
    ev = event(
        GROUPS,
        Op.UPDATE,
        {"id": 5},
        before={"id": 5, "customer_id": 42, "group_id": 7},
        after={"id": 5, "customer_id": None, "group_id": 7},
    )
    out = router.route(ev)
    assert isinstance(out, list)
    assert [(c.customer_key, c.op, c.row_key) for c in out] == [("42", "delete", "[5]")]
    # without a before row nobody can be told: a failure, as before
    no_before = event(GROUPS, Op.UPDATE, {"id": 5}, after={"id": 5, "customer_id": None, "group_id": 7})
    assert isinstance(router.route(no_before), RoutingFailure)


def test_children_of_a_customers_table_with_a_composite_key_are_refused() -> None:
    # a child names its customer by one column; the customer key of a composite key is a JSON array
    # (`customer_key_of`), so every child row would land on a customer that never exists
    settings = load_settings(REPO_EXAMPLE)
    customers = settings.source.customers.model_copy(update={"key": ["tenant", "id"]})
    source = settings.source.model_copy(update={"customers": customers})
    with pytest.raises(ConfigError, match=r"source\.children"):
        Router(settings.model_copy(update={"source": source}))
    # without children a composite key is fine
    alone = source.model_copy(update={"children": []})
    contact = settings.contact.model_copy(update={"groups": None})
    Router(settings.model_copy(update={"source": alone, "contact": contact}))


def test_an_orphan_child_row_routes_nothing_instead_of_filling_the_dlq() -> None:
    """A child row whose customer column is null (ON DELETE SET NULL, guest orders) belongs to nobody."""
    router = _router_with_children(key=["id"])
    orphan = {"id": 5, "customer_id": None, "group_id": 7}
    assert router.route(event(GROUPS, Op.CREATE, {"id": 5}, after=orphan)) == []
    assert router.route(event(GROUPS, Op.READ, {"id": 5}, after=orphan)) == []
    updated = {**orphan, "group_id": 8}
    assert router.route(event(GROUPS, Op.UPDATE, {"id": 5}, before=orphan, after=updated)) == []
    # an update without `before` may just have left a customer, and an orphan's delete looks like one
    # under REPLICA IDENTITY DEFAULT (nulls in place of the non-key columns): failures, as before
    assert isinstance(router.route(event(GROUPS, Op.UPDATE, {"id": 5}, after=updated)), RoutingFailure)
    assert isinstance(router.route(event(GROUPS, Op.DELETE, {"id": 5}, before=orphan)), RoutingFailure)
    # a row without the column at all is not an orphan
    assert isinstance(router.route(event(GROUPS, Op.CREATE, {"id": 5}, after={"id": 5})), RoutingFailure)


def _group_update(before: tuple[int, int], after: tuple[int, int]) -> ChangeEvent:
    row = {"customer_id": after[0], "group_id": after[1]}
    return event(GROUPS, Op.UPDATE, row, before={"customer_id": before[0], "group_id": before[1]}, after=row)


def test_a_child_row_whose_key_changes_within_its_customer_leaves_its_old_key(router: Router) -> None:
    """An update moving a membership from group 7 to group 8 of the same customer: the row keyed
    [42,7] is gone (else the contact keeps segment 7), the row keyed [42,8] is new."""
    out = router.route(_group_update((42, 7), (42, 8)))
    assert [(c.customer_key, c.op, c.row_key, c.moved) for c in out] == [
        ("42", "delete", "[42,7]", True),
        ("42", "upsert", "[42,8]", False),
    ]


def _group_create(customer: int, group: int, old_customer: int, old_group: int) -> ChangeEvent:
    row = {"customer_id": customer, "group_id": group}
    return event(
        GROUPS, Op.CREATE, row, after=row, old_key={"customer_id": old_customer, "group_id": old_group}
    )


def test_a_primary_key_change_s_create_is_marked_moved_in(router: Router) -> None:
    """The new key answers for the contact the old key's (suppressed) delete left live."""
    ev = event(CUST, Op.CREATE, {"id": 43}, after={"id": 43, "email": "a@x.com"}, old_key={"id": 42})
    (ch,) = router.route(ev)  # type: ignore[misc]
    assert (ch.customer_key, ch.op, ch.moved) == ("43", "upsert", True)
    assert decode_change(encode_change(ch)).moved
    (ch,) = router.route(_group_create(43, 7, 42, 7))  # type: ignore[misc]  # cascaded
    assert (ch.customer_key, ch.moved) == ("43", True)
    plain = event(CUST, Op.CREATE, {"id": 44}, after={"id": 44, "email": "b@x.com"})
    (ch,) = router.route(plain)  # type: ignore[misc]
    assert not ch.moved


def test_a_key_change_within_one_customer_moves_nothing_in(router: Router) -> None:
    (ch,) = router.route(_group_create(42, 8, 42, 7))  # type: ignore[misc]
    assert not ch.moved


def test_a_child_row_updated_to_another_customer_moves_in_there(router: Router) -> None:
    out = router.route(_group_update((42, 7), (43, 7)))
    assert [(c.customer_key, c.op, c.moved, c.to) for c in out] == [
        ("42", "delete", True, "43"),
        ("43", "upsert", True, None),
    ]
