"""Batch planning: segment ids from the upserts topic are taken exactly or not at all."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from connector.errors import DecodeError
from connector.models import RawRecord
from connector.sink.batch import PendingRecord, plan
from connector.sink.upserts import parse_upsert


def parsed(value: dict[str, Any]) -> PendingRecord[RawRecord]:
    """`value` as the deliver stage reads it off the upserts topic (`parse_upsert`)."""
    return parse_upsert(RawRecord("upserts", 0, 0, None, orjson.dumps(value)))


@pytest.mark.parametrize("bad", [5.9, True, "5.9", "five", None, [5], "\u00b2", 0, -3, 2**31, "2147483648"])
def test_a_removed_segment_id_that_is_not_an_integer_is_refused_not_truncated(bad: Any) -> None:
    # int(5.9) == 5 and int(True) == 1: the contact was detached from another segment
    value = {
        "op": "upsert",
        "customer_key": "k",
        "contact": {"externalCustomerId": "E"},
        "groups_removed": [bad, 7],
    }
    with pytest.raises(DecodeError) as err:
        parsed(value)
    assert err.value.reason.startswith("groups_removed[0] is ")
    assert err.value.reason.endswith(", not a segment id (1..2147483647)")


@pytest.mark.parametrize("good", [5, 5.0, "5", " 5 "])
def test_a_removed_segment_id_written_as_a_whole_number_is_kept(good: Any) -> None:
    record = parsed(
        {
            "op": "upsert",
            "customer_key": "k",
            "contact": {"externalCustomerId": "E"},
            "groups_removed": [good],
        }
    )
    assert record.groups_removed == (5,)


@pytest.mark.parametrize("bad", [5.9, True, "5.9", "x", 0, 2**31])
def test_a_contact_segment_id_that_is_not_an_integer_is_not_attached(bad: Any) -> None:
    contact = {"externalCustomerId": "E", "groups": [{"id": bad}, {"id": 8}]}
    record = parsed({"op": "upsert", "customer_key": "k", "contact": contact})
    (upsert,) = plan([record], batch_size=10).upserts
    assert upsert.attach == (8,)


@pytest.mark.parametrize("flag", ["false", "0", 0, "", None, "no", [], {}, "true", 1])
def test_only_a_true_erase_flag_erases(flag: Any) -> None:
    # bool("false") is True: a soft delete became a permanent erasure, which cannot be undone
    record = parsed({"op": "delete", "customer_key": "k", "external_customer_id": "E", "erase": flag})
    assert record.erase is False
    (delete,) = plan([record], batch_size=10).deletes
    assert delete.erase is False
