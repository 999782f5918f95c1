"""Test doubles shared by tests: a minimal Debezium JSON (schemas off) decoder for stage mechanics."""

from __future__ import annotations

from typing import Any

import orjson

from connector.models import ChangeEvent, DecodeFailure, Op, RawRecord, SourcePosition


def simple_json_decoder(record: RawRecord) -> ChangeEvent | DecodeFailure:
    """Schemaless JSON envelopes only; enough for stage tests that do not test decoding itself."""
    try:
        key = orjson.loads(record.key) if record.key else {}
        if record.value is None:
            return ChangeEvent("", Op.DELETE, key, None, None, None, None, record.ref, tombstone=True)
        env: dict[str, Any] = orjson.loads(record.value)
        src = env["source"]
        seq = orjson.loads(src["sequence"])
        pos = SourcePosition("pg", (int(seq[0] or 0), int(seq[1])))
        return ChangeEvent(
            f"{src['schema']}.{src['table']}",
            Op(env["op"]),
            key,
            env.get("before"),
            env.get("after"),
            pos,
            src.get("ts_ms"),
            record.ref,
        )
    except (ValueError, KeyError, TypeError):
        return DecodeFailure(record, "not a schemaless Debezium envelope")


class ManualClock:
    """A monotonic clock that moves only when told: `now` directly, or by `sleep(seconds)`."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
