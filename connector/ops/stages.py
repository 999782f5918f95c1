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
    keys: tuple[str, ...] = ()
    """The config key naming each topic (same order as `topics`), for errors."""

    def key_of(self, topic: str) -> str | None:
        """The config key that names `topic`, if known."""
        for name, key in zip(self.topics, self.keys, strict=False):
            if name == topic:
                return key
        return None


def stage_group(settings: Settings, stage: Stage) -> StageGroup:
    """The consumer group and topics of `stage`.

    merge: `kafka.group_id` on the source topics and `state.changes_topic`; deliver:
    `kafka.deliver_group_id` (default `<group_id>-deliver`) on `output.upserts_topic`.
    """
    if stage == "merge":
        source = settings.source
        named = [(source.customers.topic, "source.customers.topic")]
        named += [(child.topic, f"source.children[{i}].topic") for i, child in enumerate(source.children)]
        named.append((settings.state.changes_topic, "state.changes_topic"))
        return StageGroup(
            "merge", settings.kafka.group_id, tuple(t for t, _ in named), tuple(k for _, k in named)
        )
    return StageGroup(
        "deliver", settings.kafka.deliver_group, (settings.output.upserts_topic,), ("output.upserts_topic",)
    )


def stage_groups(settings: Settings) -> list[StageGroup]:
    """Both stages, merge first."""
    return [stage_group(settings, "merge"), stage_group(settings, "deliver")]
