"""`validate-config` runs the deliver stage's offline start-up checks and, per --stage, the API key's."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "connector.yaml"


def _validate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        cli.main(["validate-config", *args])
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YESPO_API_KEY", raising=False)


def test_a_missing_api_key_is_a_note_without_stage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _validate(["-c", str(EXAMPLE)], capsys)
    assert code == 0 and "config OK" in out
    assert "no Yespo API key" in err and "YESPO_API_KEY" in err


@pytest.mark.parametrize("stage", ["deliver", "all"])
def test_a_missing_api_key_fails_for_a_stage_that_delivers(
    stage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _validate(["-c", str(EXAMPLE), "--stage", stage], capsys)
    assert code == 1 and "config OK" not in out
    assert "yespo.api_key_env" in err


def test_the_merge_stage_needs_no_key_and_a_set_key_is_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _validate(["-c", str(EXAMPLE), "--stage", "merge"], capsys)
    assert code == 0 and "config OK" in out
    monkeypatch.setenv("YESPO_API_KEY", "s3cr3t-key-value")
    code, out, err = _validate(["-c", str(EXAMPLE), "--stage", "all"], capsys)
    assert code == 0 and "config OK" in out and "note" not in err
    assert "s3cr3t-key-value" not in out + err


def test_an_unknown_stage_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _validate(["-c", str(EXAMPLE), "--stage", "everything"], capsys)
    assert code == 2 and "--stage" in err  # a usage error (docs/operations.md)


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        (
            "contact:\n  fields: {birthDate: birth_date}\nyespo:\n  field_ids: {birthDate: 3000000000}\n",
            "yespo.field_ids.birthDate",
        ),
        ("contact:\n  channels:\n    - {type: telegram, column: tg}\n", "contact.channels"),
    ],
)
def test_deliver_start_up_checks_run_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet: str, key: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(snippet)
    code, out, err = _validate(["-c", str(config)], capsys)
    assert code == 1 and "config OK" not in out
    assert key in err


@pytest.mark.parametrize(("stage", "code"), [(None, 0), ("merge", 0), ("deliver", 1), ("all", 1)])
def test_a_key_file_mounted_only_in_the_deliver_pod_fails_only_where_the_key_is_needed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str | None, code: int
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"yespo:\n  api_key_file: {tmp_path / 'not-mounted-here'}\n")
    args = ["-c", str(config), *(["--stage", stage] if stage else [])]
    exit_code, out, err = _validate(args, capsys)
    assert exit_code == code
    if code:
        assert "yespo.api_key_file: cannot read the API key file" in err and "config OK" not in out
    else:
        assert "config OK" in out


def test_the_client_checks_contact_no_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket
    import time

    with socket.socket() as broker:  # stands where the config says the broker is
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        broker.setblocking(False)
        monkeypatch.setenv("YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{broker.getsockname()[1]}")
        code, out, err = _validate(["-c", str(EXAMPLE), "--stage", "merge"], capsys)
        assert code == 0 and out.startswith("config OK") and err == ""
        time.sleep(0.5)  # librdkafka connects from its own threads
        try:
            contacted, _ = broker.accept()
        except BlockingIOError:
            return
        contacted.close()
        pytest.fail("validate-config connected to the broker")


def test_what_librdkafka_logs_while_checking_reaches_neither_stderr_nor_the_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from connector.kafka import clients

    built: list[dict] = []

    class Client:  # logs as librdkafka does when a connection is refused
        def __init__(self, conf: dict) -> None:
            built.append(conf)
            conf["logger"].log(
                logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "Connection refused"
            )

        def close(self) -> None:
            pass

    class Recorder(logging.Handler):  # where `logs.configure` writes: the root logger
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    monkeypatch.setattr(clients, "Producer", Client)
    monkeypatch.setattr(clients, "Consumer", Client)
    try:
        code, _out, err = _validate(["-c", str(EXAMPLE), "--stage", "merge"], capsys)
    finally:
        logging.getLogger().removeHandler(recorder)
    assert code == 0 and err == ""
    assert len(built) == 3 and all(conf["bootstrap.servers"] == "" for conf in built)
    assert not [line for line in recorder.lines if "Connection refused" in line]
