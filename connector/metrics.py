"""All Prometheus metrics of the connector, in one place, prefixed `yespo_connector_`.

`Metrics` holds every metric on its own `CollectorRegistry` (tests build fresh ones). Consumer lag
gauges are fed from librdkafka's statistics (`stats_cb`) by `update_from_librdkafka_stats`, with the
ends of paused partitions read from the broker (`track_paused`): the statistics freeze them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "PREFIX", "Metrics", "WatermarkSource"]

logger = logging.getLogger(__name__)

PREFIX = "yespo_connector_"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# `<name>_created` series only clutter dashboards; nothing here needs counter creation times.
disable_created_metrics()  # type: ignore[no-untyped-call]

_COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_HTTP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RESTORE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_END_SAMPLE_INTERVAL_S: Final = 15.0
"""How often the ends of a consumer's paused partitions are asked from the broker, at most."""
_END_SAMPLE_BUDGET_S: Final = 1.0
"""How long one such round may block its caller's loop, all partitions together."""

# Exposed series names (counters gain `_total`, histograms `_bucket/_sum/_count`); the dashboard
# test checks every PromQL expression against this set.
METRIC_NAMES: frozenset[str] = frozenset(
    PREFIX + name
    for name in (
        "consumer_lag_records",
        "consumer_lag_seconds",
        "events_total",
        "stale_events_skipped_total",
        "upserts_emitted_total",
        "deletes_emitted_total",
        "contacts_delivered_total",
        "dlq_records_total",
        "transaction_commit_duration_seconds",
        "http_request_duration_seconds",
        "state_customers",
        "restore_duration_seconds",
        "rebalances_total",
    )
)


class WatermarkSource(Protocol):
    """The consumer call that asks the broker for a partition's ends (a confluent `Consumer`)."""

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int] | None:
        """(low, high) of `partition`; high is the last stable offset under read_committed."""
        ...


@dataclass(frozen=True, slots=True)
class _BrokerEnd:
    end: int
    at: float  # clock time it was read
    low: int = 0  # the partition's low watermark, read with it


class Metrics:
    """Every metric the connector exports, registered on one `CollectorRegistry`.

    Stages update the attributes directly, e.g. `metrics.events.labels(table="public.customers",
    op="u").inc()` or `with metrics.transaction_commit_duration.time(): ...`. Label values must be
    low-cardinality codes (table names, ops, result and reason codes), never customer data.

    Attributes:
        registry: The registry all metrics are registered on; `/metrics` renders it.
        consumer_lag_records: Gauge{topic, partition}: records between the consumer's position (what
            the stage has fetched: records in batches still on the wire or waiting for a retry are
            not counted) and the end of the partition (last stable offset under read_committed).
        consumer_lag_seconds: Gauge{topic, partition}: age of the oldest record not fetched yet, at
            most (now minus the later of the last consumed record's timestamp and the last time the
            partition was known to be caught up; 0 when lag is 0).
        events: Counter{table, op}: decoded change events (`yespo_connector_events_total`).
        stale_events_skipped: Counter{table}: events older than the state's position, dropped.
        upserts_emitted: Counter: contact upserts written to the upserts topic.
        deletes_emitted: Counter: contact deletes written to the upserts topic.
        contacts_delivered: Counter{result}: contacts sent to Yespo by result code (`ok`,
            `duplicate`, `rejected`, `dlq`, ...).
        dlq_records: Counter{stage, reason}: records sent to the dead-letter topic.
        transaction_commit_duration: Histogram: seconds per Kafka transaction commit.
        http_request_duration: Histogram{endpoint, status}: seconds per Yespo API request; `endpoint`
            is a route template (`/api/v1/contacts`), `status` the HTTP code or `error`.
        state_customers: Gauge{partition}: customers held per state partition (after a restore and each
            marker sweep; removed on revocation).
        restore_duration: Histogram: seconds to restore a partition's state on assignment.
        rebalances: Counter{event}: consumer group rebalances (`assigned`, `revoked`, `lost`).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        """Create every metric on `registry` (a fresh `CollectorRegistry` when None).

        Args:
            registry: Where to register; two `Metrics` may not share one registry.
            clock: Wall-clock seconds, used for lag seconds (injected by tests).
        """
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_consumed_ms: dict[tuple[str, int], int] = {}
        self._caught_up_at: dict[tuple[str, int], float] = {}  # clock time a partition was last seen at lag 0
        self._paused: dict[tuple[str, int], WatermarkSource] = {}  # paused partition -> its consumer
        self._broker_ends: dict[tuple[str, int], _BrokerEnd] = {}  # read while paused (`track_paused`)
        self._next_round: dict[int, float] = {}  # id(consumer) -> clock time of its next end sampling
        self._lag_labels_by_client: dict[str, set[tuple[str, str]]] = {}
        r = self.registry
        p = PREFIX
        self.consumer_lag_records = Gauge(
            p + "consumer_lag_records",
            "Records between the consumer position and the partition end (LSO for read_committed).",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            p + "consumer_lag_seconds",
            "Approximate age in seconds of the oldest unconsumed record (0 when lag is 0).",
            ["topic", "partition"],
            registry=r,
        )
        self.events = Counter(p + "events", "Decoded change events.", ["table", "op"], registry=r)
        self.stale_events_skipped = Counter(
            p + "stale_events_skipped",
            "Events older than the state's position, skipped.",
            ["table"],
            registry=r,
        )
        self.upserts_emitted = Counter(p + "upserts_emitted", "Contact upserts emitted.", registry=r)
        self.deletes_emitted = Counter(p + "deletes_emitted", "Contact deletes emitted.", registry=r)
        self.contacts_delivered = Counter(
            p + "contacts_delivered", "Contacts sent to Yespo, by result.", ["result"], registry=r
        )
        self.dlq_records = Counter(
            p + "dlq_records",
            "Records sent to the DLQ, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.transaction_commit_duration = Histogram(
            p + "transaction_commit_duration_seconds",
            "Seconds per Kafka transaction commit.",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.http_request_duration = Histogram(
            p + "http_request_duration_seconds",
            "Seconds per Yespo API request, by endpoint template and status.",
            ["endpoint", "status"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.state_customers = Gauge(
            p + "state_customers",
            "Customers held in the state, per state partition.",
            ["partition"],
            registry=r,
        )
        self.restore_duration = Histogram(
            p + "restore_duration_seconds",
            "Seconds to restore a partition's state on assignment.",
            buckets=_RESTORE_BUCKETS,
            registry=r,
        )
        self.rebalances = Counter(
            p + "rebalances", "Consumer group rebalances, by event.", ["event"], registry=r
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text format (what `/metrics` serves)."""
        return generate_latest(self.registry)

    def record_consumed(self, topic: str, partition: int, timestamp_ms: int) -> None:
        """Remember the timestamp of the last record consumed from a partition (for lag seconds).

        Call it for each consumed record (a dict store) or at least once per poll batch.
        """
        self._last_consumed_ms[(topic, partition)] = timestamp_ms

    def track_paused(self, source: WatermarkSource, paused: Collection[TopicPartition]) -> None:
        """Tell which of `source`'s partitions are paused now (call it every loop turn; cheap).

        librdkafka refreshes a partition's end in its statistics only from fetch responses, and a
        paused partition is not fetched: its end would stay frozen and its lag read 0 however many
        records arrive. So the ends of `source`'s paused partitions are asked from the broker
        (`get_watermark_offsets(cached=False)`, the last stable offset under read_committed) here,
        in the caller's thread: at most one round per `_END_SAMPLE_INTERVAL_S` per consumer, and a
        round blocks at most `_END_SAMPLE_BUDGET_S` in all. A query that fails or times out ends the
        round (logged at DEBUG; never raises); those ends stay unknown until the next round.
        """
        if not paused and not self._paused:
            return  # the hot path: nothing paused
        keys = {(tp.topic, tp.partition) for tp in paused}
        with self._lock:
            for key in [k for k, s in self._paused.items() if s is source and k not in keys]:
                del self._paused[key]  # resumed or revoked; its broker end stays until fetches pass it
            for key in keys:
                self._paused[key] = source
            now = self._clock()
            if not keys or now < self._next_round.get(id(source), now):
                return
            self._next_round[id(source)] = now + _END_SAMPLE_INTERVAL_S
        deadline = time.monotonic() + _END_SAMPLE_BUDGET_S
        for topic, partition in sorted(keys):
            left = deadline - time.monotonic()
            try:
                ends = None
                if left > 0:
                    ends = source.get_watermark_offsets(
                        TopicPartition(topic, partition), timeout=left, cached=False
                    )
            except (KafkaException, RuntimeError) as exc:  # RuntimeError: the consumer is closed
                logger.debug("cannot read a paused partition's end", extra={"error": str(exc)})
                return
            if ends is None:
                return  # out of time: the others wait for the next round
            self._broker_ends[(topic, partition)] = _BrokerEnd(int(ends[1]), self._clock(), int(ends[0]))

    def update_from_librdkafka_stats(self, stats_json: str) -> None:
        """Update the consumer lag gauges from one librdkafka statistics document.

        Pass it as (or call it from) the consumer's `stats_cb`, with `statistics.interval.ms` set.
        Only partitions the consumer is assigned (`desired`) with a known lag are reported. The lag is,
        in order of preference: `consumer_lag_stored` (end minus the offset stored for the next
        commit), end minus the application position (`app_offset`, last record handed over + 1),
        `consumer_lag` (end minus committed; before anything was consumed), 0 for an empty
        partition. The end is librdkafka's `ls_offset` under read_committed, `hi_offset` otherwise,
        or the end read from the broker (`track_paused`) while that is greater: the statistics do
        not refresh a paused partition's end, and need a fetch to catch up after a resume. A partition
        paused before its first fetch has no end or position in the statistics: its lag is the broker
        end minus the committed offset (`_unfetched_lag`).
        Series of partitions the same client no longer reports (revoked) are removed. Documents that
        are not consumer statistics are ignored; malformed JSON is logged at WARNING and ignored (a
        stats callback must never raise).
        """
        try:
            stats = json.loads(stats_json)
        except ValueError:
            logger.warning("ignoring malformed librdkafka statistics")
            return
        if not isinstance(stats, dict) or stats.get("type") != "consumer":
            return
        client = str(stats.get("name", ""))
        now = self._clock()
        seen: set[tuple[str, str]] = set()
        topics = stats.get("topics")
        for topic, tstats in (topics if isinstance(topics, dict) else {}).items():
            partitions = tstats.get("partitions") if isinstance(tstats, dict) else None
            for pstats in (partitions if isinstance(partitions, dict) else {}).values():
                found = _partition_lag(pstats)
                if found is None:
                    found = self._unfetched_lag(str(topic), pstats)
                if found is None:
                    continue
                partition = int(pstats["partition"])
                labels = (str(topic), str(partition))
                seen.add(labels)
                lag, fresh_at = self._against_broker_end((str(topic), partition), *found, now)
                self.consumer_lag_records.labels(*labels).set(lag)
                seconds = self._lag_seconds(str(topic), partition, lag, fresh_at, now)
                if seconds is not None:
                    self.consumer_lag_seconds.labels(*labels).set(seconds)
        with self._lock:
            gone = self._lag_labels_by_client.get(client, set()) - seen
            self._lag_labels_by_client[client] = seen
        for labels in gone:
            for gauge in (self.consumer_lag_records, self.consumer_lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            self._last_consumed_ms.pop((labels[0], int(labels[1])), None)
            self._caught_up_at.pop((labels[0], int(labels[1])), None)
            self._broker_ends.pop((labels[0], int(labels[1])), None)

    def _unfetched_lag(self, topic: str, pstats: Mapping[str, Any]) -> tuple[int, int] | None:
        """(lag, end) of a partition paused before its first fetch (the merge stage's restore).

        librdkafka knows no end and no position of it yet (-1001): the lag is the end read from the
        broker (`track_paused`) minus the committed offset, or minus the low watermark when the group
        has committed none (consumption then starts at the earliest record).
        """
        try:
            if not pstats.get("desired", False):
                return None
            key = (topic, int(pstats["partition"]))
            committed = int(pstats.get("committed_offset", -1))
        except (KeyError, TypeError, ValueError):
            return None
        broker = self._broker_ends.get(key)
        if broker is None or key not in self._paused:
            return None
        start = committed if committed >= 0 else broker.low
        return max(broker.end - start, 0), broker.end

    def _against_broker_end(
        self, key: tuple[str, int], lag: int, end: int, now: float
    ) -> tuple[int, float | None]:
        """The lag against the freshest end known, and the clock time that end was true (None: unknown).

        The statistics' end is current unless the partition is paused (then only a broker end read
        while paused counts) or was resumed and not fetched since (then the broker end is greater).
        """
        paused = key in self._paused
        broker = self._broker_ends.get(key)
        if broker is None or end < 0:
            return lag, None if paused else now
        if end >= broker.end:
            if paused:
                return lag, broker.at  # nothing arrived between the last fetch and the broker's answer
            self._broker_ends.pop(key, None)  # fetches have caught up with what the broker said
            return lag, now
        return lag + broker.end - end, broker.at

    def _lag_seconds(
        self, topic: str, partition: int, lag: int, fresh_at: float | None, now: float
    ) -> float | None:
        """The age of the oldest record not consumed yet, at most: None when nothing bounds it.

        That record was written after the last record consumed (its timestamp) and after the last
        time the partition was known to be caught up (lag 0 against an end that was current at
        `fresh_at`): the later of the two bounds its age. So a partition idle for hours that gets a
        record just before the statistics reports seconds, not hours, and a backlog that builds while
        nothing is consumed (a paused partition) ages from when it began.
        """
        key = (topic, partition)
        if lag == 0:
            if fresh_at is not None:  # a paused partition's frozen end proves nothing
                self._caught_up_at[key] = max(fresh_at, self._caught_up_at.get(key, fresh_at))
            return 0.0
        last_ms = self._last_consumed_ms.get(key)
        consumed = None if last_ms is None else last_ms / 1000.0
        bounds = [t for t in (self._caught_up_at.get(key), consumed) if t is not None]
        if not bounds:
            return None
        return max(0.0, now - max(bounds))


def _partition_lag(pstats: Mapping[str, Any]) -> tuple[int, int] | None:
    """(lag, end) of one partition entry of librdkafka statistics, or None when not assigned/known.

    `end` is the end the lag was measured against (-1 when librdkafka has not seen it yet).
    """
    try:
        if int(pstats["partition"]) < 0 or not pstats.get("desired", False):
            return None
        stored_lag = int(pstats.get("consumer_lag_stored", -1))
        end = int(pstats.get("ls_offset", -1))
        if end < 0:
            end = int(pstats.get("hi_offset", -1))
        if stored_lag >= 0:
            return stored_lag, end
        position = int(pstats.get("app_offset", -1))
        if end >= 0 and position >= 0:
            # Transactional stages commit through the producer (KIP-447), so the consumer's own
            # `committed_offset` goes stale after assignment; its position does not.
            return max(end - position, 0), end
        committed_lag = int(pstats.get("consumer_lag", -1))
        if committed_lag >= 0:
            return committed_lag, end
        if end >= 0 and end == int(pstats.get("lo_offset", -1)):
            return 0, end
    except (KeyError, TypeError, ValueError):
        return None
    return None
