"""The merge stage's routing side (the repartition step): source record -> decode -> route.

The routed changes go to the changes topic, keyed and partitioned by customer key, buffered into one
changes record per target partition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer

from connector.dlq import limit_text
from connector.kafka.clients import produce, to_raw
from connector.merge_stage.dead_letters import ODD_VALUE, DeadLetters
from connector.merge_stage.limits import RecordLimits
from connector.merge_stage.stats import MergeStats
from connector.metrics import Metrics
from connector.models import ChangeEvent, DecodeFailure, RawRecord
from connector.routing import Router, RoutingFailure, encode_change, partition_for

__all__ = ["Decoder", "Outgoing", "Repartitioner"]

logger = logging.getLogger(__name__)

Decoder = Callable[[RawRecord], Any]
"""RawRecord -> ChangeEvent | DecodeFailure | an ignored marker (anything else is counted as ignored)."""

_MAX_CHANGES_PER_RECORD = 500
"""Changes per changes-topic record at most; their bytes are capped by `message.max.bytes` too."""


@dataclass(slots=True)
class Outgoing:
    """Encoded changes waiting for one changes-topic record (a JSON array of them)."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 2


class Repartitioner:
    """Routes source records to the changes topic inside the open transaction.

    Changes are buffered per target partition (`routed`) and written as one changes record each, at
    the latest by `flush_routed` before the transaction commits; an abort drops the buffers
    (`discard`). A record that cannot be decoded or routed, or a change too large for a changes
    record, goes to the DLQ instead.

    Args:
        changes_topic: `state.changes_topic`.
        partitions: its partition count (`state.partitions`).
        decoder: RawRecord -> ChangeEvent | DecodeFailure | anything else (ignored).
        router: ChangeEvent -> the customers' changes.
        limits: the stage's record limits (read at each record: they are set at start).
        dead_letters: where refused records go.
        stats: counts `source_records`, `ignored` and `routed`.
        metrics: counts the events by table and op, when given.
    """

    def __init__(
        self,
        *,
        changes_topic: str,
        partitions: int,
        decoder: Decoder,
        router: Router,
        limits: RecordLimits,
        dead_letters: DeadLetters,
        stats: MergeStats,
        metrics: Metrics | None,
    ) -> None:
        self._changes_topic = changes_topic
        self._partitions = partitions
        self._decode = decoder
        self._router = router
        self._limits = limits
        self._dead_letter = dead_letters.write
        self._stats = stats
        self._metrics = metrics
        self.routed: dict[int, Outgoing] = {}

    def route(self, msg: Any, producer: Producer) -> None:
        """Decode and route one source record; buffer its changes (a full buffer is written first).

        A produce that fails raises (`connector.kafka.clients.produce`): the caller rolls back.
        """
        self._stats.source_records += 1
        raw = to_raw(msg)
        try:
            result = self._decode(raw)
        except ODD_VALUE as exc:  # the decoder's own failures are `DecodeFailure`s: a safety net
            self._dead_letter(
                producer, raw, "DecodeError", f"the record cannot be decoded ({type(exc).__name__})"
            )
            return
        if isinstance(result, DecodeFailure):
            self._dead_letter(producer, raw, result.error_class, result.reason)
            return
        if not isinstance(result, ChangeEvent):
            self._stats.ignored += 1
            return
        limit = self._limits.value_limit
        encoded: list[tuple[str, bytes]] = []
        try:
            routed = self._router.route(result)
            if isinstance(routed, RoutingFailure):
                self._dead_letter(producer, raw, "RoutingError", routed.reason)
                return
            for change in routed:
                data = encode_change(change)
                if len(data) > limit:
                    reason = f"routed change of {len(data)} bytes is {limit_text(self._limits.max_bytes)}"
                    self._dead_letter(producer, raw, "MergeError", reason)
                    return
                encoded.append((change.customer_key, data))
        except ODD_VALUE as exc:  # e.g. a JSON value nested too deep to convert
            self._dead_letter(
                producer, raw, "RoutingError", f"the event cannot be routed ({type(exc).__name__})"
            )
            return
        for customer_key, data in encoded:
            target = partition_for(customer_key, self._partitions)
            buf = self.routed.get(target)
            if buf is None:
                buf = self.routed[target] = Outgoing()
            elif buf.size + len(data) > limit or len(buf.parts) >= _MAX_CHANGES_PER_RECORD:
                self._flush_partition(producer, target)
                buf = self.routed[target] = Outgoing()
            buf.parts.append(data)
            buf.size += len(data) + 1
        self._stats.routed += len(encoded)
        if self._metrics is not None:
            self._metrics.events.labels(table=result.table, op=result.op.value).inc()

    def _flush_partition(self, producer: Producer, partition: int) -> None:
        buf = self.routed.pop(partition, None)
        if buf is not None and buf.parts:
            # the same bytes as `encode_changes` of the list: a JSON array of the encoded changes
            value = b"[" + b",".join(buf.parts) + b"]"
            produce(producer, self._changes_topic, value=value, partition=partition)

    def flush_routed(self, producer: Producer) -> None:
        """Write the buffered routed changes: one changes-topic record per target partition."""
        for partition in list(self.routed):
            self._flush_partition(producer, partition)

    def discard(self) -> None:
        """Drop the buffered changes (the transaction aborted: its source records are read again)."""
        self.routed.clear()
