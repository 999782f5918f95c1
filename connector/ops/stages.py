"""Which consumer group each stage uses and which topics it reads, as the ops commands see them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from connector.config import Settings

__all__ = ["Stage", "StageGroup", "stage_group", "stage_groups"]

logger = logging.getLogger(__name__)

Stage = Literal["merge", "deliver"]


@dataclass(frozen=True, slots=True)
class StageGroup:
    """A stage's consumer group and the topics it consumes."""

    stage: Stage
    group: str
    topics: tuple[str, ...]


def stage_group(settings: Settings, stage: Stage) -> StageGroup:
    """The consumer group and topics of `stage`.

    merge: `kafka.group_id` on the source topics and `state.changes_topic`; deliver:
    `kafka.deliver_group_id` (default `<group_id>-deliver`) on `output.upserts_topic`.
    """
    if stage == "merge":
        topics = (*settings.source.topics, settings.state.changes_topic)
        return StageGroup("merge", settings.kafka.group_id, topics)
    return StageGroup("deliver", settings.kafka.deliver_group, (settings.output.upserts_topic,))


def stage_groups(settings: Settings) -> list[StageGroup]:
    """Both stages, merge first."""
    return [stage_group(settings, "merge"), stage_group(settings, "deliver")]
