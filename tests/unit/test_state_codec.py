"""Property: every `CustomerState` survives the state topic's codec unchanged."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.jsonvalues import UNCHANGED_MARKER
from connector.merge import CustomerState, Inherited, RowState
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
    st.none()
    | st.builds(
        Inherited, TEXT, st.lists(st.integers(-(2**31), 2**31), max_size=3).map(tuple), POSITION, TEXT
    ),
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
        {"key": 7},  # a key not a string
        {"key": "7", "version": None},
        {"key": "7", "groups": None},
        {"key": "7", "children": None},
        {"key": "7", "groups": [True, 2]},  # a bool is no integer
        {"key": "7", "customer": {"v": {"a": 1}, "p": ["pg", "5", 6]}},  # a position part not an integer
        {"key": "7", "customer": {"v": {"a": 1}, "r": 1}},
        {"key": "7", "customer": {"v": None, "p": [3, 4]}},  # a position kind not a string
        {"key": "7", "customer": {"v": None, "d": 1.5}},
        {"key": "7", "customer": {"v": ["EXT-7", "ana@example.com"], "p": ["pg", 1, 2]}},  # values a list
        {"key": "7", "children": {"g": {"[1]": {"v": [1], "p": []}}}},
        {"key": "7", "fingerprint": 3},
        {"key": "7", "ext": ["EXT-7"]},
        {"key": "7", "version": 2.0},
        {"key": "7", "inh": {"ext": "E", "groups": [], "p": None}},  # no old key
        {"key": "7", "inh": {"ext": None, "groups": [], "p": None, "from": "6"}},
        {"key": "7", "inh": {"ext": "E", "groups": [True], "p": None, "from": "6"}},
        {"key": "7", "inh": {"ext": "E", "groups": [], "p": ["pg", "1"], "from": "6"}},
        {"key": "7", "inh": ["E"]},
    ],
)
def test_records_of_another_shape_are_refused_by_both_paths(record: dict[str, Any]) -> None:
    """A restore refuses them (StateError naming the record) instead of a later step crashing on them."""
    data = orjson.dumps({"fmt": 1, **record})
    with pytest.raises(ValueError):
        codec._decode_lenient(data)
    with pytest.raises(ValueError):
        decode_state(data)


_BASE = orjson.loads(
    encode_state(
        CustomerState(
            "7",
            RowState({"id": 7, "first_name": "Ana"}, SourcePosition("pg", (1, 2))),
            {"groups": {"[7,1]": RowState(None, SourcePosition("pg", (1, 3)), 1000, True)}},
            "fp",
            (1, 2),
            3,
            "EXT-7",
            Inherited("EXT-6", (4,), SourcePosition("pg", (1, 4)), "6"),
        )
    )
)
_PATHS = [
    ("fmt",), ("key",), ("customer",), ("customer", "v"), ("customer", "p"), ("customer", "p", 0),
    ("customer", "p", 1), ("customer", "d"), ("customer", "r"), ("children",), ("children", "groups"),
    ("children", "groups", "[7,1]"), ("children", "groups", "[7,1]", "v"),
    ("children", "groups", "[7,1]", "p"), ("children", "groups", "[7,1]", "d"),
    ("children", "groups", "[7,1]", "r"), ("fingerprint",), ("groups",), ("groups", 0), ("version",),
    ("ext",), ("inh",), ("inh", "ext"), ("inh", "groups"), ("inh", "groups", 0), ("inh", "p"),
    ("inh", "p", 0), ("inh", "p", 1), ("inh", "from"),
]  # fmt: skip
_DELETE = object()


def _mutated(path: tuple[str | int, ...], value: Any) -> bytes:
    obj = orjson.loads(orjson.dumps(_BASE))
    target = obj
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE and isinstance(target, dict):
        target.pop(path[-1], None)
    elif value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(obj).encode()  # (orjson writes no integer beyond 64 bits)


def _verdict(decode: Any, data: bytes) -> CustomerState | None:
    """The decoded state, or None when refused."""
    try:
        state: CustomerState = decode(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, _Refused):
        return None
    return state


class _Refused(Exception):
    pass


def _typed_only(data: bytes) -> CustomerState:
    def refuse(data: bytes) -> CustomerState:
        raise _Refused

    original = codec._decode_lenient
    codec._decode_lenient = refuse  # type: ignore[assignment]
    try:
        return decode_state(data)
    finally:
        codec._decode_lenient = original


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(_PATHS),
    st.just(_DELETE) | JSON | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False),
)
def test_the_typed_and_lenient_paths_accept_and_refuse_the_same_mutated_records(
    path: tuple[str | int, ...], value: Any
) -> None:
    data = _mutated(path, value)
    typed, lenient = _verdict(_typed_only, data), _verdict(codec._decode_lenient, data)
    assert (typed is None) == (lenient is None), (data, typed, lenient)
    assert typed == lenient
    if lenient is not None:  # well-typed: what the merge stage relies on
        rows = [lenient.customer] if lenient.customer is not None else []
        rows += [r for by_key in lenient.children.values() for r in by_key.values()]
        for row in rows:
            assert row.values is None or type(row.values) is dict
            assert row.deleted_ms is None or type(row.deleted_ms) is int
            assert type(row.read) is bool


@pytest.mark.parametrize(
    "data", [b"[]", b'{"fmt": 2, "key": "7"}', b'{"key": "7"}', b"not json", b'{"fmt": 1}']
)
def test_foreign_bytes_are_refused(data: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        decode_state(data)
