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

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from connector.decode import DecodeOptions, decode_event
from connector.decode import logical as logical_module
from connector.decode import native as native_module
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
