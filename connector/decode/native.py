"""The native fast path of `decode_event` (`connector/decode/_speedups.c`) and the context it reads.

The extension decodes the common records of a JSON pipeline (JsonConverter with or without
schemas), PostgreSQL envelopes and rows unwrapped by `ExtractNewRecordState` (with `add.fields`), to
the very `ChangeEvent` the Python decoder gives, and answers None for everything else (tombstones,
Avro, MySQL, truncates, incremental-snapshot rows, values that do not convert...), which the Python
decoder then handles alone: it stays the reference and the only source of failures. With schemas,
each schema text is planned once (`schema_plan`, cached by the extension).

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
from connector.decode.jsonconv import connect_converter, is_text_of, row_schema
from connector.decode.logical import IDENTITY_NAMES, DecimalMode, logical_converter, resolve_alias
from connector.decode.position import SNAPSHOT_READS
from connector.errors import DecodeError
from connector.models import UNCHANGED, ChangeEvent, Op, RawRecord, RecordRef, SourcePosition

if TYPE_CHECKING:
    from connector.decode.options import DecodeOptions

__all__ = [
    "AVAILABLE",
    "KINDS",
    "NativeDecode",
    "describe_fast_path",
    "native_context",
    "native_decoder",
    "schema_plan",
]

logger = logging.getLogger(__name__)

_LAYOUT: Final = 5  # of the context and plans below, and of results; `_speedups.LAYOUT` must match

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
    # io.debezium.data.Json: by its Python converter (`logical._json_text`), which keeps exact numbers
    "io.debezium.data.Uuid": 11,
}

_OPS: Final = {op.value: op for op in (Op.CREATE, Op.UPDATE, Op.DELETE, Op.READ)}
_SNAPSHOT_TRUE: Final = SNAPSHOT_READS | {"incremental"}


def _plan(
    columns: Mapping[str, str], decimal_mode: DecimalMode = "precise"
) -> dict[str, tuple[str, int, int, Callable[[Any], Any]]]:
    """Column -> (column, kind, decimal scale, Python converter) for each converted column of a table.

    In decimal.handling.mode=string or double a Decimal text is never base64, which the extension's
    Decimal kind would try first: such columns take their Python converter.
    """
    plan = {}
    # the column names as orjson's key cache holds them: the rows' dict lookups then match by identity
    names = {name: name for name in orjson.loads(orjson.dumps(dict.fromkeys(columns, 0)))}
    for column, type_name in columns.items():
        name, params = resolve_alias(type_name)
        if name in IDENTITY_NAMES:
            continue
        conv = logical_converter(name, params, decimal_mode=decimal_mode)  # validated by DecodeOptions
        if conv is None:
            continue
        kind = KINDS.get(name, 0)
        scale = 0
        if name == _DECIMAL:
            scale = int(params.get("scale", 0))
            if decimal_mode in ("string", "double"):
                kind = 0
        column = names.get(column, column)
        plan[column] = (column, kind, scale, conv)
    return plan


def native_context(options: DecodeOptions) -> tuple[Any, ...] | None:
    """What `_speedups.decode_envelope` reads (order fixed by the C enum).

    None when the fast path cannot apply: extension missing, turned off, or Avro forced.
    """
    if _speedups is None or not options.native or options.format == "avro":
        return None
    toast = options.toast
    mode = options.decimal_handling_mode
    plans = {table: plan for table, columns in options.column_types.items() if (plan := _plan(columns, mode))}
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
        schema_plan,
        {},  # the extension's cache of schema_plan for value schemas, by schema text
        {},  # ... and for key schemas
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
        return "C fast path on for JSON PostgreSQL envelopes and unwrapped rows (others: Python)"
    if _speedups is None:
        return "C fast path not built (no C compiler when installed): Python decoder, same results, slower"
    if not options.native:
        return "C fast path turned off: Python decoder"
    return "Avro: Python decoder (the C fast path is for JSON)"


_DECIMAL: Final = "org.apache.kafka.connect.data.Decimal"

Plan = dict[str, tuple[str, int, int, Callable[[Any], Any]]]


def schema_plan(schema: Any, as_row: bool, text: bytes | None = None) -> Plan | bool | None:
    """The extension's plan for a JsonConverter schema (a value's when `as_row`, else a key's).

    Same conversions as the converter `jsonconv` builds from the schema: a top-level column of a
    logical type the extension converts natively gets its kind, any other converted column (nested
    structs, arrays, maps, other logical types) its Python converter. None: nothing to convert.
    False: a schema the Python decoder must read (invalid, not a struct, a column named twice, or
    `text`, the cache key, not being this schema's text).
    """
    if text is not None and not is_text_of(text, schema):
        return False
    node = row_schema(schema) if as_row else schema
    try:
        conv = connect_converter(node)
    except DecodeError:
        return False
    if conv is None:
        return None
    if not isinstance(node, Mapping) or node.get("type") != "struct":
        return False
    name = node.get("name")
    if isinstance(name, str):
        params = node.get("parameters")
        if logical_converter(name, params if isinstance(params, Mapping) else {}) is not None:
            return False  # the whole row is one logical value (a struct type with a name)
    plan: Plan = {}
    for field in node["fields"]:
        field_conv = connect_converter(field)
        if field_conv is None:
            continue
        column = field["field"]
        if column in plan:
            return False
        kind, scale = 0, 0
        field_name = field.get("name")
        params = field.get("parameters")
        params = params if isinstance(params, Mapping) else {}
        if isinstance(field_name, str) and logical_converter(field_name, params) is not None:
            kind = KINDS.get(field_name, 0)
            if field_name == _DECIMAL:
                scale = int(params.get("scale", 0))
        elif field.get("type") == "bytes":
            kind = KINDS["bytes"]
        plan[column] = (column, kind, scale, field_conv)
    if not plan:
        return None
    # the column names as orjson's key cache holds them (see _plan)
    names = {n: n for n in orjson.loads(orjson.dumps(dict.fromkeys(plan, 0)))}
    return {names.get(c, c): (names.get(c, c), *rest) for c, (_, *rest) in plan.items()}
