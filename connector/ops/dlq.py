"""The dead-letter topic for operators: what is in it (`summarize`) and what to re-drive (`redrive_targets`).

`DlqReader` reads `output.dlq_topic` (read_committed, from the start or from a time, to its end) into
`DlqEntry`s; everything else here is pure. A summary holds counts, error classes and reasons only
(the `yespo.*` headers carry no customer data), never keys or values.

Re-driving: a record the deliver stage dead-lettered is an upsert-topic record whose key is the
customer key. Sending that old record again could overwrite newer data in Yespo, so re-driving goes
through `resync` instead (`connector.ops.resync`): each customer named by a deliver-stage DLQ record
gets its *current* contact from the state topic (or its delete again, when the dead-lettered delete is
still the customer's last word), as the next version, exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from connector.config import Settings
from connector.errors import KafkaError
from connector.kafka.clients import kafka_errors
from connector.ops.scan import partition_batches, scan_consumer

__all__ = [
    "DlqEntry",
    "DlqReader",
    "DlqSummary",
    "Redrive",
    "customer_key",
    "entry_of",
    "record_version",
    "redrive_targets",
    "summarize",
]

logger = logging.getLogger(__name__)

DELIVER = "deliver"
"""`yespo.stage` of the records the deliver stage dead-letters (upserts-topic records)."""


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One DLQ record: where it sits, its `yespo.*` headers, and the original key and value."""

    partition: int
    offset: int
    timestamp_ms: int | None
    stage: str
    error_class: str
    reason: str
    source_topic: str
    key: bytes | None
    value: bytes | None
    value_dropped: bool = False


def entry_of(
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    headers: Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None,
    key: bytes | None,
    value: bytes | None,
) -> DlqEntry:
    """A `DlqEntry` from a consumed record's parts; missing headers read as empty texts."""
    found: dict[str, str] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, raw in pairs:
        if name.startswith("yespo.") and raw is not None:
            # the last one wins, as the writer appends its headers after the original ones
            found[name] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return DlqEntry(
        partition,
        offset,
        timestamp_ms,
        found.get("yespo.stage", ""),
        found.get("yespo.error.class", ""),
        found.get("yespo.error.reason", ""),
        found.get("yespo.source.topic", ""),
        key,
        value,
        "yespo.error.value_dropped" in found,
    )


# -- pure: summary -------------------------------------------------------------------------------------


@dataclass
class DlqSummary:
    """Counts of a DLQ scan (no keys, no values)."""

    records: int = 0
    by_stage: Counter[str] = field(default_factory=Counter)
    by_error: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    values_dropped: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    customers_to_redrive: int = 0

    def as_json(self) -> dict[str, Any]:
        """JSON-ready form (for `--json`)."""
        return {
            "records": self.records,
            "by_stage": dict(self.by_stage),
            "by_error": [
                {"stage": s, "error_class": c, "records": n} for (s, c), n in self.by_error.most_common()
            ],
            "by_reason": [
                {"stage": s, "reason": r, "records": n} for (s, r), n in self.by_reason.most_common()
            ],
            "by_source_topic": dict(self.by_source),
            "values_dropped": self.values_dropped,
            "first": _iso(self.first_ms),
            "last": _iso(self.last_ms),
            "customers_to_redrive": self.customers_to_redrive,
        }

    def lines(self, top: int = 10) -> list[str]:
        """The human summary: totals, then the most frequent error classes and reasons."""
        if not self.records:
            return ["DLQ records: 0"]
        out = [
            f"DLQ records: {self.records} ({_iso(self.first_ms)} .. {_iso(self.last_ms)})",
            "by stage: " + ", ".join(f"{s or '?'} {n}" for s, n in sorted(self.by_stage.items())),
            "by source topic: " + ", ".join(f"{t or '?'} {n}" for t, n in sorted(self.by_source.items())),
        ]
        if self.values_dropped:
            out.append(
                f"copies without their value (above the DLQ topic's size limit): {self.values_dropped}"
            )
        out.append("error classes:")
        out += [f"  {n:>8}  {s or '?'}  {c or '?'}" for (s, c), n in self.by_error.most_common(top)]
        out.append("reasons:")
        out += [f"  {n:>8}  {s or '?'}  {r or '?'}" for (s, r), n in self.by_reason.most_common(top)]
        if len(self.by_reason) > top:
            out.append(f"  ... and {len(self.by_reason) - top} other reason(s)")
        out.append(
            "customers a `resync --from-dlq` would re-drive (deliver-stage records): "
            f"{self.customers_to_redrive}"
        )
        return out


def summarize(entries: Iterable[DlqEntry]) -> DlqSummary:
    """Count `entries` by stage, error class, reason and source topic. Pure."""
    summary = DlqSummary()
    customers: set[str] = set()
    for e in entries:
        summary.records += 1
        summary.by_stage[e.stage] += 1
        summary.by_error[(e.stage, e.error_class)] += 1
        summary.by_reason[(e.stage, e.reason)] += 1
        summary.by_source[e.source_topic] += 1
        summary.values_dropped += e.value_dropped
        if e.timestamp_ms is not None:
            summary.first_ms = (
                e.timestamp_ms if summary.first_ms is None else min(summary.first_ms, e.timestamp_ms)
            )
            summary.last_ms = (
                e.timestamp_ms if summary.last_ms is None else max(summary.last_ms, e.timestamp_ms)
            )
        key = customer_key(e)
        if key is not None:
            customers.add(key)
    summary.customers_to_redrive = len(customers)
    return summary


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- pure: what to re-drive ------------------------------------------------------------------------------


@dataclass
class Redrive:
    """What the DLQ says about one customer's dead-lettered upsert-topic records.

    Attributes:
        records: how many of its records the deliver stage dead-lettered.
        last: the readable record dead-lettered last (None if no value could be read). Write order,
            not version: versions start again at 1 after `rebuild-state` or a re-created customer.
        groups_removed: every segment id those records were to detach (a later upsert computes its
            detachments from the groups the state believes are in Yespo, so these would be lost).
        last_at: the DLQ partition and offset of `last`.
        erase: the last dead-lettered erase (`on_delete: erase`, GDPR); see `decide_redrive` for when
            a re-drive sends it.
        retired: externalCustomerId -> the last dead-lettered delete that retired it (the customer's
            externalCustomerId changed; `retires` in the record).
    """

    records: int = 0
    last: Mapping[str, Any] | None = None
    groups_removed: set[int] = field(default_factory=set)
    last_at: tuple[int, int] | None = None
    erase: Mapping[str, Any] | None = None
    retired: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    _last_order: tuple[int, int, int] = (-1, -1, -1)

    @property
    def last_version(self) -> int | None:
        """The version of `last`."""
        return record_version(self.last) if self.last is not None else None

    @property
    def last_op(self) -> str | None:
        """`upsert` or `delete` of `last`."""
        return str(self.last.get("op")) if self.last is not None else None


def customer_key(entry: DlqEntry) -> str | None:
    """The customer a deliver-stage DLQ record is about (its key), or None."""
    if entry.stage != DELIVER or not entry.key:
        return None
    try:
        return entry.key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def redrive_targets(entries: Iterable[DlqEntry]) -> dict[str, Redrive]:
    """Customer key -> `Redrive`, from the deliver stage's DLQ records (others are not re-driven). Pure.

    A record whose value is missing (dropped for size) or unreadable still names its customer by
    its key; one without a usable key is left out. The deliver stage writes a customer's DLQ copies
    under its key, so they share a partition and their offsets give their order; across partitions
    (the DLQ topic grew) their timestamps do.
    """
    targets: dict[str, Redrive] = {}
    for e in entries:
        key = customer_key(e)
        if key is None:
            continue
        target = targets.setdefault(key, Redrive())
        target.records += 1
        record = _upsert_record(e.value)
        if record is None:
            continue
        removed = record.get("groups_removed")
        if isinstance(removed, list):
            target.groups_removed.update(g for g in removed if type(g) is int)
        order = (e.timestamp_ms or 0, e.partition, e.offset)
        last = target._last_order
        later = order[1:] > last[1:] if order[1] == last[1] else order > last
        if record.get("op") == "delete" and record.get("erase") is True and (later or target.erase is None):
            target.erase = record
        ext = record.get("external_customer_id")
        retires = record.get("op") == "delete" and record.get("retires") is True
        if retires and isinstance(ext, str) and ext and (later or ext not in target.retired):
            target.retired[ext] = record
        if later:
            target.last, target.last_at, target._last_order = record, (e.partition, e.offset), order
    return targets


def _upsert_record(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("op") not in ("upsert", "delete"):
        return None
    return record


def record_version(record: Mapping[str, Any]) -> int:
    """An upserts-topic record's `version` (0 when it has none that is an integer)."""
    version = record.get("version")
    return version if type(version) is int else 0


# -- reading the topic ---------------------------------------------------------------------------------


class DlqReader:
    """Reads every partition of `output.dlq_topic` (read_committed) to its end; commits nothing."""

    def __init__(self, settings: Settings, *, idle_timeout: float = 120.0) -> None:
        """An assign-only consumer on the DLQ topic."""
        self.topic = settings.output.dlq_topic
        self._idle = idle_timeout
        self._consumer = scan_consumer(settings, "dlq-scan")

    def __enter__(self) -> DlqReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self, since: dt.datetime | None = None) -> Iterator[DlqEntry]:
        """Every record from the start (or the first at or after `since`) to the current end.

        Raises:
            KafkaError: the DLQ topic does not exist or cannot be read.
        """
        consumer = self._consumer
        with kafka_errors():
            md = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if md is None or md.error is not None or not md.partitions:
            raise KafkaError(f"DLQ topic {self.topic!r} (output.dlq_topic) does not exist")
        starts = self._starts(sorted(md.partitions), since)
        for partition, start in starts.items():
            yield from self._partition(partition, start)

    def _starts(self, partitions: list[int], since: dt.datetime | None) -> dict[int, int]:
        if since is None:
            return dict.fromkeys(partitions, OFFSET_BEGINNING)
        ms = int(since.timestamp() * 1000)
        with kafka_errors():
            found = self._consumer.offsets_for_times(
                [TopicPartition(self.topic, p, ms) for p in partitions], timeout=10
            )
        starts = {}
        for tp in found:
            if tp.error is not None:
                raise KafkaError(f"cannot find {self.topic}[{tp.partition}]'s offset for --since: {tp.error}")
            if tp.offset >= 0:  # -1: no record at or after the time in that partition
                starts[tp.partition] = tp.offset
        return starts

    def _partition(self, partition: int, start: int) -> Iterator[DlqEntry]:
        for batch in partition_batches(self._consumer, self.topic, partition, start, idle=self._idle):
            for msg in batch:
                kind, ts = msg.timestamp()
                yield entry_of(
                    partition,
                    int(msg.offset() or 0),
                    ts if kind != 0 and ts >= 0 else None,
                    msg.headers(),
                    msg.key(),
                    msg.value(),
                )

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()
