"""Start-up checks of the internal topics, and `--create-topics`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from connector.config import Settings
from connector.dlq import RECORD_OVERHEAD
from connector.errors import ConfigError, KafkaError
from connector.kafka.clients import kafka_errors, timed_out, translate

__all__ = ["TopicSpec", "batch_size_for", "ensure_topics", "internal_topics", "record_limit", "topic_limits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What an internal topic must look like."""

    name: str
    key: str
    partitions: int | None
    config: dict[str, str]
    not_compacted: str = ""
    """Why the topic must not be compacted (empty: no reason)."""
    unlimited: str = ""
    """Why retention must not delete the topic's records (empty: no reason); the connector deletes them."""


def internal_topics(settings: Settings) -> list[TopicSpec]:
    """The topics the connector writes: changes, state (compacted), upserts, DLQ, audit.

    The changes topic is written without keys (one record per target partition) and a DLQ copy keeps
    its source record's key, which may be none: neither may be compacted. Nor may the upserts topic:
    compaction could drop a record the deliver stage has not read yet (the delete retiring a previous
    externalCustomerId, the detach of a segment). Audit records have keys, and nothing reads them back.

    The changes topic is Kafka Streams' repartition topic: created without retention (`retention.ms`
    and `retention.bytes` -1), its records are deleted by the merge stage once merged and committed
    (`MergeStage`, `delete_records`), never by time or size.
    """
    n = settings.state.partitions
    keyless = "the connector writes records without a key to it, which a compacted topic refuses"
    return [
        TopicSpec(
            settings.state.changes_topic,
            "state.changes_topic",
            n,
            {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"},
            not_compacted=keyless,
            unlimited=(
                "once a change is routed its source offset is committed, so the changes topic holds "
                "the only copy of every change not merged yet: retention would delete such changes "
                "(e.g. while a merge partition waits on a hanging transaction) and the merge stage "
                "would skip them without an error"
            ),
        ),
        TopicSpec(
            settings.state.topic,
            "state.topic",
            n,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
        ),
        TopicSpec(
            settings.output.upserts_topic,
            "output.upserts_topic",
            n,
            {"cleanup.policy": "delete"},
            not_compacted=(
                "compaction could drop a record the deliver stage has not read yet (the delete "
                "retiring a previous externalCustomerId, a segment's detach)"
            ),
        ),
        TopicSpec(
            settings.output.dlq_topic,
            "output.dlq_topic",
            None,
            {"cleanup.policy": "delete"},
            not_compacted=keyless,
        ),
        TopicSpec(settings.output.audit_topic, "output.audit_topic", None, {"cleanup.policy": "delete"}),
    ]


def ensure_topics(
    admin: AdminClient,
    settings: Settings,
    *,
    create: bool,
    source_required: bool = True,
    timeout: float = 30,
    strict: bool = True,
) -> None:
    """Check (and with `create`, create) the internal topics; check the source topics exist.

    `strict=False` (the deliver stage alone) only creates what is missing: partition counts and the
    state topic's compaction matter to the merge stage, which checks them itself.

    Raises:
        ConfigError: a topic is missing (without `create`), has the wrong partition count, or a
            wrong `cleanup.policy` (`_check_cleanup_policies`); the message names the config key and
            the fix. A changes topic with a finite retention is only warned about (the same check).
    """
    with kafka_errors():
        metadata = admin.list_topics(timeout=timeout)
    existing = {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}
    specs = internal_topics(settings)
    missing = [s for s in specs if s.name not in existing]
    if missing and create:
        new = [
            NewTopic(
                s.name,
                num_partitions=s.partitions or 1,
                replication_factor=settings.kafka.topic_replication_factor,
                config=s.config,
            )
            for s in missing
        ]
        futures = admin.create_topics(new, operation_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout)
            except Exception as exc:  # the future raises KafkaException with TOPIC_ALREADY_EXISTS etc.
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KafkaError(f"cannot create topic {name}: {exc}") from exc
            logger.info("created topic", extra={"topic": name})
            existing[name] = next(s.partitions or 1 for s in missing if s.name == name)
        missing = []
        _wait_for_leaders(admin, [s.name for s in specs], timeout)
    if not strict:
        return
    if missing:
        names = ", ".join(f"{s.name} ({s.key})" for s in missing)
        # resync and rebuild-state check too, and create nothing: the hint names the command that does
        raise ConfigError(
            f"missing topics: {names}; create them, or start the merge stage once with "
            "`yespo-connector run --create-topics`"
        )
    for spec in specs:
        if spec.partitions is not None and existing[spec.name] != spec.partitions:
            raise ConfigError(
                f"topic {spec.name} has {existing[spec.name]} partitions, expected {spec.partitions}",
                key="state.partitions",
            )
    _check_cleanup_policies(admin, specs, timeout)
    if source_required:
        absent = [t for t in settings.source.topics if t not in existing]
        if absent:
            logger.warning("source topics do not exist yet", extra={"topics": absent})


def topic_limits(admin: AdminClient, topics: list[str], *, timeout: float = 30) -> dict[str, int]:
    """`max.message.bytes` of each of `topics` that exists: the largest record batch its broker accepts.

    The broker checks it per (compressed) record batch; a topic without its own value reports the
    broker's `message.max.bytes`. Topics that do not exist (yet) are left out.
    """
    limits: dict[str, int] = {}
    resources = {t: ConfigResource(ConfigResource.Type.TOPIC, t) for t in dict.fromkeys(topics)}
    if not resources:
        return limits
    futures = admin.describe_configs(list(resources.values()), request_timeout=timeout)
    for topic, resource in resources.items():
        try:
            entries = futures[resource].result(timeout=timeout + 5)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if getattr(err, "code", lambda: None)() == ConfluentError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise translate(exc) from exc
        except TimeoutError as exc:
            raise timed_out(f"the configuration of {topic}") from exc
        entry = entries.get("max.message.bytes")
        if entry is not None and entry.value is not None and str(entry.value).isdigit():
            limits[topic] = int(entry.value)
    return limits


def record_limit(producer_limit: int, limits: Mapping[str, int], topics: Iterable[str]) -> int:
    """The largest record the connector may write to every one of `topics` (pure).

    The producer refuses a record above its `message.max.bytes`; the broker refuses a batch above the
    topic's `max.message.bytes`. A topic without a known limit only has the producer's.
    """
    return min([producer_limit, *(limits[t] for t in topics if t in limits)])


LIBRDKAFKA_BATCH_SIZE: Final = 1_000_000
"""librdkafka's default `batch.size`: the most it packs into one record batch."""


def batch_size_for(limit: int) -> dict[str, Any]:
    """Producer overrides that keep each record batch within `limit` bytes (pure).

    librdkafka packs records of one partition into batches of up to `batch.size` bytes, and the broker
    checks the batch against the topic's `max.message.bytes`: below the default, batches must be
    smaller (a single record is sent alone whatever its size, and is fitted by its writer).
    """
    if limit >= LIBRDKAFKA_BATCH_SIZE:
        return {}
    return {"batch.size": max(1, limit - RECORD_OVERHEAD)}


def _check_cleanup_policies(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    """Refuse a `cleanup.policy` that breaks the stage (one `describe_configs` request, at start-up).

    A topic created compacted (the state topic) must be exactly `compact`: with `delete` too,
    `retention.ms` expires delete markers (a stale replay then resurrects a row) and the states of
    customers not changed within it. The changes and DLQ topics must not be compacted (the broker
    refuses their records without a key: each transaction aborts and is retried until the stage
    stops), nor the upserts topic (`internal_topics`).

    A finite `retention.ms` or `retention.bytes` on a topic that must keep its records (the changes
    topic) is logged as a WARNING naming the key and the fix, not refused: it loses records only when
    the merge falls that far behind routing, and refusing would stop at their upgrade the deployments
    whose changes topic was created with the broker's default retention, and rule out the platforms
    that forbid unlimited retention.
    """
    checked = {s.name: s for s in specs if s.not_compacted or s.unlimited or _compacted(s)}  # audit: either
    resources = {name: ConfigResource(ConfigResource.Type.TOPIC, name) for name in checked}
    if not resources:
        return
    with kafka_errors():
        futures = admin.describe_configs(list(resources.values()), request_timeout=timeout)
        for name, spec in checked.items():
            entries = futures[resources[name]].result(timeout=timeout + 5)
            if spec.unlimited:
                _warn_finite_retention(spec, entries)
            entry = entries.get("cleanup.policy")
            value = str(entry.value) if entry is not None and entry.value is not None else ""
            if spec.not_compacted and "compact" in _policies(value):
                raise ConfigError(
                    f"topic {name} has cleanup.policy={value}, but {spec.not_compacted}; set "
                    "cleanup.policy=delete on it",
                    key=spec.key,
                )
            if _compacted(spec) and _policies(value) != {"compact"}:
                raise ConfigError(
                    f"topic {name} has cleanup.policy={value or '(none)'}, it must be exactly compact "
                    "(with delete, retention.ms expires delete markers and customers' states); set "
                    "cleanup.policy=compact on it",
                    key=spec.key,
                )


def _warn_finite_retention(spec: TopicSpec, entries: Mapping[str, Any]) -> None:
    """Warn about each of `retention.ms` and `retention.bytes` that is finite on `spec`'s topic."""
    finite = []
    for name in ("retention.ms", "retention.bytes"):
        entry = entries.get(name)
        raw = str(entry.value) if entry is not None and entry.value is not None else ""
        if raw.isdigit():  # -1 (unlimited) and values not read are not finite
            finite.append(f"{name}={raw}")
    if finite:
        logger.warning(
            "topic %s (%s) has %s, but %s; set retention.ms=-1 and retention.bytes=-1 on it (the "
            "merge stage deletes the changes it has merged itself)",
            spec.name,
            spec.key,
            " and ".join(finite),
            spec.unlimited,
            extra={"topic": spec.name, "key": spec.key},
        )


def _compacted(spec: TopicSpec) -> bool:
    return _policies(spec.config.get("cleanup.policy")) == {"compact"}


def _policies(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """New topics answer metadata before their partitions have leaders; wait for the leaders."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with kafka_errors():
            md = admin.list_topics(timeout=timeout)
        ready = all(
            name in md.topics
            and md.topics[name].error is None
            and all(p.leader >= 0 and p.error is None for p in md.topics[name].partitions.values())
            for name in names
        )
        if ready:
            return
        time.sleep(0.2)
    raise KafkaError(f"topics have no leader after {timeout}s: {', '.join(names)}", retriable=True)
