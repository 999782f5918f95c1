"""The deliver stage's window: the batches formed and not yet committed, oldest first.

Each is on the wire, waiting for its retry, or final (every record's outcome known, ready to commit).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from typing import Final

from connector.deliver.runner import Runner
from connector.errors import DeliveryInterrupted, RetryableDeliveryError, StateError
from connector.sink.batch_state import Batch
from connector.sink.client import YespoClient
from connector.sink.delivery import BatchDelivery
from connector.sink.recorder import DeliverStats

__all__ = ["BatchWindow"]

logger = logging.getLogger(__name__)

_INFLIGHT_TICK_LIMIT_S: Final = 900.0
"""How long a wait for the attempts on the wire keeps the liveness ticking (see `BatchWindow.wait`)."""


class BatchWindow:
    """The batches between their forming and their commit, in batch (and so commit) order.

    Args:
        delivery: runs the batches' attempts; abandons and gives up on batches.
        client: the Yespo client (its retry policy spaces the attempts).
        stats: the stage's counters (`retries`, `requests_failed`).
        clock: monotonic seconds (retry times).

    Attributes:
        batches: the batches, oldest first.
    """

    def __init__(
        self,
        delivery: BatchDelivery,
        client: YespoClient,
        stats: DeliverStats,
        clock: Callable[[], float],
    ) -> None:
        self._delivery = delivery
        self._client = client
        self._stats = stats
        self._clock = clock
        self.batches: list[Batch] = []

    def inflight(self) -> list[Future[None]]:
        """The futures of the attempts on the wire."""
        return [b.future for b in self.batches if b.future is not None]

    def waiting(self) -> bool:
        """True while a batch waits for its retry (neither on the wire nor final)."""
        return any(b.future is None and not b.final for b in self.batches)

    def start_due(self, runner: Runner | None) -> None:
        """Start (on `runner`) the attempt of every batch whose retry time has come.

        Raises:
            StateError: an attempt is due and there is no runner (the stage is not started).
        """
        now = self._clock()
        for batch in self.batches:
            if batch.future is None and not batch.final and now >= batch.retry_at:
                if runner is None:
                    raise StateError("deliver stage is not started")
                batch.future = runner(functools.partial(self._delivery.attempt, batch))

    def collect(self, *, on_error: str = "raise") -> BaseException | None:
        """Mark batches whose attempt finished with a final outcome for every record.

        A retryable failure schedules a retry or, past the retry budget, dead-letters the open
        records (then the batch is final). Any other failure stops the stage (`on_error="raise"`),
        or leaves the batch uncommitted: while draining (`"drop"`), or in a rebalance callback, which
        must not raise (`"keep"`: the first such failure is returned, for the loop's next turn to
        raise).

        Raises:
            BaseException: with `on_error="raise"`, what an attempt raised (other than a retryable
                delivery error or an interruption).
        """
        kept: BaseException | None = None
        for batch in self.batches:
            future = batch.future
            if future is None or not future.done():
                continue
            batch.future = None
            exc = future.exception()
            if exc is None:
                batch.final = True
            elif isinstance(exc, DeliveryInterrupted):
                batch.retry_at = self._clock()  # uncommitted, sent again if the stage goes on
            elif isinstance(exc, RetryableDeliveryError):
                batch.final = not self._schedule_retry(batch, exc)
            elif on_error == "raise":
                raise exc
            elif on_error == "keep" and kept is None:
                kept = exc
        return kept

    def pop_final(self) -> Batch | None:
        """Remove and return the leading batch if it is final (the next to commit), else None."""
        if self.batches and self.batches[0].final:
            return self.batches.pop(0)
        return None

    def take_settled(self) -> list[Batch]:
        """Remove and return every final batch that no open batch before it shares a partition with.

        A revocation's commit: a batch that finished behind one waiting for its retry is final all
        the same, and its offsets are safe to commit when no open batch before it holds records of
        its partitions (per partition, the batches committed are still a prefix).
        """
        done: list[Batch] = []
        still_open: list[Batch] = []
        blocked: set[tuple[str, int]] = set()
        for batch in self.batches:
            if batch.final and blocked.isdisjoint(batch.offsets):
                done.append(batch)
            else:
                still_open.append(batch)
                blocked.update(batch.offsets)
        self.batches = still_open
        return done

    def split_revoked(
        self, retained: set[tuple[str, int]], revoked: set[tuple[str, int]]
    ) -> tuple[list[Batch], list[Batch], set[tuple[str, int]], dict[tuple[str, int], int]]:
        """Which batches a revocation keeps and drops: `(kept, dropped, tainted, rewind)`.

        A dropped batch's other partitions are tainted too: a later batch holding records of them
        is dropped as well (their records are read again in order), an earlier one is kept (its
        records come first). `rewind` maps each partition of a dropped batch to its first record's
        offset. Nothing retained (an eager revocation): everything is dropped.
        """
        tainted = set(revoked)
        rewind: dict[tuple[str, int], int] = {}
        kept: list[Batch] = []
        dropped: list[Batch] = []
        for batch in self.batches:
            touched = batch.offsets.keys() | batch.starts.keys()
            if retained and tainted.isdisjoint(touched):
                kept.append(batch)
                continue
            tainted |= touched
            dropped.append(batch)
            for tp, start in batch.starts.items():
                rewind[tp] = min(rewind.get(tp, start), start)
        return kept, dropped, tainted, rewind

    def abandon(self) -> None:
        """Drop the batches of the window (revocation, stop); the imports they await are kept.

        Their records are read again (here, or by the partition's next owner), and an import of
        theirs still queued at Yespo must not apply after the next write of its contacts: every
        later attempt of this stage awaits those imports first (`BatchDelivery.abandon`), within
        the delivery's bound. Nothing is polled here: a revocation callback does not wait on Yespo.
        """
        for batch in self.batches:
            self._delivery.abandon(batch)
        self.batches = []

    def wait(self, on_tick: Callable[[], None] | None) -> None:
        """Wait for the attempts on the wire (a revocation, a stop), ticking the liveness meanwhile.

        An attempt is bounded by its requests' timeouts and the import-status wait (minutes), longer
        than the liveness timeout: a rebalance must not make the process look stuck. Past
        `_INFLIGHT_TICK_LIMIT_S` the ticks stop, so a wait that never ends is still caught.
        """
        pending = {b.future for b in self.batches if b.future is not None}
        ticks_until = self._clock() + _INFLIGHT_TICK_LIMIT_S
        self._delivery.interrupt(True)  # an isolation of imports in ERROR stops after its import
        try:
            while pending:
                _, pending = wait_for(pending, timeout=1.0)
                if pending and on_tick is not None and self._clock() < ticks_until:
                    on_tick()
        finally:
            self._delivery.interrupt(False)

    def _schedule_retry(self, batch: Batch, exc: RetryableDeliveryError) -> bool:
        """Pause and schedule the next attempt (True), or give up and dead-letter the rest (False)."""
        now = self._clock()
        if batch.first_failure is None:
            batch.first_failure = now
        batch.attempts += 1
        self._stats.retries += 1
        self._stats.requests_failed += 1
        delay = self._client.retry_delay(
            batch.attempts, now - batch.first_failure, exc.retry_after, status_code=exc.status_code
        )
        if delay is None:
            logger.error(
                "giving up on a batch after retries", extra={"batch": batch.batch_id, "error": str(exc)}
            )
            self._delivery.give_up(batch, f"gave up after {batch.attempts} attempts: {exc}")
            return False
        batch.retry_at = now + delay
        logger.warning(
            "delivery failed; retrying",
            extra={
                "batch": batch.batch_id,
                "status": exc.status_code,
                "attempt": batch.attempts,
                "retry_in_s": round(delay, 2),
            },
        )
        return True
