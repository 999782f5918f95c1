"""The stack's single-node KRaft broker: render its config, format storage, start it, wait until it answers.

The broker runs from `libs/` (Maven Central jars) on the machine's Java 17, with every internal topic
(offsets, transactions, share-group state) at replication factor 1 so transactions work on one node.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.admin import AdminClient

from connector.errors import StackError
from connector.stack.base import ComponentStatus, StackConfig, port_open, render_properties, wait_until
from connector.stack.daemon import Daemon
from connector.stack.maven import ensure_jars
from connector.stack.processes import missing_program, tail

__all__ = [
    "KafkaBroker",
    "broker_answers",
    "log4j2_properties",
    "new_cluster_id",
    "server_properties",
]

logger = logging.getLogger(__name__)

JVM_OPTS = ["-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]


def server_properties(config: StackConfig, log_dirs: Path) -> dict[str, str]:
    """The broker's `server.properties` (guide section 4), with absolute paths substituted (pure)."""
    host, port, cport = config.host, config.kafka_port, config.kafka_controller_port
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        # a static quorum: the storage is formatted WITHOUT --standalone
        "controller.quorum.voters": f"1@{host}:{cport}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # one node: every internal topic at RF 1, or InitProducerId / group coordination never succeeds
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        # compaction visible within seconds in tests (default backoff 15 s)
        "log.cleaner.backoff.ms": "1000",
        **config.broker_properties,
    }


def log4j2_properties() -> dict[str, str]:
    """A minimal log4j2 configuration: WARN everywhere, INFO for the broker, to stdout (pure)."""
    return {
        "rootLogger.level": "WARN",
        "rootLogger.appenderRef.o.ref": "O",
        "appender.o.type": "Console",
        "appender.o.name": "O",
        "appender.o.layout.type": "PatternLayout",
        "appender.o.layout.pattern": "[%d] %p %m (%c)%n",
        "logger.k.name": "kafka",
        "logger.k.level": "INFO",
        "logger.c.name": "org.apache.kafka.connect",
        "logger.c.level": "INFO",
        "logger.d.name": "io.debezium",
        "logger.d.level": "INFO",
    }


def broker_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a broker at `bootstrap` answers a metadata request with at least one broker."""
    host, _, port = bootstrap.rpartition(":")
    if not port.isdigit() or not port_open(host or "127.0.0.1", int(port)):
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(metadata.brokers)


def new_cluster_id(random_uuid: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A KRaft cluster id as Kafka's `Uuid.randomUuid()` makes it: URL-safe base64, never a leading "-".

    The storage tool's argument parser takes an id starting with "-" for an option and refuses to
    format: one broker start in 64 failed that way.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_uuid().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker:
    """The `kafka` component: `up` formats storage if needed, starts the broker and waits for it."""

    name = "kafka"

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.server_file = config.conf_dir / "server.properties"
        self.log4j_file = config.conf_dir / "log4j2.properties"
        self.log_dirs = config.data_dir / "kafka"
        self.daemon = Daemon(
            name=self.name,
            marker=str(self.server_file.resolve()),
            pid_file=config.run_dir / "kafka.pid",
            log_file=config.logs_dir / "kafka.out",
            host=config.host,
            port=config.kafka_port,
        )

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            self.config.java,
            *JVM_OPTS,
            f"-Dkafka.logs.dir={self.config.logs_dir.resolve()}",
            f"-Dlog4j2.configurationFile={self.log4j_file.resolve()}",
            "-cp",
            f"{self.config.libs_dir.resolve()}/*",
            main,
            *args,
        ]

    def write_config(self) -> None:
        """Render `server.properties` and `log4j2.properties` into the stack's conf dir."""
        self.config.conf_dir.mkdir(parents=True, exist_ok=True)
        self.server_file.write_text(
            render_properties(
                server_properties(self.config, self.log_dirs.resolve()),
                "written by `yespo-connector stack up`",
            ),
            encoding="utf-8",
        )
        self.log4j_file.write_text(render_properties(log4j2_properties()), encoding="utf-8")

    def _format(self) -> None:
        if (self.log_dirs / "meta.properties").exists():
            return
        self.log_dirs.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        argv = self._java(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.server_file.resolve()),
            "--ignore-formatted",
        )  # fmt: skip
        with missing_program(argv[0]):
            result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise StackError(f"formatting KRaft storage failed:\n{(result.stdout + result.stderr)[-3000:]}")

    def up(self) -> ComponentStatus:
        """Start the broker, or reuse ours if it already runs; wait until `list_topics` answers.

        Raises:
            StackError: the port belongs to another process, the jars cannot be fetched, or the broker
                does not answer within `start_timeout_s` (the message ends with the broker log's tail).
        """
        controller_daemon = Daemon(
            name="kafka-controller",
            marker=self.daemon.marker,
            pid_file=self.daemon.pid_file,
            log_file=self.daemon.log_file,
            host=self.config.host,
            port=self.config.kafka_controller_port,
        )
        pid = self.daemon.reconcile()
        if pid is None:
            controller_daemon.reconcile()
        if pid is not None:
            running = self._running_listener()
            wanted = f"PLAINTEXT://{self.config.host}:{self.config.kafka_port}"
            if running is not None and running != wanted:
                raise StackError(
                    f"our broker (pid {pid}) already runs as {running}, not {wanted}: use its port, or "
                    "stop it first (yespo-connector stack down)"
                )
            if not self._wait_ready(pid):
                raise StackError(f"kafka (pid {pid}) runs but does not answer:\n{tail(self.daemon.log_file)}")
            return self.status(detail="already running")
        ensure_jars(self.config)
        self.write_config()
        self._format()
        started = time.monotonic()
        pid = self.daemon.start(
            self._java("kafka.Kafka", str(self.server_file.resolve())), cwd=self.config.stack_dir
        )
        if not self._wait_ready(pid):
            self.daemon.stop(timeout=10)
            raise StackError(
                f"kafka did not answer within {self.config.start_timeout_s:.0f} s; last lines of "
                f"{self.daemon.log_file}:\n{tail(self.daemon.log_file)}"
            )
        return self.status(detail=f"started in {time.monotonic() - started:.1f} s")

    def _running_listener(self) -> str | None:
        """The PLAINTEXT listener in the properties the running broker was started with (None: unknown)."""
        try:
            lines = self.server_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in lines:
            name, _, value = line.partition("=")
            if name.strip() == "advertised.listeners":
                return value.strip()
        return None

    def _wait_ready(self, pid: int) -> bool:
        return wait_until(
            lambda: broker_answers(self.config.bootstrap_servers),
            timeout=self.config.start_timeout_s,
            interval=0.5,
            abort=lambda: self.daemon.alive_or_reason(pid),
        )

    def down(self) -> None:
        """Stop the broker (SIGTERM, 30 s, SIGKILL) and remove its pid file; a no-op if it is not running."""
        self.daemon.stop(timeout=30)

    def status(self, detail: str = "") -> ComponentStatus:
        """Whether our broker runs and answers."""
        return self.daemon.status(
            self.name,
            f"{self.config.bootstrap_servers} (controller :{self.config.kafka_controller_port})",
            lambda: broker_answers(self.config.bootstrap_servers, timeout=2),
            detail,
        )
