"""The merge stage's dead letters: what its pure steps cannot process goes to the DLQ topic.

A record (or one change) of odd shape is written, with the reason, inside the open transaction; the
stage goes on.
"""

from __future__ import annotations

import logging
from typing import Final

from confluent_kafka import Producer

from connector.dlq import dlq_record
from connector.kafka.clients import produce
from connector.merge_stage.limits import RecordLimits
from connector.merge_stage.stats import MergeStats
from connector.metrics import Metrics
from connector.models import DecodeFailure, RawRecord
from connector.routing import RoutedChange, encode_change

__all__ = ["ODD_VALUE", "STAGE", "DeadLetters", "change_record"]

logger = logging.getLogger(__name__)

STAGE = "merge"
"""The stage named in the DLQ headers and the metrics' `stage` label."""

ODD_VALUE: Final = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, UnicodeError)
"""What a value of odd shape raises in the pure steps (decode, route, merge, encode): its record
goes to the DLQ with the exception's name (never its text, which may quote the value)."""


class DeadLetters:
    """Writes DLQ copies to `output.dlq_topic`, each fitted under the DLQ topic's record limit.

    Args:
        dlq_topic: the DLQ topic.
        limits: the stage's record limits (`dlq_max_bytes` is read at each write: it is set at start).
        stats: counts `dlq`.
        metrics: counts `dlq_records` by reason, when given.
    """

    def __init__(
        self, dlq_topic: str, limits: RecordLimits, stats: MergeStats, metrics: Metrics | None
    ) -> None:
        self._dlq_topic = dlq_topic
        self._limits = limits
        self._stats = stats
        self._metrics = metrics

    def write(self, producer: Producer, raw: RawRecord, error_class: str, reason: str) -> None:
        """Produce the DLQ copy of `raw` in the open transaction (it commits or aborts with it).

        A produce that fails raises as `connector.kafka.clients.produce` does: the caller rolls the
        transaction back.
        """
        dead = dlq_record(
            DecodeFailure(raw, reason, error_class, STAGE), max_bytes=self._limits.dlq_max_bytes
        )
        produce(producer, self._dlq_topic, key=dead.key, value=dead.value, headers=list(dead.headers))
        self._stats.dlq += 1
        logger.warning(
            "record dead-lettered",
            extra={"topic": raw.topic, "partition": raw.partition, "offset": raw.offset, "reason": reason},
        )
        if self._metrics is not None:
            self._metrics.dlq_records.labels(stage=STAGE, reason=error_class).inc()


def change_record(customer_key: str, change: RoutedChange) -> RawRecord:
    """The DLQ copy of a change: it names the source record; its value is the change (the row as decoded)."""
    origin = change.origin
    return RawRecord(
        origin.topic, origin.partition, origin.offset, customer_key.encode(), encode_change(change)
    )
