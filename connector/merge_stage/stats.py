"""The merge stage's counters (`MergeStage.stats`), one object shared by the collaborators that count."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

__all__ = ["MergeStats"]

logger = logging.getLogger(__name__)


@dataclass
class MergeStats:
    """Counters of what the stage did (also fed to Prometheus)."""

    source_records: int = 0
    routed: int = 0
    ignored: int = 0
    changes: int = 0
    applied: int = 0
    unmapped_changes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    upserts: int = 0
    deletes: int = 0
    handovers: int = 0  # contacts passed to the key a customers row moved to
    dlq: int = 0
    commits: int = 0
    aborts: int = 0
    rebalances: int = 0
    restored_records: int = 0
