from __future__ import annotations

import json

import pytest

from connector.merge import CustomerState, RowState
from connector.models import SourcePosition
from connector.state.codec import encode_state
from tests.schema_validation import SCHEMAS, validator


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_every_schema_file_parses(path) -> None:
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict)
    if path.name.endswith(".schema.json"):
        validator(path.name)  # check_schema + references resolve


def test_state_records_validate() -> None:
    state = CustomerState(
        "42",
        RowState({"id": 42, "email": "x"}, SourcePosition("pg", (1, 2))),
        {"groups": {"[42,7]": RowState(None, SourcePosition("pg", (3, 4)), 99)}},
        fingerprint="ab",
        groups=(7,),
        version=3,
    )
    validator("state.schema.json").validate(json.loads(encode_state(state)))


def test_upsert_schema_rejects_upsert_without_contact() -> None:
    bad = {
        "op": "upsert",
        "customer_key": "1",
        "external_customer_id": "EXT-1",
        "contact": None,
        "groups_removed": [],
        "erase": False,
        "version": 1,
        "source": {"topic": "t", "partition": 0, "offset": 0, "position": None},
    }
    assert not validator("upsert.schema.json").is_valid(bad)
    bad["op"] = "delete"
    assert validator("upsert.schema.json").is_valid(bad)
