"""Property: every `CustomerState` survives the state topic's codec unchanged."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.jsonvalues import UNCHANGED_MARKER
from connector.merge import CustomerState, RowState
from connector.models import SourcePosition
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
