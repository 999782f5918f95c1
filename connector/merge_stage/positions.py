"""The merge stage's consumer positions: consumed, committed, and the rewind after an abort.

The offsets the open transaction consumed (sent with its commit), those this member committed since
its assignment, and the seek of every assigned partition back to its committed offset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from connector.errors import KafkaError
from connector.kafka.clients import kafka_errors, translate
from connector.merge_stage.budget import StepBudget
from connector.state.recovery import MIN_CALL_S

__all__ = ["Positions"]

logger = logging.getLogger(__name__)

_COMMITTED_TIMEOUT_S: Final = 10.0
"""The longest one read of the assignment's committed offsets (`Consumer.committed`) waits."""


class Positions:
    """This member's consumed and committed offsets, and the rewind to the committed ones.

    Args:
        clients: the stage's (consumer, producer); raises `StateError` when the stage is not started.
        assigned: the partitions currently assigned to this member.
        budget: the step budget the reads of the committed offsets wait within.
    """

    def __init__(
        self,
        *,
        clients: Callable[[], tuple[Consumer, Producer]],
        assigned: Callable[[], list[TopicPartition]],
        budget: StepBudget,
    ) -> None:
        self._clients = clients
        self._assigned = assigned
        self._budget = budget
        self.offsets: dict[tuple[str, int], int] = {}  # consumed by the open transaction (the next ones)
        # the offsets this member committed since its assignment: a transaction that consumed nothing
        # (the delete-marker sweep) sends them again, so that a member the group has dropped is fenced
        self.committed: dict[tuple[str, int], int] = {}
        self.rewind_pending = False

    def rewind(self) -> None:
        """Seek every assigned partition to its committed offset (`rewind_pending` until done).

        The group may be rebalancing (the session expired while the broker was away) and the committed
        offsets unreadable until this consumer polls again, or the step out of time: then the stage
        polls, drops what it fetched, and tries again; a new assignment starts at the committed
        offsets anyway.
        """
        consumer, _ = self._clients()
        if not self._assigned():
            self.rewind_pending = False
            return
        committed = self.read_committed()
        if committed is None:
            return
        self.rewind_pending = False
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                # not yet fetching: the assignment's committed offset applies anyway
                logger.debug("seek after abort failed", extra={"error": str(translate(exc))})

    def read_committed(self) -> list[TopicPartition] | None:
        """The assigned partitions' committed offsets (within the step's deadline); None: not now.

        They are what this member would send again to be fenced (`committed`), so they are kept.

        Raises:
            KafkaError: a fatal client error.
        """
        consumer, _ = self._clients()
        timeout = self._budget.time_left(min(_COMMITTED_TIMEOUT_S, self._budget.wait_cap_s))
        if timeout < MIN_CALL_S:
            logger.info("committed offsets left for the next step: the step is out of time")
            return None
        self._budget.tick()
        try:
            with kafka_errors():
                committed: list[TopicPartition] = consumer.committed(self._assigned(), timeout=timeout)
        except KafkaError as exc:
            if exc.fatal:
                raise
            # e.g. _TIMED_OUT (which librdkafka does not flag retriable) while the group rebalances
            logger.warning("committed offsets not readable yet; retrying", extra={"error": str(exc)})
            return None
        failed = [tp for tp in committed if tp.error is not None]
        if failed:
            # an offset not read is not "none committed": seeking to the start would re-read it all
            logger.warning(
                "committed offsets not readable yet; retrying", extra={"error": str(failed[0].error)}
            )
            return None
        for tp in committed:
            if tp.offset >= 0:
                self.committed.setdefault((tp.topic, tp.partition), tp.offset)
        return committed

    def fencing_offsets_known(self) -> bool:
        """True once a transaction that consumes nothing has offsets to send (`TransactionControl.commit`).

        Until this member's first commit in an assignment, they are read from the group: the
        assignment's committed offsets (a partition with none cannot serve).
        """
        if not self.committed and self._assigned():
            self.read_committed()
        return bool(self.committed)
