"""Start-up checks of the internal topics, and `--create-topics`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from connector.config import Settings
from connector.errors import ConfigError, KafkaError
from connector.kafka.clients import kafka_errors

__all__ = ["TopicSpec", "ensure_topics", "internal_topics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What an internal topic must look like."""

    name: str
    key: str
    partitions: int | None
    config: dict[str, str]


def internal_topics(settings: Settings) -> list[TopicSpec]:
    """The topics the connector writes: changes, state (compacted), upserts, DLQ, audit."""
    n = settings.state.partitions
    return [
        TopicSpec(settings.state.changes_topic, "state.changes_topic", n, {"cleanup.policy": "delete"}),
        TopicSpec(
            settings.state.topic,
            "state.topic",
            n,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
        ),
        TopicSpec(settings.output.upserts_topic, "output.upserts_topic", n, {"cleanup.policy": "delete"}),
        TopicSpec(settings.output.dlq_topic, "output.dlq_topic", None, {"cleanup.policy": "delete"}),
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
        ConfigError: a topic is missing (without `create`), has the wrong partition count or a
            compacted topic is not compacted; the message names the config key and the fix.
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
        raise ConfigError(f"missing topics: {names}; create them or run with --create-topics")
    for spec in specs:
        if spec.partitions is not None and existing[spec.name] != spec.partitions:
            raise ConfigError(
                f"topic {spec.name} has {existing[spec.name]} partitions, expected {spec.partitions}",
                key="state.partitions",
            )
    _check_compacted(admin, settings.state.topic, timeout)
    if source_required:
        absent = [t for t in settings.source.topics if t not in existing]
        if absent:
            logger.warning("source topics do not exist yet", extra={"topics": absent})


def _check_compacted(admin: AdminClient, topic: str, timeout: float) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    with kafka_errors():
        result = admin.describe_configs([resource])[resource].result(timeout=timeout)
    policy = result.get("cleanup.policy")
    value = policy.value if policy is not None else ""
    if "compact" not in (value or ""):
        raise ConfigError(f"topic {topic} must have cleanup.policy=compact (has {value})", key="state.topic")


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
