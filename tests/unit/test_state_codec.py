"""Property: every `CustomerState` survives the state topic's codec unchanged."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.jsonvalues import UNCHANGED_MARKER
from connector.merge import CustomerState, RowState
from connector.models import SourcePosition
from connector.state import codec
from connector.state.codec import decode_state, encode_state

TEXT = st.text(max_size=8)  # any unicode, including the empty string and surrogate-free astral chars
JSON_SCALAR = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | TEXT | st.just(UNCHANGED_MARKER)
JSON = st.recursive(
    JSON_SCALAR | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
POSITION = st.none() | st.builds(
    SourcePosition,
    st.sampled_from(["pg", "pg-lsn", "mysql"]),
    st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=3).map(tuple),
)
ROW = st.builds(
    RowState,
    st.none() | st.dictionaries(TEXT, JSON, max_size=4),
    POSITION,
    st.none() | st.integers(0, 2**53),
    st.booleans(),
)
STATE = st.builds(
    CustomerState,
    TEXT,
    st.none() | ROW,
    st.dictionaries(TEXT, st.dictionaries(TEXT, ROW, max_size=3), max_size=2),
    st.none() | TEXT,
    st.lists(st.integers(-(2**31), 2**31), max_size=4).map(tuple),
    st.integers(0, 2**40),
    st.none() | TEXT,
)


@settings(max_examples=300, deadline=None)
@given(STATE)
def test_state_round_trips(state: CustomerState) -> None:
    assert decode_state(encode_state(state)) == state


def test_empty_children_and_composite_unicode_keys_round_trip() -> None:
    state = CustomerState(
        '[1,"ü€😀"]',
        RowState(None, None, 0),
        {"groups": {}, "notes": {'[1,"ß"]': RowState({"k": UNCHANGED_MARKER}, SourcePosition("pg", (0, 5)))}},
        None,
        (),
        0,
        None,
    )
    assert decode_state(encode_state(state)) == state


@settings(max_examples=200, deadline=None)
@given(STATE)
def test_written_records_take_the_typed_path_and_read_as_the_lenient_one(state: CustomerState) -> None:
    """What `encode_state` writes never needs the lenient path, and both paths read it alike."""
    data = encode_state(state)
    original = codec._decode_lenient
    try:
        codec._decode_lenient = _refuse  # type: ignore[assignment]
        typed = decode_state(data)
    finally:
        codec._decode_lenient = original
    assert typed == codec._decode_lenient(data) == state


def _refuse(data: bytes) -> CustomerState:
    raise AssertionError("the lenient path was taken")


@pytest.mark.parametrize(
    "record",
    [
        {"key": 7, "version": None, "groups": None, "children": None},  # loose types the typed path refuses
        {"key": "7", "groups": [True, 2], "customer": {"v": {"a": 1}, "p": ["pg", "5", 6], "r": 1}},
        {"key": "7", "customer": {"v": None, "p": [3, 4], "d": 1.5}},
        {"key": "7", "children": {"g": {"[1]": {"v": [1], "p": []}}}, "fingerprint": 3},
    ],
)
def test_unusual_records_read_as_before(record: dict[str, Any]) -> None:
    data = orjson.dumps({"fmt": 1, **record})
    assert decode_state(data) == codec._decode_lenient(data)


@pytest.mark.parametrize(
    "data", [b"[]", b'{"fmt": 2, "key": "7"}', b'{"key": "7"}', b"not json", b'{"fmt": 1}']
)
def test_foreign_bytes_are_refused(data: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        decode_state(data)
