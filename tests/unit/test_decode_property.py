"""Garbage in never raises out of decode_event: random bytes and mutated valid events."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from connector.decode import Ignored, decode_event
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from tests.unit.decode_fixtures import FORMATS, avro_lookup, case_names, load_record, options_for

OUTCOMES = (ChangeEvent, Ignored, DecodeFailure)
TOPICS = st.sampled_from(
    ["crm.public.customers", "crm.public.customer_groups", "crm.transaction", "__debezium-heartbeat.crm", "x"]
)
SAMPLES = [(fmt, name) for fmt in FORMATS for name in case_names()]


def check(record: RawRecord, fmt: str = "json_plain") -> None:
    result = decode_event(record, options=options_for(fmt), schemas=avro_lookup())
    assert isinstance(result, OUTCOMES)
    if isinstance(result, DecodeFailure):
        assert result.record is record
        assert 0 < len(result.reason) <= 120
        # Garbage must be recognised as such, not caught by decode_event's last-resort handler.
        assert not result.reason.startswith("unexpected"), result.reason


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, key=st.none() | st.binary(max_size=64), value=st.none() | st.binary(max_size=512))
def test_random_bytes_never_raise(topic: str, key: bytes | None, value: bytes | None) -> None:
    check(RawRecord(topic, 0, 0, key, value))


@settings(max_examples=300)
@given(
    value=st.binary(max_size=200),
    schema_id=st.integers(min_value=0, max_value=40),
)
def test_random_avro_framing_never_raises(value: bytes, schema_id: int) -> None:
    framed = b"\x00" + schema_id.to_bytes(4, "big") + value
    check(RawRecord("crm.public.customers", 0, 0, framed, framed), "avro")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_mutated_bytes_never_raise(sample: tuple[str, str], data: st.DataObject) -> None:
    fmt, name = sample
    record = load_record(fmt, name)
    if record.value is None:
        return
    value = bytearray(record.value)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        if not value:
            break
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
        if op == "flip":
            value[at] = data.draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            del value[at:]
        else:
            value[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    check(replace(record, value=bytes(value)), fmt)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from([(f, n) for f, n in SAMPLES if f != "avro"]),
    data=st.data(),
    replacement=JSON_VALUES,
)
def test_mutated_json_structure_never_raises(
    sample: tuple[str, str], data: st.DataObject, replacement: Any
) -> None:
    fmt, name = sample
    record = load_record(fmt, name)
    if record.value is None:
        return
    doc = orjson.loads(record.value)
    path = data.draw(st.sampled_from(_paths(doc)))
    if not path:
        doc = replacement
    else:
        node = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = replacement
    check(replace(record, value=orjson.dumps(doc)), fmt)
