"""Batch planning: segment ids from the upserts topic are taken exactly or not at all."""

from __future__ import annotations

from typing import Any

import pytest

from connector.sink.batch import pending_from_upsert, plan


@pytest.mark.parametrize("bad", [5.9, True, "5.9", "five", None, [5], "\u00b2", 0, -3, 2**31, "2147483648"])
def test_a_removed_segment_id_that_is_not_an_integer_is_skipped_not_truncated(bad: Any) -> None:
    # int(5.9) == 5 and int(True) == 1: the contact was detached from another segment
    record = pending_from_upsert(
        {
            "op": "upsert",
            "customer_key": "k",
            "contact": {"externalCustomerId": "E"},
            "groups_removed": [bad, 7],
        },
        ref=None,
    )
    assert record.groups_removed == (7,)


@pytest.mark.parametrize("good", [5, 5.0, "5", " 5 "])
def test_a_removed_segment_id_written_as_a_whole_number_is_kept(good: Any) -> None:
    record = pending_from_upsert(
        {
            "op": "upsert",
            "customer_key": "k",
            "contact": {"externalCustomerId": "E"},
            "groups_removed": [good],
        },
        ref=None,
    )
    assert record.groups_removed == (5,)


@pytest.mark.parametrize("bad", [5.9, True, "5.9", "x", 0, 2**31])
def test_a_contact_segment_id_that_is_not_an_integer_is_not_attached(bad: Any) -> None:
    contact = {"externalCustomerId": "E", "groups": [{"id": bad}, {"id": 8}]}
    record = pending_from_upsert({"op": "upsert", "customer_key": "k", "contact": contact}, ref=None)
    (upsert,) = plan([record], batch_size=10).upserts
    assert upsert.attach == (8,)


@pytest.mark.parametrize("flag", ["false", "0", 0, "", None, "no", [], {}])
def test_only_a_true_erase_flag_erases(flag: Any) -> None:
    # bool("false") is True: a soft delete became a permanent erasure, which cannot be undone
    record = pending_from_upsert(
        {"op": "delete", "customer_key": "k", "external_customer_id": "E", "erase": flag}, None
    )
    assert record.erase is False
    (delete,) = plan([record], batch_size=10).deletes
    assert delete.erase is False


def test_a_true_erase_flag_erases() -> None:
    record = pending_from_upsert(
        {"op": "delete", "customer_key": "k", "external_customer_id": "E", "erase": True}, None
    )
    assert record.erase is True
