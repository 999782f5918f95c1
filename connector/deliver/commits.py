"""The deliver stage's offset commits: retried while the group coordinator is away, carried over after.

`OffsetCommitter` keeps the offsets a commit could not place yet; the next commit carries them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka import KafkaError as ConfluentError

from connector.kafka.clients import translate
from connector.registry import Backoff
from connector.sink.batch_state import Batch
from connector.sink.recorder import DeliverStats

__all__ = ["OffsetCommitter"]

logger = logging.getLogger(__name__)

# Commit failures that only mean "the group moved on": the records are re-read by the next owner.
_REBALANCE_CODES: Final = frozenset(
    {
        ConfluentError.REBALANCE_IN_PROGRESS,
        ConfluentError.ILLEGAL_GENERATION,
        ConfluentError.UNKNOWN_MEMBER_ID,
        ConfluentError._ASSIGNMENT_LOST,
    }
)

_COORDINATOR_CODES: Final = frozenset(
    {
        ConfluentError._WAIT_COORD,
        ConfluentError.COORDINATOR_NOT_AVAILABLE,
        ConfluentError.NOT_COORDINATOR,
        ConfluentError.COORDINATOR_LOAD_IN_PROGRESS,
        ConfluentError._TIMED_OUT,
        ConfluentError.REQUEST_TIMED_OUT,
        ConfluentError._TRANSPORT,
    }
)
"""Offset commit errors of a coordinator that is away or moving: retried (`OffsetCommitter.commit`)."""

_COMMIT_BACKOFF: Final = Backoff(initial_s=0.2, max_s=5.0)
"""Delays between the retries of such a commit: 0.2, 0.4, ... 5 s."""
_COMMIT_AWAY_LIMIT_S: Final = 300.0
"""How long offsets may wait for a group coordinator that is away before the stage stops."""
_COMMIT_AWAY_RETRY_S: Final = 5.0
"""Pause between two rounds of commit retries while offsets wait for the coordinator."""


class OffsetCommitter:
    """Commits the deliver group's offsets; keeps those the group coordinator could not take yet.

    Args:
        stats: the stage's counters (`commits`).
        retry_s: how long one commit retries a coordinator that is away (the loop does not poll
            meanwhile, so well within `max.poll.interval.ms`).
        clock: monotonic seconds.
        sleep: waits between retries.
    """

    def __init__(
        self,
        stats: DeliverStats,
        *,
        retry_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self._stats = stats
        self._commit_retry_s = retry_s
        self._clock = clock
        self._sleep = sleep
        # offsets whose commit found the coordinator away through a whole round of retries (after a
        # broker hang it can stay away longer): carried by the next commit, retried while idle
        self.uncommitted: dict[tuple[str, int], int] = {}
        self._uncommitted_since: float | None = None
        self._uncommitted_retry_at = 0.0

    @property
    def pending(self) -> bool:
        """True while offsets wait for a commit (the coordinator was away)."""
        return bool(self.uncommitted)

    def due(self) -> bool:
        """True when offsets wait and their next round of retries is due (`step` retries them)."""
        return bool(self.uncommitted) and self._clock() >= self._uncommitted_retry_at

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop the waiting offsets of `partitions` (revoked: their next owner re-reads their records)."""
        for key in partitions:
            self.uncommitted.pop(key, None)
        if not self.uncommitted:
            self._uncommitted_since = None

    def commit_batches(self, consumer: Consumer, batches: list[Batch]) -> None:
        """Commit the offsets of `batches` (per partition, the highest) with those still uncommitted.

        Raises:
            KafkaError: as `commit`.
        """
        last: dict[tuple[str, int], int] = {}
        for batch in batches:
            for tp, offset in batch.offsets.items():
                last[tp] = max(last.get(tp, 0), offset)
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(last.items())]
        if offsets:
            self.commit(consumer, offsets)

    def commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Commit `offsets` with those still uncommitted, retrying while the group coordinator is away.

        A coordinator still away after `retry_s` of retries (the loop does not poll meanwhile)
        leaves the offsets uncommitted: the stage goes on, the next commit carries them, and `step`
        retries them every `_COMMIT_AWAY_RETRY_S` while no batch commits (`due`).

        Raises:
            KafkaError: a fatal error, another error, or a coordinator away for `_COMMIT_AWAY_LIMIT_S`;
                the stage stops and its restart re-delivers the uncommitted records (idempotent).
        """
        for tp in offsets:
            key = (str(tp.topic), int(tp.partition))
            self.uncommitted[key] = max(self.uncommitted.get(key, 0), int(tp.offset))
        if not self.uncommitted:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(self.uncommitted.items())]
        now = self._clock()
        since = self._uncommitted_since = now if self._uncommitted_since is None else self._uncommitted_since
        deadline = now + self._commit_retry_s
        attempt = 0
        while True:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                self._stats.commits += 1
                self.uncommitted.clear()
                self._uncommitted_since = None
                return
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = getattr(err, "code", lambda: None)()
                fatal = getattr(err, "fatal", lambda: True)()
                if code in _REBALANCE_CODES and not fatal:
                    # The partitions moved on: their next owner re-reads these records (idempotent).
                    logger.warning("offsets not committed: the group is rebalancing")
                    self.uncommitted.clear()
                    self._uncommitted_since = None
                    return
                delay = _COMMIT_BACKOFF.delay(attempt)
                if code not in _COORDINATOR_CODES or fatal:
                    raise translate(exc) from exc
                if self._clock() + delay > deadline:
                    if self._clock() - since >= _COMMIT_AWAY_LIMIT_S:
                        raise translate(exc) from exc
                    logger.warning(
                        "offsets not committed: the group coordinator is away; retried later",
                        extra={"error": str(translate(exc))},
                    )
                    self._uncommitted_retry_at = self._clock() + _COMMIT_AWAY_RETRY_S
                    return
                logger.warning("offset commit failed; retrying", extra={"error": str(translate(exc))})
                self._sleep(delay)
                attempt += 1
