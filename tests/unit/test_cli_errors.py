"""`cli.main`'s error handling: one redacted line and exit 1, never a traceback, for what a user can fix."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError as ClientError
from confluent_kafka import KafkaException

import connector.commands.validate_config as validate_config_command
from connector import cli, logs
from connector.commands import lag as lag_command
from connector.errors import ConfigError
from connector.ops.lag import GroupLag, PartitionLag

from .test_config import REPO_EXAMPLE
from .test_config_errors import clean_logs  # noqa: F401 (a fixture)


def _exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code


@pytest.mark.usefixtures("clean_logs")
@pytest.mark.parametrize(
    "argv",
    [
        ["lag"],  # an admin client
        ["dlq"],  # a consumer
        ["replay", "--from", "earliest", "--dry-run"],
        ["resync", "--dry-run"],
        ["rebuild-state", "--dry-run"],
    ],
)
def test_a_kafka_extra_librdkafka_refuses_is_one_line_naming_kafka_extra_in_ops_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    config = tmp_path / "c.yaml"
    missing = tmp_path / "missing-ca.pem"
    config.write_text(f"kafka:\n  extra:\n    security.protocol: SSL\n    ssl.ca.location: {missing}\n")
    assert _exit_code([*argv, "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err  # a command may warn before it builds its clients (replay)
    assert err.splitlines()[-1].startswith(
        "ConfigError: kafka.extra: the Kafka client refuses the configuration: _INVALID_ARG"
    )


def test_another_kafka_exception_is_not_taken_for_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def transport_failure(settings: object) -> None:
        raise KafkaException(ClientError(ClientError._TRANSPORT, "broker down"))

    monkeypatch.setattr(validate_config_command, "check_client_config", transport_failure)
    with pytest.raises(KafkaException):
        cli.main(["validate-config", "-c", str(REPO_EXAMPLE)])


@pytest.mark.usefixtures("clean_logs")
def test_the_printed_error_line_is_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.register_secret("Pa55-Secret-Value")

    def leaky(path: object) -> None:
        raise ConfigError("refused Pa55-Secret-Value for jane.doe@example.com, +44 20 7946 0958", key="x")

    monkeypatch.setattr(validate_config_command, "load_settings", leaky)
    assert _exit_code(["validate-config", "-c", str(REPO_EXAMPLE)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ConfigError: x: refused ")
    assert "Pa55" not in err and "jane.doe" not in err and "7946" not in err
    assert logs.SECRET_MASK in err and logs.EMAIL_MASK in err and logs.PHONE_MASK in err


def test_stand_in_on_a_busy_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert _exit_code(["stand-in", "--api-key", "k", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err == f"ConfigError: --port: cannot listen on 127.0.0.1:{port} (Address already in use)\n"


def test_a_stand_in_segment_that_is_not_id_equals_name_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _exit_code(["stand-in", "--api-key", "k", "--segment", "VIP"]) == 1
    assert capsys.readouterr().err == "ConfigError: --segment expects ID=NAME, got 'VIP'\n"


class _LagReader:
    """`LagReader` without a broker: every topic of a stage reads as `error` (None: all caught up)."""

    error: str | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> _LagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, sg: Any) -> GroupLag:
        if self.error is not None:
            rows = tuple(
                PartitionLag(t, -1, None, None, None, None, None, error=self.error) for t in sg.topics
            )
        else:
            rows = tuple(PartitionLag(t, 0, 5, 0, 5, 0, 0.0) for t in sg.topics)
        return GroupLag(sg.stage, sg.group, "EMPTY", 0, rows, time.time())


@pytest.mark.usefixtures("clean_logs")
@pytest.mark.parametrize("as_json", [True, False])
def test_lag_exits_1_when_a_partition_is_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    monkeypatch.setattr(
        lag_command, "LagReader", type("Missing", (_LagReader,), {"error": "topic does not exist"})
    )
    assert _exit_code(["lag", "-c", str(REPO_EXAMPLE), *(["--json"] if as_json else [])]) == 1
    out = capsys.readouterr()
    assert "ERROR" in out.out  # the sample is printed first
    assert out.err.startswith("KafkaError: 4 partition(s) with status ERROR (topic does not exist: ")
    assert out.err.count("\n") == 1


@pytest.mark.usefixtures("clean_logs")
def test_lag_exits_0_when_every_partition_is_readable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lag_command, "LagReader", _LagReader)
    assert _exit_code(["lag", "-c", str(REPO_EXAMPLE), "--json"]) == 0
    assert '"status": "ERROR"' not in capsys.readouterr().out
