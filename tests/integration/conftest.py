"""Integration fixtures: a real Kafka broker and, on demand, PostgreSQL and Kafka Connect.

Where the broker comes from (guide section 7), in this order; a missing broker FAILS the tests:
1. `KAFKA_BOOTSTRAP_SERVERS` is set -> that broker (it must answer);
2. a Docker engine answers `docker info` -> testcontainers' KafkaContainer (KRaft);
3. otherwise -> the project's local JVM stack on free ports in a throw-away stack dir, stopped at the end.
`POSTGRES_DSN` and `KAFKA_CONNECT_URL` override the PostgreSQL and Connect components the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from connector.errors import StackError
from connector.stack.base import Component, StackConfig, default_deploy_dir, free_port
from connector.stack.connect import KafkaConnect, load_connector_config
from connector.stack.kafka import KafkaBroker, broker_answers
from connector.stack.postgres import PostgresServer, superuser_dsn
from connector.stack.processes import read_pid
from tests.integration.hanging import abort_hanging
from tests.integration.kafka_helpers import create_topic as _create_topic
from tests.integration.kafka_helpers import delete_topics

REPO = default_deploy_dir().parent


def docker_engine_ok() -> bool:
    """True only when a Docker daemon really answers (`which docker` is not enough here)."""
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


class SessionStack:
    """The local stack of this test session: created on first use, on free ports, torn down at the end."""

    def __init__(self) -> None:
        self._config: StackConfig | None = None
        self._started: list[Component] = []

    @property
    def config(self) -> StackConfig:
        if self._config is None:
            stack_dir = Path(tempfile.mkdtemp(prefix="yespo-it-stack-"))
            # PostgreSQL runs as the `postgres` OS user when we are root: it must reach its data dir
            stack_dir.chmod(0o755)
            jars = Path(os.environ.get("YESPO_STACK_JARS_DIR") or REPO / ".stack")
            self._config = StackConfig(
                stack_dir=stack_dir,
                jars_dir=jars,
                deploy_dir=REPO / "deploy",
                kafka_port=free_port(pairs=True),
                postgres_port=free_port(),
                connect_port=free_port(),
                connect_group=f"yespo-it-connect-{uuid.uuid4().hex[:8]}",
            )
        return self._config

    def start(self, component: Component) -> Component:
        """Start one component (its dependencies are the caller's business) and stop it at session end."""
        self._started.append(component)
        component.up()
        return component

    def close(self) -> None:
        if self._config is None:
            return
        errors = []
        for component in reversed(self._started):
            try:
                component.down()
            except StackError as exc:
                errors.append(f"{component.name}: {exc}")
        if errors:
            raise StackError("; ".join(errors))
        shutil.rmtree(self._config.stack_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def session_stack() -> Iterator[SessionStack]:
    """The lazily started local stack of this session (only used when no env/docker service is given)."""
    holder = SessionStack()
    yield holder
    holder.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(session_stack: SessionStack) -> Iterator[str]:
    """`host:port` of a real Kafka broker; fails (never skips) when none can be had."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        if not broker_answers(env, timeout=10):
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS={env} is set but no broker answers there")
        yield env
        return
    if docker_engine_ok():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    try:
        session_stack.start(KafkaBroker(session_stack.config))
    except StackError as exc:
        pytest.fail(
            f"no Kafka broker: KAFKA_BOOTSTRAP_SERVERS unset, no Docker engine, local stack failed: {exc}"
        )
    yield session_stack.config.bootstrap_servers


class PrivateBroker:
    """A broker of one test module's own, on free ports: tests may freeze or kill it.

    Disruptive tests never touch the session's broker (KRaft fences a broker that misses its
    controller's heartbeats, and every later test would depend on it coming back).
    """

    def __init__(self, stack_dir: Path, broker_properties: Mapping[str, str] | None = None) -> None:
        stack_dir.chmod(0o755)
        jars = Path(os.environ.get("YESPO_STACK_JARS_DIR") or REPO / ".stack")
        self.config = StackConfig(
            stack_dir=stack_dir,
            jars_dir=jars,
            deploy_dir=REPO / "deploy",
            kafka_port=free_port(pairs=True),
            broker_properties=dict(broker_properties or {}),
        )
        self.broker = KafkaBroker(self.config)
        self.bootstrap = self.config.bootstrap_servers

    @property
    def pid(self) -> int:
        pid = read_pid(self.config.run_dir / "kafka.pid")
        if pid is None:
            raise StackError("the private broker is not running")
        return pid

    def crash_and_restart(self, down_s: float) -> None:
        """SIGKILL the broker, leave it down for `down_s`, start it again on the same data."""
        os.kill(self.pid, signal.SIGKILL)
        time.sleep(down_s)
        self.broker.up()

    def abort_hanging(self, topic: str | None = None) -> list[tuple[str, int, int]]:
        """The README's procedure for hanging transactions (`hanging.abort_hanging`)."""
        return abort_hanging(self.config.java, self.config.libs_dir.resolve(), self.bootstrap, topic)

    def freeze(self, seconds: float) -> None:
        """SIGSTOP the broker process (broker and KRaft controller) for `seconds`, then SIGCONT."""
        pid = self.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """A broker only this module uses (the local JVM stack: Java 17 and the Maven Central jars)."""
    yield from running_private_broker(tmp_path_factory.mktemp("private-broker"))


def running_private_broker(
    stack_dir: Path, broker_properties: Mapping[str, str] | None = None
) -> Iterator[PrivateBroker]:
    """The body of a private-broker fixture: start it (a failure, never a skip), yield it, stop it."""
    holder = PrivateBroker(stack_dir, broker_properties)
    try:
        try:
            holder.broker.up()
        except StackError as exc:  # a missing service fails the tests, it never skips them (README)
            pytest.fail(f"no private broker (needs Java and the Kafka jars: make setup): {exc}")
        yield holder
    finally:  # also when interrupted while the broker starts: its JVM runs in a session of its own
        holder.broker.down()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient on the test broker."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: `unique_topic("prefix")` -> `prefix-<test name>-<uuid>`, never shared between runs."""
    test = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:40]

    def make(prefix: str = "it") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def create_topic(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Factory: `create_topic(name, partitions=1, config={...})` creates, waits, and deletes it afterwards."""
    created: list[str] = []

    def make(name: str, partitions: int = 1, config: Mapping[str, str] | None = None) -> str:
        _create_topic(kafka_admin, name, partitions, config)
        created.append(name)
        return name

    yield make
    with contextlib.suppress(Exception):
        delete_topics(kafka_admin, created)


@pytest.fixture(scope="session")
def postgres_dsn(session_stack: SessionStack) -> str:
    """libpq URL of a PostgreSQL with `wal_level=logical` and the `crm` schema (POSTGRES_DSN overrides)."""
    env = os.environ.get("POSTGRES_DSN")
    if env:
        return env
    try:
        session_stack.start(PostgresServer(session_stack.config))
    except StackError as exc:
        pytest.fail(f"no PostgreSQL: POSTGRES_DSN unset and the local stack failed: {exc}")
    return superuser_dsn(session_stack.config)


@pytest.fixture(scope="session")
def connect_worker(
    kafka_bootstrap: str, kafka_admin: AdminClient, session_stack: SessionStack
) -> Iterator[KafkaConnect | None]:
    """The session's own Connect worker (None when KAFKA_CONNECT_URL points at an external one).

    Its `restart(wait_for=[name])` restarts the worker process mid-test. At the end the worker stops and
    its three internal topics are deleted (they may live on a shared broker).
    """
    if os.environ.get("KAFKA_CONNECT_URL"):
        yield None
        return
    config = replace(session_stack.config, kafka_bootstrap=kafka_bootstrap)
    worker = KafkaConnect(config, register=False)
    try:
        session_stack.start(worker)
    except StackError as exc:
        pytest.fail(f"no Kafka Connect: KAFKA_CONNECT_URL unset and the local worker failed: {exc}")
    yield worker
    worker.down()
    group = config.connect_group
    delete_topics(kafka_admin, [f"{group}-configs", f"{group}-offsets", f"{group}-status"])


@pytest.fixture(scope="session")
def connect_url(connect_worker: KafkaConnect | None) -> str:
    """Base URL of a Kafka Connect REST API with the Debezium plugin (KAFKA_CONNECT_URL overrides)."""
    if connect_worker is not None:
        return connect_worker.url
    env = os.environ["KAFKA_CONNECT_URL"].rstrip("/")
    try:
        httpx.get(f"{env}/connectors", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"KAFKA_CONNECT_URL={env} is set but Connect does not answer: {exc}")
    return env


@pytest.fixture
def debezium_connector_config(postgres_dsn: str) -> Callable[..., tuple[str, dict[str, str]]]:
    """Factory: the Debezium connector (name, config) from deploy/connect, pointed at `postgres_dsn`.

    Keyword overrides replace config keys. `prefix=` makes a run unique when several share a broker or
    a database: connector `<prefix>-cdc`, `topic.prefix` `<prefix>`, slot `<prefix>_slot`, publication
    `<prefix>_pub`. `name=` renames the connector.
    """
    dsn = urlsplit(postgres_dsn)

    def make(
        name: str | None = None, *, prefix: str | None = None, **overrides: str
    ) -> tuple[str, dict[str, str]]:
        base = {
            "database.hostname": dsn.hostname or "127.0.0.1",
            "database.port": str(dsn.port or 5432),
            "database.dbname": dsn.path.lstrip("/") or "crm",
        }
        if prefix is not None:
            name = name or f"{prefix}-cdc"
            base |= {
                "topic.prefix": prefix,
                "slot.name": f"{prefix}_slot",
                "publication.name": f"{prefix}_pub",
            }
        return load_connector_config(
            REPO / "deploy" / "connect" / "debezium-postgres.json", base | overrides, name=name
        )

    return make
