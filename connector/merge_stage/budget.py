"""The merge stage's step budget: one deadline shared by the blocking calls of a loop step.

The loop must poll again within `kafka.max_poll_interval_ms`; each blocking call waits only for what is
left of the step, and the loop ticks (reports itself alive) before each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

__all__ = ["StepBudget"]

logger = logging.getLogger(__name__)


class StepBudget:
    """The current step's deadline, the longest one blocking call may wait, and the liveness tick.

    Shared by the loop (`MergeStage.step` and `close` start a budget), the transaction control and the
    restore: what does not fit before the deadline is left pending for the next step.

    Args:
        clock: monotonic seconds.
        step_s: what the blocking calls of one step may take in all.
        wait_cap_s: the longest one blocking call may wait (each is preceded by a tick).
        on_tick: reports the loop alive (/healthz and the stall watchdog); None: nobody listens.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        step_s: float,
        wait_cap_s: float,
        on_tick: Callable[[], None] | None,
    ) -> None:
        self.clock = clock
        self.step_s = step_s
        self.wait_cap_s = wait_cap_s
        self.deadline = math.inf  # the current step's (set by `start`, and by `close`'s resume)
        self._on_tick = on_tick

    def start(self) -> None:
        """Open a new budget: the deadline is `step_s` from now."""
        self.deadline = self.clock() + self.step_s

    def time_left(self, cap: float = math.inf) -> float:
        """Seconds until the step's deadline, at most `cap`: the timeout of the next blocking call."""
        return min(cap, self.deadline - self.clock())

    def tick(self) -> None:
        """Report the loop alive (`on_tick`: /healthz and the stall watchdog).

        At the start of each step and before each blocking call of a step (sending the offsets, each
        commit and abort attempt, reading the committed offsets), each of which waits at most
        `wait_cap_s`: a step that retries a commit on a slow broker for minutes is alive (each call
        returned), one stuck in a call that ignores its timeout (librdkafka#5456) stops ticking.
        """
        if self._on_tick is not None:
            self._on_tick()
