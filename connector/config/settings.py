"""`Settings`, the whole configuration: one field per section, its sources, and the checks across sections.

Built only by `load_settings` (`loading.py`), which hands it the YAML file and the environment.
"""

from __future__ import annotations

import logging

from pydantic import model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connector.config.contact import ContactMapping
from connector.config.kafka import KafkaSettings
from connector.config.observability import ObservabilitySettings
from connector.config.settings_sources import EnvSource, YamlSource
from connector.config.source import SourceSettings
from connector.config.topics import OutputSettings, StateSettings
from connector.config.yespo import YespoSettings

__all__ = ["ENV_PREFIX", "Settings"]

logger = logging.getLogger(__name__)

ENV_PREFIX = "YESPO_CONNECTOR_"
"""The prefix of every variable that sets a setting: `YESPO_CONNECTOR_<SECTION>__<KEY>`."""


class Settings(BaseSettings):
    """The whole configuration. Frozen; build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        nested_model_default_partial_update=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    source: SourceSettings = SourceSettings()
    state: StateSettings = StateSettings()
    output: OutputSettings = OutputSettings()
    contact: ContactMapping = ContactMapping()
    yespo: YespoSettings = YespoSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init kwargs, then the environment, then the YAML file."""
        return (init_settings, EnvSource(settings_cls, env_settings), YamlSource(settings_cls))

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        names = [c.name for c in self.source.children]
        if len(set(names)) != len(names):
            raise ValueError("source.children: child names must be unique")
        if len(self.source.customers.key) > 1 and self.source.children:
            raise ValueError(
                "source.children: a child names its customer by one column (customer_key), so the "
                "customers table needs a one-column key (source.customers.key) when children are configured"
            )
        topics = self.source.topics
        if len(set(topics)) != len(topics):
            raise ValueError(
                "source.children: every source table needs its own topic (a topic is listed twice)"
            )
        if self.contact.groups is not None and self.contact.groups.child not in names:
            raise ValueError(
                f"contact.groups.child: {self.contact.groups.child!r} is not a name in source.children"
            )
        self._distinct_topics()
        return self

    def _distinct_topics(self) -> None:
        # each topic holds one kind of record, read by one reader: with output.dlq_topic equal to
        # state.changes_topic the merge stage reads its dead letters back as changes, fails on
        # them and dead-letters them again, for ever
        source = {self.source.customers.topic: "source.customers.topic"}
        for i, child in enumerate(self.source.children):
            source.setdefault(child.topic, f"source.children.{i}.topic")
        internal = {
            "state.changes_topic": self.state.changes_topic,
            "state.topic": self.state.topic,
            "output.upserts_topic": self.output.upserts_topic,
            "output.dlq_topic": self.output.dlq_topic,
            "output.audit_topic": self.output.audit_topic,
        }
        seen: dict[str, str] = {}
        for key, topic in internal.items():
            other = source.get(topic) or seen.get(topic)
            if other is not None:
                raise ValueError(f"{key}: the same topic as {other}; every topic needs a name of its own")
            seen[topic] = key
