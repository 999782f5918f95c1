"""The deliver stage's rebalance callbacks (`Rebalance`).

Settle and drop the work of revoked or lost partitions; take up assigned ones (guard seeded).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from connector.deliver.commits import OffsetCommitter
from connector.deliver.flow import PartitionFlow
from connector.deliver.gathering import Gathering
from connector.deliver.window import BatchWindow
from connector.kafka.clients import translate
from connector.metrics import Metrics
from connector.sink.client import YespoClient
from connector.sink.recorder import DeliverStats

__all__ = ["Rebalance"]

logger = logging.getLogger(__name__)


class Rebalance:
    """The `on_assign`, `on_revoke` and `on_lost` callbacks the stage subscribes with.

    None of them raises (an exception raised in a callback would be lost): a failure that must stop
    the stage is handed to `keep_fatal`, for the loop's next turn to raise.

    Args:
        batches: the stage's window of batches.
        gathering: the stage's gathering batch.
        flow: the assigned partitions and their pause.
        offsets: the stage's offset commits (revoked partitions' waiting offsets are forgotten).
        client: the Yespo client (its single-mode writes are forgotten on a revocation).
        stats: the stage's counters (`assignments`, `revocations`).
        metrics: Prometheus metrics, if served.
        settle: steps 1-2 of a revocation (wait for the attempts on the wire, collect them and, if
            its flag is True, commit the final batches); keeps its failures for the next turn.
        seed: reads back the delivered records of newly assigned partitions (`seed_last_writes`).
        keep_fatal: keeps a failure for the loop's next turn.
        ready: set once partitions are assigned.
    """

    def __init__(
        self,
        *,
        batches: BatchWindow,
        gathering: Gathering,
        flow: PartitionFlow,
        offsets: OffsetCommitter,
        client: YespoClient,
        stats: DeliverStats,
        metrics: Metrics | None,
        settle: Callable[[Consumer, bool], None],
        seed: Callable[[Consumer, list[TopicPartition]], None],
        keep_fatal: Callable[[BaseException], None],
        ready: threading.Event,
    ) -> None:
        self._batches = batches
        self._gathering = gathering
        self._flow = flow
        self._offsets = offsets
        self._client = client
        self._stats = stats
        self._metrics = metrics
        self._settle = settle
        self._seed = seed
        self._keep_fatal = keep_fatal
        self._ready = ready

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take up `partitions`: resumed (or paused with the kept ones), then the guard is seeded."""
        self._flow.assign(consumer, partitions)
        self._stats.assignments += 1
        logger.info(
            "partitions assigned",
            extra={"partitions": ",".join(str(tp.partition) for tp in partitions), "count": len(partitions)},
        )
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="assigned").inc()
        self._seed(consumer, partitions)
        self._ready.set()

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Settle what the revoked partitions' attempts finished, then leave the rest to their next owner.

        1. Wait for the attempts on the wire (idempotent calls, but they must not outlive the
        assignment). 2. Collect them and commit the final batches (`settle`), as a stop does
        (`DeliverStage._drain`): the eager protocol leaves the partitions to this member while the
        callback runs, and a batch Yespo took must not be sent again by the next owner (in single
        mode the repeat would meet a 409 it cannot trust and wait out Yespo's minute). 3. Drop only
        the work of the revoked partitions (`_drop_revoked`); an incremental revocation keeps the
        rest. 4. Forget the single-mode writes, once the commit is done.

        An exception raised here would be lost: a failure that must stop the stage (a refused
        commit, unacknowledged DLQ writes, an attempt's fatal error) is kept for the next turn.
        """
        self._leave(consumer, partitions, commit=True)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost (the session expired): as a revocation, but nothing is committed.

        Another member may own them already: a commit would be refused, and the DLQ and audit
        writes of the batches would be written again by the owner that reads their records again.
        """
        logger.warning("partitions lost", extra={"count": len(partitions)})
        self._leave(consumer, partitions, commit=False)

    def _leave(self, consumer: Consumer, partitions: list[TopicPartition], *, commit: bool) -> None:
        """The steps of `on_revoke` (`commit=False`: of `on_lost`, which skips the commit)."""
        revoked = {(str(tp.topic), int(tp.partition)) for tp in partitions}
        # Steps 1 and 2
        self._settle(consumer, commit)
        # Step 3
        self._drop_revoked(consumer, revoked)
        self._offsets.forget(revoked)  # the next owner re-reads their records (idempotent)
        self._flow.revoke(consumer, partitions, revoked)
        # Step 4: single mode trusts a 409 only for its own last write of the same body
        # (`RecentWrites`); while the partitions are elsewhere, another member may write their
        # contacts. Forgotten only now: the batches committed above are not sent again.
        self._client.forget_recent_writes()
        self._stats.revocations += 1
        logger.info("partitions revoked", extra={"count": len(partitions)})
        if self._metrics is not None:
            self._metrics.rebalances.labels(event="revoked").inc()

    def _drop_revoked(self, consumer: Consumer, revoked: set[tuple[str, int]]) -> None:
        """Abandon the batches (and the gathering batch) that hold records of `revoked` partitions.

        A dropped batch's other partitions are tainted too: a later batch holding records of them
        is dropped as well (their records are read again in order), an earlier one is kept (its
        records come first; `BatchWindow.split_revoked`). Kept partitions that lose records are
        sought back to the first of them; a seek that fails would skip those records, so it stops
        the stage (kept for the next turn). An eager revocation takes every partition: everything is
        dropped, nothing sought.
        """
        retained = {(str(tp.topic), int(tp.partition)) for tp in self._flow.assigned} - revoked
        kept, dropped, tainted, rewind = self._batches.split_revoked(retained, revoked)
        gathering = self._gathering
        drop_gathering = gathering.count > 0 and (
            not retained or not tainted.isdisjoint(gathering.partitions())
        )
        if drop_gathering:
            for tp, start in gathering.starts.items():
                rewind[tp] = min(rewind.get(tp, start), start)
        if dropped or drop_gathering:
            logger.info(
                "abandoning uncommitted batches on revoke",
                extra={"batches": len(dropped), "gathering": drop_gathering},
            )
        self._batches.batches = dropped
        self._batches.abandon()
        self._batches.batches = kept
        if drop_gathering:
            gathering.discard()
        for (topic, partition), offset in sorted(rewind.items()):
            if (topic, partition) not in retained:
                continue
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                logger.error(
                    "kept partition not sought back to its dropped records", extra={"partition": partition}
                )
                self._keep_fatal(translate(exc))
