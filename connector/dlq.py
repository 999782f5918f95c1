"""The dead-letter record shape: the original key, value and headers plus `yespo.*` error headers.

Headers: `yespo.error.class`, `yespo.error.reason`, `yespo.source.topic`, `yespo.source.partition`,
`yespo.source.offset`, `yespo.stage`. Reasons are the short, content-free texts of the failures
(never record values, so never PII); they are also cut to `MAX_REASON_BYTES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from connector.models import DecodeFailure, RawRecord

__all__ = [
    "MAX_REASON_BYTES",
    "DlqRecord",
    "dlq_headers",
    "dlq_record",
    "error_headers",
    "fit_record",
    "limit_text",
    "record_size",
]

logger = logging.getLogger(__name__)

MAX_REASON_BYTES: Final = 512


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """What the DLQ writer produces: the original bytes under the original key, plus headers."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def error_headers(record: RawRecord, *, error_class: str, reason: str, stage: str) -> list[tuple[str, bytes]]:
    """The `yespo.*` headers for `record` failing at `stage` (without the original headers)."""
    return [
        ("yespo.error.class", error_class.encode("utf-8")),
        # cut at a character boundary: a header cut inside a character is not valid UTF-8
        ("yespo.error.reason", reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode()),
        ("yespo.source.topic", record.topic.encode("utf-8")),
        ("yespo.source.partition", str(record.partition).encode("ascii")),
        ("yespo.source.offset", str(record.offset).encode("ascii")),
        ("yespo.stage", stage.encode("utf-8")),
    ]


def dlq_headers(failure: DecodeFailure, stage: str | None = None) -> list[tuple[str, bytes]]:
    """Headers of the DLQ copy of `failure.record`: its original headers, then the `yespo.*` ones.

    Args:
        failure: the failed record and its reason.
        stage: the pipeline stage that failed (default `failure.stage`, i.e. "decode").

    Returns:
        Original headers first (a null header value is kept as empty bytes), then the error headers.
    """
    original = [(name, value if value is not None else b"") for name, value in failure.record.headers]
    return original + error_headers(
        failure.record, error_class=failure.error_class, reason=failure.reason, stage=stage or failure.stage
    )


def dlq_record(
    failure: DecodeFailure, stage: str | None = None, *, max_bytes: int | None = None
) -> DlqRecord:
    """The complete DLQ record for `failure`: original key and value bytes, `dlq_headers` headers.

    With `max_bytes` (the record limit of the DLQ topic) a copy above it keeps only its headers
    (`fit_record`).
    """
    record = DlqRecord(failure.record.key, failure.record.value, tuple(dlq_headers(failure, stage)))
    return record if max_bytes is None else fit_record(record, max_bytes)


RECORD_OVERHEAD: Final = 512
"""Room kept under `message.max.bytes` for a record's framing (librdkafka counts it in the limit)."""


def record_size(key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> int:
    """What a record weighs against `message.max.bytes`, framing room included."""
    size = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
    return size + sum(len(name) + len(value) for name, value in headers)


def limit_text(max_bytes: int) -> str:
    """How a reason names the record size limit (content-free)."""
    return (
        f"above the record size limit ({max_bytes} bytes: the producer's message.max.bytes "
        "or the topic's max.message.bytes, whichever is lower)"
    )


def fit_record(record: DlqRecord, max_bytes: int) -> DlqRecord:
    """`record`, or a copy without its value (and key) when it would exceed `max_bytes`.

    `max_bytes` is the smaller of the producer's `message.max.bytes` and the DLQ topic's
    `max.message.bytes` (`connector.kafka.topics.record_limit`): the producer or the broker would
    refuse a larger record. The original stays in its source topic, which the `yespo.source.*`
    headers name, and `yespo.error.value_dropped` says why it is not here.
    """
    size = record_size(record.key, record.value, record.headers)
    if size <= max_bytes:
        return record
    note = f"{size} bytes, {limit_text(max_bytes)}; the original is at yespo.source.*"
    headers = (*record.headers, ("yespo.error.value_dropped", note.encode("ascii")))
    if record_size(None, None, headers) > max_bytes:  # the original headers alone are too large
        headers = tuple(h for h in headers if h[0].startswith("yespo."))
    key = record.key if record_size(record.key, None, headers) <= max_bytes else None
    return DlqRecord(key, None, headers)
