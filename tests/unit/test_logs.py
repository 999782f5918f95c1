from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator

import pytest

from connector import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    yield out
    logs.reset()
    assert not [h for h in root.handlers if isinstance(h, logs._ConfiguredHandler)]
    root.setLevel(level)
    logging.captureWarnings(False)
    logs.clear_secrets()


def lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_json_lines_carry_message_level_and_extras(stream: io.StringIO) -> None:
    logs.configure("json", "INFO", stream=stream)
    log = logging.getLogger("connector.test")
    log.debug("not shown")
    log.info("committed transaction", extra={"topic": "crm.public.customers", "partition": 3, "offset": 42})
    [line] = lines(stream)
    doc = json.loads(line)
    assert doc["msg"] == "committed transaction"
    assert doc["level"] == "INFO" and doc["logger"] == "connector.test"
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("crm.public.customers", 3, 42)
    assert doc["ts"].endswith("Z")


def test_text_format_is_key_value(stream: io.StringIO) -> None:
    logs.configure("text", "DEBUG", stream=stream)
    logging.getLogger("connector.x").debug("poll", extra={"partition": 0, "reason": "two words"})
    [line] = lines(stream)
    assert ' DEBUG connector.x: poll partition=0 reason="two words"' in line


def test_configure_twice_keeps_one_handler(stream: io.StringIO) -> None:
    logs.configure("json", stream=stream)
    logs.configure("text", stream=stream)
    installed = [h for h in logging.getLogger().handlers if isinstance(h, logs._ConfiguredHandler)]
    assert len(installed) == 1
    logging.getLogger("connector.x").warning("once")
    assert len(lines(stream)) == 1


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError):
        logs.configure("xml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "jane.doe+crm@example.co.uk",
        "+380 67 123-45-67",
        "+380671234567",
        "+1 (555) 123-4567",
        "0671234567",
        "067 123 45 67",
        "(044) 123-45-67",
    ],
)
def test_redacts_emails_and_phones(text: str) -> None:
    masked = logs.redact(f"customer {text} changed")
    assert text not in masked
    assert masked.startswith("customer <redacted-") and masked.endswith("> changed")


@pytest.mark.parametrize(
    "text",
    [
        "offset 1234567890123",
        "ts 1795963244000",
        "at 2026-11-29T14:05:09.123Z",
        "2026-05-09 12:30:01",
        "09-11-2026 14:00",
        "broker 10.0.0.1:9092",
        "took 0.123456789 s",
        "partition 0 offset 0",
        "topic crm.public.customers",
    ],
)
def test_keeps_what_is_not_pii(text: str) -> None:
    assert logs.redact(text) == text


def test_registered_secrets_are_masked_everywhere(stream: io.StringIO) -> None:
    logs.configure("json", stream=stream)
    logs.register_secret("sk-live-0123456789")
    logs.register_secret("abc")  # too short to mask safely: ignored
    log = logging.getLogger("connector.y")
    log.info("key is %s", "sk-live-0123456789", extra={"header": "Authorization: Basic sk-live-0123456789"})
    try:
        raise RuntimeError("failed for jane@example.com with key sk-live-0123456789")
    except RuntimeError:
        log.exception("request failed", extra={"phone": "+380671234567", "count": 3})
    text = stream.getvalue()
    assert "sk-live-0123456789" not in text
    assert "jane@example.com" not in text and "+380671234567" not in text
    first, second = (json.loads(line) for line in lines(stream))
    assert first["msg"] == "key is <redacted-secret>"
    assert first["header"] == "Authorization: Basic <redacted-secret>"
    assert second["phone"] == "<redacted-phone>" and second["count"] == 3
    assert "RuntimeError: failed for <redacted-email> with key <redacted-secret>" in second["exc"]
    assert "abc" in logs.redact("abc")


def test_the_filter_covers_records_of_every_logger(stream: io.StringIO) -> None:
    logs.configure("text", stream=stream)
    logging.getLogger("some.library").warning("contact bob@example.org rejected")
    assert "bob@example.org" not in stream.getvalue()
    assert "<redacted-email>" in stream.getvalue()


def test_default_stream_is_the_current_stderr(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("text")
    logging.getLogger("connector.z").warning("to stderr")
    assert "to stderr" in capsys.readouterr().err


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(text: str, level: int = logging.ERROR) -> logging.LogRecord:
    # the shape confluent-kafka gives librdkafka's lines: "%s [%s] %s" % (facility, client, text)
    return logging.LogRecord(
        "librdkafka", level, "", 0, "%s [%s] %s", ("FAIL", "rdkafka#producer-3", text), None
    )


def test_repeat_filter_lets_one_line_per_message_through_each_window() -> None:
    clock = _Clock()
    repeats = logs.RepeatFilter(30.0, clock=clock)
    refused = "127.0.0.1:{}/bootstrap: Connect failed: Connection refused (after {}ms in state CONNECT)"
    passed = []
    for i in range(100):  # 10 s of failed connects, 10 a second, numbers varying
        clock.now += 0.1
        record = _record(refused.format(9092, i % 7))
        if repeats.filter(record):
            passed.append(record)
    assert len(passed) == 1
    assert not hasattr(passed[0], "repeated")
    # another message is not held back by the first one's window
    assert repeats.filter(_record("127.0.0.1:9092/1: Disconnected"))
    assert repeats.filter(_record(refused.format(9092, 0), logging.WARNING))  # nor another level
    clock.now += 30.0
    later = _record(refused.format(9092, 3))
    assert repeats.filter(later)
    assert later.repeated == 99  # the lines held back since the last one through
    clock.now += 31.0
    quiet = _record(refused.format(9092, 3))
    assert repeats.filter(quiet)
    assert not hasattr(quiet, "repeated")  # none were held back in between


def test_repeat_filter_forgets_the_oldest_messages_beyond_its_bound() -> None:
    clock = _Clock()
    repeats = logs.RepeatFilter(30.0, clock=clock, max_keys=2)
    assert repeats.filter(_record("a"))
    assert repeats.filter(_record("b"))
    assert not repeats.filter(_record("a"))
    assert repeats.filter(_record("c"))  # a third message: "a", let through first, is forgotten
    assert not repeats.filter(_record("b"))
    assert repeats.filter(_record("a"))  # forgotten: let through again


def test_librdkafka_lines_go_through_the_repeat_filter(stream: io.StringIO) -> None:
    from confluent_kafka import Producer

    from connector.kafka.clients import _LIBRDKAFKA_LOGGER

    installed = [f for f in _LIBRDKAFKA_LOGGER.filters if isinstance(f, logs.RepeatFilter)]
    assert len(installed) == 1
    # a fresh filter: lines of earlier tests in this process must not hold back this test's
    fresh = logs.RepeatFilter(30.0)
    _LIBRDKAFKA_LOGGER.removeFilter(installed[0])
    _LIBRDKAFKA_LOGGER.addFilter(fresh)
    try:
        logs.configure("json", "INFO", stream=stream)
        producer = Producer({"bootstrap.servers": "127.0.0.1:1", "logger": _LIBRDKAFKA_LOGGER})
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            producer.poll(0.1)
    finally:
        _LIBRDKAFKA_LOGGER.removeFilter(fresh)
        _LIBRDKAFKA_LOGGER.addFilter(installed[0])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    refused = [line for line in lines if line["logger"] == "librdkafka" and "refused" in line["msg"]]
    assert len(refused) == 1, refused  # librdkafka retried for 3 s; one line went through


@pytest.mark.parametrize(
    ("msg", "args"),
    [("retrying in %d s", ("soon",)), ("user %(name)s", ({"other": 1},)), ("%s %s", ("one",))],
)
def test_a_message_whose_arguments_do_not_fit_its_format_is_kept_not_raised(msg: str, args: tuple) -> None:
    """The filter renders `msg % args` outside logging's error handling: it must not raise into a log call."""
    record = logging.LogRecord("some.library", logging.WARNING, "", 0, msg, args, None)
    assert logs.RedactionFilter().filter(record)
    assert record.getMessage() == logs.UNFORMATTABLE
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["msg"] == logs.UNFORMATTABLE and doc["level"] == "WARNING"


def test_the_repeat_filter_survives_a_message_whose_arguments_do_not_fit() -> None:
    record = logging.LogRecord("librdkafka", logging.WARNING, "", 0, "%d", ("x",), None)
    assert logs.RepeatFilter(30.0).filter(record)
