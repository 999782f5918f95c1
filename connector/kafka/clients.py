"""Client configurations, the one place confluent-kafka errors are translated, and record helpers."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from confluent_kafka import Consumer, IsolationLevel, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from connector.config import CONNECTOR_KAFKA_PROPERTIES, Settings
from connector.errors import ConfigError, KafkaError
from connector.kafka.types import MessageLike
from connector.logs import RepeatFilter
from connector.models import RawRecord

__all__ = [
    "admin_config",
    "consumer_config",
    "default_instance_id",
    "kafka_errors",
    "produce",
    "producer_config",
    "restore_consumer_config",
    "to_raw",
    "translate",
    "unstable_partitions",
]

logger = logging.getLogger(__name__)

_LIBRDKAFKA_LOGGER = logging.getLogger("librdkafka")
"""librdkafka's own log lines go through Python logging (JSON format, redaction), not raw stderr.

While a broker is away, every client logs each failed connect attempt (several lines a second): one
line per distinct message every 30 s goes through, with `repeated=N` for those held back."""
if not any(isinstance(f, RepeatFilter) for f in _LIBRDKAFKA_LOGGER.filters):
    _LIBRDKAFKA_LOGGER.addFilter(RepeatFilter(30.0))


def default_instance_id() -> str:
    """A stable id for this process slot: the host name (a pod name under Kubernetes).

    Stable across restarts so a restarted instance's `init_transactions` aborts the transaction its
    predecessor left open (instead of waiting for `transaction.timeout.ms`).
    """
    return socket.gethostname() or "local"


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A read_committed, manually committed consumer of `group_id`.

    `overrides` and `kafka.extra` as in `_client_config`.
    """
    kafka = settings.kafka
    conf: dict[str, Any] = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "session.timeout.ms": kafka.session_timeout_ms,
        "enable.partition.eof": False,
        # notice source topics that Debezium creates after we subscribed within seconds, not minutes
        "topic.metadata.refresh.interval.ms": 10_000,
        "logger": _LIBRDKAFKA_LOGGER,
    }
    return _client_config(settings, conf, overrides)


def restore_consumer_config(settings: Settings, group_id: str) -> dict[str, Any]:
    """The consumer that reads a state partition to its end (`state.recovery`): large fetches.

    `fetch.max.bytes` is at least `message.max.bytes` (librdkafka refuses a smaller one).
    """
    fetch = max(52_428_800, settings.kafka.message_max_bytes)
    return consumer_config(settings, group_id, **{"enable.partition.eof": True, "fetch.max.bytes": fetch})


def producer_config(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """An idempotent producer; transactional when `transactional_id` is given.

    `overrides` and `kafka.extra` as in `_client_config`.
    """
    kafka = settings.kafka
    conf: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "zstd",
        "queue.buffering.max.messages": 500_000,
        "logger": _LIBRDKAFKA_LOGGER,
    }
    if transactional_id is not None:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = kafka.transaction_timeout_ms
    return _client_config(settings, conf, overrides)


def admin_config(settings: Settings, *, logger: logging.Logger | None = None) -> dict[str, Any]:
    """An admin client's properties: `kafka`'s, with librdkafka's log lines through Python logging.

    `logger` replaces the stages' `librdkafka` logger (the ops commands log as theirs).
    """
    return {**settings.kafka.as_librdkafka(), "logger": logger or _LIBRDKAFKA_LOGGER}


def _client_config(settings: Settings, conf: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The connector's properties (`conf`, then the caller's `overrides`), with `kafka.extra` applied.

    A property in `CONNECTOR_KAFKA_PROPERTIES` keeps the connector's value (`load_settings` refuses
    it in `kafka.extra`). Any other is tuning, and `kafka.extra` wins: `linger.ms`, `compression.type`,
    fetch sizes... An overridden `batch.size` is a ceiling, not a default: it fits the batches under a
    topic's `max.message.bytes` (`topics.batch_size_for`), so a larger `kafka.extra` value is lowered.
    """
    merged = {**conf, **overrides}
    extra = {k: v for k, v in settings.kafka.extra.items() if k not in CONNECTOR_KAFKA_PROPERTIES}
    out: dict[str, Any] = {"bootstrap.servers": settings.kafka.bootstrap_servers}
    out.update({k: v for k, v in merged.items() if k not in CONNECTOR_KAFKA_PROPERTIES})
    out.update(extra)
    out.update({k: v for k, v in merged.items() if k in CONNECTOR_KAFKA_PROPERTIES})
    ceiling = overrides.get("batch.size")
    wanted = extra.get("batch.size", "")
    if ceiling is not None and wanted.isdigit() and int(wanted) > int(ceiling):
        out["batch.size"] = ceiling
    return out


def translate(exc: KafkaException) -> KafkaError:
    """A `KafkaError` carrying the client error's flags (retriable, fatal, txn_requires_abort)."""
    err = exc.args[0] if exc.args else None
    if err is None or not hasattr(err, "code"):
        return KafkaError(str(exc))
    return KafkaError(
        f"{err.name()}: {err.str()}",
        retriable=bool(err.retriable()),
        fatal=bool(err.fatal()),
        txn_requires_abort=bool(getattr(err, "txn_requires_abort", lambda: False)()),
        code=str(err.name()),
    )


def timed_out(what: str) -> KafkaError:
    """The `KafkaError` for an admin future that gave no answer in time (a retriable `_TIMED_OUT`)."""
    return KafkaError(f"_TIMED_OUT: no answer to {what} in time", retriable=True, code="_TIMED_OUT")


@contextmanager
def kafka_errors() -> Iterator[None]:
    """Translate confluent-kafka exceptions raised inside the block into `KafkaError`.

    Also the `TimeoutError` of an admin future's `result(timeout=...)` (the broker did not answer in
    time): a retriable `_TIMED_OUT`, as librdkafka reports its own request timeouts.
    """
    try:
        yield
    except KafkaException as exc:
        raise translate(exc) from exc
    except TimeoutError as exc:
        raise timed_out("an admin request") from exc


QUEUE_FULL_WAIT_S: Final = 30.0
"""How long `produce` waits for room in a full local queue before giving up."""


def produce(producer: Producer, topic: str, *, wait_s: float = QUEUE_FULL_WAIT_S, **kwargs: Any) -> None:
    """`producer.produce(topic, **kwargs)`, waiting while the producer's local queue is full.

    librdkafka counts a record against `queue.buffering.max.messages` until its delivery report is
    served by `poll` (or by the flush inside `commit_transaction`), and refuses more with
    `BufferError`. A transaction that writes more records than the queue holds (a large backlog
    merged in one poll round, a rebuild of many keys) must therefore poll to free the records the
    broker has acknowledged, not fail: this does, and tries again.

    Raises:
        KafkaError: the queue is still full after `wait_s` (the broker acknowledges nothing);
            `txn_requires_abort`, so a transactional caller aborts and reads its input again.
    """
    try:
        producer.produce(topic, **kwargs)
        return
    except BufferError:
        pass
    deadline = time.monotonic() + wait_s
    while True:
        producer.poll(0.1)
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            if time.monotonic() >= deadline:
                raise KafkaError(
                    f"producer queue still full after {wait_s:g} s: the broker acknowledges no writes",
                    retriable=True,
                    txn_requires_abort=True,
                    code="_QUEUE_FULL",
                ) from None


def to_raw(msg: MessageLike) -> RawRecord:
    """Detach a consumed message into a `RawRecord`."""
    ts_type, ts = msg.timestamp()
    raw_headers = msg.headers()
    headers: tuple[tuple[str, bytes | None], ...] = ()
    if raw_headers:
        items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        headers = tuple((k, v.encode() if isinstance(v, str) else v) for k, v in items)
    return RawRecord(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=msg.key(),
        value=msg.value(),
        headers=headers,
        timestamp_ms=ts if ts_type != 0 else None,
    )


def unstable_partitions(
    admin: AdminClient, partitions: list[TopicPartition], timeout: float = 15.0
) -> list[TopicPartition]:
    """The partitions with an open transaction: last stable offset below the high watermark.

    `commit_transaction` returns once the commit is decided; the markers that make its records visible
    to read_committed readers are written right after. A reader that must see every committed record
    of a partition nobody else writes waits until this list is empty.
    """
    if not partitions:
        return []
    wanted = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    with kafka_errors():
        stable = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in wanted},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=timeout,
        )
        high = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in wanted},  # type: ignore[no-untyped-call]
            isolation_level=IsolationLevel.READ_UNCOMMITTED,
            request_timeout=timeout,
        )
        return [
            tp
            for tp in wanted
            if stable[tp].result(timeout=timeout + 5).offset < high[tp].result(timeout=timeout + 5).offset
        ]


_CHECK_LOGGER = logging.getLogger(f"{__name__}.check")
"""Where the throwaway clients of `check_client_config` log: nowhere (a handler that drops lines)."""
_CHECK_LOGGER.propagate = False
if not _CHECK_LOGGER.handlers:
    _CHECK_LOGGER.addHandler(logging.NullHandler())


def _offline(conf: dict[str, Any]) -> dict[str, Any]:
    """`conf` for a client that is built only to be checked: no broker to contact, no log lines.

    With an empty `bootstrap.servers` librdkafka opens no connection (a real one would be attempted
    at once, and each refusal logged: noise on stderr of a command that needs no network); every
    property is still validated when the client is built.
    """
    return {**conf, "bootstrap.servers": "", "logger": _CHECK_LOGGER}


def check_client_config(settings: Settings) -> None:
    """Build (and drop) a producer and a consumer as the stages do, without contacting a broker.

    librdkafka refuses an unknown property or a bad value (`kafka.extra`) when a client is built,
    before any connection; the Python client refuses text where it wants a callable (`error_cb`).
    The clients are built with no bootstrap servers and a logger that drops lines: nothing is
    contacted and nothing is printed.

    Raises:
        ConfigError: naming `kafka.extra` and librdkafka's reason (property names, never values).
    """
    try:
        Producer(
            _offline(
                producer_config(settings, transactional_id=f"{settings.kafka.transactional_id_prefix}-check")
            )
        )
        Consumer(_offline(consumer_config(settings, settings.kafka.group_id))).close()
        Consumer(_offline(restore_consumer_config(settings, f"{settings.kafka.group_id}-check"))).close()
    except KafkaException as exc:
        raise ConfigError(
            f"the Kafka client refuses the configuration: {translate(exc)}", key="kafka.extra"
        ) from None
    except (TypeError, ValueError) as exc:
        # the Python client's own checks: a property it wants as a callable (`error_cb`, `oauth_cb`),
        # ... Their messages name the property, never its value.
        raise ConfigError(f"the Kafka client refuses the configuration: {exc}", key="kafka.extra") from None
