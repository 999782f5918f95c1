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
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from connector.errors import StackError
from connector.stack.base import StackConfig, default_deploy_dir, free_port
from connector.stack.kafka import broker_answers
from connector.stack.local import LocalStack
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
        self._stacks: list[LocalStack] = []

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

    def stack(self, **overrides: object) -> LocalStack:
        """A `LocalStack` on this session's directory (config fields may be overridden, e.g. the broker)."""
        stack = LocalStack(replace(self.config, **overrides))  # type: ignore[arg-type]
        self._stacks.append(stack)
        return stack

    def close(self) -> None:
        if self._config is None:
            return
        errors = []
        for stack in reversed(self._stacks):
            try:
                stack.down()
            except StackError as exc:
                errors.append(str(exc))
        if not errors:
            shutil.rmtree(self._config.stack_dir, ignore_errors=True)
        if errors:
            raise StackError("; ".join(errors))


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
        stack = session_stack.stack()
        stack.up(["kafka"])
    except StackError as exc:
        pytest.fail(
            f"no Kafka broker: KAFKA_BOOTSTRAP_SERVERS unset, no Docker engine, local stack failed: {exc}"
        )
    yield stack.bootstrap_servers


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
