"""`yespo-connector decode`: print Debezium records as normalized events, one JSON object per line.

Input is either kcat `-J` lines (`--input FILE` or `-` for stdin) or a topic read from the beginning
(`--from-topic T --max N`, a throwaway consumer, read_committed). Values are rendered by
`connector.jsonvalues`; failures print `{"error": reason, ...}` and ignored records `{"ignored": kind}`,
as does an event JSON cannot hold (an integer beyond 64 bits, nesting deeper than 255 levels). Input
is read as bytes: a line that is not UTF-8 is one error line. kcat `-J` prints record bytes as text, so
`--input` suits JSON topics; read Avro with `--from-topic`.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer

from connector.commands._confighelp import config_keys_epilog
from connector.config import Settings, load_settings
from connector.decode import DecodeOptions, Ignored, SchemaLookup, decode_event
from connector.errors import KafkaError
from connector.jsonvalues import json_row
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from connector.registry import SchemaRegistryClient, wait_for_registry

__all__ = ["kcat_records", "register", "render", "topic_records", "unwritable"]

logger = logging.getLogger(__name__)


def render(result: ChangeEvent | DecodeFailure | Ignored, record: RawRecord) -> dict[str, Any]:
    """One output line (as a dict) for a decode result."""
    where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    if isinstance(result, DecodeFailure):
        return {"error": result.reason, **where}
    if isinstance(result, Ignored):
        return {"ignored": result.kind, **where}
    doc: dict[str, Any] = {
        "op": result.op.value,
        "table": result.table,
        "key": json_row(result.key),
        "before": json_row(result.before),
        "after": json_row(result.after),
        "position": result.position.as_json() if result.position is not None else None,
        "ts_ms": result.ts_ms,
        "snapshot": result.snapshot,
        "tx_id": result.tx_id,
        **where,
    }
    if result.tombstone:
        doc["tombstone"] = True
    if result.old_key is not None:
        doc["old_key"] = json_row(result.old_key)
    if result.new_key is not None:
        doc["new_key"] = json_row(result.new_key)
    return doc


def _text_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError("key/payload must be a string or null")


def kcat_records(lines: Iterable[bytes | str]) -> Iterator[RawRecord | str]:
    """Records from kcat `-J` lines; a line that is not one yields a short error text instead.

    Give the lines as bytes (a file opened "rb", `sys.stdin.buffer`): a line that is not UTF-8 is
    then one error, not a crash of the whole read.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            raw_headers = doc.get("headers") or []
            if isinstance(raw_headers, dict):
                headers = [(str(k), _text_bytes(v)) for k, v in raw_headers.items()]
            else:  # kcat: ["name", "value", "name", "value", ...]
                headers = [
                    (str(raw_headers[i]), _text_bytes(raw_headers[i + 1]))
                    for i in range(0, len(raw_headers) - 1, 2)
                ]
            yield RawRecord(
                topic=str(doc.get("topic") or ""),
                partition=int(doc.get("partition") or 0),
                offset=int(doc.get("offset") or 0),
                key=_text_bytes(doc.get("key")),
                value=_text_bytes(doc.get("payload")),
                headers=tuple(headers),
                timestamp_ms=doc.get("ts") if isinstance(doc.get("ts"), int) else None,
            )
        except (orjson.JSONDecodeError, ValueError, TypeError):
            yield f"input line {number} is not a kcat -J record"


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode("utf-8") if isinstance(value, str) else value


def _header_pairs(headers: Any) -> list[tuple[str, str | bytes | None]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


@contextmanager
def _kafka_errors() -> Iterator[None]:
    from confluent_kafka import KafkaException

    try:
        yield
    except KafkaException as exc:
        raise KafkaError(f"Kafka error while reading: {exc}") from exc


def topic_records(
    settings: Settings,
    topic: str,
    *,
    max_records: int,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[RawRecord]:
    """Up to `max_records` records of `topic` from the beginning (read_committed), stopping at the end.

    Uses a throwaway consumer with manual assignment; nothing is committed.

    Raises:
        KafkaError: the topic does not exist or the client failed.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka import KafkaError as ClientError

    conf = {
        **settings.kafka.as_librdkafka(),
        "group.id": f"yespo-connector-decode-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }
    with _kafka_errors():
        consumer = Consumer(conf)
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            info = metadata.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                raise KafkaError(f"topic {topic!r} does not exist")
            partitions = sorted(info.partitions)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            pending_eof = set(partitions)
            count = 0
            deadline = clock() + timeout_s
            while count < max_records and pending_eof and clock() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == ClientError._PARTITION_EOF:
                        pending_eof.discard(msg.partition())
                        continue
                    raise KafkaError(f"Kafka error while reading: {err.name()}", retriable=err.retriable())
                ts_type, ts = msg.timestamp()
                count += 1
                yield RawRecord(
                    topic=msg.topic() or topic,
                    partition=msg.partition() or 0,
                    offset=msg.offset() or 0,
                    key=_as_bytes(msg.key()),
                    value=_as_bytes(msg.value()),
                    headers=tuple((str(k), _as_bytes(v)) for k, v in _header_pairs(msg.headers())),
                    timestamp_ms=ts if ts_type != 0 else None,
                )
        finally:
            consumer.close()


def _emit(out: IO[str], doc: dict[str, Any]) -> None:
    out.write(orjson.dumps(doc).decode("utf-8") + "\n")


def unwritable(exc: orjson.JSONEncodeError) -> str:
    """The error text for a result JSON cannot hold (beyond 64 bits, nested deeper than 255 levels)."""
    return f"the decoded event cannot be written as JSON ({exc})"


def decode(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file.")],
    input_path: Annotated[
        str | None, typer.Option("--input", "-i", help="kcat -J lines from FILE, or - for stdin.")
    ] = None,
    from_topic: Annotated[str | None, typer.Option("--from-topic", help="Read this topic instead.")] = None,
    max_records: Annotated[
        int, typer.Option("--max", min=1, help="With --from-topic: stop after N records.")
    ] = 100,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="With --from-topic: give up after S seconds.")
    ] = 30.0,
    registry_wait_s: Annotated[
        float, typer.Option("--registry-wait", help="Wait this long for an unavailable schema registry.")
    ] = 60.0,
) -> None:
    """Decode Debezium records and print one normalized event per line as JSON."""
    if (input_path is None) == (from_topic is None):
        raise typer.BadParameter("give exactly one of --input and --from-topic")
    settings = load_settings(config)
    options = DecodeOptions.from_settings(settings)
    schemas: SchemaLookup | None = None
    registry: SchemaRegistryClient | None = None
    if settings.source.schema_registry_url:
        registry = schemas = SchemaRegistryClient(settings.source.schema_registry_url)
    out = sys.stdout
    try:
        if from_topic is not None:
            records: Iterable[RawRecord | str] = topic_records(
                settings, from_topic, max_records=max_records, timeout_s=timeout_s
            )
            _decode_all(records, options, schemas, out, registry_wait_s)
        elif input_path == "-":
            _decode_all(kcat_records(sys.stdin.buffer), options, schemas, out, registry_wait_s)
        else:
            try:
                handle = open(input_path or "", "rb")  # noqa: SIM115 - closed below
            except OSError as exc:
                raise typer.BadParameter(f"cannot read {input_path}: {exc.strerror}") from exc
            with handle:
                _decode_all(kcat_records(handle), options, schemas, out, registry_wait_s)
    finally:
        if registry is not None:
            registry.close()


def _decode_all(
    records: Iterable[RawRecord | str],
    options: DecodeOptions,
    schemas: SchemaLookup | None,
    out: IO[str],
    registry_wait_s: float,
) -> None:
    for record in records:
        if isinstance(record, str):
            _emit(out, {"error": record})
            continue
        result = wait_for_registry(
            lambda r=record: decode_event(r, options=options, schemas=schemas),  # type: ignore[misc]
            max_wait_s=registry_wait_s,
        )
        doc = render(result, record)
        try:
            _emit(out, doc)
        except orjson.JSONEncodeError as exc:
            where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            _emit(out, {"error": unwritable(exc), **where})
    out.flush()


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    keys = [
        "kafka.bootstrap_servers",
        "kafka.extra",
        "source.format",
        "source.schema_registry_url",
        "source.customers.topic",
        "source.children",
        "source.column_types",
    ]
    app.command("decode", epilog=config_keys_epilog(keys))(decode)
