"""The merge stage's clients, restorer and assignment, in one holder the loop and its collaborators share.

Collaborators read them here, never through the stage: a collaborator holding the stage would put it in
a reference cycle, freed only by the cyclic garbage collector. That collector may run on a librdkafka
thread (an admin future's callback), and librdkafka aborts the process when a client is destroyed
from one of its own threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.errors import StateError
from connector.state.recovery import Restorer

__all__ = ["StageHandles"]


@dataclass(slots=True)
class StageHandles:
    """What `MergeStage.start` creates and the rebalance callbacks change; None before `start`."""

    consumer: Consumer | None = None
    producer: Producer | None = None
    admin: AdminClient | None = None
    restorer: Restorer | None = None
    assigned: list[TopicPartition] = field(default_factory=list)

    def clients(self) -> tuple[Consumer, Producer]:
        """The consumer and the producer.

        Raises:
            StateError: the stage is not started (or already closed).
        """
        if self.consumer is None or self.producer is None:
            raise StateError("merge stage is not started")
        return self.consumer, self.producer

    def restoring(self, partition: int) -> bool:
        """Whether the state partition is being restored (its changes partition is not processed)."""
        return self.restorer is not None and self.restorer.is_restoring(partition)
