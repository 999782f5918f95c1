"""Decoded payload -> `ChangeEvent`: Debezium envelopes, `ExtractNewRecordState` rows, tombstones.

Input is what JSON or Avro decoding produced (dicts of wire values) plus the row converter for the
record's schema; output is the normalized event, or `Ignored` for truncate/message events.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import orjson

from connector.decode.logical import Converter
from connector.decode.options import DecodeOptions, Ignored
from connector.decode.position import SNAPSHOT_READS, flat_position, source_position
from connector.errors import DecodeError
from connector.models import ChangeEvent, Op, RawRecord

__all__ = [
    "envelope_table",
    "flat_table",
    "from_envelope",
    "from_flat",
    "header_key",
    "is_envelope",
    "schema_of_topic",
    "table_of_topic",
    "tombstone",
    "topic_table",
]

logger = logging.getLogger(__name__)

_SNAPSHOT_TRUE: Final = SNAPSHOT_READS | {"incremental"}  # `source.snapshot` of any snapshot row
_OPS: Final = {op.value: op for op in Op}
_DELETED_TRUE: Final = ("true", True)


def topic_table(topic: str, options: DecodeOptions) -> str:
    """The table a topic carries: configured, else `prefix.schema.table` -> `schema.table`."""
    return table_of_topic(topic, options.topic_tables)


def table_of_topic(topic: str, topic_tables: Mapping[str, str]) -> str:
    """`topic_table` from the `topic -> table` map alone."""
    configured = topic_tables.get(topic)
    if configured:
        return configured
    parts = topic.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else topic


def schema_of_topic(topic: str, topic_tables: Mapping[str, str]) -> str | None:
    """The schema part of the topic's table (None when it names no schema)."""
    schema, dot, _ = table_of_topic(topic, topic_tables).rpartition(".")
    return schema if dot else None


def _topic_schema(topic: str, options: DecodeOptions) -> str | None:
    return schema_of_topic(topic, options.topic_tables)


def _is_snapshot(value: Any) -> bool:
    return value is True or (type(value) is str and value in _SNAPSHOT_TRUE)


def _op(value: Any) -> Op | None:
    return _OPS.get(value) if type(value) is str else None


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def is_envelope(value: Mapping[str, Any]) -> bool:
    """Spec section 6: an object with `op` and `source` is an envelope; anything else a flat row."""
    return "op" in value and "source" in value


def _row(raw: Any, what: str, conv: Converter | None, options: DecodeOptions) -> Any:
    if type(raw) is not dict:
        raise DecodeError(f"{what} is not an object")
    options.toast.substitute(raw)
    if conv is not None:
        conv(raw)
    return raw


def _key_from_row(
    record: RawRecord, row: Mapping[str, Any] | None, options: DecodeOptions
) -> Mapping[str, Any]:
    columns = options.key_columns.get(record.topic)
    if columns and row is not None and all(c in row for c in columns):
        return {c: row[c] for c in columns}
    return {}


def header_key(record: RawRecord, name: str) -> Mapping[str, Any] | None:
    """The key in a `__debezium.oldkey` / `__debezium.newkey` header, as parsed JSON (None if absent).

    A present, non-empty header that is not a JSON object gives an empty mapping, not None: its
    presence alone marks a primary-key change (routing's `moved`), and Connect's default
    `SimpleHeaderConverter` writes keys that are not JSON (unquoted dates, raw tabs in strings).
    """
    raw = record.header(name)
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if type(doc) is dict and len(doc) == 2 and "schema" in doc and "payload" in doc:
        doc = doc["payload"]
    return doc if type(doc) is dict else {}


def envelope_table(source: Any, topic: str, options: DecodeOptions) -> str:
    """`schema.table` (PostgreSQL) or `db.table` (MySQL) from the source block, else from the topic."""
    if type(source) is dict:
        table = source.get("table")
        if type(table) is str and table:
            namespace = source.get("schema") or source.get("db")
            return f"{namespace}.{table}" if type(namespace) is str and namespace else table
    return topic_table(topic, options)


def flat_table(row: Mapping[str, Any], topic: str, options: DecodeOptions) -> str:
    """An unwrapped row's table: `__table` (schema from `__schema`/`__db` or the topic), else the topic.

    `__db` is the schema of MySQL rows (those with a binlog `__file`) only: PostgreSQL's is the
    database name, and its schema comes from the topic.
    """
    table = row.get("__table", row.get("__source_table"))
    if type(table) is str and table:
        if row.get("__source_file") is not None or row.get("__file") is not None:  # MySQL
            schema = row.get("__schema", row.get("__source_schema", row.get("__db", row.get("__source_db"))))
        else:
            schema = row.get("__schema", row.get("__source_schema"))
        if type(schema) is not str or not schema:
            schema = _topic_schema(topic, options)
        return f"{schema}.{table}" if schema else table
    return topic_table(topic, options)


def from_envelope(
    record: RawRecord,
    value: dict[str, Any],
    *,
    table: str,
    key: Mapping[str, Any] | None,
    row_conv: Converter | None,
    options: DecodeOptions,
) -> ChangeEvent | Ignored:
    """A Debezium envelope (`before`, `after`, `source`, `op`, ...) as a `ChangeEvent`.

    Raises:
        DecodeError: no or unknown `op`, `source` or rows that are not objects, a create/update/read
            without `after`.
    """
    op_text = value.get("op")
    op = _OPS.get(op_text) if type(op_text) is str else None
    if op is None:
        raise DecodeError("envelope has no op" if "op" not in value else "envelope has an unknown op")
    if op is Op.TRUNCATE:
        return Ignored("truncate event", "truncate", record.ref)
    if op is Op.MESSAGE:
        return Ignored("logical decoding message", "message", record.ref)
    source = value.get("source")
    if type(source) is not dict:
        raise DecodeError("envelope source is not an object")
    before = value.get("before")
    after = value.get("after")
    for row, what in ((before, "before"), (after, "after")):
        if row is None:
            continue
        if type(row) is not dict:
            raise DecodeError(f"{what} is not an object")
        options.toast.substitute(row)
        if row_conv is not None:
            row_conv(row)
    if after is None and op is not Op.DELETE:
        raise DecodeError(f"{op.name.lower()} event has no after row")
    tx_id: str | None = None
    tx = source.get("txId")
    if type(tx) is int:  # PostgreSQL
        tx_id = str(tx)
    elif type(source.get("gtid")) is str:  # MySQL: `server_uuid:txn_no`, whole
        tx_id = source["gtid"]
    else:
        transaction = value.get("transaction")
        if type(transaction) is dict and type(transaction.get("id")) is str:
            tx_id = transaction["id"]
            if source.get("connector") == "postgresql":  # `<txId>:<lsn>`, the LSN changes per event
                tx_id = tx_id.partition(":")[0]
    if key is None:
        key = _key_from_row(record, after if after is not None else before, options)
        if op is Op.DELETE and before is None and not key:
            raise DecodeError("delete event has neither a key nor a before row")
    ts_ms = source.get("ts_ms")
    snapshot = source.get("snapshot")
    headers = record.headers
    return ChangeEvent(
        table,
        op,
        key,
        before,
        after,
        source_position(source),
        ts_ms if type(ts_ms) is int else None,
        record.ref,
        op is Op.READ or (snapshot is not None and _is_snapshot(snapshot)),
        tx_id,
        False,
        header_key(record, "__debezium.oldkey") if headers else None,
        header_key(record, "__debezium.newkey") if headers else None,
    )


def from_flat(
    record: RawRecord,
    value: dict[str, Any],
    *,
    table: str,
    key: Mapping[str, Any] | None,
    row_conv: Converter | None,
    options: DecodeOptions,
) -> ChangeEvent | Ignored:
    """A row flattened by `ExtractNewRecordState` as a `ChangeEvent`.

    `__deleted == "true"` or `__op == "d"` is a delete (the row becomes `before`); other rows are
    `after`, with op from `__op` (UPDATE when `__op` is absent: an upsert of unknown origin). All
    `__*` fields are removed from the row and read for position, ts_ms, snapshot and tx_id.
    """
    meta = {name: value.pop(name) for name in [n for n in value if n.startswith("__")]}
    op = _op(meta.get("__op"))
    if op is Op.TRUNCATE:
        return Ignored("truncate event", "truncate", record.ref)
    if op is Op.MESSAGE:
        return Ignored("logical decoding message", "message", record.ref)
    row = _row(value, "value", row_conv, options)
    if meta.get("__deleted") in _DELETED_TRUE or op is Op.DELETE:
        op, before, after = Op.DELETE, row, None
    else:
        op, before, after = (op or Op.UPDATE), None, row
    tx = meta.get("__source_txId", meta.get("__txId", meta.get("__source_gtid", meta.get("__gtid"))))
    snapshot = meta.get("__source_snapshot", meta.get("__snapshot"))
    ts_ms = meta.get("__source_ts_ms")
    headers = record.headers
    return ChangeEvent(  # positional: msgspec builds it faster than from keywords
        table,
        op,
        key if key is not None else _key_from_row(record, row, options),
        before,
        after,
        flat_position(meta),
        ts_ms if type(ts_ms) is int else None,
        record.ref,
        op is Op.READ or _is_snapshot(snapshot),
        str(tx) if type(tx) in (int, str) else None,
        False,
        header_key(record, "__debezium.oldkey") if headers else None,
        header_key(record, "__debezium.newkey") if headers else None,
    )


def tombstone(record: RawRecord, key: Mapping[str, Any] | None, options: DecodeOptions) -> ChangeEvent:
    """A Kafka tombstone (or an unwrap-SMT null value) as a delete of `key` with no rows.

    The `__debezium.oldkey` / `__debezium.newkey` headers of a primary-key change are kept: on a
    topic whose deletes arrive only as tombstones, the tombstone is the old key's delete.

    A table without a primary key gets a null record key, and Debezium (3.6.1's EventDispatcher)
    still follows each delete with a tombstone: null key, null value. It is a delete of the empty key:
    routing drops it as it drops any tombstone whose key names no customer (the `d` before it did
    the delete), and dead-letters it only on a topic whose deletes arrive as tombstones alone.
    """
    headers = record.headers
    return ChangeEvent(
        table=topic_table(record.topic, options),
        op=Op.DELETE,
        key=key if key is not None else {},
        before=None,
        after=None,
        position=None,
        ts_ms=None,
        ref=record.ref,
        tombstone=True,
        old_key=header_key(record, "__debezium.oldkey") if headers else None,
        new_key=header_key(record, "__debezium.newkey") if headers else None,
    )
