"""Rebuild-state: clear the merge stage's state and make it reprocess the source topics from the start.

ONE Kafka transaction, committed as the merge group's only member: a tombstone for every live key of
the state topic plus the group's offsets (source topics -> earliest, changes topic -> its end). Either
all of it is visible to the next merge stage or none of it is.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import GroupActiveError
from connector.kafka.clients import admin_config, produce
from connector.kafka.topics import ensure_topics
from connector.ops.fence import OPS_LOGGER, GroupFence, live_members
from connector.ops.offsets import OffsetReset, plan_reset
from connector.ops.progress import ProgressReporter
from connector.ops.scan import StateScanner
from connector.ops.stages import StageGroup, stage_group
from connector.ops.transactions import (
    fenced_transaction,
    stable_timeout,
    transactional_producer,
    wait_until_stable,
)

__all__ = ["RebuildSummary", "plan_offsets", "run_rebuild"]

logger = logging.getLogger(__name__)

# list_offsets(for_timestamp) finds no record this late, so it answers the end (last stable offset)
_END_OF_TIME = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)

# tombstones are tiny, but a large state topic still needs longer than a merge commit interval
_MIN_TRANSACTION_TIMEOUT_MS = 300_000


@dataclass
class RebuildSummary:
    """What rebuild-state read and wrote (or, in a dry run, would write)."""

    records_read: int = 0
    partitions: int = 0
    tombstones: int = 0
    resets: tuple[OffsetReset, ...] = ()
    dry_run: bool = False
    members: int = 0  # live members of the merge group when a dry run started

    def lines(self) -> list[str]:
        """The final summary, one fact per line."""
        verb = "would write" if self.dry_run else "wrote"
        moved = "would move" if self.dry_run else "moved"
        return [
            f"state records read: {self.records_read} in {self.partitions} partition(s)",
            f"{verb} {self.tombstones} tombstone(s) (one per live state key)",
            f"merge group offsets {moved}: {len(self.resets)} partition(s) "
            "(source topics to earliest, changes topic to its end)",
        ]


def plan_offsets(
    admin: AdminClient, settings: Settings, *, require_empty: bool, timeout: float = 10.0
) -> tuple[OffsetReset, ...]:
    """The merge group's new offsets: source topics -> earliest, `state.changes_topic` -> its end.

    The changes topic holds records derived from source records; the source topics are re-read from
    the start, so every change is routed again and the old ones are skipped.

    Raises:
        GroupActiveError: `require_empty` and the group has live members.
        KafkaError: the cluster cannot be read. ConfigError: a topic does not exist (names its key).
    """
    merge = stage_group(settings, "merge")  # the source topics, then the changes topic; with their keys
    sources = StageGroup("merge", merge.group, merge.topics[:-1], merge.keys[:-1])
    changes = StageGroup("merge", merge.group, merge.topics[-1:], merge.keys[-1:])
    earliest = plan_reset(admin, sources, None, require_empty=require_empty, timeout=timeout)
    ends = plan_reset(admin, changes, _END_OF_TIME, require_empty=require_empty, timeout=timeout)
    return earliest.resets + ends.resets


def run_rebuild(
    settings: Settings, *, dry_run: bool = False, progress: ProgressReporter | None = None
) -> RebuildSummary:
    """Clear the state and rewind the merge group (see the module docstring).

    The next merge run restores an empty state, re-routes every source record and, since no
    fingerprint survives, emits an upsert (version 1 again) for every live customer: a full re-sync
    to Yespo. Deleted customers whose source records are still retained are deleted again.

    Args:
        settings: The connector settings.
        dry_run: Read and plan only (allowed while the merge stage runs).
        progress: Reports state records read.

    Raises:
        GroupActiveError: the merge group has live members (not for a dry run), or one joined.
        ConfigError: an internal topic is missing or has the wrong partition count.
        KafkaError: a topic is missing or the broker failed; the transaction is aborted.
    """
    summary = RebuildSummary(dry_run=dry_run)
    admin = AdminClient(admin_config(settings, logger=OPS_LOGGER))
    group = settings.kafka.group_id
    members = summary.members = live_members(admin, group)
    if members and not dry_run:
        raise GroupActiveError(group, members)
    ensure_topics(admin, settings, create=False, source_required=False)
    if dry_run:
        summary.resets = plan_offsets(admin, settings, require_empty=False)
        _scan(settings, summary, progress, None)
        return summary
    fence = GroupFence(settings)
    producer: Producer | None = None
    try:
        # Step 1: as the group's only member, let open transactions on the state topic end, then read it
        state_partitions = StateScanner.partition_ids(admin, settings.state.topic)
        plan_offsets(admin, settings, require_empty=False)  # a missing topic fails now, not after the scan
        wait_until_stable(admin, state_partitions, timeout=stable_timeout(settings))
        live = _scan(settings, summary, progress, fence)
        summary.resets = plan_offsets(admin, settings, require_empty=False)
        # Step 2: tombstones and the rewound offsets in one transaction
        timeout_ms = max(settings.kafka.transaction_timeout_ms, _MIN_TRANSACTION_TIMEOUT_MS)
        producer = transactional_producer(settings, "rebuild", **{"transaction.timeout.ms": timeout_ms})
        offsets = [TopicPartition(r.topic, r.partition, r.new) for r in summary.resets]
        written = 0
        # Step 3: commit (generation-checked): visible together, or not at all
        with fenced_transaction(producer, fence, offsets):
            for partition, keys in live.items():
                for key in keys:
                    produce(producer, settings.state.topic, key=key.encode(), value=None, partition=partition)
                    written += 1
                    if written % 10_000 == 0:
                        producer.poll(0)
                        fence.check()
        # Step 4: leave the group only once read_committed readers see the tombstones
        wait_until_stable(admin, state_partitions, timeout=stable_timeout(settings))
    finally:
        if producer is not None:
            producer.flush(10)
        fence.close()
    logger.info(
        "state rebuilt: cleared and rewound",
        extra={"group": group, "tombstones": summary.tombstones, "partitions": len(summary.resets)},
    )
    return summary


def _scan(
    settings: Settings,
    summary: RebuildSummary,
    progress: ProgressReporter | None,
    fence: GroupFence | None,
) -> dict[int, list[str]]:
    """Live keys per state partition (counted into `summary`)."""
    scanner = StateScanner(settings)
    live: dict[int, list[str]] = {}
    try:
        sizes = scanner.partitions()
        if progress is not None:
            progress.start(sum(sizes.values()), "rebuild-state: reading state")

        def on_records(n: int) -> None:
            summary.records_read += n
            if progress is not None:
                progress.advance(n)
            if fence is not None:
                fence.check()

        for partition in sizes:
            summary.partitions += 1
            live[partition] = list(scanner.scan(partition, on_records))
            summary.tombstones += len(live[partition])
        if progress is not None:
            progress.finish()
    finally:
        if progress is not None:
            progress.close()
        scanner.close()
    return live
