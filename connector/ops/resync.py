"""Resync: re-emit contact upserts from the state topic, exactly once, fenced by the merge group.

Reads each state partition (read_committed) to its end, maps every customer with the current mapping
and writes, per batch in ONE transaction, the upsert (next version) and the updated state record at the
customer's partition. The run joins the merge group as its only member, so a merge stage cannot start
meanwhile: one that joins revokes our partitions (we abort), and a stale generation fails the commit.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka.admin import AdminClient, OffsetSpec

from connector.config import Settings
from connector.errors import GroupActiveError, KafkaError, StateError
from connector.kafka.clients import consumer_config, kafka_errors, producer_config
from connector.kafka.topics import ensure_topics
from connector.merge import CustomerState
from connector.models import RecordRef
from connector.ops.lag import kafka_call
from connector.projection import MappingProjector, Projector, upsert_record
from connector.routing import RoutedChange
from connector.state.codec import decode_state, encode_state

__all__ = [
    "GroupFence",
    "LogProgress",
    "ProgressReporter",
    "ResyncDecision",
    "ResyncSummary",
    "StateScanner",
    "client_conf",
    "commit_fenced",
    "decide_resync",
    "fold_latest",
    "live_members",
    "run_resync",
    "stable_timeout",
    "transactional_producer",
    "wait_until_stable",
]

logger = logging.getLogger(__name__)

RESYNC_SOURCE = "resync"

Kind = Literal["upsert", "delete", "unchanged", "absent", "unmappable"]


# -- pure: what to re-emit --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResyncDecision:
    """What resync does with one customer.

    Attributes:
        kind: `upsert`/`delete` (a record is written), `unchanged` (the contact equals the stored
            fingerprint), `absent` (no contact and nothing live in Yespo), `unmappable` (the mapping
            reports an error; the merge stage dead-letters such customers, resync only counts them).
        state: the state to write (new version, fingerprint, groups, external id); None for a
            tombstone. Meaningful only when `record` is set.
        record: the upserts topic's value, or None when nothing is written.
    """

    kind: Kind
    state: CustomerState | None = None
    record: dict[str, Any] | None = None


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
    record = upsert_record(projection.state, emitted, change)
    new_state: CustomerState | None = projection.state
    if new_state is not None and new_state.is_empty():
        new_state = None
    kind: Kind = "upsert" if emitted.op == "upsert" else "delete"
    return ResyncDecision(kind, new_state, record)


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
    transactions: int = 0
    partitions: int = 0
    dry_run: bool = False
    force: bool = False

    @property
    def emitted(self) -> int:
        """Records written (or, in a dry run, that would be written)."""
        return self.upserts + self.deletes

    @property
    def skipped(self) -> int:
        """Customers for which nothing is written."""
        return self.unchanged + self.absent + self.unmappable

    def count(self, decision: ResyncDecision) -> None:
        """Add one customer's decision."""
        self.customers += 1
        setattr(self, _COUNTER[decision.kind], getattr(self, _COUNTER[decision.kind]) + 1)

    def lines(self) -> list[str]:
        """The final summary, one fact per line (counts only, no customer data)."""
        verb = "would emit" if self.dry_run else "emitted"
        return [
            f"state records read: {self.records_read} in {self.partitions} partition(s)",
            f"customers: {self.customers}",
            f"{verb}: {self.upserts} upsert(s), {self.deletes} delete(s)"
            + ("" if self.dry_run else f" in {self.transactions} transaction(s)"),
            f"skipped: {self.skipped} (unchanged {self.unchanged}, no contact {self.absent}, "
            f"unmappable {self.unmappable})",
        ]


_COUNTER = {
    "upsert": "upserts",
    "delete": "deletes",
    "unchanged": "unchanged",
    "absent": "absent",
    "unmappable": "unmappable",
}


def fold_latest(
    records: Iterator[tuple[str, bytes | None, int]],
) -> dict[str, tuple[bytes, int]]:
    """Last value per key of a compacted topic's records (key, value, offset); tombstones remove."""
    latest: dict[str, tuple[bytes, int]] = {}
    for key, value, offset in records:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = (value, offset)
    return latest


# -- progress -----------------------------------------------------------------------------------------


class ProgressReporter(Protocol):
    """Progress of a long operation (a rich bar on a TTY, periodic log lines otherwise)."""

    def start(self, total: int, description: str) -> None:
        """Begin; `total` units are expected."""
        ...

    def advance(self, n: int = 1) -> None:
        """`n` more units done."""
        ...

    def finish(self) -> None:
        """The operation ended."""
        ...


class LogProgress:
    """Logs `<description>: done/total (percent)` at most every `interval_s` seconds, and at the end."""

    def __init__(
        self,
        *,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
    ) -> None:
        """Report through `log` (default: this module's logger) using the injected `clock`."""
        self._interval = interval_s
        self._clock = clock
        self._log = log or logger
        self._total = 0
        self._done = 0
        self._description = ""
        self._last = 0.0
        self.lines = 0

    def start(self, total: int, description: str) -> None:  # noqa: D102
        self._total, self._done, self._description = total, 0, description
        self._last = self._clock()
        self._emit("started")

    def advance(self, n: int = 1) -> None:  # noqa: D102
        self._done += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._emit("progress")

    def finish(self) -> None:  # noqa: D102
        self._emit("finished")

    def _emit(self, event: str) -> None:
        percent = 100.0 if self._total <= 0 else min(100.0, 100.0 * self._done / self._total)
        self.lines += 1
        self._log.info(
            f"{self._description} {event}",
            extra={"done": self._done, "total": self._total, "percent": round(percent, 1)},
        )


# -- Kafka side ---------------------------------------------------------------------------------------


def live_members(admin: AdminClient, group: str, timeout: float = 10.0) -> int:
    """Number of live members of `group` (0 for an unknown or empty group)."""
    with kafka_call(f"cannot describe consumer group {group!r}"):
        desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(
            timeout=timeout + 5
        )
    return len(desc.members)


def client_conf(settings: Settings) -> dict[str, Any]:
    """Client properties of the ops commands (librdkafka's log lines go to Python logging)."""
    return {"logger": logging.getLogger("connector.librdkafka"), **settings.kafka.as_librdkafka()}


class GroupFence:
    """Membership of the merge group as its only member, for ops that write the stage's outputs.

    While the fence is held no merge stage can own a partition: one that joins triggers a rebalance,
    which revokes our partitions (`check()` raises), and our transactional offset commit carries our
    generation, so the broker rejects it after any rebalance (the transaction aborts).
    """

    def __init__(self, settings: Settings, *, timeout: float = 60.0) -> None:
        """Join `kafka.group_id` on the merge stage's topics and wait for every partition.

        Raises:
            GroupActiveError: another member holds partitions of the group.
            KafkaError: no assignment within `timeout`.
        """
        self.group = settings.kafka.group_id
        self._topics = [*settings.source.topics, settings.state.changes_topic]
        self._revoked = False
        self._assigned: list[TopicPartition] = []
        conf = consumer_config(settings, self.group, **client_conf(settings))
        self._consumer: Consumer | None = Consumer(conf)
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        try:
            self._join(timeout)
        except BaseException:
            self.close()
            raise

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        consumer.pause(partitions)  # a member only: it never fetches
        self._assigned = list(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._assigned:
            self._revoked = True
        self._assigned = []

    def _join(self, timeout: float) -> None:
        consumer = self._client()
        deadline = time.monotonic() + timeout
        while not self._assigned:
            if time.monotonic() > deadline:
                raise KafkaError(f"no partitions of group {self.group!r} assigned within {timeout:.0f} s")
            self._poll(consumer, 0.2)
        with kafka_errors():
            md = consumer.list_topics(timeout=10)
        expected = {(t, p) for t in self._topics if t in md.topics for p in md.topics[t].partitions}
        got = {(tp.topic, tp.partition) for tp in self._assigned}
        if got != expected or self._revoked:
            raise GroupActiveError(self.group, 1)
        logger.info("joined the merge group as its only member", extra={"group": self.group})

    def _client(self) -> Consumer:
        if self._consumer is None:
            raise StateError("the group fence is closed")
        return self._consumer

    @staticmethod
    def _poll(consumer: Consumer, timeout: float) -> None:
        try:
            msg = consumer.poll(timeout)
        except KafkaException as exc:
            raise KafkaError(f"group membership failed: {exc}") from exc
        err = msg.error() if msg is not None else None
        if err is not None and err.fatal():
            raise KafkaError(f"group membership failed: {err.name()}", fatal=True)

    def check(self) -> None:
        """Serve the group protocol; raise when a rebalance took our partitions.

        Raises:
            GroupActiveError: another member joined the group (a merge stage started).
        """
        self._poll(self._client(), 0)
        if self._revoked or not self._assigned:
            raise GroupActiveError(self.group, 1)

    def committed(self, timeout: float = 30.0) -> list[TopicPartition]:
        """The group's committed offsets (stable: pending transactional commits resolved first)."""
        with kafka_errors():
            tps = self._client().committed(self._assigned, timeout=timeout)
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in tps if tp.offset >= 0]

    def metadata(self) -> Any:
        """The consumer group metadata for `send_offsets_to_transaction` (carries the generation)."""
        return self._client().consumer_group_metadata()

    def assigned(self) -> list[tuple[str, int]]:
        """Every (topic, partition) of the merge stage (all of them are ours)."""
        return sorted((tp.topic, tp.partition) for tp in self._assigned)

    def close(self) -> None:
        """Leave the group."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class StateScanner:
    """Reads state topic partitions (read_committed) from the beginning to their end; commits nothing."""

    def __init__(self, settings: Settings, *, idle_timeout: float = 120.0) -> None:
        """An assign-only consumer on `state.topic`."""
        self.topic = settings.state.topic
        self._idle = idle_timeout
        group = f"{settings.kafka.group_id}-scan-{uuid.uuid4().hex[:8]}"
        conf = consumer_config(settings, group, **{"enable.partition.eof": True, **client_conf(settings)})
        self._consumer = Consumer(conf)

    @staticmethod
    def partition_ids(admin: AdminClient, topic: str) -> list[tuple[str, int]]:
        """(topic, partition) of every partition of `topic`.

        Raises:
            KafkaError: the topic does not exist.
        """
        with kafka_call("cannot read cluster metadata"):
            md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            raise KafkaError(f"topic {topic!r} does not exist")
        return [(topic, p) for p in sorted(md.partitions)]

    def partitions(self) -> dict[int, int]:
        """Partition -> records between its low and high watermarks (the progress total).

        Raises:
            KafkaError: the state topic does not exist or cannot be read.
        """
        with kafka_errors():
            md = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if md is None or md.error is not None or not md.partitions:
            raise KafkaError(f"state topic {self.topic!r} (state.topic) does not exist")
        sizes = {}
        for p in sorted(md.partitions):
            with kafka_errors():
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=10, cached=False
                )
            sizes[p] = max(0, int(high) - int(low))
        return sizes

    def scan(
        self, partition: int, on_records: Callable[[int], None] | None = None
    ) -> dict[str, tuple[bytes, int]]:
        """The live keys of `partition`: key -> (last value, its offset)."""
        return fold_latest(self._records(partition, on_records))

    def _records(
        self, partition: int, on_records: Callable[[int], None] | None
    ) -> Iterator[tuple[str, bytes | None, int]]:
        consumer = self._consumer
        with kafka_errors():
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=10, cached=False
            )
        if high <= low:
            return
        consumer.assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])
        last_progress = time.monotonic()
        try:
            while True:
                msgs = consumer.consume(num_messages=5000, timeout=0.5)
                if not msgs and time.monotonic() - last_progress > self._idle:
                    raise KafkaError(
                        f"reading {self.topic}[{partition}] made no progress for {self._idle:.0f} s "
                        "(an open transaction holds the last stable offset?)",
                        retriable=True,
                    )
                n = 0
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == ConfluentKafkaError._PARTITION_EOF:
                            if on_records is not None and n:
                                on_records(n)
                            return
                        raise KafkaError(f"cannot read {self.topic}[{partition}]: {err.name()}")
                    n += 1
                    yield (msg.key() or b"").decode(), msg.value(), int(msg.offset() or 0)
                if n:
                    last_progress = time.monotonic()
                    if on_records is not None:
                        on_records(n)
        finally:
            consumer.unassign()

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def transactional_producer(settings: Settings, suffix: str, **overrides: Any) -> Producer:
    """A transactional producer with id `<prefix>-<group>-<suffix>` (init_transactions done).

    A previous run's open transaction under the same id is aborted (fenced) by the init.
    """
    kafka = settings.kafka
    tid = f"{kafka.transactional_id_prefix}-{kafka.group_id}-{suffix}"
    producer = Producer(
        producer_config(settings, transactional_id=tid, **{**client_conf(settings), **overrides})
    )
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
        stable = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in wanted},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_COMMITTED,
        )
        high = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in wanted},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_UNCOMMITTED,
        )
        return [
            tp for tp in wanted if stable[tp].result(timeout=15).offset < high[tp].result(timeout=15).offset
        ]


def commit_fenced(producer: Producer, fence: GroupFence, offsets: list[TopicPartition]) -> None:
    """Commit the open transaction with the group's offsets (generation-checked), else abort.

    Raises:
        GroupActiveError: our partitions were revoked (another member joined); aborted.
        KafkaError: the broker rejected the offsets or the commit; aborted.
    """
    try:
        fence.check()
        with kafka_errors():
            if offsets:
                producer.send_offsets_to_transaction(offsets, fence.metadata(), 30)
            producer.commit_transaction(60)
    except (KafkaError, GroupActiveError):
        try:
            producer.abort_transaction(30)
        except KafkaException as exc:
            logger.warning("abort failed", extra={"error": str(exc)})
        raise


def run_resync(
    settings: Settings,
    *,
    force: bool = False,
    dry_run: bool = False,
    batch_size: int = 5000,
    progress: ProgressReporter | None = None,
    projector: Projector | None = None,
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

    Raises:
        GroupActiveError: the merge group has live members (not for a dry run), or one joined.
        ConfigError: an internal topic is missing or has the wrong partition count.
        KafkaError: the broker failed; the open transaction is aborted.
        StateError: a state record cannot be decoded.
    """
    projector = projector or MappingProjector(settings.contact)
    summary = ResyncSummary(dry_run=dry_run, force=force)
    admin = AdminClient(client_conf(settings))
    group = settings.kafka.group_id
    members = live_members(admin, group)
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
            # as the group's only member, let open transactions on the state topic end, then read it
            fence = GroupFence(settings)
            state_partitions = StateScanner.partition_ids(admin, settings.state.topic)
            wait_until_stable(admin, state_partitions, timeout=stable_timeout(settings))
            producer = transactional_producer(settings, "resync")
        if progress is not None:
            progress.start(sum(sizes.values()), "resync: reading state")
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
                decision = decide_resync(state, projector, force=force, origin=origin)
                summary.count(decision)
                if decision.record is not None:
                    decisions.append((key, decision))
            if fence is not None and producer is not None and decisions:
                _write(settings, producer, fence, partition, decisions, batch_size, summary)
                written.append(partition)
        if progress is not None:
            progress.finish()
        topics = (settings.output.upserts_topic, settings.state.topic)
        wait_until_stable(admin, [(t, p) for t in topics for p in written], timeout=stable_timeout(settings))
    finally:
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
        with kafka_errors():
            producer.begin_transaction()
        for key, decision in decisions[start : start + batch_size]:
            kb = key.encode()
            producer.produce(upserts_topic, key=kb, value=orjson.dumps(decision.record), partition=partition)
            value = encode_state(decision.state) if decision.state is not None else None
            producer.produce(state_topic, key=kb, value=value, partition=partition)
            producer.poll(0)
        commit_fenced(producer, fence, offsets)
        summary.transactions += 1
        logger.info(
            "resync transaction committed",
            extra={"partition": partition, "records": 2 * len(decisions[start : start + batch_size])},
        )
