"""Replay: reset a stage's committed offsets to the earliest offsets or to a point in time.

Plan first (`plan_reset`: current committed -> new, per partition), then apply (`apply_reset`) with
`AdminClient.alter_consumer_group_offsets`. Applying refuses while the group has live members: the
broker would reject the commit anyway, and a running stage would overwrite it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from connector.errors import ConfigError, GroupActiveError, KafkaError
from connector.ops.lag import kafka_call
from connector.ops.stages import StageGroup

__all__ = [
    "OffsetReset",
    "ResetPlan",
    "apply_reset",
    "parse_replay_target",
    "parse_time",
    "plan_reset",
]

logger = logging.getLogger(__name__)

EARLIEST = "earliest"


@dataclass(frozen=True, slots=True)
class OffsetReset:
    """One partition's move: `current` committed offset (None: none) to `new`."""

    topic: str
    partition: int
    current: int | None
    new: int


@dataclass(frozen=True, slots=True)
class ResetPlan:
    """Every partition of a stage's topics and where its committed offset will go."""

    stage: str
    group: str
    target: str  # "earliest" or the ISO-8601 UTC time
    resets: tuple[OffsetReset, ...]
    members: int = 0  # live members when planned (a dry run may plan while the stage runs)


def parse_replay_target(value: str) -> dt.datetime | None:
    """`earliest` -> None; an ISO-8601 time with a zone (`2026-11-29T12:00:00Z`) -> aware datetime.

    Raises:
        ConfigError: not `earliest` and not an ISO-8601 time with a UTC offset.
    """
    if value.strip().lower() == EARLIEST:
        return None
    return parse_time(value, "--from", also="'earliest' or ")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_time(value: str, option: str, *, also: str = "") -> dt.datetime:
    """An ISO-8601 time with a zone (`2026-11-29T12:00:00Z`) -> aware datetime.

    Raises:
        ConfigError: not an ISO-8601 time with a UTC offset (the error names `option`).
    """
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"{option} must be {also}an ISO-8601 time such as 2026-11-29T12:00:00Z, not {value!r}"
        ) from None
    if moment.tzinfo is None:
        raise ConfigError(
            f"{option} {value!r} has no time zone; add one, e.g. 2026-11-29T12:00:00Z (UTC) or ...+02:00"
        )
    try:
        utc = moment.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or utc < _EPOCH:  # Kafka's timestamps start at 1970; -1 and -2 mean "latest", "earliest"
        raise ConfigError(f"{option} {value!r} is before 1970-01-01T00:00:00Z or beyond year 9999 in UTC")
    return moment


def _live_members(admin: AdminClient, group: str, timeout: float) -> int:
    with kafka_call(f"cannot describe consumer group {group!r}"):
        desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(
            timeout=timeout + 5
        )
    return len(desc.members)


def plan_reset(
    admin: AdminClient,
    sg: StageGroup,
    target: dt.datetime | None,
    *,
    require_empty: bool = True,
    timeout: float = 10.0,
    never_forward: frozenset[str] = frozenset(),
) -> ResetPlan:
    """Where each partition of `sg.topics` would move for `target` (None: earliest).

    For a time, the new offset is the first record with a timestamp at or after it, or the end (last
    stable offset) when no record is that recent. A partition of a `never_forward` topic does not
    move past its committed offset, or past its earliest offset when the group has committed none
    (the merge stage's changes topic: a change routed but not merged yet must not be skipped, its
    source record is not read again).

    Args:
        admin: The admin client.
        sg: The stage's group and topics.
        target: A time (aware datetime), or None for the earliest offsets.
        require_empty: Refuse when the group has live members (False for a dry run; the plan then
            records how many members there are).
        timeout: Seconds per broker request.
        never_forward: Topics whose partitions stay at their committed offset rather than move on.

    Raises:
        GroupActiveError: `require_empty` and the group has live members.
        KafkaError: the cluster cannot be read.
        ConfigError: a topic does not exist (the message names the config key that names it).
    """
    with kafka_call("cannot read cluster metadata"):
        metadata = admin.list_topics(timeout=timeout)
    partitions: list[tuple[str, int]] = []
    for topic in dict.fromkeys(sg.topics):
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            raise ConfigError(f"topic {topic!r} of the {sg.stage} stage does not exist", key=sg.key_of(topic))
        partitions.extend((topic, p) for p in sorted(meta.partitions))
    members = _live_members(admin, sg.group, timeout)
    if members and require_empty:
        raise GroupActiveError(sg.group, members)
    current = _committed(admin, sg.group, partitions, timeout)
    if target is None:
        new = _offsets(admin, {tp: OffsetSpec.earliest() for tp in partitions}, timeout)  # type: ignore[no-untyped-call]
        label = EARLIEST
    else:
        ms = int(target.timestamp() * 1000)
        new = _offsets(admin, {tp: OffsetSpec.for_timestamp(ms) for tp in partitions}, timeout)
        ends = _offsets(admin, {tp: OffsetSpec.latest() for tp in partitions}, timeout)  # type: ignore[no-untyped-call]
        new = {tp: (off if off >= 0 else ends[tp]) for tp, off in new.items()}
        label = target.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    held = [tp for tp in partitions if tp[0] in never_forward]
    uncommitted = [tp for tp in held if tp not in current]
    # without a committed offset the group would start such a partition at its earliest offset
    floors = dict(current)
    if uncommitted:
        floors.update(_offsets(admin, dict.fromkeys(uncommitted, OffsetSpec.earliest()), timeout))  # type: ignore[no-untyped-call]
    for key in held:
        new[key] = min(new[key], floors[key])
    resets = tuple(OffsetReset(t, p, current.get((t, p)), new[(t, p)]) for t, p in partitions)
    return ResetPlan(sg.stage, sg.group, label, resets, members)


def apply_reset(admin: AdminClient, plan: ResetPlan, *, timeout: float = 10.0) -> None:
    """Commit the plan's offsets for its group (checks again that the group has no members).

    Raises:
        GroupActiveError: a member joined since the plan was made.
        KafkaError: the broker rejected the commit for the group or any partition.
    """
    members = _live_members(admin, plan.group, timeout)
    if members:
        raise GroupActiveError(plan.group, members)
    if not plan.resets:
        return
    request = ConsumerGroupTopicPartitions(
        plan.group, [TopicPartition(r.topic, r.partition, r.new) for r in plan.resets]
    )
    with kafka_call(f"cannot commit offsets for group {plan.group!r}"):
        result = admin.alter_consumer_group_offsets([request], request_timeout=timeout)[plan.group].result(
            timeout=timeout + 5
        )
    failed = [tp for tp in result.topic_partitions if tp.error is not None]
    if failed:
        first = failed[0]
        raise KafkaError(
            f"cannot commit offsets for group {plan.group!r}: {first.topic}[{first.partition}]: "
            f"{first.error.str()} ({len(failed)} partition(s) failed)"
        )
    logger.info(
        "offsets reset",
        extra={
            "group": plan.group,
            "stage": plan.stage,
            "target": plan.target,
            "partitions": len(plan.resets),
        },
    )


def _committed(
    admin: AdminClient, group: str, partitions: Sequence[tuple[str, int]], timeout: float
) -> dict[tuple[str, int], int]:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
    with kafka_call(f"cannot read committed offsets of group {group!r}"):
        result = admin.list_consumer_group_offsets([request], request_timeout=timeout)[group].result(
            timeout=timeout + 5
        )
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def _offsets(
    admin: AdminClient, specs: Mapping[tuple[str, int], Any], timeout: float
) -> dict[tuple[str, int], int]:
    request = {TopicPartition(t, p): spec for (t, p), spec in specs.items()}
    with kafka_call("cannot list partition offsets"):
        futures = admin.list_offsets(
            request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout
        )
        return {(tp.topic, tp.partition): f.result(timeout=timeout + 5).offset for tp, f in futures.items()}
