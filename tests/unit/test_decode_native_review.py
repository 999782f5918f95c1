"""Regressions found reviewing the C fast path (connector/decode/_speedups.c).

Each test fails on the extension as first written:
- `field()` reads RawRecord fields by member-descriptor offset without checking that the
  descriptor belongs to the record's type: a type borrowing another type's descriptors makes it
  read past the object (heap-buffer-overflow under ASan, segfault without).
- `decode_envelope` clears *every* exception (PyErr_Clear) when it gives up, so a KeyboardInterrupt
  raised while it runs a Python converter (a SIGINT delivered then) is silently lost, where the
  Python decoder lets it propagate (it only catches `Exception`).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from connector.decode import DecodeOptions, decode_event
from connector.decode import logical as logical_module
from connector.decode import native as native_module
from connector.models import ChangeEvent
from tests.unit.test_decode_native import envelope

pytestmark = pytest.mark.skipif(
    not native_module.AVAILABLE and not os.environ.get("CI"),
    reason="the C extension is not built here (no compiler when installed); CI requires it",
)


def test_record_type_with_borrowed_member_descriptors_does_not_crash() -> None:
    # Python refuses RawRecord's descriptors on another type (TypeError); the extension must not
    # read the other object's memory at RawRecord's slot offsets.
    script = textwrap.dedent(
        """
        from connector.decode import DecodeOptions, _speedups
        from connector.models import RawRecord

        class Borrowed:
            __slots__ = ()

        for name in ("topic", "partition", "offset", "key", "value", "headers"):
            setattr(Borrowed, name, RawRecord.__dict__[name])
        print(_speedups.decode_envelope(Borrowed(), DecodeOptions().native_context))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "None"


class _InterruptOnce:
    """A converter interrupted by a SIGINT on its first call (KeyboardInterrupt), fine afterwards."""

    def __init__(self, convert: Any) -> None:
        self.convert = convert
        self.calls = 0

    def __call__(self, value: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt
        return self.convert(value)


@pytest.mark.parametrize("native", [False, True])
def test_keyboard_interrupt_in_a_converter_propagates(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "io.debezium.time.Time"  # no native form: the extension calls the Python converter
    monkeypatch.setitem(logical_module._FIXED, name, _InterruptOnce(logical_module._FIXED[name]))
    options = DecodeOptions(column_types={"public.all_types": {"mt": "time"}}, native=native)
    assert (options.native_context is not None) is native
    record = envelope(after={"id": 1, "mt": 1000})
    with pytest.raises(KeyboardInterrupt):
        decode_event(record, options=options)


def test_a_field_replaced_on_the_record_type_is_read_through_the_new_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the learned slot offsets follow the type's version: a patched class attribute is honoured
    from connector.decode import _speedups  # type: ignore[attr-defined]
    from connector.models import ChangeEvent, RawRecord

    ctx = DecodeOptions().native_context
    record = envelope(after={"id": 1})
    other = envelope(after={"id": 2})
    first = _speedups.decode_envelope(record, ctx)
    assert isinstance(first, ChangeEvent) and first.after == {"id": 1}
    other_value = other.value
    monkeypatch.setattr(RawRecord, "value", property(lambda self: other_value))
    patched = _speedups.decode_envelope(record, ctx)
    assert isinstance(patched, ChangeEvent) and patched.after == {"id": 2}


def test_the_value_plan_stays_alive_while_python_code_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # `unwrap` hands out the value's plan borrowed from the ctx cache (C_ROW_PLANS), then runs Python
    # code (the key's schema_plan and converters) before decode_env reads the plan. Python code may
    # evict the cache meanwhile: another thread decoding with the same DecodeOptions clears it at
    # 512 schemas. The evicted plan is freed and its memory reused (here: by the next dict made),
    # so the extension converts the row with whatever lives there (use-after-free under ASan).
    from tests.unit.test_decode_native import connect_struct, same, wrapped, wrapped_envelope

    options = DecodeOptions(native=True)
    ctx = options.native_context
    assert ctx is not None
    row_plans = ctx[24]
    assert isinstance(row_plans, dict)
    reused: list[Any] = []
    time_conv = logical_module._FIXED["io.debezium.time.Time"]

    def evicting(value: Any) -> Any:
        if not reused:
            row_plans.clear()  # what another thread's 513th schema does
            reused.append({"d": ("d", 0, 0, lambda v: "freed plan")})
        return time_conv(value)

    monkeypatch.setitem(logical_module._FIXED, "io.debezium.time.Time", evicting)
    record = wrapped_envelope({"id": 1, "d": 19000}, None, "c")
    key_schema = connect_struct(["id"], "crm.public.all_types.Key")
    key_schema["fields"][0].update(name="io.debezium.time.Time", type="int32")
    record = record.__class__(
        record.topic,
        record.partition,
        record.offset,
        wrapped(key_schema, {"id": 1000}),
        record.value,
        record.headers,
    )
    fast = decode_event(record, options=options)
    slow = decode_event(record, options=DecodeOptions(native=False))
    assert same(fast, slow), (fast, slow)


def test_threads_sharing_options_across_schema_cache_evictions() -> None:
    # The real trigger of the borrowed-plan bug above: two threads decode with one DecodeOptions,
    # one of them through more than 512 value schemas (the cache is cleared), while the other holds
    # a borrowed plan across Python code (its key's Python converter). Crashes (SIGSEGV) or gives
    # wrong rows on the extension as written; no reentrancy or patching involved.
    script = textwrap.dedent(
        """
        import json, sys, threading, time
        import msgspec
        from connector.decode import DecodeOptions, _speedups, decode_event
        from tests.unit.test_decode_native import (
            CONNECT_FIELDS, connect_struct, same, wrapped, wrapped_envelope,
        )

        ctx = DecodeOptions().native_context
        cols = ["d", "ts", "us", "t", "u", "mt", "nt", "arr"]
        row = {"id": 1, "d": 5, "ts": 1, "us": 1, "t": 5, "u": "x", "mt": 5, "nt": 7, "arr": [1, 2]}

        def record(extra):
            base = wrapped_envelope(row, None, "c")
            value = json.loads(base.value)
            for node in value["schema"]["fields"][:2]:
                node["fields"] = [{**CONNECT_FIELDS[c], "optional": True, "field": c} for c in cols]
                node["fields"] += [{"type": "int32", "field": f"x{k}"} for k in range(extra)]
            key_schema = connect_struct(["id"], "K")
            key_schema["fields"][0].update(name="io.debezium.time.Time", type="int32")
            return msgspec.structs.replace(
                base, key=wrapped(key_schema, {"id": 1000}), value=wrapped(value["schema"], value["payload"])
            )

        main = record(0)
        expected = decode_event(main, options=DecodeOptions(native=False))
        others = [record(k) for k in range(1, 700)]
        stop = time.monotonic() + 8
        wrong = []

        def steady():
            while time.monotonic() < stop:
                event = _speedups.decode_envelope(main, ctx)
                if event is None or not same(event, expected):
                    wrong.append(event)

        def churn():
            while time.monotonic() < stop:
                for other in others:
                    _speedups.decode_envelope(other, ctx)

        sys.setswitchinterval(1e-6)
        threads = [threading.Thread(target=steady), threading.Thread(target=churn)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(len(wrong))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "0"


def test_a_schema_member_after_the_payload_does_not_poison_the_plan_cache() -> None:
    # The cache key `raw[10:start]` (start: the last `,"payload":`) is not the text of the schema
    # orjson keeps when a second "schema" member follows the payload (last one wins). The
    # extension then caches schema B's plan under schema A's text and applies it to every later,
    # well-formed record with schema A (here: a Date column read as a MicroTimestamp).
    import json

    import msgspec

    from tests.unit.test_decode_native import same, wrapped_envelope

    base = wrapped_envelope({"id": 1, "d": 5}, None, "c")
    assert base.value is not None
    doc = json.loads(base.value)
    schema_a = json.dumps(doc["schema"], separators=(",", ":"))
    schema_b = schema_a.replace("io.debezium.time.Date", "io.debezium.time.MicroTimestamp")
    payload = json.dumps(doc["payload"], separators=(",", ":"))
    odd_text = f'{{"schema":{schema_a},"payload":{payload},"schema":{schema_b}}}'
    odd = msgspec.structs.replace(base, value=odd_text.encode())
    good = msgspec.structs.replace(base, value=f'{{"schema":{schema_a},"payload":{payload}}}'.encode())
    options = DecodeOptions(native=True)
    decode_event(odd, options=options)
    fast = decode_event(good, options=options)
    slow = decode_event(good, options=DecodeOptions(native=False))
    assert same(fast, slow), (fast, slow)


def test_the_python_decoder_does_not_cache_a_plan_under_another_schemas_text() -> None:
    # the same trap in jsonconv's converter cache (a schema name unique to this test: a cold cache)
    import json

    import msgspec

    from tests.unit.test_decode_native import wrapped_envelope

    base = wrapped_envelope({"id": 1, "d": 5}, None, "c")
    assert base.value is not None
    doc = json.loads(base.value)
    schema_a = json.dumps(doc["schema"], separators=(",", ":")).replace("all_types.Envelope", "cold.Envelope")
    schema_b = schema_a.replace("io.debezium.time.Date", "io.debezium.time.MicroTimestamp")
    payload = json.dumps(doc["payload"], separators=(",", ":"))
    odd = msgspec.structs.replace(
        base, value=f'{{"schema":{schema_a},"payload":{payload},"schema":{schema_b}}}'.encode()
    )
    good = msgspec.structs.replace(base, value=f'{{"schema":{schema_a},"payload":{payload}}}'.encode())
    python = DecodeOptions(native=False)
    decode_event(odd, options=python)
    event = decode_event(good, options=python)
    assert isinstance(event, ChangeEvent) and event.after is not None
    assert event.after["d"] == datetime.date(1970, 1, 6)
