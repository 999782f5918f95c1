"""Decode throughput per core vs. the bare parser on the same bytes (run: python benchmarks/bench_decode.py).

For each wire format the golden fixtures (customers create/update/delete, a customer_groups update,
an all-types row) are decoded in a loop. The baseline parses the same key and value bytes with the
bare library: `orjson.loads` for JSON, fastavro's `schemaless_reader` for Avro (framing skipped,
parsed schema given). Figures are events per CPU-second of this single-threaded process (best of
several interleaved rounds) and the ratio decode / baseline; the goal is >= 0.5.

For schemaless JSON a third line, "(minimal)", measures a hand-inlined decoder that does only what
any decoder must for these records (it is checked to produce the same events): the ratio a pure
Python decode cannot exceed on this machine.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from fastavro import schemaless_reader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connector.decode import DecodeOptions, decode_event
from connector.decode.native import AVAILABLE as NATIVE_BUILT
from connector.gctune import collector_tuning
from connector.models import ChangeEvent, Op, RawRecord, RecordRef, SourcePosition
from tests.unit.decode_fixtures import avro_lookup, load_record, options_for

CASES = ("create", "update", "delete", "groups_update", "types")
# rows unwrapped by ExtractNewRecordState (add.fields op,table,lsn,source.ts_ms; delete rewrite mode)
UNWRAPPED = tuple(f"unwrapped_{case}" for case in ("create", "update", "delete", "groups_delete", "read"))


def rates(fns: list[Callable[[], int]], rounds: int) -> list[float]:
    """Best events/CPU-second of each function; rounds alternate between them so load spikes on a
    shared machine hit decode and baseline alike."""
    best = [0.0] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.process_time()
            count = fn()
            elapsed = time.process_time() - start
            best[i] = max(best[i], count / elapsed)
    return best


def minimal_decoder(options: DecodeOptions) -> Callable[[RawRecord], ChangeEvent]:
    """A hand-inlined decode of these fixtures (PostgreSQL envelopes, schemaless JSON) that does only
    what any decoder must: parse key and value, check rows for TOAST placeholders, convert the
    configured column types, read the position, build the event. No format detection, no error
    handling, no unwrapped records: a lower bound for the real `decode_event`'s cost."""
    ops = {op.value: op for op in Op}
    toast = options.toast
    loads = orjson.loads

    def decode(record: RawRecord) -> ChangeEvent:
        value = loads(record.value)  # type: ignore[arg-type]
        key = loads(record.key)  # type: ignore[arg-type]
        source = value["source"]
        table = f"{source['schema']}.{source['table']}"
        conv = options.table_converter(table)
        before, after = value["before"], value["after"]
        for row in (before, after):
            if row is not None:
                toast.substitute(row)
                if conv is not None:
                    conv(row)
        first, _, second = source["sequence"][2:-2].partition('","')
        return ChangeEvent(
            table,
            ops[value["op"]],
            key,
            before,
            after,
            SourcePosition("pg", (int(first), int(second))),
            source["ts_ms"],
            RecordRef(record.topic, record.partition, record.offset),
            False,
            str(source["txId"]),
        )

    return decode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"C fast path built: {NATIVE_BUILT}")
    with collector_tuning.applied():
        measure(args)


def measure(args: argparse.Namespace) -> None:
    lookup = avro_lookup()
    print(f"{'format':<12} {'decode ev/s':>12} {'baseline ev/s':>14} {'ratio':>6}  baseline")
    runs = [(fmt, fmt, CASES) for fmt in ("json_schema", "json_plain", "avro")]
    runs += [(f"{fmt[:6]}_unwr", fmt, UNWRAPPED) for fmt in ("json_schema", "json_plain", "avro")]
    for name, fmt, cases in runs:
        samples = [load_record(fmt, case) for case in cases]
        records: list[RawRecord] = [samples[i % len(samples)] for i in range(args.records)]
        options = options_for(fmt)
        for record in samples:  # warm caches and check the figures measure real decoding
            assert isinstance(decode_event(record, options=options, schemas=lookup), ChangeEvent)

        def run_decode(records: list[RawRecord] = records, options=options) -> int:
            for record in records:
                decode_event(record, options=options, schemas=lookup)
            return len(records)

        if fmt == "avro":
            schemas = [
                (lookup.get(int.from_bytes(r.key[1:5])), lookup.get(int.from_bytes(r.value[1:5])))
                for r in samples
            ]
            pairs = [(records[i], schemas[i % len(samples)]) for i in range(len(records))]

            def run_base(pairs=pairs) -> int:
                for record, (key_schema, value_schema) in pairs:
                    buf = io.BytesIO(record.key)
                    buf.seek(5)
                    schemaless_reader(buf, key_schema, None)
                    buf = io.BytesIO(record.value)
                    buf.seek(5)
                    schemaless_reader(buf, value_schema, None)
                return len(pairs)

            label = "fastavro schemaless_reader (key + value)"
        else:

            def run_base(records: list[RawRecord] = records) -> int:
                loads = orjson.loads
                for record in records:
                    loads(record.key)
                    loads(record.value)
                return len(records)

            label = "orjson.loads (key + value)"
        fns = [run_decode, run_base]
        if fmt == "json_plain":
            python_options = DecodeOptions(column_types=options.column_types, native=False)

            def run_python(records: list[RawRecord] = records, options=python_options) -> int:
                for record in records:
                    decode_event(record, options=options, schemas=lookup)
                return len(records)

            fns.append(run_python)
        if name == "json_plain":
            minimal = minimal_decoder(options)
            for record in samples:  # the lower bound decodes the fixtures to the same events
                assert minimal(record) == decode_event(record, options=options, schemas=lookup)

            def run_minimal(records: list[RawRecord] = records, minimal=minimal) -> int:
                for record in records:
                    minimal(record)
                return len(records)

            fns.append(run_minimal)
        decode_rate, base_rate, *more = rates(fns, args.rounds)
        ratio = decode_rate / base_rate
        print(f"{name:<12} {decode_rate:>12,.0f} {base_rate:>14,.0f} {ratio:>6.2f}  {label}")
        if more:
            python_rate, *floor = more
            ratio = python_rate / base_rate
            print(
                f"{'  (python)':<12} {python_rate:>12,.0f} {base_rate:>14,.0f} {ratio:>6.2f}"
                "  the same decode_event with the C fast path off (native=False)"
            )
            for floor_rate in floor:
                ratio = floor_rate / base_rate
                print(
                    f"{'  (minimal)':<12} {floor_rate:>12,.0f} {base_rate:>14,.0f} {ratio:>6.2f}"
                    "  hand-inlined lower bound: parse, TOAST check, column types, position, event"
                )


if __name__ == "__main__":
    main()
