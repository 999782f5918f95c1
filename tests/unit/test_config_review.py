"""Config checks: distinct topics and groups, an empty metrics host, map keys from the environment."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigError

from .test_config import REPO_EXAMPLE
from .test_envnames import _load

VIA = pytest.mark.parametrize("via", ["process", "given"])


def _error(
    via: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], path: Path | None = REPO_EXAMPLE
) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(via, monkeypatch, env, path)
    return str(caught.value)


# --- every topic has a name of its own

INTERNAL_TOPICS = [
    "state.changes_topic",
    "state.topic",
    "output.upserts_topic",
    "output.dlq_topic",
    "output.audit_topic",
]


def _variable(key: str) -> str:
    return "YESPO_CONNECTOR_" + key.replace(".", "__").upper()


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(INTERNAL_TOPICS, 2)))
def test_two_internal_topics_with_one_name_are_refused_naming_both_keys(first: str, second: str) -> None:
    # e.g. output.dlq_topic = state.changes_topic: the merge stage would read its own dead letters
    # back as changes, fail on them and dead-letter them again, for ever
    env = {_variable(first): "one.topic", _variable(second): "one.topic"}
    with pytest.raises(ConfigError) as caught:
        load_settings(REPO_EXAMPLE, environ=env)
    message = str(caught.value)
    assert message.startswith(f"{second}: the same topic as {first};"), message
    assert "(top level)" not in message


def test_the_dlq_topic_may_not_be_the_changes_topic() -> None:
    changes = load_settings(REPO_EXAMPLE, environ={}).state.changes_topic
    with pytest.raises(ConfigError, match=r"^output\.dlq_topic: the same topic as state\.changes_topic"):
        load_settings(REPO_EXAMPLE, environ={"YESPO_CONNECTOR_OUTPUT__DLQ_TOPIC": changes})


def test_an_internal_topic_named_like_a_source_topic_names_both_keys() -> None:
    settings = load_settings(REPO_EXAMPLE, environ={})
    child = settings.source.children[0].topic
    with pytest.raises(ConfigError, match=r"^state\.topic: the same topic as source\.children\.0\.topic;"):
        load_settings(REPO_EXAMPLE, environ={"YESPO_CONNECTOR_STATE__TOPIC": child})
    customers = settings.source.customers.topic
    with pytest.raises(
        ConfigError, match=r"^output\.audit_topic: the same topic as source\.customers\.topic;"
    ):
        load_settings(REPO_EXAMPLE, environ={"YESPO_CONNECTOR_OUTPUT__AUDIT_TOPIC": customers})


def test_distinct_internal_topics_load() -> None:
    settings = load_settings(REPO_EXAMPLE, environ={})
    topics = [settings.state.changes_topic, settings.state.topic, settings.output.upserts_topic]
    topics += [settings.output.dlq_topic, settings.output.audit_topic, *settings.source.topics]
    assert len(set(topics)) == len(topics)


# --- the deliver stage's consumer group


@VIA
def test_a_deliver_group_equal_to_the_merge_group_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    group = load_settings(REPO_EXAMPLE, environ={}).kafka.group_id
    message = _error(via, monkeypatch, {"YESPO_CONNECTOR_KAFKA__DELIVER_GROUP_ID": group})
    assert message.startswith("kafka.deliver_group_id: must differ from kafka.group_id"), message
    assert "consumer group of its own" in message


def test_a_deliver_group_of_its_own_loads(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  group_id: merge-g\n  deliver_group_id: deliver-g\n")
    assert load_settings(config, environ={}).kafka.deliver_group == "deliver-g"
    config.write_text("kafka:\n  group_id: merge-g\n  deliver_group_id: ''\n")
    assert load_settings(config, environ={}).kafka.deliver_group == "merge-g-deliver"
    config.write_text("kafka:\n  group_id: merge-g\n  deliver_group_id: merge-g\n")
    with pytest.raises(ConfigError, match=r"^kafka\.deliver_group_id: must differ"):
        load_settings(config, environ={})


# --- observability.metrics_host


@VIA
def test_an_empty_metrics_host_is_the_default_not_every_interface(
    monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    # "" is how deploy/.env.example leaves a value unset; bound as such it is every interface
    settings = _load(via, monkeypatch, {"YESPO_CONNECTOR_OBSERVABILITY__METRICS_HOST": ""})
    assert settings.observability.metrics_host == "127.0.0.1"


def test_an_empty_metrics_host_in_the_file_is_the_default_too(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("observability:\n  metrics_host: ''\n")
    assert load_settings(config, environ={}).observability.metrics_host == "127.0.0.1"


@VIA
def test_a_metrics_host_of_spaces_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    message = _error(via, monkeypatch, {"YESPO_CONNECTOR_OBSERVABILITY__METRICS_HOST": "  "})
    assert message.startswith("observability.metrics_host: must not be blank"), message


@VIA
def test_every_interface_is_still_asked_for_with_0_0_0_0(monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    settings = _load(via, monkeypatch, {"YESPO_CONNECTOR_OBSERVABILITY__METRICS_HOST": "0.0.0.0"})
    assert settings.observability.metrics_host == "0.0.0.0"


# --- one key of a map from the environment


@VIA
@pytest.mark.parametrize(
    ("name", "value", "path", "expected"),
    [
        # deploy/connector.yaml: field_ids {birthDate: 101, loyaltyLevel: 102}
        (
            "YESPO_CONNECTOR_YESPO__FIELD_IDS__BIRTHDATE",
            "201",
            ("yespo", "field_ids"),
            {"birthDate": 201, "loyaltyLevel": 102},
        ),
        (
            "yespo_connector_yespo__field_ids__birthdate",
            "201",
            ("yespo", "field_ids"),
            {"birthDate": 201, "loyaltyLevel": 102},
        ),
        # contact.fields {birthDate: birth_date, loyaltyLevel: loyalty_level}
        (
            "YESPO_CONNECTOR_CONTACT__FIELDS__LOYALTYLEVEL",
            "tier",
            ("contact", "fields"),
            {"birthDate": "birth_date", "loyaltyLevel": "tier"},
        ),
        # field_types {birthDate: DATE}
        (
            "YESPO_CONNECTOR_YESPO__FIELD_TYPES__BIRTHDATE",
            "DATETIME",
            ("yespo", "field_types"),
            {"birthDate": "DATETIME"},
        ),
    ],
)
def test_a_variable_sets_the_file_s_map_key_in_the_file_s_spelling(
    monkeypatch: pytest.MonkeyPatch, via: str, name: str, value: str, path: tuple[str, ...], expected: object
) -> None:
    node: object = _load(via, monkeypatch, {name: value})
    for part in path:
        node = getattr(node, part)
    assert node == expected  # and no lower-case twin next to it


@VIA
def test_a_key_of_a_nested_map_is_matched_at_every_level(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, via: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("source:\n  column_types:\n    public.Customers: {birthDate: date, x: int}\n")
    name = "YESPO_CONNECTOR_SOURCE__COLUMN_TYPES__PUBLIC.CUSTOMERS__BIRTHDATE"
    settings = _load(via, monkeypatch, {name: "timestamp"}, config)
    assert settings.source.column_types == {"public.Customers": {"birthDate": "timestamp", "x": "int"}}


@VIA
@pytest.mark.parametrize(
    ("name", "whole"),
    [
        ("YESPO_CONNECTOR_CONTACT__FIELDS__VIPSINCE", "YESPO_CONNECTOR_CONTACT__FIELDS"),
        ("YESPO_CONNECTOR_YESPO__FIELD_IDS__VIPSINCE", "YESPO_CONNECTOR_YESPO__FIELD_IDS"),
        ("YESPO_CONNECTOR_YESPO__FIELD_TYPES__LOYALTYLEVEL", "YESPO_CONNECTOR_YESPO__FIELD_TYPES"),
        ("YESPO_CONNECTOR_SOURCE__COLUMN_TYPES__PUBLIC.CUSTOMERS", "YESPO_CONNECTOR_SOURCE__COLUMN_TYPES"),
    ],
)
def test_a_key_the_file_s_map_lacks_is_refused_naming_the_variable_and_the_json_form(
    monkeypatch: pytest.MonkeyPatch, via: str, name: str, whole: str
) -> None:
    # a lower-cased name cannot spell vipSince: the key would be a new, wrong one (vipsince)
    message = _error(via, monkeypatch, {name: "PLANTED-value"})
    assert message.startswith(f"{name}: "), message
    assert "case-sensitive" in message and f"set the whole map as JSON in {whole} instead" in message
    assert "PLANTED" not in message


@VIA
def test_a_key_that_matches_two_keys_of_the_file_s_map_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, via: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("yespo:\n  field_ids: {birthDate: 1, birthdate: 2}\n")
    message = _error(via, monkeypatch, {"YESPO_CONNECTOR_YESPO__FIELD_IDS__BIRTHDATE": "3"}, config)
    assert message.startswith("YESPO_CONNECTOR_YESPO__FIELD_IDS__BIRTHDATE: "), message
    assert "more than one key of yespo.field_ids (birthDate, birthdate)" in message


@VIA
def test_without_a_config_file_a_map_key_matches_the_default_map(
    monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    message = _error(via, monkeypatch, {"YESPO_CONNECTOR_YESPO__FIELD_IDS__BIRTHDATE": "3"}, None)
    assert "set the whole map as JSON in YESPO_CONNECTOR_YESPO__FIELD_IDS instead" in message


@VIA
def test_kafka_extra_takes_any_key_as_before(monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    settings = _load(via, monkeypatch, {"YESPO_CONNECTOR_KAFKA__EXTRA__LINGER.MS": "5"})
    assert settings.kafka.extra["linger.ms"] == "5"


def test_the_whole_map_as_json_adds_a_camel_case_key_merged_into_the_file_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what the refusal asks for (read as JSON by the process environment's source)
    monkeypatch.setenv("YESPO_CONNECTOR_CONTACT__FIELDS", '{"vipSince": "vip_since"}')
    fields = load_settings(REPO_EXAMPLE).contact.fields
    assert fields == {"birthDate": "birth_date", "loyaltyLevel": "loyalty_level", "vipSince": "vip_since"}
