"""Start-up checks of the internal topics' cleanup policies (an admin double, no broker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from connector.config import Settings, load_settings
from connector.errors import ConfigError
from connector.kafka.topics import ensure_topics, internal_topics

from .test_config import REPO_EXAMPLE


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


class PolicyAdmin:
    """Every internal topic exists with the right partition count and the given cleanup policies."""

    def __init__(self, settings: Settings, policies: dict[str, str]) -> None:
        self.settings = settings
        self.policies = policies
        self.describe_calls = 0

    def list_topics(self, timeout: float | None = None) -> Any:
        topics = {
            spec.name: SimpleNamespace(error=None, partitions=dict.fromkeys(range(spec.partitions or 1)))
            for spec in internal_topics(self.settings)
        }
        return SimpleNamespace(topics=topics)

    def describe_configs(self, resources: list[Any], **kw: Any) -> dict[Any, Any]:
        self.describe_calls += 1
        return {r: _Done({"cleanup.policy": SimpleNamespace(value=self.policies[r.name])}) for r in resources}


def _created_policies(settings: Settings) -> dict[str, str]:
    """The policies `--create-topics` gives the topics."""
    return {spec.name: spec.config["cleanup.policy"] for spec in internal_topics(settings)}


def test_the_topics_as_created_pass_the_checks_in_one_request() -> None:
    settings = load_settings(REPO_EXAMPLE)
    admin = PolicyAdmin(settings, _created_policies(settings))
    ensure_topics(admin, settings, create=False, source_required=False)  # type: ignore[arg-type]
    assert admin.describe_calls == 1


@pytest.mark.parametrize(
    ("which", "policy", "key"),
    [
        ("state", "compact,delete", "state.topic"),
        ("state", "delete", "state.topic"),
        ("changes", "compact", "state.changes_topic"),
        ("changes", "delete,compact", "state.changes_topic"),
        ("dlq", "compact", "output.dlq_topic"),
        ("upserts", "compact", "output.upserts_topic"),
    ],
)
def test_a_cleanup_policy_that_breaks_the_stage_is_refused_naming_the_key(
    which: str, policy: str, key: str
) -> None:
    settings = load_settings(REPO_EXAMPLE)
    topic = {
        "state": settings.state.topic,
        "changes": settings.state.changes_topic,
        "dlq": settings.output.dlq_topic,
        "upserts": settings.output.upserts_topic,
    }[which]
    policies = _created_policies(settings)
    policies[topic] = policy
    with pytest.raises(
        ConfigError, match=r"cleanup\.policy=compact on it|cleanup\.policy=delete on it"
    ) as info:
        ensure_topics(PolicyAdmin(settings, policies), settings, create=False, source_required=False)  # type: ignore[arg-type]
    assert info.value.key == key and topic in str(info.value) and policy in str(info.value)


class EmptyAdmin(PolicyAdmin):
    """A cluster without the internal topics."""

    def list_topics(self, timeout: float | None = None) -> Any:
        return SimpleNamespace(topics={})


def test_missing_topics_name_the_command_that_creates_them() -> None:
    """resync and rebuild-state check the topics too but have no --create-topics: name `run`'s."""
    settings = load_settings(REPO_EXAMPLE)
    with pytest.raises(ConfigError) as caught:
        ensure_topics(EmptyAdmin(settings, {}), settings, create=False, source_required=False)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith("missing topics: ") and f"{settings.state.topic} (state.topic)" in message
    assert message.endswith("start the merge stage once with `yespo-connector run --create-topics`")
