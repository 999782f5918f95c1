"""The decode step: one Kafka record -> `ChangeEvent`, `Ignored` or `DecodeFailure`.

Pure, except for the schema lookup seam (Avro writer schemas by id). Values are passed on as sent:
decode cannot tell a column default that a converter substituted for a NULL (the default-value
trap, spec section 2.3) from a real value, nor filler values in a REPLICA IDENTITY DEFAULT `before`;
the producer side must set `replace.null.with.default=false` / `ignore.default.for.nullables=true`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from connector.decode.avro import SchemaLookup, read_avro
from connector.decode.envelope import (
    envelope_table,
    flat_table,
    from_envelope,
    from_flat,
    is_envelope,
    tombstone,
    topic_table,
)
from connector.decode.jsonconv import parse_json, plain_numbers
from connector.decode.logical import Converter, InexactNumber
from connector.decode.native import native_decoder
from connector.decode.options import DecodeOptions, Ignored
from connector.errors import DecodeError, SchemaRegistryUnavailableError
from connector.models import ChangeEvent, DecodeFailure, RawRecord

__all__ = ["decode_event"]

logger = logging.getLogger(__name__)

_TX_STATUS = ("BEGIN", "END")
_native = native_decoder()  # used only when DecodeOptions.native_context is set, i.e. it exists


def decode_event(
    record: RawRecord, *, options: DecodeOptions, schemas: SchemaLookup | None = None
) -> ChangeEvent | DecodeFailure | Ignored:
    """Decode one Debezium record (JSON with or without schemas, or Confluent Avro).

    Never raises on bad input: garbage becomes a `DecodeFailure` whose `reason` holds no record
    content. Truncate and message events, heartbeats and transaction metadata are `Ignored`.

    Args:
        record: the consumed record.
        options: format and the facts the bytes may not carry (see `DecodeOptions`).
        schemas: writer schemas by id, needed for Avro.

    Returns:
        The event, an `Ignored`, or a `DecodeFailure` (unknown Avro schema ids included).

    Raises:
        SchemaRegistryUnavailableError: the registry did not answer; the caller waits and retries
            the same record (never skips it, never sends it to the DLQ).
    """
    ctx = options.native_context
    if ctx is not None:
        event = _native(record, ctx)  # type: ignore[misc]
        if event is not None:
            return event
    try:
        try:
            return _decode(record, options, schemas, False)
        except InexactNumber:
            # A Decimal column held a JSON number (decimal.format=NUMERIC) with more digits than
            # orjson's float keeps: read the record again with every number exact.
            return _decode(record, options, schemas, True)
    except SchemaRegistryUnavailableError:
        raise
    except DecodeError as exc:
        return DecodeFailure(record, exc.reason, error_class=type(exc).__name__)
    except RecursionError:
        return DecodeFailure(record, "value is nested too deeply")
    except Exception as exc:  # the contract is total: no record may crash the pipeline
        logger.warning("unexpected %s while decoding %s", type(exc).__name__, record.ref.as_dict())
        return DecodeFailure(record, f"unexpected {type(exc).__name__} while decoding")


def _read(
    raw: bytes,
    options: DecodeOptions,
    schemas: SchemaLookup | None,
    *,
    what: str,
    as_row: bool,
    exact: bool = False,
) -> tuple[Any, Converter | None, bool, int]:
    """(datum, converter from its schema or None, whether it carried a schema, JSON payload offset)."""
    fmt = options.format
    if fmt == "avro" or (fmt == "auto" and raw[:1] == b"\x00"):
        if schemas is None:
            raise DecodeError(f"{what} is Avro but no schema registry is configured")
        datum, conv = read_avro(raw, schemas, what=what, as_row=as_row)
        return datum, conv, True, -1
    return parse_json(raw, what=what, as_row=as_row, exact=exact)


def _key(
    record: RawRecord,
    options: DecodeOptions,
    schemas: SchemaLookup | None,
    table_conv: Converter | None,
    exact: bool = False,
) -> Mapping[str, Any] | None:
    """The decoded key; schemaless keys use the table's configured converter `table_conv`."""
    if record.key is None:
        return None
    datum, conv, has_schema, _ = _read(record.key, options, schemas, what="key", as_row=False, exact=exact)
    if datum is None:
        return None
    if type(datum) is not dict:
        raise DecodeError("key is not an object")
    if not has_schema:
        conv = table_conv
    if conv is not None:
        conv(datum)
    return datum


def _tombstone_key(
    record: RawRecord, options: DecodeOptions, schemas: SchemaLookup | None, exact: bool
) -> Mapping[str, Any] | None:
    table_conv = options.table_converter(topic_table(record.topic, options))
    key = _key(record, options, schemas, table_conv, exact)
    return plain_numbers(key) if exact else key


def _decode(
    record: RawRecord, options: DecodeOptions, schemas: SchemaLookup | None, exact: bool
) -> ChangeEvent | Ignored:
    if record.topic.startswith(options.heartbeat_topic_prefix):
        return Ignored("heartbeat topic", "heartbeat", record.ref)
    raw = record.value
    if raw is None:
        return tombstone(record, _tombstone_key(record, options, schemas, exact), options)
    payload, conv, has_schema, _ = _read(raw, options, schemas, what="value", as_row=True, exact=exact)
    if payload is None:  # ExtractNewRecordState "tombstone" mode: `null` / {"schema":..,"payload":null}
        return tombstone(record, _tombstone_key(record, options, schemas, exact), options)
    if type(payload) is not dict:
        raise DecodeError("value is not an object")
    if record.topic.endswith(".transaction") and payload.get("status") in _TX_STATUS and "op" not in payload:
        return Ignored("transaction metadata", "transaction", record.ref)
    if is_envelope(payload):
        build = from_envelope
        table = envelope_table(payload["source"], record.topic, options)
    else:
        build = from_flat
        table = flat_table(payload, record.topic, options)
    table_conv = options.table_converter(table)
    if not has_schema:
        conv = table_conv
    key = _key(record, options, schemas, table_conv, exact)
    event = build(record, payload, table=table, key=key, row_conv=conv, options=options)
    if exact and isinstance(event, ChangeEvent):
        plain_numbers(event.key)
        plain_numbers(event.before)
        plain_numbers(event.after)
    return event
