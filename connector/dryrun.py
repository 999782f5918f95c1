"""Dry run: decode -> route -> merge -> map in memory, yielding what the merge stage would emit.

Pure apart from the decoder it is given. Used by `yespo-connector dry-run` to show, for a file of
Debezium records, the upsert/delete records the connector would write (or the final contact per
customer), without Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from connector.config import Settings
from connector.merge import CustomerState, merge_change
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from connector.projection import (
    MappingProjector,
    adopted_rows,
    customer_leaves,
    handover_change,
    hands_over,
    upsert_records,
)
from connector.routing import Router, RoutingFailure

__all__ = ["DryRun"]

logger = logging.getLogger(__name__)


class DryRun:
    """Folds records into in-memory state and reports each emission."""

    def __init__(self, settings: Settings, decoder: Callable[[RawRecord], Any], *, now_ms: int = 0) -> None:
        self._decode = decoder
        self._router = Router(settings)
        self._projector = MappingProjector(settings.contact)
        self._states: dict[str, CustomerState] = {}
        self._now_ms = now_ms
        self.last: dict[str, dict[str, Any]] = {}

    def feed(self, record: RawRecord) -> Iterator[dict[str, Any]]:
        """The lines for one record: upsert/delete records, or `{"error": ...}` for a DLQ'd one."""
        where = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        result = self._decode(record)
        if isinstance(result, DecodeFailure):
            yield {"error": result.reason, "stage": "decode", **where}
            return
        if not isinstance(result, ChangeEvent):
            return
        routed = self._router.route(result)
        if isinstance(routed, RoutingFailure):
            yield {"error": routed.reason, "stage": "route", **where}
            return
        work = list(routed)
        while work:
            change = work.pop(0)
            previous = self._states.get(change.customer_key)
            outcome = merge_change(previous, change, now_ms=self._now_ms)
            if not outcome.applied:
                continue
            if previous is not None and not self._projector.affects_contact(previous, outcome.state, change):
                self._states[change.customer_key] = outcome.state
                continue
            adopted = adopted_rows([change]) if change.moved else None
            projection = self._projector.project(
                outcome.state, moved=customer_leaves(change), adopted=adopted
            )
            self._states[change.customer_key] = projection.state
            if projection.handover is not None:  # the merge stage's changes-topic hop, at once
                passed = handover_change(change, projection.handover)
                if passed is not None:
                    work.append(passed)
            if projection.error is not None:
                yield {
                    "error": projection.error,
                    "stage": "mapping",
                    "customer_key": change.customer_key,
                    **where,
                }
            for line in upsert_records(projection, change, handover=hands_over([change])):
                self.last[change.customer_key] = line
                yield line

    def final(self) -> Iterator[dict[str, Any]]:
        """The last emission per customer, ordered by customer key."""
        for key in sorted(self.last):
            yield self.last[key]
