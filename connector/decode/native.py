"""The native fast path of `decode_event` (`connector/decode/_speedups.c`) and the context it reads.

The extension decodes the common records of a JSON pipeline without schemas, PostgreSQL envelopes
and rows unwrapped by `ExtractNewRecordState` (with `add.fields`), to the very `ChangeEvent` the
Python decoder gives, and answers None for everything else (tombstones, wrappers with schemas, Avro,
MySQL, truncates, incremental-snapshot rows, values that do not convert...), which the Python decoder
then handles alone: it stays the reference and the only source of failures.

The extension is built by `pip install` when a C compiler and the Python headers are present
(`setup.py`, optional); without it every record takes the Python path, with the same results.
`DecodeOptions(native=False)` turns it off (tests compare both paths; the benchmark prints both).
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import orjson

from connector.decode.envelope import header_key, schema_of_topic, table_of_topic
from connector.decode.logical import IDENTITY_NAMES, logical_converter, resolve_alias
from connector.decode.position import SNAPSHOT_READS
from connector.models import UNCHANGED, ChangeEvent, Op, RawRecord, RecordRef, SourcePosition

if TYPE_CHECKING:
    from connector.decode.options import DecodeOptions

__all__ = ["AVAILABLE", "KINDS", "NativeDecode", "describe_fast_path", "native_context", "native_decoder"]

logger = logging.getLogger(__name__)

_LAYOUT: Final = 3  # of the context and plans below; `_speedups.LAYOUT` must match

_speedups: ModuleType | None
try:
    from connector.decode import _speedups
except ImportError:  # no C compiler when the package was installed: the Python decoder does it all
    _speedups = None
if _speedups is not None and getattr(_speedups, "LAYOUT", None) != _LAYOUT:
    logger.warning("connector.decode._speedups is a stale build (reinstall the package): not used")
    _speedups = None

AVAILABLE: Final = _speedups is not None
"""Whether the extension was built for this interpreter."""

NativeDecode = Callable[[RawRecord, tuple[Any, ...]], ChangeEvent | None]

# Column kinds the extension converts natively (the numbers of `_speedups.c`); the others call
# their Python converter from C. Names are the resolved Connect/Debezium type names.
KINDS: Final[dict[str, int]] = {
    "io.debezium.time.Date": 1,
    "org.apache.kafka.connect.data.Date": 1,
    "io.debezium.time.Timestamp": 2,
    "org.apache.kafka.connect.data.Timestamp": 2,
    "io.debezium.time.MicroTimestamp": 3,
    "io.debezium.time.NanoTimestamp": 4,
    "io.debezium.time.ZonedTimestamp": 5,
    "io.debezium.time.IsoTimestamp": 5,
    "org.apache.kafka.connect.data.Decimal": 6,
    "io.debezium.data.VariableScaleDecimal": 7,
    "io.debezium.time.MicroTime": 8,
    "bytes": 9,
    "io.debezium.data.Bits": 9,
    "io.debezium.data.Json": 10,
    "io.debezium.data.Uuid": 11,
}

_OPS: Final = {op.value: op for op in (Op.CREATE, Op.UPDATE, Op.DELETE, Op.READ)}
_SNAPSHOT_TRUE: Final = SNAPSHOT_READS | {"incremental"}


def _plan(columns: Mapping[str, str]) -> dict[str, tuple[str, int, int, Callable[[Any], Any]]]:
    """Column -> (column, kind, decimal scale, Python converter) for each converted column of a table."""
    plan = {}
    # the column names as orjson's key cache holds them: the rows' dict lookups then match by identity
    names = {name: name for name in orjson.loads(orjson.dumps(dict.fromkeys(columns, 0)))}
    for column, type_name in columns.items():
        name, params = resolve_alias(type_name)
        if name in IDENTITY_NAMES:
            continue
        conv = logical_converter(name, params)  # validated by DecodeOptions already
        if conv is None:
            continue
        scale = int(params.get("scale", 0)) if name == "org.apache.kafka.connect.data.Decimal" else 0
        column = names.get(column, column)
        plan[column] = (column, KINDS.get(name, 0), scale, conv)
    return plan


def native_context(options: DecodeOptions) -> tuple[Any, ...] | None:
    """What `_speedups.decode_envelope` reads (order fixed by the C enum).

    None when the fast path cannot apply: extension missing, turned off, or Avro forced.
    """
    if _speedups is None or not options.native or options.format == "avro":
        return None
    toast = options.toast
    plans = {table: plan for table, columns in options.column_types.items() if (plan := _plan(columns))}
    return (
        orjson.loads,
        tuple(toast.scalars),
        toast.list_forms,
        toast.map_form,
        UNCHANGED,
        plans,
        _OPS,
        _SNAPSHOT_TRUE,
        SNAPSHOT_READS,
        ChangeEvent,
        SourcePosition,
        RecordRef,
        "pg",
        header_key,
        decimal.Decimal,
        dt.datetime.fromisoformat,
        Op.READ,
        Op.DELETE,
        options.heartbeat_topic_prefix,
        Op.UPDATE,
        "pg-lsn",
        _topic_names(dict(options.topic_tables)),
        {},  # the extension's cache of the callable above, per topic
    )


def _topic_names(topic_tables: dict[str, str]) -> Callable[[str], tuple[str, str | None]]:
    """Topic -> (its table, its schema), as `envelope.flat_table` reads them.

    It holds a copy of the map, not the options, which hold the context: no reference cycle.
    """

    def names(topic: str) -> tuple[str, str | None]:
        return table_of_topic(topic, topic_tables), schema_of_topic(topic, topic_tables)

    return names


def native_decoder() -> NativeDecode | None:
    """`_speedups.decode_envelope`, or None without the extension."""
    if _speedups is None:
        return None
    decode: NativeDecode = _speedups.decode_envelope
    return decode


def describe_fast_path(options: DecodeOptions) -> str:
    """One line for the start-up log: whether the C fast path serves this pipeline, and if not why."""
    if options.native_context is not None:
        return "C fast path on for schemaless JSON PostgreSQL envelopes and unwrapped rows (others: Python)"
    if _speedups is None:
        return "C fast path not built (no C compiler when installed): Python decoder, same results, slower"
    if not options.native:
        return "C fast path turned off: Python decoder"
    return "Avro: Python decoder (the C fast path is for schemaless JSON)"
