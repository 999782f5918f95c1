"""The merge stage's transaction control (KIP-447): begin, commit, abort and rewind.

The writes commit with the consumed offsets, or are aborted and their input read again from the
committed offsets; a commit whose outcome is unknown stops the stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from connector.errors import KafkaError, StateError
from connector.kafka.clients import kafka_errors, translate
from connector.merge_stage.budget import StepBudget
from connector.merge_stage.merging import Merger
from connector.merge_stage.positions import Positions
from connector.merge_stage.repartition import Repartitioner
from connector.merge_stage.stats import MergeStats
from connector.metrics import Metrics
from connector.state.recovery import MIN_CALL_S

__all__ = ["SEND_OFFSETS_TIMEOUT_S", "TransactionControl"]

logger = logging.getLogger(__name__)

_ABORT_TIMEOUT_S = 30.0
"""Seconds one `abort_transaction` call may take."""

SEND_OFFSETS_TIMEOUT_S: Final = 15.0
"""How long `send_offsets_to_transaction` may wait (a rebalancing group holds it: time out, abort)."""

_COMMIT_TIMEOUT_S: Final = 60.0
"""The longest one `commit_transaction` attempt waits (less when the step's deadline is nearer)."""

_RESUME_ON_CLOSE_S: Final = 30.0
"""How long `close` resumes a commit whose outcome stayed unknown (the stage stopped on it)."""


class TransactionControl:
    """The stage's one open Kafka transaction: its begin, its commit, its abort and the rewind after.

    Everything a transaction writes (routed changes, state, upserts, DLQ copies) commits together
    with the consumed offsets, or not at all. Buffered state reaches the local store only once the
    commit succeeded (`Merger.commit`). Aborting is safe until the commit is decided; after that only
    `commit_transaction` may be repeated, and a commit whose outcome stays unknown stops the stage
    (`StateError`): a restart restores the state from Kafka.

    Args:
        clients: the stage's (consumer, producer); raises `StateError` when the stage is not started.
        producer: the stage's producer, or None when it is not started (or already closed).
        positions: the consumed offsets (sent with the commit), the committed ones, the rewind.
        budget: the step budget every blocking call waits within.
        merger: the customers' buffered state (projected before, committed after the commit).
        repartitioner: the routed changes still buffered (written before the commit).
        stats: counts commits and aborts; upserts and deletes are read for `inject_abort`.
        metrics: observes commit durations, when given.
        transaction_timeout_s: `kafka.transaction_timeout_ms` in seconds: commits or aborts failing
            in a row for that long stop the stage (the producer is wedged).
        check_refused: called with the error that made a transaction abort (`abort_and_rewind`); may
            raise `StateError` to stop the stage (a topic's record limit was lowered).
    """

    def __init__(
        self,
        *,
        clients: Callable[[], tuple[Consumer, Producer]],
        producer: Callable[[], Producer | None],
        positions: Positions,
        budget: StepBudget,
        merger: Merger,
        repartitioner: Repartitioner,
        stats: MergeStats,
        metrics: Metrics | None,
        transaction_timeout_s: float,
        check_refused: Callable[[KafkaError], None],
    ) -> None:
        self._clients = clients
        self._producer = producer
        self._positions = positions
        self._budget = budget
        self._clock = budget.clock
        self._merger = merger
        self._repartitioner = repartitioner
        self._stats = stats
        self._metrics = metrics
        self._transaction_timeout_s = transaction_timeout_s
        self._check_refused_size = check_refused
        self.in_txn = False
        self.txn_started = 0.0
        self.txn_records = 0
        self._lock = threading.Lock()
        self._inject_aborts = 0
        # test hook: (customers merged, upserts written) of each transaction an injected abort ended
        self.injected_aborts: list[tuple[int, int]] = []
        self.abort_pending = False
        self._abort_failing_since: float | None = None  # clock time of the first failed abort in a row
        self._abort_error: KafkaError | None = None  # why the last abort failed (None: it succeeded)
        self.commit_failing_since: float | None = None  # when the first failed commit in a row began
        self._commit_failed_at = 0.0  # when the last failed commit ended
        # a commit_transaction that timed out: librdkafka resumes it on the next commit_transaction
        # call and refuses every other transactional call until then (`close` resumes it)
        self.commit_unresolved = False
        self.closing = False

    def inject_abort(self, count: int) -> None:
        """Test hook: the next `count` transactions that merged customers abort (see `MergeStage`)."""
        with self._lock:
            self._inject_aborts += count

    def begin(self, producer: Producer) -> None:
        """Open a transaction unless one is open (an abort still pending is finished first).

        Raises:
            KafkaError: the previous transaction is not aborted yet (retriable), or a client error.
            StateError: aborts have kept failing for `kafka.transaction_timeout_ms` (`abort_quietly`).
        """
        if not self.in_txn:
            # an abort that failed earlier must end first (`step` finishes it before anything else)
            if self.abort_pending and not self.finish_abort():
                raise KafkaError("the previous transaction is not aborted yet", retriable=True)
            with kafka_errors():
                producer.begin_transaction()
            self.in_txn = True
            self.txn_started = self._clock()
            self.txn_records = 0

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """Count one record the open transaction consumed: its offset is sent with the commit."""
        self._positions.offsets[(topic, partition)] = offset + 1
        self.txn_records += 1

    def close(self) -> None:
        """On close: commit (or abort) the open transaction, or resume a commit whose outcome is unknown.

        A commit that fails is logged and the transaction aborted; an abort that fails now is logged,
        not raised: it must not hide why the stage stops.
        """
        self.closing = True  # an abort that fails now is logged, not raised (see `abort_quietly`)
        try:
            if self.commit_unresolved:
                self.resume_commit()
            elif self.in_txn:
                try:
                    self.commit()
                except StateError:
                    if not self.commit_unresolved:
                        raise
                    # its outcome unknown: librdkafka refuses an abort (_CONFLICT) until the commit is
                    # resumed, so an abort would leave the transaction open until its timeout
                    self.resume_commit()
            elif self.abort_pending:  # left by the last step: end it, or readers wait for its timeout
                self.abort_quietly()
        except (KafkaError, StateError) as exc:
            logger.warning("final commit failed; aborting", extra={"error": str(exc)})
            self.abort_quietly()

    def commit(self, *, commit_attempts: int = 1) -> None:
        """Commit the open transaction: project, flush, send the offsets, commit.

        Raises:
            KafkaError: the transaction was not committed and can be aborted (a failure before the
                commit, or a commit that must abort), or a fatal client error.
            StateError: `commit_transaction` kept failing without an answer (`commit_attempts`
                tries): the outcome is unknown, so neither the local state nor the consumer
                positions can be trusted; the stage must stop (a restart restores them from Kafka).
        """
        consumer, producer = self._clients()
        # for `inject_abort`
        merged, emitted = self._merger.dirty_count, self._stats.upserts + self._stats.deletes
        started = self._clock()
        with kafka_errors():
            # Step 1: project the customers changed in this transaction (state + upserts).
            self._merger.project_dirty(producer)
            # Step 2: write the routed changes still buffered.
            self._repartitioner.flush_routed(producer)
        with self._lock:  # the test hook (`inject_abort`): only a transaction that merged customers
            inject = self._inject_aborts > 0 and merged > 0
            if inject:
                self._inject_aborts -= 1
        if inject:
            # the records reach the broker first (an abort purges those still queued), as they do
            # when a crash ends a transaction: the abort must undo writes that are in the log
            producer.flush(max(0.0, self._budget.time_left(10.0)))
            self.injected_aborts.append((merged, self._stats.upserts + self._stats.deletes - emitted))
            raise KafkaError("injected abort", txn_requires_abort=True)
        # Step 3: the consumed offsets join the transaction; Step 4: commit it.
        # Nothing consumed (a sweep-only transaction): the committed offsets again, a no-op for the
        # group that fences a member it has dropped (KIP-447 checks the member's generation). Every
        # transaction sends some: one without would commit even if the group had dropped this member.
        sent = self._positions.offsets or self._positions.committed
        if not sent:
            raise KafkaError(
                "the transaction has no offsets to send, so the group could not fence it",
                txn_requires_abort=True,
            )
        offsets = [TopicPartition(t, p, o) for (t, p), o in sent.items()]
        # A group being rebalanced (e.g. our session expired while the broker was away) holds this
        # call until the rebalance ends, which needs this thread to poll: time out, abort.
        self._budget.tick()
        wait_s = min(SEND_OFFSETS_TIMEOUT_S, self._budget.wait_cap_s, self._budget.deadline - started)
        with kafka_errors():
            producer.send_offsets_to_transaction(
                offsets, consumer.consumer_group_metadata(), max(0.0, wait_s)
            )
        # From here the commit may be decided without us hearing of it: only commit_transaction may
        # be repeated (librdkafka resumes the same commit). Aborting could drop state that committed.
        # The attempts share what is left of the step (at most the step's budget), so the loop polls
        # again within max.poll.interval.ms.
        # (at least a quarter of the budget: a long projection above must not leave them a second each)
        # Each attempt waits at most `wait_cap_s` and the loop ticks before it: the retries of a
        # commit on a slow broker keep /healthz alive (each attempt returned).
        step_s = self._budget.step_s
        budget = max(self._budget.time_left(step_s), step_s / 4)
        cap = min(_COMMIT_TIMEOUT_S, self._budget.wait_cap_s)
        attempt_s = min(cap, max(1.0, budget / commit_attempts - 0.2 * commit_attempts))
        for attempt in range(commit_attempts):
            self._budget.tick()
            try:
                with kafka_errors():
                    producer.commit_transaction(attempt_s)
                break
            except KafkaError as exc:
                if exc.txn_requires_abort or exc.fatal:
                    raise
                if not exc.retriable or attempt == commit_attempts - 1:
                    self.commit_unresolved = True
                    raise StateError(
                        f"transaction commit outcome unknown ({exc}); stopping, a restart restores "
                        "the state from Kafka"
                    ) from exc
                time.sleep(0.2 * (attempt + 1))
        self._merger.commit()
        self._positions.committed.update(self._positions.offsets)
        self._positions.offsets.clear()
        self.in_txn = False
        self.commit_failing_since = None
        self._stats.commits += 1
        if self._metrics is not None:
            self._metrics.transaction_commit_duration.observe(self._clock() - started)

    def resume_commit(self) -> None:
        """On close, resume a commit whose outcome stayed unknown, until the step's deadline.

        The stage stopped on it (`commit`); left alone, the transaction would stay open on the
        broker until `kafka.transaction_timeout_ms` (or until this transactional.id starts again),
        holding back every read_committed reader of its partitions, the restore of the partitions'
        next owner included. Nothing is applied to the local store: the process is stopping, and a
        restart restores the state from Kafka whatever the outcome.
        """
        producer = self._producer()
        if producer is None:
            return
        budget = self._budget
        # bounded: a broker still away would hold the stop (and the restart that also ends it)
        budget.deadline = min(budget.deadline, self._clock() + _RESUME_ON_CLOSE_S)
        attempt = 0
        while (timeout := budget.time_left(min(_COMMIT_TIMEOUT_S, budget.wait_cap_s))) >= MIN_CALL_S:
            attempt += 1
            budget.tick()
            try:
                with kafka_errors():
                    producer.commit_transaction(timeout)
            except KafkaError as exc:
                if exc.retriable and not (exc.txn_requires_abort or exc.fatal):
                    time.sleep(max(0.0, min(0.2 * attempt, budget.deadline - self._clock())))
                    continue
                logger.warning("resumed commit failed", extra={"error": str(exc)})
                self.commit_unresolved = False
                if exc.txn_requires_abort:
                    self.abort_quietly()
                return
            self.commit_unresolved = False
            self.in_txn = False
            logger.info(
                "the commit whose outcome was unknown completed on close", extra={"attempts": attempt}
            )
            return
        logger.warning(
            "commit outcome still unknown on close: the broker aborts the transaction after "
            "kafka.transaction_timeout_ms unless it committed, or when this transactional.id starts again"
        )

    def commit_or_recover(self) -> None:
        """Commit; a transaction that was not committed is aborted and its input read again.

        Aborting is always safe before the commit is decided: the buffered state is dropped and every
        partition goes back to its committed offset. A fatal error (e.g. fenced) stops the stage, and
        so do commits failing in a row for `kafka.transaction_timeout_ms`: the producer is wedged (seen
        after a 50 s broker hang: each `send_offsets_to_transaction` timed out with its request to the
        transaction coordinator queued, never sent, while the aborts succeeded). A restart starts a
        new producer.

        Raises:
            StateError: a fatal error, commits failing in a row (above), a commit whose outcome is
                unknown (`commit`), or the errors of `abort_and_rewind`.
        """
        started = self._clock()
        try:
            self.commit(commit_attempts=5)
        except KafkaError as exc:
            if exc.fatal:
                raise StateError(f"transaction commit failed: {exc}") from exc
            logger.warning("transaction must abort", extra={"error": str(exc)})
            now = self._clock()
            since = self.commit_failing_since
            if since is None or started - self._commit_failed_at > self._transaction_timeout_s:
                since = self.commit_failing_since = started  # a new row (long quiet since the last)
            self._commit_failed_at = now
            self.abort_and_rewind(exc)
            failing = now - since
            if failing >= self._transaction_timeout_s and since < started:  # two failures at least
                raise StateError(
                    f"transactions have failed to commit for {failing:.0f} s ({exc}); stopping so "
                    "that a restart starts a new producer"
                ) from exc

    def abort_quietly(self) -> None:
        """Abort the open transaction (retrying until the step's deadline) and drop what it buffered.

        An abort not done by the deadline leaves `abort_pending`: the next step tries again before
        anything else (`finish_abort`).

        Raises:
            StateError: (not while closing) aborts have kept failing for `kafka.transaction_timeout_ms`: the
                producer is wedged (seen after a 50 s broker hang: its request to the transaction
                coordinator stayed queued, never sent, each abort timing out). The broker has aborted
                the transaction itself by then; a restart starts a new producer.
        """
        wedged: StateError | None = None
        producer = self._producer()
        if producer is not None and (self.in_txn or self.abort_pending):
            self.abort_pending = True  # until an abort succeeds: the next step tries again
            for attempt in range(3):
                timeout = self._budget.time_left(min(_ABORT_TIMEOUT_S, self._budget.wait_cap_s))
                if timeout < MIN_CALL_S:
                    logger.info("abort left for the next step: the step is out of time")
                    break
                self._budget.tick()
                try:
                    producer.abort_transaction(timeout)
                    self.abort_pending = False
                    self._abort_failing_since = None
                    self._abort_error = None
                    break
                except KafkaException as exc:
                    error = self._abort_error = translate(exc)
                    logger.warning("abort failed", extra={"error": str(error)})
                    now = self._clock()
                    if self._abort_failing_since is None:
                        self._abort_failing_since = now
                    failing = now - self._abort_failing_since
                    if not self.closing and failing >= self._transaction_timeout_s:
                        wedged = StateError(
                            f"the producer could not abort its transaction for {failing:.0f} s ({error}); "
                            "stopping so that a restart starts a new producer"
                        )
                        break
                    if not error.retriable:
                        break  # fatal: the next step stops the stage (`finish_abort`)
                    time.sleep(max(0.0, min(0.5 * (attempt + 1), self._budget.deadline - now)))
        self._merger.abort()
        self._positions.offsets.clear()
        self._repartitioner.discard()
        self.in_txn = False
        if wedged is not None:
            raise wedged

    def finish_abort(self) -> bool:
        """Try again an abort that an earlier call could not end; True once no abort is pending.

        Raises:
            KafkaError: the abort failed with a fatal error (e.g. fenced): the stage stops.
            StateError: aborts have kept failing for `kafka.transaction_timeout_ms` (`abort_quietly`).
        """
        self.abort_quietly()
        if self.abort_pending and self._abort_error is not None and self._abort_error.fatal:
            raise self._abort_error
        return not self.abort_pending

    def abort_and_rewind(self, cause: KafkaError | None = None) -> None:
        """Abort, drop the buffered state, seek every assigned partition back to its committed offset.

        Raises:
            StateError: `cause` is the broker refusing a record as too large, after a topic's limit
                was lowered (`check_refused`), or the producer is wedged (`abort_quietly`).
        """
        self.abort_quietly()
        self._stats.aborts += 1
        self._positions.rewind_pending = True
        self._positions.rewind()
        if cause is not None:
            self._check_refused_size(cause)
