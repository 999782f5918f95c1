from __future__ import annotations

import re
from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "shared" / "examples" / "connector.yaml"
REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "connector.yaml"


# The shared example sits beside the repository in the workplace and in CI; elsewhere the repo's copy
# (deploy/connector.yaml) is what is tested.
EXAMPLES = [REPO_EXAMPLE, *([EXAMPLE] if EXAMPLE.exists() else [])]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_example_config_loads(path: Path) -> None:
    settings = load_settings(path)
    assert settings.source.customers.topic == "crm.public.customers"
    assert [c.name for c in settings.source.children] == ["groups"]
    assert settings.contact.groups is not None and settings.contact.groups.child == "groups"
    assert settings.yespo.field_ids == {"birthDate": 101, "loyaltyLevel": 102}
    assert settings.kafka.deliver_group == "yespo-connector-deliver"


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9999")
    monkeypatch.setenv("YESPO_CONNECTOR_STATE__PARTITIONS", "12")
    settings = load_settings(REPO_EXAMPLE)
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9999"
    assert settings.state.partitions == 12
    assert settings.kafka.group_id == "yespo-connector"  # the rest still comes from the file


def test_bad_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  commit_interval_ms: soon\nyespo:\n  batch_size: 5000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(bad)
    text = str(info.value)
    assert "kafka.commit_interval_ms" in text
    assert "yespo.batch_size" in text


def test_unknown_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("contact:\n  firstNme: first_name\n")
    with pytest.raises(ConfigError, match=r"contact\.firstNme"):
        load_settings(bad)


def test_groups_child_must_exist(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("contact:\n  groups: {child: nope, id: group_id}\n")
    with pytest.raises(ConfigError, match=r"contact\.groups\.child"):
        load_settings(bad)


def test_api_key_from_env_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YESPO_API_KEY", "key-123-secret")
    settings = load_settings(REPO_EXAMPLE)
    assert settings.yespo.api_key is not None
    assert settings.yespo.api_key.get_secret_value() == "key-123-secret"
    assert "key-123-secret" not in repr(settings)
    assert "key-123-secret" not in str(settings.model_dump())


def test_api_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"yespo:\n  api_key_file: {key_file}\n")
    settings = load_settings(cfg)
    assert settings.yespo.api_key is not None
    assert settings.yespo.api_key.get_secret_value() == "from-file"


def test_missing_key_file_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"yespo:\n  api_key_file: {tmp_path / 'absent'}\n")
    with pytest.raises(ConfigError, match=r"yespo\.api_key_file"):
        load_settings(cfg)


def test_repo_example_keeps_every_key_of_the_shared_example() -> None:
    import yaml

    def keys(node: object, prefix: str = "") -> set[str]:
        if not isinstance(node, dict):
            return set()
        out = set()
        for k, v in node.items():
            out.add(prefix + str(k))
            out |= keys(v, prefix + str(k) + ".")
        return out

    repo = keys(yaml.safe_load(REPO_EXAMPLE.read_text()))
    if EXAMPLE.exists():
        assert keys(yaml.safe_load(EXAMPLE.read_text())) <= repo
    assert {
        "kafka.bootstrap_servers",
        "source.customers.topic",
        "contact.groups.child",
        "yespo.field_ids",
    } <= repo


def test_composite_customer_key_with_children_is_refused(tmp_path: Path) -> None:
    # a child names its customer by one column (customer_key): refused at load, naming the key
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "source:\n"
        "  customers: {topic: crm.public.customers, key: [tenant, id]}\n"
        "  children:\n"
        "    - {name: groups, topic: crm.public.customer_groups, customer_key: customer_id, key: [id]}\n"
        "contact:\n  groups: null\n"
    )
    with pytest.raises(ConfigError, match=r"source\.children.*one-column key"):
        load_settings(bad)
    alone = tmp_path / "alone.yaml"
    alone.write_text(
        "source:\n  customers: {topic: crm.public.customers, key: [tenant, id]}\ncontact:\n  groups: null\n"
    )
    assert load_settings(alone).source.customers.key == ["tenant", "id"]


def test_a_topic_listed_twice_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "source:\n"
        "  customers: {topic: crm.public.customers}\n"
        "  children: [{name: groups, topic: crm.public.customers, customer_key: customer_id, key: [id]}]\n"
        "contact:\n  groups: null\n"
    )
    with pytest.raises(ConfigError, match=r"source\.children.*listed twice"):
        load_settings(bad)


@pytest.mark.parametrize(
    ("key", "value"),
    [("partition.assignment.strategy", "cooperative-sticky"), ("group.protocol", "consumer")],
)
def test_incremental_rebalancing_in_kafka_extra_is_refused_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"kafka:\n  extra:\n    {key}: {value}\n")
    with pytest.raises(ConfigError, match=r"kafka\.extra.*" + re.escape(key)):
        load_settings(config)
    config.write_text("kafka:\n  extra:\n    partition.assignment.strategy: roundrobin\n")
    assert load_settings(config).kafka.extra["partition.assignment.strategy"] == "roundrobin"


def test_message_max_bytes_comes_from_kafka_extra_and_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("kafka:\n  extra:\n    message.max.bytes: '4000000'\n")
    assert load_settings(good).kafka.message_max_bytes == 4_000_000
    assert load_settings(REPO_EXAMPLE).kafka.message_max_bytes == 1_000_000  # librdkafka's default
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  extra:\n    message.max.bytes: 4MB\n")
    with pytest.raises(ConfigError, match=r"kafka\.extra.*message\.max\.bytes"):
        load_settings(bad)
