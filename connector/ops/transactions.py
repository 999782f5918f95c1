"""Transactions of the ops commands that write the merge stage's outputs under the group fence.

`fenced_transaction` (`commit_fenced`) commits a transaction with the group's generation-checked offsets
and aborts it on any failure; `wait_until_stable` waits until no transaction is open on given partitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import GroupActiveError, KafkaError
from connector.kafka.clients import kafka_errors, producer_config, unstable_partitions
from connector.ops.fence import OPS_LOGGER, GroupFence
from connector.ops.lag import kafka_call

__all__ = [
    "commit_fenced",
    "fenced_transaction",
    "stable_timeout",
    "transactional_producer",
    "wait_until_stable",
]

logger = logging.getLogger(__name__)


def transactional_producer(settings: Settings, suffix: str, **overrides: Any) -> Producer:
    """A transactional producer with id `<prefix>-<group>-<suffix>` (init_transactions done).

    A previous run's open transaction under the same id is aborted (fenced) by the init.
    """
    kafka = settings.kafka
    tid = f"{kafka.transactional_id_prefix}-{kafka.group_id}-{suffix}"
    producer = Producer(producer_config(settings, transactional_id=tid, logger=OPS_LOGGER, **overrides))
    with kafka_errors():
        producer.init_transactions(30)
    return producer


def stable_timeout(settings: Settings) -> float:
    """How long an open transaction can hold a partition's last stable offset: its timeout, plus slack."""
    return max(60.0, settings.kafka.transaction_timeout_ms / 1000 + 30)


def wait_until_stable(
    admin: AdminClient, partitions: Iterable[tuple[str, int]], *, timeout: float = 60.0
) -> None:
    """Wait until read_committed readers can see everything written to `partitions`.

    `commit_transaction` returns once the commit is decided; the markers that make the records
    visible are written right after. Leaving the merge group before they are could let a merge stage
    restore its state without our last records, so we wait until each partition's last stable offset
    reaches its high watermark (we are the only writer while we hold the group).

    Raises:
        KafkaError: the offsets cannot be read, or the partitions are not stable within `timeout`.
    """
    wanted = [TopicPartition(t, p) for t, p in sorted(set(partitions))]
    if not wanted:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            behind = _not_stable(admin, wanted)
        except KafkaError as exc:
            # leader moves (NOT_LEADER_FOR_PARTITION, e.g. just after topic creation): try again;
            # the last error is raised once the deadline has passed
            if exc.fatal or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        if not behind:
            return
        if time.monotonic() > deadline:
            raise KafkaError(
                f"{behind[0].topic}[{behind[0].partition}] still has an open transaction after "
                f"{timeout:.0f} s (a crashed producer's transaction times out after its "
                "transaction.timeout.ms); try again later"
            )
        time.sleep(0.1)


def _not_stable(admin: AdminClient, wanted: list[TopicPartition]) -> list[TopicPartition]:
    """Partitions whose last stable offset is below their high watermark."""
    with kafka_call("cannot list partition offsets"):
        return unstable_partitions(admin, wanted)


def commit_fenced(producer: Producer, fence: GroupFence, offsets: list[TopicPartition]) -> None:
    """Commit the open transaction with the group's offsets (generation-checked), else abort.

    Offsets must join every transaction: only then does the broker check our membership (KIP-447).
    `fence.check()` sees a revocation only once the client has heard of it; a fence that lost the
    group unnoticed (its session expired while the process stalled, or its coordinator was out of
    reach) could otherwise commit after a merge stage restored the partition, which then merges on
    without our records. A group with no committed offsets (a new group, or its offsets expired
    under `offsets.retention.minutes`) gets the partitions' earliest offsets, where it starts anyway.

    Raises:
        GroupActiveError: our partitions were revoked (another member joined); aborted.
        KafkaError: the broker rejected the offsets or the commit, or there are no offsets to send
            (no partition assigned); aborted.
    """
    try:
        fence.check()
        if not offsets:
            offsets = fence.start_offsets()
        if not offsets:
            raise KafkaError("the transaction has no offsets to send, so the group could not fence it")
        with kafka_errors():
            producer.send_offsets_to_transaction(offsets, fence.metadata(), 30)
            producer.commit_transaction(60)
    except (KafkaError, GroupActiveError):
        _abort_quietly(producer)
        raise


@contextmanager
def fenced_transaction(
    producer: Producer, fence: GroupFence, offsets: list[TopicPartition]
) -> Iterator[None]:
    """Begin a transaction; after the block, `commit_fenced` it with `offsets`.

    Whatever fails in the block (the fence lost to a stage that joined, a full queue) aborts the
    transaction before it propagates: left open, it would hold read_committed readers of its
    partitions (a merge stage restoring the state topic) behind it until the transaction timeout.
    """
    with kafka_errors():
        producer.begin_transaction()
    try:
        yield
    except BaseException:
        _abort_quietly(producer)
        raise
    commit_fenced(producer, fence, offsets)


def _abort_quietly(producer: Producer) -> None:
    """Abort the open transaction; a failed abort is logged (the broker aborts it at its timeout)."""
    try:
        producer.abort_transaction(30)
    except KafkaException as exc:
        logger.warning("abort failed", extra={"error": str(exc)})
