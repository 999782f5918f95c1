"""The deliver stage's DLQ and audit producer (`Outbox`).

A batch's writes are produced once it is final, and flushed (acknowledged) before its offsets move.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError as ConfluentError
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.errors import StateError
from connector.kafka.clients import admin_config, kafka_errors, produce, producer_config, translate
from connector.kafka.topics import batch_size_for, record_limit, topic_limits
from connector.sink.batch_state import Batch
from connector.sink.recorder import OutcomeRecorder

__all__ = ["Outbox", "broker_topic_limits"]

logger = logging.getLogger(__name__)


def broker_topic_limits(settings: Settings, topics: list[str]) -> Mapping[str, int]:
    """`max.message.bytes` of each of `topics`, asked of the broker.

    Raises:
        KafkaError: the broker did not answer.
    """
    with kafka_errors():
        return topic_limits(AdminClient(admin_config(settings)), topics)


class Outbox:
    """The producer of the DLQ and audit writes that wait in final batches.

    Args:
        settings: the whole configuration (DLQ and audit topics, producer settings).
        recorder: the stage's outcome recorder (its DLQ copies are fitted under the DLQ topic's limit).
        producer_factory: builds the producer from its config (tests pass a fake).
        topic_limits: topic -> `max.message.bytes` of the DLQ and audit topics; DLQ copies and
            producer batches are fitted under them.

    Raises (from the constructor):
        KafkaError: the topic limits could not be asked of the broker.
    """

    def __init__(
        self,
        settings: Settings,
        recorder: OutcomeRecorder,
        *,
        producer_factory: Callable[[dict[str, Any]], Producer],
        topic_limits: Callable[[list[str]], Mapping[str, int]],
    ) -> None:
        # audit/DLQ writes are flushed once per batch: lz4 and a longer linger cost far less CPU per
        # record than zstd at 5 ms, and nothing waits on them in between
        light: dict[str, Any] = {"compression.type": "lz4", "linger.ms": 50}
        outbox = [settings.output.dlq_topic, settings.output.audit_topic]
        limits = topic_limits(outbox)
        producer_limit = settings.kafka.message_max_bytes
        recorder.max_bytes = record_limit(producer_limit, limits, outbox[:1])
        light.update(batch_size_for(record_limit(producer_limit, limits, outbox)))
        self._producer = producer_factory(producer_config(settings, **light))
        self._write_failures: list[str] = []

    def release(self, batch: Batch) -> None:
        """Step 1 of completing a batch: produce its DLQ + audit writes."""
        producer = self._producer
        for topic, key, value, headers in batch.outbox:
            # no transaction to abort here: wait for room as long as it takes (the app's stall
            # check stops a stage loop stuck this long in a client call)
            produce(
                producer,
                topic,
                wait_s=math.inf,
                key=key,
                value=value,
                headers=headers,
                on_delivery=self._on_written,
            )
        producer.poll(0)  # once per batch: each poll gives the GIL away to the workers

    def flush(self) -> None:
        """Step 2 of completing batches: flush their DLQ + audit writes (durable before the offsets move).

        Raises:
            StateError: a write was not acknowledged within 60 s, or failed; the offsets must not
                be committed.
        """
        if self._producer.flush(60) > 0:
            raise StateError("DLQ/audit writes were not acknowledged; not committing offsets")
        if self._write_failures:
            failures, self._write_failures = self._write_failures, []
            raise StateError(
                f"{len(failures)} DLQ/audit writes failed (first: {failures[0]}); not committing offsets"
            )

    def close(self) -> None:
        """Flush what was produced (up to 30 s); a failure is logged, not raised."""
        try:
            self._producer.flush(30)
        except KafkaException as exc:  # a fatal producer must not hide why the stage stops
            logger.warning("producer not flushed on close", extra={"error": str(translate(exc))})

    def _on_written(self, err: ConfluentError | None, msg: Any) -> None:
        """Delivery report of a DLQ/audit write (called from flush/poll): remember a failure."""
        if err is not None:
            self._write_failures.append(f"{msg.topic()}: {err.name()}")
