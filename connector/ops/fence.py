"""Exclusive access to the merge stage's outputs for ops commands (resync, rebuild-state).

`GroupFence` holds the merge group as its only member (`live_members`: whether the group has any);
the ops commands' Kafka clients log through `OPS_LOGGER`. What is written under the fence goes
through `ops.transactions`; the state topic is read with `ops.scan`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import GroupActiveError, KafkaError, StateError
from connector.kafka.clients import consumer_config, kafka_errors
from connector.ops.lag import kafka_call

__all__ = ["OPS_LOGGER", "GroupFence", "live_members"]

logger = logging.getLogger(__name__)


def live_members(admin: AdminClient, group: str, timeout: float = 10.0) -> int:
    """Number of live members of `group` (0 for an unknown or empty group)."""
    with kafka_call(f"cannot describe consumer group {group!r}"):
        desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(
            timeout=timeout + 5
        )
    return len(desc.members)


OPS_LOGGER = logging.getLogger("connector.librdkafka")
"""Where the ops commands' librdkafka lines go (Python logging)."""


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
        conf = consumer_config(settings, self.group, logger=OPS_LOGGER)
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

    def start_offsets(self, timeout: float = 10.0) -> list[TopicPartition]:
        """Where the group starts on each partition when it has no committed offset: the earliest one.

        (`auto.offset.reset` is `earliest`, and `kafka.extra` cannot change it.) Committed, they
        change nothing for the group, and a transaction that has no committed offsets to send can
        send them instead, so that the broker checks our generation (`commit_fenced`).
        """
        consumer = self._client()
        offsets = []
        for tp in self._assigned:
            with kafka_errors():
                low, _ = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=timeout, cached=False
                )
            offsets.append(TopicPartition(tp.topic, tp.partition, int(low)))
        return offsets

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
