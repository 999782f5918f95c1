from __future__ import annotations

import re
from pathlib import Path

import pytest

from connector.config import CONNECTOR_KAFKA_PROPERTIES, KafkaSettings, Settings, load_settings
from connector.errors import ConfigError
from connector.kafka.clients import consumer_config, producer_config

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


def test_a_missing_key_file_fails_only_where_the_key_is_needed(tmp_path: Path) -> None:
    """The key file is often mounted only in the deliver pod; merge, ops and validate-config load."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"yespo:\n  api_key_file: {tmp_path / 'absent'}\n")
    settings = load_settings(cfg)
    assert not settings.yespo.has_api_key
    with pytest.raises(ConfigError, match=r"^yespo\.api_key_file: cannot read the API key file"):
        settings.yespo.require_api_key()


def test_a_key_from_the_variable_makes_an_unreadable_key_file_irrelevant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"yespo:\n  api_key_file: {tmp_path / 'absent'}\n")
    monkeypatch.setenv("YESPO_API_KEY", "key-from-env")
    assert load_settings(cfg).yespo.require_api_key() == "key-from-env"


def test_an_empty_key_file_variable_means_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """An uncommented `YESPO_CONNECTOR_YESPO__API_KEY_FILE=` (deploy/.env.example) names no file."""
    monkeypatch.setenv("YESPO_CONNECTOR_YESPO__API_KEY_FILE", "")
    settings = load_settings(REPO_EXAMPLE)
    assert settings.yespo.api_key_file is None
    with pytest.raises(ConfigError, match=r"^yespo\.api_key_env: no Yespo API key"):
        settings.yespo.require_api_key()
    monkeypatch.setenv("YESPO_CONNECTOR_YESPO__API_KEY_FILE", "  ")
    with pytest.raises(ConfigError, match=r"^yespo\.api_key_file: must not be blank"):
        load_settings(REPO_EXAMPLE)


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


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        # a section appended again at the end would replace the whole first one
        ("kafka:\n  group_id: g\nyespo:\n  mode: bulk\nyespo:\n  mode: single\n", "yespo", "3 and 5"),
        (
            "kafka:\n  bootstrap_servers: a:9092\n  group_id: g\n  bootstrap_servers: b:9092\n",
            "kafka.bootstrap_servers",
            "2 and 4",
        ),
        (
            "source:\n  children:\n    - name: groups\n      key: [id]\n      key: [group_id]\n",
            "source.children.0.key",
            "4 and 5",
        ),
        ("yespo:\n  field_ids: {birthDate: 101, birthDate: 102}\n", "yespo.field_ids.birthDate", "2 and 2"),
    ],
)
def test_a_key_written_twice_is_refused_naming_its_path_and_lines(
    tmp_path: Path, text: str, key: str, lines: str
) -> None:
    message = _load_error(tmp_path, text)
    assert message.startswith(f"{key}: written twice") and f"lines {lines}" in message
    assert "b:9092" not in message and "single" not in message and "102" not in message


def test_a_yaml_merge_key_overridden_is_not_a_key_written_twice(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "source:\n  column_types:\n    public.a: &types {x: date, y: int}\n"
        "    public.b:\n      <<: *types\n      y: text\n"
    )
    types = load_settings(config, environ={}).source.column_types
    assert types["public.b"] == {"x": "date", "y": "text"} and types["public.a"]["y"] == "int"


def _load_error(tmp_path: Path, text: str) -> str:
    """The ConfigError message of loading a config file holding `text`."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("contact:\n  fields:\n    birthDate: 2024-02-30\n", "contact.fields.birthDate", 3),
        ("kafka:\n  group_id: !!int Pa55-Secret\n", "kafka.group_id", 2),
        ("source:\n  children:\n    - name: !!float Pa55\n", "source.children.0.name", 3),
    ],
)
def test_a_value_yaml_cannot_convert_names_its_key_and_line(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    message = _load_error(tmp_path, text)
    assert message.startswith(
        f"{key}: config file {tmp_path / 'c.yaml'}, line {line}: YAML cannot read the value"
    )
    assert "Pa55" not in message and "2024" not in message


def _settings(tmp_path: Path, extra: str) -> Settings:
    config = tmp_path / "c.yaml"
    config.write_text(f"kafka:\n  extra: {extra}\n")
    return load_settings(config, environ={})


@pytest.mark.parametrize(
    ("prop", "why"),
    [
        ("isolation.level", "the connector needs its own value"),
        ("enable.auto.commit", "the connector needs its own value"),
        ("enable.idempotence", "the connector needs its own value"),
        ("auto.offset.reset", "the connector needs its own value"),
        ("logger", "the connector needs its own value"),
        ("bootstrap.servers", "use kafka.bootstrap_servers"),
        ("transactional.id", "use kafka.transactional_id_prefix"),
        ("max.poll.interval.ms", "use kafka.max_poll_interval_ms"),
        ("session.timeout.ms", "use kafka.session_timeout_ms"),
        ("transaction.timeout.ms", "use kafka.transaction_timeout_ms"),
        ("group.instance.id", "the connector needs its own value"),
    ],
)
def test_a_property_the_connector_sets_is_refused_in_kafka_extra(tmp_path: Path, prop: str, why: str) -> None:
    """It used to be overwritten by the connector's value, silently."""
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, f"{{{prop}: Pa55-value}}")
    assert str(caught.value) == f"kafka.extra.{prop}: set by the connector ({why})"


def test_tuning_properties_in_kafka_extra_win_over_the_connector_s(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, '{compression.type: lz4, linger.ms: "50", topic.metadata.refresh.interval.ms: "60000"}'
    )
    producer = producer_config(settings, transactional_id="t")
    assert (producer["compression.type"], producer["linger.ms"]) == ("lz4", "50")
    assert producer_config(settings, **{"compression.type": "gzip"})["compression.type"] == "lz4"
    consumer = consumer_config(settings, "g", **{"fetch.max.bytes": 52428800})
    assert consumer["topic.metadata.refresh.interval.ms"] == "60000"
    assert consumer["fetch.max.bytes"] == 52428800  # the caller's tuning, when kafka.extra has none
    # the connector's own properties keep its values
    assert (consumer["group.id"], consumer["isolation.level"]) == ("g", "read_committed")
    assert (producer["transactional.id"], producer["enable.idempotence"]) == ("t", True)


def test_every_property_the_clients_set_is_the_connector_s_or_yields_to_kafka_extra() -> None:
    """One list (`CONNECTOR_KAFKA_PROPERTIES`) decides; every other property is tuning."""
    settings = Settings()
    made = {**consumer_config(settings, "g"), **producer_config(settings, transactional_id="t")}
    tuning = {k: "7" for k in made if k not in CONNECTOR_KAFKA_PROPERTIES}
    assert tuning and set(made) - set(tuning) <= set(CONNECTOR_KAFKA_PROPERTIES)
    tuned = settings.model_copy(update={"kafka": KafkaSettings(extra=tuning)})
    for conf in (consumer_config(tuned, "g"), producer_config(tuned, transactional_id="t")):
        assert {k: v for k, v in conf.items() if k in tuning} == {k: "7" for k in conf if k in tuning}


def test_a_batch_size_fitted_to_a_topic_limit_is_a_ceiling_for_kafka_extra(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '{batch.size: "900000"}')
    assert producer_config(settings)["batch.size"] == "900000"
    assert producer_config(settings, **{"batch.size": 400_000})["batch.size"] == 400_000
    smaller = _settings(tmp_path, '{batch.size: "100000"}')
    assert producer_config(smaller, **{"batch.size": 400_000})["batch.size"] == "100000"


def test_a_passphrase_in_kafka_extra_is_a_secret(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "{sasl.oauthbearer.assertion.private.key.passphrase: Pass-0002-phrase}")
    assert settings.kafka.secret_values == ("Pass-0002-phrase",)
    assert "Pass-0002" not in repr(settings.kafka)


def test_a_message_max_bytes_above_50_mb_also_fits_the_restore_consumer(tmp_path: Path) -> None:
    """The restore consumer fetched at most 50 MB: librdkafka refused it under a larger message.max.bytes."""
    from connector.kafka.clients import check_client_config, restore_consumer_config

    settings = load_settings(REPO_EXAMPLE)
    big = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"extra": {"message.max.bytes": "60000000"}})}
    )
    check_client_config(big)  # builds the restore consumer too
    assert restore_consumer_config(big, "g")["fetch.max.bytes"] == 60_000_000
    assert restore_consumer_config(settings, "g")["fetch.max.bytes"] == 52_428_800


def test_avro_without_a_schema_registry_url_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("source:\n  format: avro\n")
    with pytest.raises(
        ConfigError, match=r"^source\.schema_registry_url: required when source\.format is avro"
    ):
        load_settings(config)


def test_avro_with_an_empty_registry_variable_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("source:\n  format: avro\n  schema_registry_url: http://registry:8081\n")
    monkeypatch.setenv("YESPO_CONNECTOR_SOURCE__SCHEMA_REGISTRY_URL", "")
    with pytest.raises(ConfigError, match=r"source\.schema_registry_url: required"):
        load_settings(config)


@pytest.mark.parametrize(
    ("value", "loaded"),
    [
        ("http://registry:8081\n", "http://registry:8081"),  # a mounted secret's newline
        ("  https://host/apis/ccompat/v7 ", "https://host/apis/ccompat/v7"),
        ("http://[::1]:8081", "http://[::1]:8081"),
        ("", None),  # how an environment file leaves it unset
    ],
)
def test_the_registry_url_is_stripped(
    monkeypatch: pytest.MonkeyPatch, value: str, loaded: str | None
) -> None:
    monkeypatch.setenv("YESPO_CONNECTOR_SOURCE__SCHEMA_REGISTRY_URL", value)
    assert load_settings(REPO_EXAMPLE).source.schema_registry_url == loaded


@pytest.mark.parametrize(
    "value",
    [
        "http://[::1",
        "registry:8081",
        "ftp://registry",
        "http://",
        "http://registry:99999",
        "http://registry:port",
        "http://reg istry:8081",
        "http://registry:8081/?x=1",
        "http://user:Pa55word@registry:8081/#x",
        "   ",
    ],
)
def test_an_invalid_registry_url_is_refused_naming_the_key_not_the_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("YESPO_CONNECTOR_SOURCE__SCHEMA_REGISTRY_URL", value)
    with pytest.raises(ConfigError, match=r"^source\.schema_registry_url: ") as caught:
        load_settings(REPO_EXAMPLE)
    assert "Pa55" not in str(caught.value) and "registry:" not in str(caught.value)
