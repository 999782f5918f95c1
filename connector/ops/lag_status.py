"""Burrow-style consumer status, a pure function over a window of lag samples of one partition.

`LagWindows` keeps the last N samples per (group, topic, partition) between `lag --watch` rounds.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LagStatus", "LagWindows", "PartitionSample", "evaluate_status", "worst_status"]

logger = logging.getLogger(__name__)


class LagStatus(StrEnum):
    """How a consumer group is doing on a partition (ordered by severity)."""

    OK = "OK"
    WARN = "WARN"  # committed offsets move, but lag grows over the whole window
    STALLED = "STALLED"  # members exist, lag > 0, committed offset does not move over the window
    STOPPED = "STOPPED"  # no group members and lag > 0
    ERROR = "ERROR"  # the partition's offsets could not be read


_SEVERITY = {status: rank for rank, status in enumerate(LagStatus)}


@dataclass(frozen=True, slots=True)
class PartitionSample:
    """One observation of one partition for one group.

    Attributes:
        committed: The group's committed offset, None when it has none.
        lag: Records the group still has to consume (end minus committed, or the whole retained
            backlog when nothing is committed); None when unknown.
        members: Live members of the group when the sample was taken.
        error: Why the partition could not be read, if it could not.
    """

    committed: int | None
    lag: int | None
    members: int
    error: str | None = None


def evaluate_status(window: Sequence[PartitionSample]) -> LagStatus:
    """Status of a partition from its samples, oldest first (Burrow's rules, adapted).

    In order: no samples, or the latest could not be read -> ERROR; the latest lag is 0 -> OK; no
    members and lag > 0 -> STOPPED; any lag of 0 in the window -> OK (the group caught up recently);
    two or more samples with the committed offset unchanged -> STALLED; lag never shrinking and larger
    at the end -> WARN; otherwise OK. Samples that errored earlier in the window are ignored.
    """
    if not window:
        return LagStatus.ERROR
    latest = window[-1]
    if latest.error is not None or latest.lag is None:
        return LagStatus.ERROR
    if latest.lag == 0:
        return LagStatus.OK
    if latest.members == 0:
        return LagStatus.STOPPED
    good = [s for s in window if s.error is None and s.lag is not None]
    lags = [s.lag for s in good if s.lag is not None]
    if any(lag == 0 for lag in lags):
        return LagStatus.OK
    if len(good) < 2:
        return LagStatus.OK
    if all(s.committed == good[0].committed for s in good):
        return LagStatus.STALLED
    if all(b >= a for a, b in itertools.pairwise(lags)) and lags[-1] > lags[0]:
        return LagStatus.WARN
    return LagStatus.OK


def worst_status(statuses: Iterable[LagStatus]) -> LagStatus:
    """The most severe status (OK for none): a group's status is the worst of its partitions'."""
    return max(statuses, key=_SEVERITY.__getitem__, default=LagStatus.OK)


class LagWindows:
    """The last `size` samples per key, for evaluating status over a watch window."""

    def __init__(self, size: int = 10) -> None:
        """Keep at most `size` (>= 1) samples per key."""
        if size < 1:
            raise ValueError("window size must be at least 1")
        self._size = size
        self._windows: dict[Hashable, deque[PartitionSample]] = {}

    def add(self, key: Hashable, sample: PartitionSample) -> LagStatus:
        """Append `sample` to `key`'s window and return the window's status."""
        window = self._windows.setdefault(key, deque(maxlen=self._size))
        window.append(sample)
        return evaluate_status(list(window))
