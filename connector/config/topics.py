"""The `state:` and `output:` sections: the topics the connector owns and writes.

The merge stage's changes and compacted state topics, and the upserts, dead-letter and audit topics.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from connector.config.fields import STRICT, TopicName

__all__ = ["OutputSettings", "StateSettings"]

logger = logging.getLogger(__name__)


class StateSettings(BaseModel):
    """The internal changes topic and the compacted per-customer state topic."""

    model_config = STRICT

    changes_topic: TopicName = "yespo-connector.changes"
    partitions: int = Field(default=6, gt=0, le=10_000)
    topic: TopicName = "yespo-connector.customer-state"
    delete_marker_ttl_hours: float = Field(default=168, ge=0)


class OutputSettings(BaseModel):
    """Topics the connector writes."""

    model_config = STRICT

    upserts_topic: TopicName = "yespo-connector.contact-upserts"
    dlq_topic: TopicName = "yespo-connector.dlq"
    audit_topic: TopicName = "yespo-connector.audit"
