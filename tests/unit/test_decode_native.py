"""The C fast path (connector/decode/_speedups.c) gives exactly what the Python decoder gives.

"Exactly": same outcome class, same field values of the same types, Decimals with the same digits
and exponent, datetimes with the same tzinfo object, dict keys in the same order. Checked on every
golden fixture and on generated PostgreSQL envelopes whose rows hold right, wrong and edge values
of every configured column type (the fast path must hand every doubtful record to Python).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.decode import DecodeOptions, Ignored, decode_event
from connector.decode import native as native_module
from connector.models import UNCHANGED, ChangeEvent, DecodeFailure, Op, RawRecord
from tests.unit.decode_fixtures import COLUMN_TYPES, FORMATS, avro_lookup, case_names, load_record

pytestmark = pytest.mark.skipif(
    not native_module.AVAILABLE and not os.environ.get("CI"),
    reason="the C extension is not built here (no compiler when installed); CI requires it",
)

ALL_TYPES = {
    "public.all_types": {
        "d": "date",
        "ts": "timestamp",
        "us": "micro_timestamp",
        "ns": "nano_timestamp",
        "z": "zoned_timestamp",
        "iso": "io.debezium.time.IsoTimestamp",
        "dec": "decimal:2",
        "dec0": "decimal:0",
        "decneg": "decimal:-3",
        "vs": "variable_scale_decimal",
        "t": "micro_time",
        "b": "bytes",
        "bits": "bits",
        "j": "json",
        "u": "uuid",
        "mt": "time",
        "nt": "nano_time",
        "e": "io.debezium.data.Enum",
    },
    **COLUMN_TYPES,
}


def options(native: bool, column_types: dict[str, dict[str, str]] = COLUMN_TYPES) -> DecodeOptions:
    return DecodeOptions(column_types=column_types, native=native)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, down to Decimal exponents and tzinfo identity."""
    if type(a) is not type(b):
        return False
    if isinstance(a, msgspec.Struct):
        return all(
            same(x, y) for x, y in zip(msgspec.structs.astuple(a), msgspec.structs.astuple(b), strict=True)
        )
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, decimal.Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, dt.datetime | dt.time):
        return a == b and a.tzinfo is b.tzinfo and a.fold == b.fold
    if isinstance(a, float) and a != a:
        return b != b
    if isinstance(a, Ignored | DecodeFailure):
        return a == b
    return bool(a == b)


def both(
    record: RawRecord, column_types: dict[str, dict[str, str]] = COLUMN_TYPES, schemas: Any = None
) -> Any:
    fast = decode_event(record, options=options(True, column_types), schemas=schemas)
    slow = decode_event(record, options=options(False, column_types), schemas=schemas)
    assert same(fast, slow), (fast, slow)
    return fast


def test_extension_is_built_in_ci() -> None:
    # CI installs with a C compiler: a build failure (setup.py's optional extension) must show here.
    if os.environ.get("CI"):
        assert native_module.AVAILABLE
    assert options(True).native_context is not None
    assert options(False).native_context is None
    assert DecodeOptions(format="avro").native_context is None


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", case_names())
def test_fixtures_decode_the_same(fmt: str, name: str) -> None:
    both(load_record(fmt, name), schemas=avro_lookup())


@pytest.mark.parametrize(
    "name",
    [
        "create",
        "update",
        "delete",
        "groups_update",
        "groups_delete",
        "read",
        "toast",
        "types",
        "pk_change_create",
        "pk_change_delete",
        "update_snapshot_null",
        "unwrapped_create",
        "unwrapped_update",
        "unwrapped_delete",
        "unwrapped_groups_delete",
        "unwrapped_read",
    ],
)
def test_postgres_envelopes_take_the_fast_path(name: str) -> None:
    # The fast path must not silently stop applying to the common record.
    from connector.decode import _speedups  # type: ignore[attr-defined]

    record = load_record("json_plain", name)
    event = _speedups.decode_envelope(record, options(True).native_context)
    assert isinstance(event, ChangeEvent)
    assert same(event, decode_event(record, options=options(False)))


@pytest.mark.parametrize(
    "name",
    [
        "mysql_create",
        "tombstone",
        "truncate",
        "message",
        "heartbeat",
        "read_incremental",
        "transaction_begin",
        "unwrapped_message",
        "unwrapped_null",
        "unwrapped_tombstone",
    ],
)
def test_other_records_are_left_to_python(name: str) -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    record = load_record("json_plain", name)
    assert _speedups.decode_envelope(record, options(True).native_context) is None
    both(record)


def test_toast_placeholders_in_every_form_become_unchanged() -> None:
    toast = DecodeOptions().toast
    after = {"id": 1, "txt": "__debezium_unavailable_value", "n": None}
    forms = [*toast.scalars, *toast.list_forms, toast.map_form]
    for i, form in enumerate(forms):
        if isinstance(form, bytes) or (isinstance(form, list) and isinstance(form[0], bytes)):
            continue  # JSON has no bytes; the Avro path is Python's
        after[f"c{i}"] = form
    event = both(envelope(after=after))
    assert isinstance(event, ChangeEvent) and event.after is not None
    assert all(v is UNCHANGED for k, v in event.after.items() if k.startswith("c") or k == "txt")


def envelope(
    *,
    after: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
    op: str = "c",
    sequence: Any = '["100","200"]',
    snapshot: Any = "false",
    tx_id: Any = 7,
    ts_ms: Any = 1_700_000_000_000,
    key: Any = None,
    table: str = "all_types",
    headers: tuple[tuple[str, bytes | None], ...] = (),
) -> RawRecord:
    value = {
        "before": before,
        "after": after,
        "source": {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": "crm",
            "ts_ms": ts_ms,
            "snapshot": snapshot,
            "db": "appdb",
            "sequence": sequence,
            "schema": "public",
            "table": table,
            "txId": tx_id,
            "lsn": 200,
        },
        "transaction": None,
        "op": op,
        "ts_ms": 1_700_000_000_100,
    }
    raw_key = compact(key if key is not None else {"id": 1})
    return RawRecord(f"crm.public.{table}", 0, 5, raw_key, compact(value), headers)


def compact(value: Any) -> bytes:
    """JsonConverter's compact JSON (the stdlib, for integers beyond 64 bits)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


INTS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-4_000_000, max_value=4_000_000),
    st.sampled_from(
        [
            0,
            -1,
            2**63 - 1,
            -(2**63),
            2**64,
            -(2**70),
            86_400_000_000,
            86_399_999_999,
            2_932_896,
            -719_162,
            -719_163,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            -62_135_596_800_000_000,
            -62_135_596_800_000_001,
            9_223_372_036_000_000_000,
            253_402_300_799_999,
            9_000_000_000_000_000,
        ]
    ),
)
TEXTS = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12).map(b64),
    st.sampled_from(
        [
            "",
            "=",
            "AB==",
            "AA==",
            "AQ=",
            "A===",
            "AAAA",
            "AeI6",
            "z8c=",
            "/////////w==",
            "gAAAAAAAAAAA",
            "AQIDBAUGBwgJ",
            "12.5",
            "-3.25",
            "1e5",
            "infinity",
            "-infinity",
            "2026-11-20T09:15:42.123456Z",
            "2026-11-20T09:15:42Z",
            "2026-11-20T09:15:42+02:00",
            "2026-11-20T09:15:42.1Z",
            "2026-02-30T00:00:00Z",
            '{"a": [1, 2]}',
            "[1",
            "null",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "__debezium_unavailable_value",
            "é",
            "AAAA AAAA",
        ]
    ),
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=False),
    TEXTS,
    st.builds(lambda s, v: {"scale": s, "value": v}, st.one_of(INTS, st.none(), st.text(max_size=3)), TEXTS),
    st.lists(st.integers(), max_size=3),
    st.just(["__debezium_unavailable_value"]),
)
COLUMNS = sorted(ALL_TYPES["public.all_types"])


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    after=st.dictionaries(st.sampled_from([*COLUMNS, "id", "other"]), VALUES, max_size=8),
    before=st.none() | st.dictionaries(st.sampled_from(COLUMNS), VALUES, max_size=4),
    op=st.sampled_from(["c", "u", "d", "r", "t", "m", "x"]),
    sequence=st.one_of(
        st.sampled_from(
            [
                '["100","200"]',
                '[null,"200"]',
                '["100", "200"]',
                '["","200"]',
                '["1","2","3"]',
                "[null,null]",
                '["0100","0200"]',
                '["18446744073709551615","18446744073709551616"]',
                "[]",
                '["-1","2"]',
            ]
        ),
        st.text(max_size=12),
        st.none(),
        st.integers(),
    ),
    snapshot=st.sampled_from(["false", "true", "first", "last", "incremental", True, False, None, "x", 1]),
    tx_id=st.sampled_from([7, None, "7", True, 2**70]),
    ts_ms=st.sampled_from([1_700_000_000_000, None, "1", 1.5, True]),
    key=st.sampled_from([{"id": 1}, {"d": 18000, "id": 2}, {"z": "2026-11-20T09:15:42Z"}, {"dec": "AeI6"}]),
)
def test_generated_envelopes_decode_the_same(**kwargs: Any) -> None:
    both(envelope(**kwargs), ALL_TYPES)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), name=st.sampled_from(["create", "update", "delete", "types", "toast", "read"]))
def test_mutated_fixture_bytes_decode_the_same(data: st.DataObject, name: str) -> None:
    record = load_record("json_plain", name)
    assert record.value is not None
    value = bytearray(record.value)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        i = data.draw(st.integers(min_value=0, max_value=len(value) - 1))
        value[i] = data.draw(st.sampled_from(b'0123456789"{}[],:- nulAZaz+/=.'))
    both(msgspec.structs.replace(record, value=bytes(value)))


def test_headers_of_a_key_change_are_read() -> None:
    headers = (("__debezium.oldkey", b'{"id":9}'), ("other", None))
    event = both(envelope(after={"id": 1}, headers=headers))
    assert isinstance(event, ChangeEvent)
    assert event.old_key == {"id": 9} and event.new_key is None


def test_snapshot_read_without_previous_commit_ranks_first() -> None:
    event = both(envelope(after={"id": 1}, op="r", sequence='[null,"200"]', snapshot="true"))
    assert isinstance(event, ChangeEvent) and event.position is not None
    assert event.op is Op.READ and event.snapshot and event.position.parts == (0, 200)
    streamed = both(envelope(after={"id": 1}, sequence='[null,"200"]', snapshot="false"))
    assert isinstance(streamed, ChangeEvent) and streamed.position is not None
    assert streamed.position.parts == (200, 200)


ISO = st.builds(
    lambda moment, digits, zone: (
        moment.strftime("%Y-%m-%dT%H:%M:%S")
        + (f".{moment.microsecond:06d}"[: digits + 1] if digits else "")
        + zone
    ),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.sampled_from([0, 1, 3, 6]),
    st.sampled_from(["Z", "Z", "+00:00", "-03:30"]),
)
B64 = st.binary(max_size=12).map(b64)
VALID = {
    "d": st.integers(min_value=-800_000, max_value=3_000_000),
    "ts": st.integers(min_value=-70_000_000_000_000, max_value=260_000_000_000_000),
    "us": st.integers(min_value=-70_000_000_000_000_000, max_value=260_000_000_000_000_000),
    "ns": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "z": ISO,
    "iso": ISO,
    "dec": B64,
    "dec0": B64,
    "decneg": B64,
    "vs": st.builds(lambda s, v: {"scale": s, "value": v}, st.integers(min_value=-5, max_value=40), B64),
    "t": st.integers(min_value=-1, max_value=86_400_000_001),
    "b": st.binary(max_size=40).map(b64),
    "bits": B64,
    "j": st.recursive(st.none() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=3)).map(
        lambda v: json.dumps(v)
    ),
    "u": st.uuids().map(str),
    "mt": st.integers(min_value=0, max_value=86_400_000),
    "nt": st.integers(min_value=0, max_value=86_400_000_000_000),
    "e": st.text(max_size=5),
}


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), op=st.sampled_from(["c", "u", "r"]), with_before=st.booleans())
def test_generated_valid_rows_take_the_fast_path_and_decode_the_same(
    data: st.DataObject, op: str, with_before: bool
) -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    def row() -> dict[str, Any]:
        names = data.draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=len(COLUMNS)))
        return {"id": 1, **{name: data.draw(VALID[name]) for name in names}}

    record = envelope(after=row(), before=row() if with_before else None, op=op)
    both(record, ALL_TYPES)
    slow = decode_event(record, options=options(False, ALL_TYPES))
    fast = _speedups.decode_envelope(record, options(True, ALL_TYPES).native_context)
    if isinstance(slow, ChangeEvent):  # every record Python decodes, except with rare values, is native
        assert fast is None or same(fast, slow)
    else:
        assert fast is None


DECIMAL_TEXTS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.integers().map(str),
    TEXTS,
    st.sampled_from(["1234", "-1234", "0", "AeI6", "AAAA", "NAN", "1E+3", "1.5E-7", "1E+99999", "12_3"]),
    st.sampled_from(["Infinity", "-Infinity", "NaN"]),  # JsonConverter's double specials
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    after=st.dictionaries(
        st.sampled_from(["dec", "dec0", "decneg"]), st.one_of(DECIMAL_TEXTS, VALUES), max_size=3
    ),
    mode=st.sampled_from(["precise", "string", "double"]),
)
def test_decimal_texts_decode_the_same_in_every_decimal_handling_mode(
    after: dict[str, Any], mode: str
) -> None:
    record = envelope(after={"id": 1, **after})
    fast, slow = (
        decode_event(
            record, options=DecodeOptions(column_types=ALL_TYPES, decimal_handling_mode=mode, native=n)
        )  # type: ignore[arg-type]
        for n in (True, False)
    )
    assert same(fast, slow), (fast, slow)


@pytest.mark.parametrize("mode", ["precise", "string"])
def test_string_mode_decimals_take_the_fast_path(mode: str) -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    record = envelope(after={"id": 1, "dec": "12.50", "dec0": "1234", "decneg": "-1E+3"})
    ctx = DecodeOptions(column_types=ALL_TYPES, decimal_handling_mode=mode).native_context  # type: ignore[arg-type]
    event = _speedups.decode_envelope(record, ctx)
    assert isinstance(event, ChangeEvent) and event.after is not None
    # "1234" is base64 in precise mode (Connect's bytes), the number itself in string mode
    expected = decimal.Decimal("1234") if mode == "string" else decimal.Decimal(-2658824)
    assert event.after["dec0"].as_tuple() == expected.as_tuple()
    assert same(
        event,
        decode_event(
            record, options=DecodeOptions(column_types=ALL_TYPES, native=False, decimal_handling_mode=mode)
        ),
    )  # type: ignore[arg-type]


class OtherRecord(msgspec.Struct, frozen=True):
    """RawRecord's fields in another order: the extension's slot offsets must follow the type."""

    headers: tuple[tuple[str, bytes | None], ...]
    value: bytes | None
    key: bytes | None
    offset: int
    partition: int
    topic: str

    @property
    def ref(self) -> Any:
        return RawRecord(self.topic, self.partition, self.offset, None, None).ref


def test_fields_are_read_from_any_record_type() -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    record = load_record("json_plain", "create")
    other = OtherRecord(
        record.headers, record.value, record.key, record.offset, record.partition, record.topic
    )
    ctx = options(True).native_context
    for _ in range(2):  # alternate types: the learned offsets follow
        first = _speedups.decode_envelope(record, ctx)
        second = _speedups.decode_envelope(other, ctx)
        assert isinstance(first, ChangeEvent) and same(first, second)


def test_the_start_up_line_says_whether_the_fast_path_serves_the_pipeline() -> None:
    from connector.decode.native import describe_fast_path

    assert describe_fast_path(options(True)).startswith("C fast path on")
    assert describe_fast_path(options(False)) == "C fast path turned off: Python decoder"
    assert describe_fast_path(DecodeOptions(format="avro")).startswith("Avro")


META_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2**64),
    st.sampled_from(
        [
            1,
            1.0,
            0,
            "true",
            "false",
            "True",
            "",
            "c",
            "u",
            "d",
            "r",
            "t",
            "m",
            "x",
            "public",
            "customers",
            "incremental",
            "first",
            "last",
            '["100","200"]',
            '[null,"200"]',
            '["1", "2"]',
            "123",
            "mysql-bin.000003",
            "7",
        ]
    ),
    st.text(max_size=6),
)
META_NAMES = [
    "__op",
    "__deleted",
    "__table",
    "__source_table",
    "__schema",
    "__source_schema",
    "__db",
    "__source_db",
    "__lsn",
    "__source_lsn",
    "__sequence",
    "__source_sequence",
    "__source_ts_ms",
    "__txId",
    "__source_txId",
    "__gtid",
    "__source_gtid",
    "__snapshot",
    "__source_snapshot",
    "__file",
    "__source_file",
    "__other",
]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    data=st.data(),
    meta=st.dictionaries(st.sampled_from(META_NAMES), META_VALUES, max_size=8),
    topic=st.sampled_from(["crm.public.all_types", "crm.public.customers", "all_types", "x.y", ".t", "t."]),
    key=st.sampled_from([b'{"id":1}', b'{"d":18000,"id":2}', b"null", b"[1]", None]),
    headers=st.sampled_from(
        [(), (("__debezium.newkey", b'{"id":9}'),), (("__debezium.newkey", b'{"id":9,"d":1985-07-14}'),)]
    ),
)
def test_generated_unwrapped_rows_decode_the_same(
    data: st.DataObject, meta: dict[str, Any], topic: str, key: bytes | None, headers: Any
) -> None:
    names = data.draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=6))
    row: dict[str, Any] = {"id": 1, **{name: data.draw(VALID[name] | VALUES) for name in names}}
    order = data.draw(st.permutations([*row, *meta]))
    value = {name: row[name] if name in row else meta[name] for name in order}
    record = RawRecord(topic, 0, 3, key, compact(value), headers)
    both(record, ALL_TYPES)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    data=st.data(), op=st.sampled_from(["c", "u", "d", "r"]), deleted=st.sampled_from(["false", "true", None])
)
def test_generated_valid_unwrapped_rows_take_the_fast_path(
    data: st.DataObject, op: str, deleted: Any
) -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    names = data.draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=len(COLUMNS)))
    value: dict[str, Any] = {"id": 1, **{name: data.draw(VALID[name]) for name in names}}
    value.update({"__op": op, "__table": "all_types", "__lsn": 200, "__source_ts_ms": 1_700_000_000_000})
    if deleted is not None:
        value["__deleted"] = deleted
    record = RawRecord("crm.public.all_types", 0, 3, b'{"id":1}', compact(value))
    slow = decode_event(record, options=options(False, ALL_TYPES))
    fast = _speedups.decode_envelope(record, options(True, ALL_TYPES).native_context)
    assert same(decode_event(record, options=options(True, ALL_TYPES)), slow)
    if isinstance(slow, ChangeEvent):
        assert fast is None or same(fast, slow)
    else:
        assert fast is None


# --- JsonConverter with schemas: {"schema": ..., "payload": ...} ---------------------------------

CONNECT_FIELDS: dict[str, dict[str, Any]] = {
    "d": {"type": "int32", "name": "io.debezium.time.Date"},
    "ts": {"type": "int64", "name": "io.debezium.time.Timestamp"},
    "us": {"type": "int64", "name": "io.debezium.time.MicroTimestamp"},
    "ns": {"type": "int64", "name": "io.debezium.time.NanoTimestamp"},
    "z": {"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
    "iso": {"type": "string", "name": "io.debezium.time.IsoTimestamp"},
    "dec": {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}},
    "dec0": {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "0"}},
    "decneg": {
        "type": "bytes",
        "name": "org.apache.kafka.connect.data.Decimal",
        "parameters": {"scale": "-3"},
    },
    "vs": {
        "type": "struct",
        "name": "io.debezium.data.VariableScaleDecimal",
        "fields": [{"type": "int32", "field": "scale"}, {"type": "bytes", "field": "value"}],
    },
    "t": {"type": "int64", "name": "io.debezium.time.MicroTime"},
    "b": {"type": "bytes"},
    "bits": {"type": "bytes", "name": "io.debezium.data.Bits"},
    "j": {"type": "string", "name": "io.debezium.data.Json"},
    "u": {"type": "string", "name": "io.debezium.data.Uuid"},
    "mt": {"type": "int32", "name": "io.debezium.time.Time"},
    "nt": {"type": "int64", "name": "io.debezium.time.NanoTime"},
    "e": {"type": "string", "name": "io.debezium.data.Enum"},
    "id": {"type": "int64"},
    "other": {"type": "string"},
    "arr": {"type": "array", "items": {"type": "int32", "name": "io.debezium.time.Date"}},
}


def connect_struct(columns: list[str], name: str, field: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "type": "struct",
        "fields": [{**CONNECT_FIELDS[c], "optional": True, "field": c} for c in columns],
        "optional": True,
        "name": name,
    }
    if field is not None:
        node["field"] = field
    return node


def wrapped(schema: Any, payload: Any) -> bytes:
    return compact({"schema": schema, "payload": payload})


def wrapped_envelope(after: dict[str, Any] | None, before: dict[str, Any] | None, op: str) -> RawRecord:
    record = envelope(after=after, before=before, op=op)
    payload = json.loads(record.value or b"null")
    columns = sorted({*(after or {}), *(before or {})} & set(CONNECT_FIELDS))
    value_schema = {
        "type": "struct",
        "fields": [
            connect_struct(columns, "crm.public.all_types.Value", "before"),
            connect_struct(columns, "crm.public.all_types.Value", "after"),
            {"type": "struct", "fields": [{"type": "string", "field": "connector"}], "field": "source"},
            {"type": "string", "field": "op"},
        ],
        "name": "crm.public.all_types.Envelope",
    }
    key_schema = connect_struct(["id"], "crm.public.all_types.Key")
    return msgspec.structs.replace(
        record, key=wrapped(key_schema, {"id": 1}), value=wrapped(value_schema, payload)
    )


CONNECT_COLUMNS = sorted(set(CONNECT_FIELDS) - {"id"})


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), op=st.sampled_from(["c", "u", "d", "r", "t"]), valid=st.booleans())
def test_generated_envelopes_with_schemas_decode_the_same(data: st.DataObject, op: str, valid: bool) -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    def value_of(name: str) -> Any:
        if name == "arr":
            return data.draw(st.lists(st.integers(min_value=-1000, max_value=1000) | st.none(), max_size=3))
        if name == "other" or not valid:
            return data.draw(VALUES)
        return data.draw(VALID[name])

    def row() -> dict[str, Any]:
        names = data.draw(st.lists(st.sampled_from(CONNECT_COLUMNS), unique=True, max_size=8))
        return {"id": 1, **{name: value_of(name) for name in names}}

    record = wrapped_envelope(row(), row() if data.draw(st.booleans()) else None, op)
    both(record, {})
    slow = decode_event(record, options=options(False, {}))
    fast = _speedups.decode_envelope(record, options(True, {}).native_context)
    assert fast is None or same(fast, slow)
    if not isinstance(slow, ChangeEvent):
        assert fast is None


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), meta=st.dictionaries(st.sampled_from(META_NAMES), META_VALUES, max_size=6))
def test_generated_unwrapped_rows_with_schemas_decode_the_same(
    data: st.DataObject, meta: dict[str, Any]
) -> None:
    names = data.draw(st.lists(st.sampled_from(CONNECT_COLUMNS), unique=True, max_size=6))
    row: dict[str, Any] = {"id": 1, **{name: data.draw(VALID.get(name, VALUES) | VALUES) for name in names}}
    value = {**row, **meta}
    schema = connect_struct(sorted(set(row) & set(CONNECT_FIELDS)), "crm.public.all_types.Value")
    schema["fields"] += [{"type": "string", "optional": True, "field": m} for m in meta]
    key = wrapped(connect_struct(["id"], "crm.public.all_types.Key"), {"id": 1})
    both(RawRecord("crm.public.all_types", 0, 3, key, wrapped(schema, value)), {})


def test_wrapped_fixtures_take_the_fast_path() -> None:
    from connector.decode import _speedups  # type: ignore[attr-defined]

    ctx = DecodeOptions().native_context
    for name in [
        "create",
        "update",
        "delete",
        "types",
        "toast",
        "read",
        "unwrapped_update",
        "unwrapped_delete",
    ]:
        record = load_record("json_schema", name)
        event = _speedups.decode_envelope(record, ctx)
        assert isinstance(event, ChangeEvent), name
        assert same(event, decode_event(record, options=DecodeOptions(native=False)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), name=st.sampled_from(["create", "update", "types", "unwrapped_update"]))
def test_mutated_schema_bytes_decode_the_same(data: st.DataObject, name: str) -> None:
    record = load_record("json_schema", name)
    assert record.value is not None
    value = bytearray(record.value)
    end = value.rfind(b',"payload":')
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        i = data.draw(st.integers(min_value=0, max_value=max(end, 1)))
        value[i] = data.draw(st.sampled_from(b'0123456789"{}[],:- nulAZaz+/=.'))
    fast = decode_event(msgspec.structs.replace(record, value=bytes(value)), options=DecodeOptions())
    slow = decode_event(
        msgspec.structs.replace(record, value=bytes(value)), options=DecodeOptions(native=False)
    )
    assert same(fast, slow), (fast, slow)
