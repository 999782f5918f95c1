"""Resync: re-emit contact upserts from the state topic, exactly once, fenced by the merge group.

Reads each state partition (read_committed) to its end, maps every customer with the current mapping
and writes, per batch in ONE transaction, the upsert (next version) and the updated state record at the
customer's partition. The run holds the merge group as its only member (`ops.fence`), so a merge stage
cannot start meanwhile: one that joins revokes our partitions (we abort), and a stale generation fails
the commit. What each customer gets is decided in `ops.resync_decision` (pure).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import GroupActiveError, StateError
from connector.kafka.clients import admin_config, produce
from connector.kafka.topics import ensure_topics
from connector.merge import CustomerState
from connector.models import RecordRef
from connector.ops.dlq import DlqEntry, DlqReader, Redrive, redrive_targets
from connector.ops.fence import OPS_LOGGER, GroupFence, live_members
from connector.ops.progress import ProgressReporter
from connector.ops.resync_decision import ResyncDecision, decide_redrive, decide_resync
from connector.ops.scan import StateScanner
from connector.ops.transactions import (
    fenced_transaction,
    stable_timeout,
    transactional_producer,
    wait_until_stable,
)
from connector.projection import MappingProjector, Projector
from connector.routing import partition_for
from connector.state.codec import decode_state, encode_state

__all__ = ["ResyncSummary", "run_resync"]

logger = logging.getLogger(__name__)


@dataclass
class ResyncSummary:
    """What a resync (or its dry run) read and did."""

    records_read: int = 0
    customers: int = 0
    upserts: int = 0
    deletes: int = 0
    unchanged: int = 0
    absent: int = 0
    unmappable: int = 0
    held: int = 0
    erases: int = 0  # re-driven erases written before an upsert (--with-erases)
    erases_skipped: int = 0  # dead-lettered erases not sent
    retired: int = 0  # contacts of a previous externalCustomerId deleted before the upsert
    transactions: int = 0
    partitions: int = 0
    dry_run: bool = False
    force: bool = False
    members: int = 0  # live members of the merge group when a dry run started
    redrive: int | None = None  # customers named by the DLQ (`--from-dlq`), else None

    @property
    def emitted(self) -> int:
        """Records written (or, in a dry run, that would be written)."""
        return self.upserts + self.deletes

    @property
    def skipped(self) -> int:
        """Customers for which nothing is written."""
        return self.unchanged + self.absent + self.unmappable + self.held

    def count(self, decision: ResyncDecision) -> None:
        """Add one customer's decision."""
        self.customers += 1
        setattr(self, _COUNTER[decision.kind], getattr(self, _COUNTER[decision.kind]) + 1)
        self.erases += decision.erase_sent
        self.retired += decision.retired
        self.erases_skipped += decision.erase_skipped

    def lines(self) -> list[str]:
        """The final summary, one fact per line (counts only, no customer data)."""
        verb = "would emit" if self.dry_run else "emitted"
        redrive = [] if self.redrive is None else [f"customers named by the DLQ: {self.redrive}"]
        return [
            f"state records read: {self.records_read} in {self.partitions} partition(s)",
            *redrive,
            f"customers: {self.customers}",
            f"{verb}: {self.upserts} upsert(s), {self.deletes} delete(s)"
            + ("" if self.dry_run else f" in {self.transactions} transaction(s)"),
            f"skipped: {self.skipped} (unchanged {self.unchanged}, no contact {self.absent}, "
            f"unmappable {self.unmappable}"
            + (f", delete's contact now held by another customer {self.held}" if self.held else "")
            + ")",
            *([f"{verb} before those upserts: {self.erases} erase(s) from the DLQ"] if self.erases else []),
            *(
                [f"{verb} before those upserts: {self.retired} delete(s) of a previous externalCustomerId"]
                if self.retired
                else []
            ),
            *(
                [
                    f"dead-lettered erases not sent: {self.erases_skipped} (the customer has a contact "
                    "again or another customer holds its id; --with-erases sends them, once)"
                ]
                if self.erases_skipped
                else []
            ),
        ]


_COUNTER = {
    "upsert": "upserts",
    "delete": "deletes",
    "unchanged": "unchanged",
    "absent": "absent",
    "unmappable": "unmappable",
    "held": "held",
}


def run_resync(
    settings: Settings,
    *,
    force: bool = False,
    dry_run: bool = False,
    batch_size: int = 5000,
    progress: ProgressReporter | None = None,
    projector: Projector | None = None,
    from_dlq: bool = False,
    since: dt.datetime | None = None,
    with_erases: bool = False,
) -> ResyncSummary:
    """Re-emit upserts for the customers in the state topic (see the module docstring).

    Each partition is read to its end, then its customers are written in transactions of up to
    `batch_size` customers: the upsert and the new state record of each, plus the merge group's
    (unchanged) committed offsets, which makes the broker check our group generation. A failed run
    leaves only whole batches behind; running it again without `--force` finishes the job.

    Args:
        settings: The connector settings.
        force: Re-emit every customer with a contact, even when unchanged.
        dry_run: Read and decide only; write nothing (allowed while the merge stage runs).
        batch_size: Customers per transaction.
        progress: Reports state records read.
        projector: The mapping (default: `MappingProjector(settings.contact)`).
        from_dlq: Only the customers named by the deliver stage's DLQ records, each decided by
            `decide_redrive` (`force` is implied). The DLQ is read after the run holds the merge
            group and no transaction is open on it.
        since: With `from_dlq`: only DLQ records written at or after this time.
        with_erases: With `from_dlq`: also send dead-lettered erases that are not the customer's
            last word (`decide_redrive`).

    Raises:
        GroupActiveError: the merge group has live members (not for a dry run), or one joined.
        ConfigError: an internal topic is missing or has the wrong partition count.
        KafkaError: the broker failed; the open transaction is aborted.
        StateError: a state record cannot be decoded.
    """
    projector = projector or MappingProjector(settings.contact)
    summary = ResyncSummary(dry_run=dry_run, force=force or from_dlq)
    redrive: dict[str, Redrive] | None = None
    admin = AdminClient(admin_config(settings, logger=OPS_LOGGER))
    group = settings.kafka.group_id
    members = summary.members = live_members(admin, group)
    if members and not dry_run:
        raise GroupActiveError(group, members)
    ensure_topics(admin, settings, create=False, source_required=False)
    fence: GroupFence | None = None
    producer: Producer | None = None
    written: list[int] = []
    scanner = StateScanner(settings)
    try:
        sizes = scanner.partitions()
        if not dry_run:
            # as the group's only member, let open transactions on the state topic (and the DLQ) end,
            # then read them
            fence = GroupFence(settings)
            stable = StateScanner.partition_ids(admin, settings.state.topic)
            if from_dlq:
                stable += StateScanner.partition_ids(admin, settings.output.dlq_topic)
            wait_until_stable(admin, stable, timeout=stable_timeout(settings))
            producer = transactional_producer(settings, "resync")
        wanted: set[str] = set()  # the externalCustomerIds a re-driven delete or erase would address
        if from_dlq:
            with DlqReader(settings) as reader:
                redrive = redrive_targets(_fenced(reader.entries(since), fence))
            summary.redrive = len(redrive)
            for target in redrive.values():
                for record in (target.last, target.erase):
                    ext = record.get("external_customer_id") if record is not None else None
                    if isinstance(ext, str) and ext:
                        wanted.add(ext)
                wanted.update(target.retired)
        if progress is not None:
            progress.start(sum(sizes.values()), "resync: reading state")
        found: dict[str, tuple[int, CustomerState, RecordRef]] = {}
        live: dict[str, set[str]] = {}  # of `wanted`: externalCustomerId -> keys of live customers
        for partition in sizes:
            summary.partitions += 1
            tick = progress.advance if progress is not None else None
            latest = scanner.scan(partition, _counting(summary, tick, fence))
            decisions = []
            for key, (value, offset) in latest.items():
                try:
                    state = decode_state(value)
                except (ValueError, KeyError, TypeError) as exc:
                    raise StateError(
                        f"state record {scanner.topic}[{partition}]@{offset} is unreadable"
                    ) from exc
                origin = RecordRef(scanner.topic, partition, offset)
                if redrive is not None:
                    if state.fingerprint is not None and state.external_id in wanted:
                        live.setdefault(state.external_id, set()).add(key)
                    if key in redrive:
                        found[key] = (partition, state, origin)
                    continue
                decision = decide_resync(state, projector, force=force, origin=origin)
                summary.count(decision)
                if decision.record is not None:
                    decisions.append((key, decision))
            if fence is not None and producer is not None and decisions:
                _write(settings, producer, fence, partition, decisions, batch_size, summary)
                written.append(partition)
        if progress is not None:
            progress.finish()
        if redrive is not None:
            by_partition = _redrive_decisions(
                settings, redrive, found, live, projector, summary, erases=with_erases
            )
            if fence is not None and producer is not None:
                for partition, decisions in sorted(by_partition.items()):
                    _write(settings, producer, fence, partition, decisions, batch_size, summary)
                    written.append(partition)
        topics = (settings.output.upserts_topic, settings.state.topic)
        wait_until_stable(admin, [(t, p) for t in topics for p in written], timeout=stable_timeout(settings))
    finally:
        if progress is not None:
            progress.close()
        scanner.close()
        if producer is not None:
            producer.flush(10)
        if fence is not None:
            fence.close()
    logger.info(
        "resync finished",
        extra={
            "customers": summary.customers,
            "upserts": summary.upserts,
            "deletes": summary.deletes,
            "skipped": summary.skipped,
            "dry_run": dry_run,
        },
    )
    return summary


def _redrive_decisions(
    settings: Settings,
    redrive: Mapping[str, Redrive],
    found: Mapping[str, tuple[int, CustomerState, RecordRef]],
    live: Mapping[str, set[str]],
    projector: Projector,
    summary: ResyncSummary,
    *,
    erases: bool,
) -> dict[int, list[tuple[str, ResyncDecision]]]:
    """`decide_redrive` for every customer the DLQ names, by the partition its records go to."""
    out: dict[int, list[tuple[str, ResyncDecision]]] = {}
    for key, target in sorted(redrive.items()):
        if key in found:
            partition, state, origin = found[key]
        else:  # no state left (e.g. a dead-lettered delete whose marker expired): the DLQ record
            at = target.last_at or (-1, -1)
            partition, state = partition_for(key, settings.state.partitions), None
            origin = RecordRef(settings.output.dlq_topic, at[0], at[1])

        def held(external_id: str, key: str = key) -> bool:
            return any(other != key for other in live.get(external_id, ()))

        decision = decide_redrive(state, target, projector, origin=origin, held=held, erases=erases)
        summary.count(decision)
        if decision.record is not None:
            out.setdefault(partition, []).append((key, decision))
    return out


def _fenced(entries: Iterator[DlqEntry], fence: GroupFence | None, every: int = 1000) -> Iterator[DlqEntry]:
    """`entries`, keeping the run's group membership alive while a long DLQ is read."""
    for n, entry in enumerate(entries, 1):
        if fence is not None and n % every == 0:
            fence.check()
        yield entry


def _counting(
    summary: ResyncSummary, tick: Callable[[int], None] | None, fence: GroupFence | None
) -> Callable[[int], None]:
    def on_records(n: int) -> None:
        summary.records_read += n
        if tick is not None:
            tick(n)
        if fence is not None:
            fence.check()  # keeps the membership alive (max.poll.interval.ms) during long reads

    return on_records


def _write(
    settings: Settings,
    producer: Producer,
    fence: GroupFence,
    partition: int,
    decisions: list[tuple[str, ResyncDecision]],
    batch_size: int,
    summary: ResyncSummary,
) -> None:
    upserts_topic = settings.output.upserts_topic
    state_topic = settings.state.topic
    for start in range(0, len(decisions), max(1, batch_size)):
        fence.check()
        offsets = fence.committed()
        with fenced_transaction(producer, fence, offsets):
            for key, decision in decisions[start : start + batch_size]:
                kb = key.encode()
                for first in decision.first:  # a re-driven erase, a retired contact: before the upsert
                    produce(producer, upserts_topic, key=kb, value=orjson.dumps(first), partition=partition)
                produce(
                    producer, upserts_topic, key=kb, value=orjson.dumps(decision.record), partition=partition
                )
                value = encode_state(decision.state) if decision.state is not None else None
                produce(producer, state_topic, key=kb, value=value, partition=partition)
                producer.poll(0)
        summary.transactions += 1
        logger.info(
            "resync transaction committed",
            extra={
                "partition": partition,
                "records": sum(2 + len(d.first) for _, d in decisions[start : start + batch_size]),
            },
        )
