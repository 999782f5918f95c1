"""The merge stage's housekeeping: the delete-marker sweep and the purge of merged changes.

Customers whose delete markers expired are tombstoned; the changes records merged and committed are
deleted (the changes topic has no retention; Kafka Streams' repartition-topic purge).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import Any, Final

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.kafka.clients import translate
from connector.merge import expire_markers
from connector.merge_stage.dead_letters import ODD_VALUE
from connector.merge_stage.merging import Merger
from connector.merge_stage.positions import Positions
from connector.merge_stage.transactions import TransactionControl
from connector.metrics import Metrics
from connector.state.store import StateStore

__all__ = ["PURGE_INTERVAL_S", "Sweeper"]

logger = logging.getLogger(__name__)

PURGE_INTERVAL_S: Final = 60.0
"""How often the changes records merged and committed are deleted (Kafka Streams'
`repartition.purge.interval.ms`): one DeleteRecords request per interval, not per commit."""

_PURGE_TIMEOUT_S: Final = 30.0
"""How long one DeleteRecords request may take (it runs in the background; the loop never waits)."""

_SWEEP_INTERVAL_S: Final = 60.0
"""How often the store is scanned for expired delete markers."""


class Sweeper:
    """The delete-marker sweep and the purge of merged changes records, each run when due.

    Args:
        changes_topic: `state.changes_topic`.
        source_topics: the source topics (a changes topic among them is not purged: not ours).
        store: the local state store (committed state, scanned by the sweep).
        merger: the open transaction's state (read through it, written with `Merger.write_state`).
        transactions: the open transaction (a sweep joins it or opens one).
        positions: the committed offsets (a sweep-only transaction sends them; the purge deletes below).
        clients: the stage's (consumer, producer); raises `StateError` when the stage is not started.
        assigned: the partitions currently assigned to this member.
        restoring: whether a changes partition is still being restored (not swept).
        clock: monotonic seconds.
        wall_ms: wall-clock milliseconds (delete-marker ages).
        ttl_ms: `state.delete_marker_ttl_hours` in milliseconds.
        commit_max: `kafka.commit_max_records`: a sweep stops adding to a transaction that holds as many.
        purge_interval_s: how often merged changes are deleted.
        metrics: the held-customers gauge is refreshed with each sweep, when given.
    """

    def __init__(
        self,
        *,
        changes_topic: str,
        source_topics: Collection[str],
        store: StateStore,
        merger: Merger,
        transactions: TransactionControl,
        positions: Positions,
        clients: Callable[[], tuple[Consumer, Producer]],
        assigned: Callable[[], list[TopicPartition]],
        restoring: Callable[[int], bool],
        clock: Callable[[], float],
        wall_ms: Callable[[], int],
        ttl_ms: int,
        commit_max: int,
        purge_interval_s: float,
        metrics: Metrics | None,
    ) -> None:
        self._changes_topic = changes_topic
        self._source_topics = source_topics
        self._store = store
        self._merger = merger
        self._transactions = transactions
        self._positions = positions
        self._clients = clients
        self._assigned = assigned
        self._restoring = restoring
        self._clock = clock
        self._wall_ms = wall_ms
        self._ttl_ms = ttl_ms
        self._commit_max = commit_max
        self._metrics = metrics
        self._last_sweep = clock()
        self._expiring: deque[tuple[int, str]] = deque()  # expired markers a sweep has yet to write
        self._purge_interval_s = purge_interval_s
        self._last_purge = clock()
        self._purges: dict[int, tuple[int, Future[Any]]] = {}  # partition -> (offset, request) in flight
        self._purged: dict[int, int] = {}  # changes partition -> the offset its records are deleted below

    def sweep_due(self) -> bool:
        """True when a sweep has keys left to write, or the last scan is a minute old."""
        return bool(self._expiring) or self._clock() - self._last_sweep > _SWEEP_INTERVAL_S

    def forget_expiring(self) -> None:
        """Drop the expired keys not written yet (the partitions were revoked; a new scan finds them)."""
        self._expiring.clear()

    def sweep(self) -> None:
        """Tombstone customers whose delete markers expired (state.delete_marker_ttl_hours).

        It may run while a transaction is open: customers changed in it are left to the commit's
        projection, which writes their whole state; the others are read through the transaction.
        A transaction it opens sends offsets too, so that a member the group dropped is fenced: until
        the assignment's committed offsets are known (`Positions.fencing_offsets_known`) it
        writes nothing and tries again at the next sweep.

        A pass writes until the transaction holds `kafka.commit_max_records` records: a mass delete
        expiring at once must not make one transaction outlive `kafka.transaction_timeout_ms` (the
        producer would be fenced, at every restart again). The keys left wait in `_expiring`; the
        next step commits and sweeps on from there, not a minute later.

        Raises:
            KafkaError: a client call failed (the caller rolls the transaction back); `StateError`
                as `TransactionControl.begin`.
        """
        _, producer = self._clients()
        transactions = self._transactions
        now = self._wall_ms()
        if not self._expiring:
            self._last_sweep = self._clock()
            self._expiring = self._expired_keys(now)
        pending = self._expiring
        sweepable = self._sweepable_partitions()
        while pending:
            if transactions.in_txn and transactions.txn_records >= self._commit_max:
                return  # the rest after this transaction's commit
            partition, key = pending.popleft()
            if partition not in sweepable or self._merger.is_dirty(partition, key):
                continue  # revoked or restoring; or changed in the open transaction (written at commit)
            # what this transaction already wrote for the key (an earlier sweep), else the store
            state = self._merger.txn.get(partition, key)
            if state is None:
                continue
            try:
                expired = expire_markers(state, now_ms=now, ttl_ms=self._ttl_ms)
            except (*ODD_VALUE, AttributeError):  # a state record of odd shape: left as it is
                continue
            if expired is state:
                continue  # changed since the scan
            if not transactions.in_txn and not self._positions.fencing_offsets_known():
                logger.info("delete-marker sweep postponed: the committed offsets are not known yet")
                pending.clear()
                return
            transactions.begin(producer)
            self._merger.write_state(producer, partition, key, expired)
            transactions.txn_records += 1

    def purge_due(self) -> bool:
        """True when `purge_interval_s` has passed since the last purge."""
        return self._clock() - self._last_purge >= self._purge_interval_s

    def purge_merged(self, admin: AdminClient) -> None:
        """Delete the changes records merged and committed (Kafka Streams' repartition-topic purge).

        The changes topic has no retention (`internal_topics`): once a change is routed its source
        offset is committed, so its record is the only copy until merged. Each owned changes partition
        is deleted below the offset committed for it (`Positions.committed`: this member's
        committed transactions, or the group's committed offset for its assignment), never beyond,
        and only when that moved on. The request runs in the background; its failure (e.g. no DELETE
        ACL on the topic, the broker away) is logged and the next interval asks again: never fatal.
        """
        self._last_purge = self._clock()
        if self._changes_topic in self._source_topics:
            return  # a source topic playing the changes topic's role: its records are not ours to delete
        for partition, (offset, request) in list(self._purges.items()):
            if not request.done():
                return  # still in flight: no second request on top of it
            del self._purges[partition]
            error = request.exception(0)
            if error is None:
                self._purged[partition] = max(offset, self._purged.get(partition, 0))
                continue
            logger.warning(
                "merged changes not deleted; retried at the next purge (deleting records needs the "
                "DELETE operation on state.changes_topic)",
                extra={
                    "topic": self._changes_topic,
                    "partition": partition,
                    "error": str(translate(error) if isinstance(error, KafkaException) else error),
                },
            )
        owned = {tp.partition for tp in self._assigned() if tp.topic == self._changes_topic}
        below = {
            p: offset
            for (topic, p), offset in self._positions.committed.items()
            if topic == self._changes_topic and p in owned and offset > self._purged.get(p, 0)
        }  # an offset > 0 only: OFFSET_END (-1) would delete the whole partition
        if not below:
            return
        try:
            requests = admin.delete_records(
                [TopicPartition(self._changes_topic, p, o) for p, o in sorted(below.items())],
                request_timeout=_PURGE_TIMEOUT_S,
            )
        except (KafkaException, ValueError) as exc:
            logger.warning("merged changes not deleted; retried at the next purge", extra={"error": str(exc)})
            return
        for tp, request in requests.items():
            self._purges[tp.partition] = (below[tp.partition], request)
        logger.debug("deleting merged changes", extra={"topic": self._changes_topic, "below": below})

    def _sweepable_partitions(self) -> set[int]:
        """The assigned changes partitions that are not restoring."""
        return {
            tp.partition
            for tp in self._assigned()
            if tp.topic == self._changes_topic and not self._restoring(tp.partition)
        }

    def _expired_keys(self, now: int) -> deque[tuple[int, str]]:
        """(partition, key) of every customer with an expired delete marker (read, nothing written)."""
        found: deque[tuple[int, str]] = deque()
        for partition in sorted(self._sweepable_partitions()):
            held = 0
            for key, _ in self._store.items(partition):  # writes go to the transaction, not the store
                held += 1
                if self._merger.is_dirty(partition, key):
                    continue  # changed in the open transaction: projected and written at commit
                state = self._merger.txn.get(partition, key)
                if state is None:
                    continue
                try:
                    expired = expire_markers(state, now_ms=now, ttl_ms=self._ttl_ms)
                except (*ODD_VALUE, AttributeError):  # a state record of odd shape: left as it is
                    logger.warning("state record not swept", extra={"partition": partition})
                    continue
                if expired is not state:
                    found.append((partition, key))
            if self._metrics is not None:  # customers held (committed), refreshed with each sweep
                self._metrics.state_customers.labels(partition=str(partition)).set(held)
        return found
