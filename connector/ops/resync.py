"""Resync: re-emit contact upserts from the state topic, exactly once, fenced by the merge group.

Reads each state partition (read_committed) to its end, maps every customer with the current mapping
and writes, per batch in ONE transaction, the upsert (next version) and the updated state record at the
customer's partition. The run holds the merge group as its only member (`ops.fence`), so a merge stage
cannot start meanwhile: one that joins revokes our partitions (we abort), and a stale generation fails
the commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from msgspec.structs import replace

from connector.config import Settings
from connector.errors import GroupActiveError, StateError
from connector.kafka.clients import produce
from connector.kafka.topics import ensure_topics
from connector.merge import CustomerState
from connector.models import RecordRef
from connector.ops.dlq import DlqEntry, DlqReader, Redrive, record_version, redrive_targets
from connector.ops.fence import (
    GroupFence,
    StateScanner,
    client_conf,
    fenced_transaction,
    live_members,
    stable_timeout,
    transactional_producer,
    wait_until_stable,
)
from connector.ops.progress import ProgressReporter
from connector.projection import MappingProjector, Projector, upsert_records
from connector.routing import RoutedChange, partition_for
from connector.state.codec import decode_state, encode_state

__all__ = ["ResyncDecision", "ResyncSummary", "decide_redrive", "decide_resync", "run_resync"]

logger = logging.getLogger(__name__)

RESYNC_SOURCE = "resync"

Kind = Literal["upsert", "delete", "unchanged", "absent", "unmappable", "held"]


# -- pure: what to re-emit --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResyncDecision:
    """What resync does with one customer.

    Attributes:
        kind: `upsert`/`delete` (a record is written), `unchanged` (the contact equals the stored
            fingerprint), `absent` (no contact and nothing live in Yespo), `unmappable` (the mapping
            reports an error; the merge stage dead-letters such customers, resync only counts them),
            `held` (a re-driven delete whose externalCustomerId another live customer now holds).
        state: the state to write (new version, fingerprint, groups, external id); None for a
            tombstone. Meaningful only when `record` is set.
        record: the upserts topic's value, or None when nothing is written.
        first: records written just before `record`, in order, with the versions below its own: a
            re-driven erase, and the delete retiring the contact's previous externalCustomerId
            (`connector.projection`).
        erase_skipped: a dead-lettered erase of this customer that is not sent (see `decide_redrive`).
        erase_sent: `first` starts with a re-driven erase.
        retired: how many of the records written are deletes retiring a previous externalCustomerId.
    """

    kind: Kind
    state: CustomerState | None = None
    record: dict[str, Any] | None = None
    first: tuple[dict[str, Any], ...] = ()
    erase_skipped: bool = False
    erase_sent: bool = False
    retired: int = 0


def decide_resync(
    state: CustomerState, projector: Projector, *, force: bool, origin: RecordRef
) -> ResyncDecision:
    """Map `state` with the current mapping and decide what to re-emit. Pure.

    Without `force`, this is exactly what the merge stage would emit for the customer now: an upsert
    when the mapped contact's fingerprint differs from the stored one (e.g. after a mapping change),
    a delete when the contact is gone but one is live in Yespo. With `force`, every customer with a
    contact gets an upsert, even when unchanged. The record has the merge stage's shape
    (`schemas/upsert.schema.json`), version = stored version + 1 and `source` = the state record
    (`origin`, position null).
    """
    probe = replace(state, fingerprint=None) if force else state
    projection = projector.project(probe, moved=False)
    if projection.error is not None:
        return ResyncDecision("unmappable")
    emitted = projection.emitted
    if emitted is None:
        if force and state.fingerprint is not None:
            # forced, but no contact to send (e.g. on_delete=ignore kept a fingerprint): leave it
            return ResyncDecision("absent")
        return ResyncDecision("unchanged" if state.fingerprint is not None else "absent")
    change = RoutedChange(
        state.customer_key, RESYNC_SOURCE, "", "upsert", None, None, None, False, False, origin
    )
    *first, record = upsert_records(projection, change)
    new_state: CustomerState | None = projection.state
    if new_state is not None and new_state.is_empty():
        new_state = None
    kind: Kind = "upsert" if emitted.op == "upsert" else "delete"
    return ResyncDecision(kind, new_state, record, tuple(first), retired=int(projection.retired is not None))


def decide_redrive(
    state: CustomerState | None,
    target: Redrive,
    projector: Projector,
    *,
    origin: RecordRef,
    held: Callable[[str], bool] = lambda external_id: False,
    erases: bool = False,
) -> ResyncDecision:
    """What re-driving one customer's dead-lettered upsert-topic records writes. Pure.

    First the dead-lettered deletes that retired a previous externalCustomerId of the customer
    (`Redrive.retired`) are sent again, before anything else (the deliver stage sends them before
    the upsert that follows): each one unless it names the customer's contact now or one `held` by
    another live customer. Then as follows.

    A customer with a contact now gets it as a forced upsert (`decide_resync(force=True)`), whose
    `groups_removed` also names the segments the dead-lettered records were to detach (unless the
    contact is in them again). A customer without a contact gets its last dead-lettered delete
    again: sending it twice is harmless (a missing contact counts as deleted), and the state's
    version cannot tell whether it was overtaken (versions restart at 1 after a rebuild). Its
    dead-lettered erase only when that is still its last record (with the state's version, or no
    state left); otherwise nothing: a newer record was written after it, and it stands (if it failed
    too, it is in the DLQ and is the one re-driven). No delete or erase is re-driven for an
    externalCustomerId that `held` says another live customer now has (a primary-key change, a
    re-insert under another key): it would delete that contact.

    A dead-lettered erase (GDPR) that is not the customer's last word cannot be checked against what
    happened since (a later erase may have gone through, or an earlier re-drive sent it), and sending
    it again wipes the contact the customer has now. It is sent only with `erases` (before the
    upsert, as the deliver stage sends an erase before what follows it, or alone for a customer
    without a contact); otherwise the decision reports it (`erase_skipped`).

    Args:
        state: the customer's state, None when the state topic has none.
        target: what the DLQ holds for the customer.
        projector: the mapping.
        origin: the state record (or, without state, the DLQ record) the output names as its source.
        held: whether another live customer's contact has this externalCustomerId.
        erases: send a dead-lettered erase that is not the customer's last word (`--with-erases`).
    """
    source = {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset, "position": None}
    decision = _redrive(state, target, projector, source, origin=origin, held=held, erases=erases)
    return _with_retired(decision, state, target, held, source)


def _redrive(
    state: CustomerState | None,
    target: Redrive,
    projector: Projector,
    source: Mapping[str, Any],
    *,
    origin: RecordRef,
    held: Callable[[str], bool],
    erases: bool,
) -> ResyncDecision:
    """`decide_redrive` without the retiring deletes."""
    erase = target.erase
    erase_ext = erase.get("external_customer_id") if erase is not None else None
    if not isinstance(erase_ext, str) or not erase_ext:
        erase = None
    if state is not None:
        decision = decide_resync(state, projector, force=True, origin=origin)
        if decision.kind == "upsert" and decision.record is not None and decision.state is not None:
            removed = set(decision.record["groups_removed"]) | (
                target.groups_removed - set(decision.state.groups)
            )
            record = {**decision.record, "groups_removed": sorted(removed)}
            if erase is None:
                return dataclasses.replace(decision, record=record)
            if not erases or held(str(erase_ext)):
                return dataclasses.replace(decision, record=record, erase_skipped=True)
            chain = [{**erase, "source": source}, *decision.first, record]
            chain = [{**r, "version": state.version + i} for i, r in enumerate(chain, 1)]
            new_state = replace(decision.state, version=state.version + len(chain))
            return ResyncDecision(
                "upsert", new_state, chain[-1], tuple(chain[:-1]), retired=decision.retired, erase_sent=True
            )
        if state.fingerprint is not None:  # unmappable now, but its last contact is live: no delete
            return dataclasses.replace(decision, erase_skipped=erase is not None)
        fallback = decision if decision.kind == "unmappable" else ResyncDecision("absent")
    else:
        fallback = ResyncDecision("absent")
    last = target.last
    resend: Mapping[str, Any] | None = None
    # Here the customer has no contact now. A plain delete is harmless to send again (the contact
    # is gone or should be); versions say nothing across a rebuild (they restart at 1), so only an
    # erase, which would wipe a contact that came back, needs to be the customer's last word.
    plain = last is not None and not last.get("erase")
    last_word = state is None or target.last_version == state.version or plain
    if last is not None and target.last_op == "delete" and last_word:
        resend = last
    if resend is None and erase is not None and erases:
        resend = erase
    skipped = erase is not None and resend is not erase and not (resend is not None and resend.get("erase"))
    if resend is None:
        return dataclasses.replace(fallback, erase_skipped=skipped)
    ext = resend.get("external_customer_id")
    if isinstance(ext, str) and held(ext):
        return ResyncDecision("held", erase_skipped=erase is not None)
    version = (state.version if state is not None else record_version(resend)) + 1
    record = {**resend, "version": version, "source": source}
    gone: CustomerState | None = replace(state, version=version) if state is not None else None
    return ResyncDecision("delete", gone, record, erase_skipped=skipped)


def _with_retired(
    decision: ResyncDecision,
    state: CustomerState | None,
    target: Redrive,
    held: Callable[[str], bool],
    source: Mapping[str, Any],
) -> ResyncDecision:
    """`decision` with the dead-lettered retiring deletes it may send written first (see `decide_redrive`)."""
    current = state.external_id if state is not None and state.fingerprint is not None else None
    retires = [
        {**record, "source": source}
        for ext, record in target.retired.items()
        if ext != current and not held(ext)
    ]
    if not retires:
        return decision
    chain = [*retires, *decision.first, *([decision.record] if decision.record is not None else [])]
    base = state.version if state is not None else max(record_version(r) or 0 for r in chain)
    chain = [{**r, "version": base + i} for i, r in enumerate(chain, 1)]
    version = base + len(chain)
    new_state = decision.state if decision.record is not None else state
    if new_state is not None:
        new_state = replace(new_state, version=version)
    kind: Kind = decision.kind if decision.record is not None else "delete"
    return dataclasses.replace(
        decision,
        kind=kind,
        state=new_state,
        record=chain[-1],
        first=tuple(chain[:-1]),
        retired=decision.retired + len(retires),
    )


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
    admin = AdminClient(client_conf(settings))
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
