"""A YESPO_CONNECTOR_* variable that sets nothing is refused at load, named, never with its value."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ENV_PREFIX, Settings, load_settings
from connector.envnames import env_names, unknown_env_names
from connector.errors import ConfigError

from .test_config import REPO_EXAMPLE
from .test_deploy_static import cli_env_vars, settings_env_names_with_sections


def _load(
    via: str, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], path: Path | None = REPO_EXAMPLE
) -> Settings:
    """Load through the process environment (pydantic-settings' own source) or a given mapping."""
    if via == "given":
        return load_settings(path, environ=env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(path)


VIA = pytest.mark.parametrize("via", ["process", "given"])


@VIA
@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("YESPO_CONNECTOR_YESPO_API_KEY", "YESPO_CONNECTOR_YESPO__API_KEY, i.e. yespo.api_key"),  # one _
        ("YESPO_CONNECTOR_YESPOO__API_KEY", "YESPO_CONNECTOR_YESPO__API_KEY"),  # unknown section
        ("YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVER", "YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS"),  # key
        ("YESPO_CONNECTOR_CONTACT__ADRESS__CITY", "YESPO_CONNECTOR_CONTACT__ADDRESS__CITY"),
        ("YESPO_CONNECTOR_KAFKA__EXTRAS__sasl.username", "YESPO_CONNECTOR_KAFKA__EXTRA, i.e. kafka.extra"),
        # run --instance-id reads its variable exactly (os.environ is case-sensitive): this one is lost
        ("yespo_connector_instance_id", "YESPO_CONNECTOR_INSTANCE_ID"),
    ],
)
def test_a_mistyped_variable_is_refused_naming_it_and_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, via: str, name: str, suggested: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(via, monkeypatch, {name: "x"})
    message = str(caught.value)
    assert message.startswith(f"{name}: not a setting (did you mean {suggested}")
    assert "\n" not in message


@VIA
def test_the_refusal_never_shows_the_variable_s_value(monkeypatch: pytest.MonkeyPatch, via: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(via, monkeypatch, {"YESPO_CONNECTOR_YESPO_API_KEY": "s3cret-PLANTED-key"})
    assert "YESPO_CONNECTOR_YESPO_API_KEY" in str(caught.value)
    assert "PLANTED" not in str(caught.value) and "s3cret" not in str(caught.value)


@VIA
def test_a_key_below_a_list_or_a_plain_value_names_the_setting_to_give_whole(
    monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(via, monkeypatch, {"YESPO_CONNECTOR_SOURCE__CHILDREN__0__NAME": "groups"})
    assert str(caught.value).startswith(
        "YESPO_CONNECTOR_SOURCE__CHILDREN__0__NAME: source.children has no keys below it "
        "(set YESPO_CONNECTOR_SOURCE__CHILDREN; a list as JSON)"
    )


@pytest.mark.parametrize(
    ("name", "value", "path", "expected"),
    [
        # keys of free-form maps: any in kafka.extra, one the config file has (in its spelling) in a
        # map of case-sensitive names (tests/unit/test_config_review.py: the others are refused)
        ("YESPO_CONNECTOR_KAFKA__EXTRA__sasl.username", "svc", ("kafka", "extra"), {"sasl.username": "svc"}),
        ("YESPO_CONNECTOR_CONTACT__FIELDS__LOYALTYLEVEL", "t", ("contact", "fields"), {"loyaltyLevel": "t"}),
        # a field of a nested section, a field of an optional section, a whole section as JSON
        ("YESPO_CONNECTOR_SOURCE__CUSTOMERS__KEY", '["uid"]', ("source", "customers", "key"), ["uid"]),
        ("YESPO_CONNECTOR_CONTACT__ADDRESS__CITY", "town", ("contact", "address", "city"), "town"),
        ("YESPO_CONNECTOR_STATE", '{"partitions": 3}', ("state", "partitions"), 3),
        # names are case-insensitive, as pydantic-settings reads them (the project keeps its default)
        ("yespo_connector_kafka__group_id", "g", ("kafka", "group_id"), "g"),
        ("Yespo_Connector_Contact__FirstName", "fn", ("contact", "firstName"), "fn"),
    ],
)
def test_names_that_set_something_still_load(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, path: tuple[str, ...], expected: object
) -> None:
    # through the process environment: a given mapping (tests) reads neither JSON nor camelCase keys
    node: object = _load("process", monkeypatch, {name: value})
    for part in path:
        node = getattr(node, part)
    if isinstance(expected, dict):
        assert isinstance(node, dict) and expected.items() <= node.items()
    else:
        assert node == expected


def test_variables_of_command_line_options_are_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [v.name for v in cli_env_vars()]
    assert "YESPO_CONNECTOR_INSTANCE_ID" in names
    for name in names:
        monkeypatch.setenv(name, "replica-0")
    load_settings(REPO_EXAMPLE)


@VIA
def test_an_api_key_variable_named_with_the_prefix_is_not_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, via: str
) -> None:
    """`yespo.api_key_env` may name a YESPO_CONNECTOR_* variable: it is the key, not a typo."""
    config = tmp_path / "c.yaml"
    config.write_text("yespo:\n  api_key_env: YESPO_CONNECTOR_API_KEY\n")
    settings = _load(via, monkeypatch, {"YESPO_CONNECTOR_API_KEY": "k-1"}, config)
    assert settings.yespo.api_key is not None and settings.yespo.api_key.get_secret_value() == "k-1"
    monkeypatch.delenv("YESPO_CONNECTOR_API_KEY", raising=False)
    # named by the environment instead, and with another error in the file: only that error is shown
    config.write_text("kafka:\n  commit_interval_ms: soon\n")
    env = {"YESPO_CONNECTOR_YESPO__API_KEY_ENV": "YESPO_CONNECTOR_API_KEY", "YESPO_CONNECTOR_API_KEY": "k-2"}
    with pytest.raises(ConfigError) as caught:
        _load(via, monkeypatch, env, config)
    assert str(caught.value).startswith("kafka.commit_interval_ms: ")
    assert "YESPO_CONNECTOR_API_KEY" not in str(caught.value)


def test_a_mistyped_variable_is_named_before_the_error_it_may_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "YESPO_CONNECTOR_KAFKA_COMMIT_INTERVAL_MS": "100",
        "YESPO_CONNECTOR_KAFKA__COMMIT_INTERVAL_MS": "x",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(REPO_EXAMPLE, environ=env)
    first, second = str(caught.value).split("; ")
    assert first.startswith("YESPO_CONNECTOR_KAFKA_COMMIT_INTERVAL_MS: not a setting")
    assert second.startswith("kafka.commit_interval_ms: ")


def test_the_names_are_those_the_deploy_checks_know() -> None:
    """The walk agrees with the one that generates deploy/.env.example (and checks compose and k8s)."""
    assert set(env_names(Settings, ENV_PREFIX)) == settings_env_names_with_sections()


def test_names_without_the_prefix_are_not_looked_at() -> None:
    known = env_names(Settings, ENV_PREFIX)
    assert unknown_env_names(["YESPO_API_KEY", "YESPO_STACK_DIR", "PATH"], known, ENV_PREFIX) == []


def test_a_given_environment_reads_names_as_the_process_environment_does() -> None:
    """Case-insensitive prefix, and a command-line option's variable is no setting (not an extra key)."""
    env = {"yespo_connector_kafka__group_id": "g", "YESPO_CONNECTOR_INSTANCE_ID": "replica-0"}
    assert load_settings(REPO_EXAMPLE, environ=env).kafka.group_id == "g"


def _service_links(service: str, port: int, port_name: str) -> dict[str, str]:
    """The variables Kubernetes puts into every pod of the namespace for a Service (service links)."""
    name = service.upper().replace("-", "_")
    url = f"tcp://10.0.0.1:{port}"
    return {
        f"{name}_SERVICE_HOST": "10.0.0.1",
        f"{name}_SERVICE_PORT": str(port),
        f"{name}_SERVICE_PORT_{port_name.upper()}": str(port),
        f"{name}_PORT": url,
        f"{name}_PORT_{port}_TCP": url,
        f"{name}_PORT_{port}_TCP_PROTO": "tcp",
        f"{name}_PORT_{port}_TCP_PORT": str(port),
        f"{name}_PORT_{port}_TCP_ADDR": "10.0.0.1",
    }


@VIA
@pytest.mark.parametrize("service", ["yespo-connector-metrics", "yespo-connector"])
def test_kubernetes_service_links_are_not_typos(
    monkeypatch: pytest.MonkeyPatch, via: str, service: str
) -> None:
    # deploy/k8s/service.yaml names its Service yespo-connector-metrics; `kubectl expose` would name
    # one yespo-connector: their variables reach every pod unless enableServiceLinks is false
    settings = _load(via, monkeypatch, _service_links(service, 9464, "metrics"))
    assert (
        settings.observability.metrics_port
        == load_settings(REPO_EXAMPLE, environ={}).observability.metrics_port
    )


@VIA
def test_a_port_typo_without_a_service_link_value_is_still_refused(
    monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    with pytest.raises(ConfigError, match=r"^YESPO_CONNECTOR_OBSERVABILITY_METRICS_PORT: not a setting"):
        _load(via, monkeypatch, {"YESPO_CONNECTOR_OBSERVABILITY_METRICS_PORT": "9464"})


def test_a_typo_is_named_once_not_again_as_an_extra_input(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        _load("process", monkeypatch, {"YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVER": "b:9092"})
    assert str(caught.value).startswith("YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVER: not a setting")
    assert "Extra inputs" not in str(caught.value) and ";" not in str(caught.value)


def test_a_key_variable_named_in_the_section_json_is_not_a_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "YESPO_CONNECTOR_YESPO": '{"api_key_env": "YESPO_CONNECTOR_KEY"}',
        "YESPO_CONNECTOR_KEY": "sk-PLANTED",
        "YESPO_CONNECTOR_STATE__PARTITIONS": "0",
    }
    with pytest.raises(ConfigError) as caught:
        _load("process", monkeypatch, env)
    assert str(caught.value) == "state.partitions: Input should be greater than 0"


@pytest.mark.parametrize("value", ["sk-live-PLANTED-123", "has space"])
def test_an_api_key_env_that_is_no_variable_name_is_refused_without_echo(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load("process", monkeypatch, {"YESPO_CONNECTOR_YESPO__API_KEY_ENV": value})
    assert str(caught.value).startswith("yespo.api_key_env: not an environment variable name")
    assert "PLANTED" not in str(caught.value) and value not in str(caught.value)


def test_the_missing_key_hint_shows_only_upper_case_variable_names() -> None:
    yespo = load_settings(REPO_EXAMPLE, environ={}).yespo
    assert yespo.api_key_hint() == "$YESPO_API_KEY or yespo.api_key_file"
    pasted = yespo.model_copy(update={"api_key_env": "abcdef0123456789"})  # a key pasted as the name
    assert "abcdef0123456789" not in pasted.api_key_hint()
