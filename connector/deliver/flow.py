"""Flow control of the deliver stage's assigned partitions (`PartitionFlow`).

Paused while a batch waits for its retry or the gathering batch stays full; the loop keeps polling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from connector.kafka.clients import translate

__all__ = ["PartitionFlow"]

logger = logging.getLogger(__name__)

_HOLD_PAUSE_S: Final = 5.0
"""A gathering batch full for this long pauses the partitions so that the loop can keep polling."""


class PartitionFlow:
    """The assigned partitions and whether they are paused.

    Args:
        clock: monotonic seconds (how long the gathering batch has been full).

    Attributes:
        assigned: the partitions assigned to this member.
        paused: True while `assigned` are paused.
        backing_off: paused for a retry (not only for a full gathering batch).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.assigned: list[TopicPartition] = []
        self.paused = False
        self.backing_off = False  # paused for a retry (not only for a full gathering batch)
        self._full_since: float | None = None  # since when the gathering batch is full

    def lagging(self) -> Sequence[TopicPartition]:
        """The partitions whose lag librdkafka's statistics no longer report (paused ones)."""
        return self.assigned if self.paused else ()

    def sync(self, consumer: Consumer | None, *, waiting: bool, full: bool) -> None:
        """Pause while a batch waits for its retry, or while the gathering batch has been full a while.

        Either way the loop keeps calling `consume()`, which fetches nothing from paused partitions
        but keeps the member in its group: an attempt on the wire may take minutes (import-status
        polls, rate-limit waits, request timeouts), longer than `max.poll.interval.ms`. A batch
        that is full for less than `_HOLD_PAUSE_S` is the common case (the attempts on the wire
        end soon): pausing then would drop librdkafka's prefetched records to fetch them again.

        Args:
            consumer: the stage's consumer (None: not started, nothing is paused).
            waiting: a batch waits for its retry.
            full: the gathering batch holds `yespo.batch_size` records.
        """
        self.backing_off = waiting
        if not full:
            self._full_since = None
        elif self._full_since is None:
            self._full_since = self._clock()
        held = self._full_since is not None and self._clock() - self._full_since >= _HOLD_PAUSE_S
        if waiting or held:
            self._pause_all(consumer)
        else:
            self._resume_all(consumer)

    def assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Add newly assigned `partitions` (a rebalance callback: failures are logged, not raised)."""
        # librdkafka keeps a partition's application pause flag across an eager unassign/assign
        # (it resets only its own), so a partition that comes back paused would never be fetched
        # again. Resuming one that is not paused is a no-op in librdkafka.
        self.resume(consumer, partitions, "assign")
        # An incremental assignment (cooperative protocol) adds to the partitions a revocation kept
        # (`Rebalance.on_revoke`); while those are paused for a retry, the new ones are paused with them.
        known = {(str(tp.topic), int(tp.partition)) for tp in self.assigned}
        if self.paused and known:
            try:
                consumer.pause(partitions)
            except KafkaException as exc:
                logger.warning(
                    "partitions not paused", extra={"event": "assign", "error": str(translate(exc))}
                )
        else:
            self.paused = False
        self.assigned += [tp for tp in partitions if (str(tp.topic), int(tp.partition)) not in known]

    def revoke(
        self, consumer: Consumer, partitions: list[TopicPartition], revoked: set[tuple[str, int]]
    ) -> None:
        """Remove the revoked `partitions` (a rebalance callback: failures are logged, not raised)."""
        kept = [tp for tp in self.assigned if (str(tp.topic), int(tp.partition)) not in revoked]
        if self.paused:  # while still assigned: the flag would outlive the assignment (`assign`)
            leaving = partitions if kept else (self.assigned or partitions)
            self.resume(consumer, leaving, "revoke")
        self.assigned = kept
        self.paused = self.paused and bool(kept)  # the kept ones: `sync` decides next turn

    def resume(self, consumer: Consumer, partitions: list[TopicPartition], event: str) -> None:
        """Resume `partitions` in a rebalance callback; a failure is logged (the assignment retries it)."""
        if not partitions:
            return
        try:
            consumer.resume(partitions)
        except KafkaException as exc:
            logger.warning("partitions not resumed", extra={"event": event, "error": str(translate(exc))})

    def _pause_all(self, consumer: Consumer | None) -> None:
        if not self.paused and self.assigned and consumer is not None:
            consumer.pause(self.assigned)
            self.paused = True

    def _resume_all(self, consumer: Consumer | None) -> None:
        if self.paused and self.assigned and consumer is not None:
            consumer.resume(self.assigned)
        self.paused = False
