"""Config and CLI mistakes give one line naming the key (or variable), and never echo a secret."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector import cli, logs
from connector.config import load_settings
from connector.dlq import error_headers
from connector.errors import ConfigError
from connector.health import Health, HealthServer
from connector.models import RawRecord

from .test_config import REPO_EXAMPLE


@pytest.fixture
def clean_logs() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    logs.reset()
    root.setLevel(level)
    logs.clear_secrets()


def test_an_environment_list_that_is_not_json_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YESPO_CONNECTOR_SOURCE__CUSTOMERS__KEY", "id")  # must be ["id"]
    with pytest.raises(ConfigError) as caught:
        load_settings(REPO_EXAMPLE)
    message = str(caught.value)
    assert "YESPO_CONNECTOR_SOURCE__CUSTOMERS__KEY" in message and "\n" not in message


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"kafka:\n  group_id: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path)


def test_a_yaml_error_gives_the_position_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kafka:\n  extra:\n    sasl.username: u\n\tsasl.password: hunter2-PLANTED\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "line 4, column 1" in message and str(path) in message
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("state:\n  delete_marker_ttl_hours: .inf\n", "state.delete_marker_ttl_hours"),
        ("yespo:\n  request_timeout_s: .nan\n", "yespo.request_timeout_s"),
    ],
)
def test_infinite_or_nan_numbers_are_refused(tmp_path: Path, text: str, key: str) -> None:
    """`validate-config` said OK to `.inf`, then the merge stage died on int(inf)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{key}: .*finite"):
        load_settings(path, environ={})


def test_kafka_passwords_are_masked_in_repr_and_in_logs(
    monkeypatch: pytest.MonkeyPatch, clean_logs: None
) -> None:
    monkeypatch.setenv(
        "YESPO_CONNECTOR_KAFKA__EXTRA", '{"sasl.username": "svc", "sasl.password": "pw-PLANTED"}'
    )
    settings = load_settings(REPO_EXAMPLE)
    assert "pw-PLANTED" not in repr(settings) and "pw-PLANTED" not in str(settings.kafka)
    assert settings.kafka.as_librdkafka()["sasl.password"] == "pw-PLANTED"  # the client still gets it
    out = io.StringIO()
    logs.configure_from(settings)
    handler = logging.getLogger().handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    logging.getLogger("t").warning("connect failed with pw-PLANTED")
    assert "pw-PLANTED" not in out.getvalue() and "connect failed" in out.getvalue()


def test_the_dlq_reason_header_is_cut_at_a_character_boundary() -> None:
    record = RawRecord("t", 0, 1, None, None)
    reason = "Некоректне значення поля " * 40  # Cyrillic: two bytes per letter
    (_, (_, header), *_rest) = error_headers(record, error_class="E", reason=reason, stage="deliver")
    assert len(header) <= 512
    assert reason.startswith(header.decode("utf-8"))


def test_an_address_not_of_this_host_is_blamed_on_metrics_host() -> None:
    with pytest.raises(ConfigError, match=r"^observability\.metrics_host: "):
        HealthServer(Health(), host="192.0.2.1", port=0).start()


def test_dry_run_of_a_missing_input_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dry-run", "-c", str(REPO_EXAMPLE), "--input", str(tmp_path / "nope.jsonl")])
    assert exit_info.value.code == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "yespo:\n  api_key: !Pa55-Secret\n",  # an unquoted password read as a YAML tag
        "yespo:\n  api_key: *Pa55-Secret\n",  # ... or as an alias
        "kafka:\n  group_id: !!int Pa55-Secret\n",  # a tag that does not convert
        "kafka:\n  group_id: 2024-02-30\n",  # a date that does not exist
    ],
)
def test_yaml_errors_never_quote_the_file_s_text(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert "Pa55" not in str(err.value) and "2024-02-30" not in str(err.value)
    assert "YAML" in str(err.value)


@pytest.mark.parametrize(
    ("extra", "named"),
    [("sasl.passwrd: x", "sasl.passwrd"), ("linger.ms: '-5'", "queue.buffering.max.ms")],
)
def test_a_property_librdkafka_refuses_is_a_config_error_naming_kafka_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, named: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"kafka:\n  extra:\n    {extra}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate-config", "-c", str(config)])
    assert exit_info.value.code != 0
    out = capsys.readouterr()
    assert "kafka.extra" in out.out + out.err and named in out.out + out.err


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("output:\n  dlq_topic: ' '\n", "output.dlq_topic"),
        ("state:\n  changes_topic: ''\n", "state.changes_topic"),
        ("source:\n  customers:\n    topic: 'crm customers'\n", "source.customers.topic"),
    ],
)
def test_a_topic_name_kafka_would_refuse_is_a_config_error_naming_its_key(
    tmp_path: Path, text: str, key: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(config)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("kafka:\n  bootstrap_servers: ' '\n", "kafka.bootstrap_servers"),  # librdkafka waits forever
        ("kafka:\n  group_id: ''\n", "kafka.group_id"),  # confluent_kafka aborts the process
        ("kafka:\n  group_id: '   '\n", "kafka.group_id"),
        ("kafka:\n  deliver_group_id: '  '\n", "kafka.deliver_group_id"),
        ("yespo:\n  base_url: ''\n", "yespo.base_url"),  # every request: missing http:// or https://
        ("yespo:\n  base_url: '  '\n", "yespo.base_url"),
        ("yespo:\n  api_key_env: ' '\n", "yespo.api_key_env"),  # names no variable: no key, ever
    ],
)
def test_a_blank_name_address_or_key_is_refused_naming_its_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": must not be blank"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("YESPO_CONNECTOR_YESPO__BASE_URL", "yespo.base_url"),
        ("YESPO_CONNECTOR_YESPO__API_KEY", "yespo.api_key"),  # sent as is: 401 on every request
    ],
)
def test_a_blank_value_from_the_environment_is_refused_too(
    monkeypatch: pytest.MonkeyPatch, name: str, key: str
) -> None:
    monkeypatch.setenv(name, "   ")
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": must not be blank"):
        load_settings(REPO_EXAMPLE)


@pytest.mark.parametrize("value", ["sk-live-Pa55-0123", "'   '", "''"])
def test_an_api_key_in_the_yaml_file_is_refused_pointing_to_the_environment(
    tmp_path: Path, value: str
) -> None:
    """docs/deploy.md: the key is never read from the YAML file (it is committed and copied around)."""
    config = tmp_path / "c.yaml"
    config.write_text(f"yespo:\n  api_key_env: CRM_YESPO_KEY\n  api_key: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={"CRM_YESPO_KEY": "from-env"})
    message = str(caught.value)
    assert message.startswith("yespo.api_key: not read from the config file")
    assert "$CRM_YESPO_KEY or yespo.api_key_file" in message and "Pa55" not in message


def test_an_empty_optional_name_still_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """An uncommented `...=` line of deploy/.env.example leaves the setting at its default."""
    monkeypatch.setenv("YESPO_CONNECTOR_KAFKA__DELIVER_GROUP_ID", "")
    monkeypatch.setenv("YESPO_CONNECTOR_YESPO__API_KEY", "")
    settings = load_settings(REPO_EXAMPLE)
    assert settings.kafka.deliver_group == "yespo-connector-deliver"
    assert settings.yespo.api_key is None or not settings.yespo.api_key.get_secret_value()


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_an_empty_api_key_file_is_refused_naming_the_key(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content)
    config = tmp_path / "c.yaml"
    config.write_text(f"yespo:\n  api_key_file: {key_file}\n")
    settings = load_settings(config, environ={})  # only what needs the key fails on it
    with pytest.raises(ConfigError, match=r"^yespo\.api_key_file: the API key file is empty"):
        settings.yespo.require_api_key()


def test_a_whole_section_variable_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YESPO_CONNECTOR_KAFKA", '{"group_id": "Pa55",}')
    with pytest.raises(ConfigError) as caught:
        load_settings(REPO_EXAMPLE)
    message = str(caught.value)
    assert message.startswith("kafka: ") and "(YESPO_CONNECTOR_KAFKA)" in message and "Pa55" not in message


def test_a_character_yaml_does_not_allow_gives_its_position(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  group_id: Pa55\x07word\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    message = str(caught.value)
    assert "not valid YAML at line 2, column 17" in message and "Pa55" not in message


def test_a_kafka_extra_property_the_python_client_refuses_is_a_config_error_naming_kafka_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`error_cb` wants a callable: a bare TypeError traceback before."""
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  extra:\n    error_cb: Pa55-log\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["validate-config", "-c", str(config)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "ConfigError: kafka.extra: " in err and "error_cb" in err
    assert "Traceback" not in err and "Pa55" not in err


def test_datetime_zone_takes_contact_or_an_iana_name_and_names_its_key_otherwise(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    assert (
        load_settings(
            config_with(config, "yespo:\n  datetime_zone: contact\n"), environ={}
        ).yespo.datetime_zone
        == "contact"
    )
    assert (
        load_settings(
            config_with(config, "yespo:\n  datetime_zone: europe/kyiv\n"), environ={}
        ).yespo.datetime_zone
        == "Europe/Kyiv"
    )
    with pytest.raises(
        ConfigError, match=r"^yespo\.datetime_zone: .*neither 'contact' nor an IANA time zone"
    ):
        load_settings(config_with(config, "yespo:\n  datetime_zone: Mars/Olympus\n"), environ={})


def config_with(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["customers", "~handover", "~x"])
def test_a_child_name_the_state_reserves_is_refused_naming_its_key(tmp_path: Path, name: str) -> None:
    """The state keeps the customers row as `customers` and the merge stage's own records under `~`
    names: a child so named would be merged as one of them."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "source:\n  children:\n"
        f"    - {{name: '{name}', topic: crm.public.customer_groups, customer_key: customer_id,"
        " key: [customer_id, group_id]}\n"
    )
    with pytest.raises(ConfigError, match=r"^source\.children\.0\.name: .*reserved"):
        load_settings(config, environ={})
