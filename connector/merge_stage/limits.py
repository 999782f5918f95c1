"""The record sizes the merge stage writes under, so that the broker never refuses a record.

The producer's `message.max.bytes`, lowered by the topics' own `max.message.bytes` (read at start-up,
read again when the broker refuses a record as too large).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.dlq import record_size
from connector.errors import KafkaError, StateError
from connector.kafka.topics import batch_size_for, record_limit, topic_limits
from connector.merge_stage.budget import StepBudget
from connector.state.recovery import MIN_CALL_S

__all__ = ["RecordLimits"]

logger = logging.getLogger(__name__)


class RecordLimits:
    """The largest changes, state, upserts and DLQ records the stage may write.

    Until `apply` reads the topics' limits, the producer's `kafka.message_max_bytes` applies.
    """

    def __init__(self, settings: Settings) -> None:
        self._producer_limit = settings.kafka.message_max_bytes
        self.data_topics = [settings.state.changes_topic, settings.state.topic, settings.output.upserts_topic]
        self.dlq_topic = settings.output.dlq_topic
        self.max_bytes = self._producer_limit  # changes, state and upserts records
        self.dlq_max_bytes = self._producer_limit  # both lowered by the topics' own limits at start
        self.value_limit = self.max_bytes - record_size(None, None)  # for a value without key
        self._topic_limits: dict[str, int] = {}  # max.message.bytes read at start-up

    @property
    def topics(self) -> list[str]:
        """Every topic the stage writes to: the data topics, then the DLQ topic."""
        return [*self.data_topics, self.dlq_topic]

    def apply(self, limits: Mapping[str, int]) -> dict[str, Any]:
        """Fit every write under its topic's `max.message.bytes` too; returns producer overrides.

        A DLQ topic with a lower limit than the producer's would otherwise refuse a copy, and the
        transaction holding it would abort again at every retry (a stall).
        """
        producer_limit = self._producer_limit
        self._topic_limits = dict(limits)
        self.max_bytes = record_limit(producer_limit, limits, self.data_topics)
        self.dlq_max_bytes = record_limit(producer_limit, limits, [self.dlq_topic])
        self.value_limit = self.max_bytes - record_size(None, None)
        return batch_size_for(min(self.max_bytes, self.dlq_max_bytes))

    def check_refused_size(self, error: KafkaError, admin: AdminClient | None, budget: StepBudget) -> None:
        """After the broker refused a record as too large: stop if a topic's limit was lowered.

        Writes are fitted under the limits read at start-up (batch sizes included, which a running
        producer cannot change); a topic's `max.message.bytes` lowered since would make the same
        transaction abort at every retry. Stopping lets the restart read the new limits. Nothing is
        checked without an admin client or when the step is out of time.

        Raises:
            StateError: a topic's `max.message.bytes` is now below the one read at start-up.
        """
        if error.code != "MSG_SIZE_TOO_LARGE" or admin is None:
            return
        timeout = budget.time_left(10.0)
        if timeout < MIN_CALL_S:
            logger.warning("topic limits not read: out of time in this step (read at the next refusal)")
            return
        topics = self.topics
        try:
            now = topic_limits(admin, topics, timeout=timeout)
        except KafkaError as exc:
            logger.warning("topic limits not readable", extra={"error": str(exc)})
            return
        producer_limit = self._producer_limit
        for topic in topics:  # only a limit that binds below the producer's counts
            before = record_limit(producer_limit, self._topic_limits, [topic])
            after = record_limit(producer_limit, now, [topic])
            if after < before:
                raise StateError(
                    f"topic {topic}: max.message.bytes is now {after} (was {before} at start-up) and the "
                    "broker refused a record as too large; stopping so that the restart applies it"
                )
