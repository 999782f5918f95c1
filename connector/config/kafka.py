"""The `kafka:` section: brokers, consumer groups, the merge stage's transaction cadence, client properties.

`kafka.clients` builds every librdkafka client from it; `CONNECTOR_KAFKA_PROPERTIES` lists the
properties the connector sets itself, which `kafka.extra` may not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator, model_validator

from connector.config.fields import STRICT, NonBlank, blank_is_no_value

__all__ = ["CONNECTOR_KAFKA_PROPERTIES", "KafkaSettings"]

logger = logging.getLogger(__name__)


_LIBRDKAFKA_MESSAGE_MAX_BYTES: Final = 1_000_000
"""librdkafka's default `message.max.bytes`."""
_SECRET_PROPERTY: Final = re.compile(r"password|passphrase|secret|\.pem$|oauthbearer\.config|^sasl\.jaas")
"""librdkafka properties whose values are secrets (`sasl.password`, `ssl.key.password`, `...passphrase`)."""

CONNECTOR_KAFKA_PROPERTIES: Final[Mapping[str, str | None]] = {
    # set from a config key of their own (librdkafka's `metadata.broker.list` is bootstrap.servers)
    "bootstrap.servers": "kafka.bootstrap_servers",
    "metadata.broker.list": "kafka.bootstrap_servers",
    "group.id": "kafka.group_id or kafka.deliver_group_id",
    "transactional.id": "kafka.transactional_id_prefix",
    "transaction.timeout.ms": "kafka.transaction_timeout_ms",
    "max.poll.interval.ms": "kafka.max_poll_interval_ms",
    "session.timeout.ms": "kafka.session_timeout_ms",
    # offsets are committed with the transaction (merge) or after delivery (deliver), never on their own
    "enable.auto.commit": None,
    "enable.auto.offset.store": None,
    # stages read only committed records, and a new group (or a lost offset) reads from the start
    "isolation.level": None,
    "auto.offset.reset": None,
    # off in the stages' loops, on where a read must stop at a partition's end (restore, ops scans)
    "enable.partition.eof": None,
    # exactly once: transactions need an idempotent producer that waits for every replica
    "enable.idempotence": None,
    "acks": None,
    "request.required.acks": None,
    # librdkafka's lines go through Python logging (redaction); its statistics feed the lag metrics
    "logger": None,
    "stats_cb": None,
    "statistics.interval.ms": None,
    # static membership: replicas share one config, and members with one id fence each other
    "group.instance.id": None,
}
"""librdkafka properties the connector sets itself in `kafka.clients`, which `kafka.extra` may not set.

Each maps to the config key that sets it, or to None when the connector needs its own value.
`kafka.extra` overrides every other property the connector sets (tuning: `linger.ms`,
`compression.type`, batch and fetch sizes, ...). Partitioning is not here: every record whose
partition matters is written to an explicit partition (`routing.partition_for`).
"""


def _not_set_by_connector(name: str) -> str:
    if name in CONNECTOR_KAFKA_PROPERTIES:
        key = CONNECTOR_KAFKA_PROPERTIES[name]
        why = f"use {key}" if key else "the connector needs its own value"
        raise ValueError(f"set by the connector ({why})")
    return name


_ClientProperty = Annotated[str, AfterValidator(_not_set_by_connector)]
"""A `kafka.extra` property name: not one of `CONNECTOR_KAFKA_PROPERTIES`."""


class KafkaSettings(BaseModel):
    """Kafka connection and the merge stage's transaction cadence."""

    model_config = STRICT

    # blank: librdkafka starts with no broker to connect to; a blank group.id aborts the Python process
    bootstrap_servers: NonBlank = "127.0.0.1:9092"
    group_id: NonBlank = "yespo-connector"
    deliver_group_id: Annotated[str | None, AfterValidator(blank_is_no_value)] = Field(
        default=None, description='default "<group_id>-deliver"; must differ from group_id'
    )
    transactional_id_prefix: str = "yespo-connector"
    commit_interval_ms: int = Field(default=200, gt=0, le=60_000)
    commit_max_records: int = Field(default=10_000, gt=0)
    transaction_timeout_ms: int = Field(default=60_000, gt=0)
    max_poll_interval_ms: int = Field(default=300_000, gt=0)
    session_timeout_ms: int = Field(default=45_000, gt=0)
    topic_replication_factor: int = Field(default=1, gt=0)
    extra: dict[_ClientProperty, str] = Field(default_factory=dict)

    @property
    def deliver_group(self) -> str:
        """The deliver stage's consumer group."""
        return self.deliver_group_id or f"{self.group_id}-deliver"

    @property
    def secret_values(self) -> tuple[str, ...]:
        """The `extra` values that are secrets (passwords, client secrets, keys): never shown."""
        return tuple(v for k, v in self.extra.items() if _SECRET_PROPERTY.search(k) and v)

    def __repr_args__(self) -> Any:  # repr() and str() mask the secret `extra` values
        for name, value in super().__repr_args__():
            if name == "extra":
                value = {k: "**********" if _SECRET_PROPERTY.search(k) else v for k, v in value.items()}
            yield name, value

    @field_validator("deliver_group_id")
    @classmethod
    def _own_deliver_group(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and value == info.data.get("group_id"):
            # e.g. the deliver stage's replicas would count as live merge members, and rebuild-state
            # and resync refuse to run while the merge group has any
            raise ValueError(
                "must differ from kafka.group_id: each stage needs a consumer group of its own (with "
                "one, a rebalance of either stage stops both, and the commands that need the merge "
                "group empty would wait for the deliver stage's members)"
            )
        return value

    @field_validator("max_poll_interval_ms")
    @classmethod
    def _poll_interval_fits_a_merge_step(cls, value: int) -> int:
        # a merge step's blocking calls (sending the offsets, the commit's attempts, the aborts on a
        # slow broker) share 80 % of it less 15 s: below 30 s they would not fit, and the group
        # would evict the member mid-commit (librdkafka also needs it >= session.timeout.ms)
        if value < 30_000:
            raise ValueError(
                "must be at least 30000 (30 s): the merge stage's commit, with its retries on a slow "
                "broker, must fit between two polls"
            )
        return value

    @model_validator(mode="after")
    def _timeout_above_commit_interval(self) -> KafkaSettings:
        if self.transaction_timeout_ms < 5 * self.commit_interval_ms:
            raise ValueError("transaction_timeout_ms must be at least 5 x commit_interval_ms")
        return self

    @property
    def message_max_bytes(self) -> int:
        """The producer's largest record (librdkafka `message.max.bytes`, settable in `extra`)."""
        return int(self.extra.get("message.max.bytes", _LIBRDKAFKA_MESSAGE_MAX_BYTES))

    @field_validator("extra")
    @classmethod
    def _message_max_bytes_is_a_size(cls, extra: dict[str, str]) -> dict[str, str]:
        raw = extra.get("message.max.bytes")
        if raw is not None and (not raw.isdigit() or not 10_000 <= int(raw) <= 1_000_000_000):
            raise ValueError("message.max.bytes must be a whole number of bytes from 10000 to 1000000000")
        # the stages' rebalance callbacks take and give back whole assignments (eager protocol)
        if "cooperative" in extra.get("partition.assignment.strategy", "").lower():
            raise ValueError(
                "partition.assignment.strategy: cooperative assignors are not supported (the stages "
                "rebalance eagerly: range or roundrobin)"
            )
        if extra.get("group.protocol", "classic").strip().lower() != "classic":
            raise ValueError("group.protocol: only 'classic' is supported (the stages rebalance eagerly)")
        return extra

    def as_librdkafka(self) -> dict[str, str | int | float | bool]:
        """Client properties common to every client; `extra` is passed through as-is."""
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap_servers}
        conf.update(self.extra)
        return conf
