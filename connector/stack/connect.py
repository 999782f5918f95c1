"""The stack's Kafka Connect worker (distributed, RF 1 internal topics) with the Debezium PostgreSQL plugin.

The worker runs from the same `libs/` as the broker; Debezium lives in `plugins/` (`plugin.path`). The
connector in `deploy/connect/debezium-postgres.json` is registered through the REST API. The REST helpers
(`register_connector`, `wait_running`, `restart_connect`) are public so end-to-end tests can drive Connect.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from connector.errors import StackError
from connector.stack.base import ComponentStatus, StackConfig, render_properties, stack_lock, wait_until
from connector.stack.daemon import Daemon
from connector.stack.kafka import log4j2_properties
from connector.stack.maven import ensure_jars
from connector.stack.processes import tail

__all__ = [
    "POSTGRES_CONNECTOR_CLASS",
    "KafkaConnect",
    "connector_status",
    "delete_connector",
    "load_connector_config",
    "register_connector",
    "restart_connect",
    "restart_connector",
    "wait_running",
    "worker_properties",
]

logger = logging.getLogger(__name__)

POSTGRES_CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
JVM_OPTS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
_RETRY_STATUS = {404, 409, 500, 503}


def worker_properties(config: StackConfig) -> dict[str, str]:
    """`connect-distributed.properties` for the stack (pure): RF 1 internal topics named after the group."""
    group = config.connect_group
    return {
        "bootstrap.servers": config.connect_bootstrap,
        "group.id": group,
        "config.storage.topic": f"{group}-configs",
        "offset.storage.topic": f"{group}-offsets",
        "status.storage.topic": f"{group}-status",
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        "offset.storage.partitions": "1",
        "status.storage.partitions": "1",
        "offset.flush.interval.ms": "1000",
        "key.converter": JSON_CONVERTER,
        "value.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
        "value.converter.replace.null.with.default": "false",
        "key.converter.replace.null.with.default": "false",
        "listeners": f"http://{config.host}:{config.connect_port}",
        "rest.advertised.host.name": config.host,
        "rest.advertised.port": str(config.connect_port),
        "plugin.path": str(config.plugins_dir.resolve()),
        # plugins are found through their ServiceLoader manifests (Debezium and Kafka ship them):
        # much faster start-up than the default hybrid_warn class-path scan
        "plugin.discovery": "service_load",
        # the worker rejoins quickly after a restart (tests restart it mid-workload)
        "scheduled.rebalance.max.delay.ms": "0",
    }


def load_connector_config(
    path: Path, overrides: Mapping[str, str] | None = None, *, name: str | None = None
) -> tuple[str, dict[str, str]]:
    """Read a `{"name": ..., "config": {...}}` file; returns (name, config with `overrides` applied).

    Raises:
        StackError: the file is missing or not in that shape.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        config = {str(k): str(v) for k, v in document["config"].items()}
        connector_name = str(name or document["name"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise StackError(f"cannot read connector config {path}: {exc}") from exc
    config.update(overrides or {})
    return connector_name, config


def _request(method: str, url: str, *, timeout: float = 10.0, **kwargs: Any) -> httpx.Response:
    try:
        return httpx.request(method, url, timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise StackError(f"kafka connect: {method} {url} failed: {type(exc).__name__}: {exc}") from exc


def register_connector(url: str, name: str, config: Mapping[str, str], *, timeout: float = 60.0) -> None:
    """Create or update connector `name` (`PUT /connectors/<name>/config`), retrying during rebalances.

    Raises:
        StackError: Connect rejected the config (4xx other than 404/409) or kept failing for `timeout` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        response = _request("PUT", f"{url}/connectors/{name}/config", json=dict(config), timeout=30)
        if response.status_code in (200, 201):
            return
        if response.status_code not in _RETRY_STATUS or time.monotonic() > deadline:
            raise StackError(
                f"kafka connect: registering {name} -> {response.status_code}: {response.text[:1000]}"
            )
        time.sleep(1)


def connector_status(url: str, name: str) -> dict[str, Any] | None:
    """`GET /connectors/<name>/status` as JSON, or None when the connector does not exist (yet)."""
    response = _request("GET", f"{url}/connectors/{name}/status")
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def wait_running(url: str, name: str, *, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until connector `name` and all of its tasks (at least one) are RUNNING; returns the status.

    Raises:
        StackError: the connector or a task FAILED (with the start of its trace), or `timeout` passed.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        try:
            last = connector_status(url, name)
        except StackError:
            last = None
        if last is not None:
            states = [last.get("connector", {}).get("state")] + [
                t.get("state") for t in last.get("tasks", [])
            ]
            if "FAILED" in states:
                traces = [last.get("connector", {}).get("trace")] + [
                    t.get("trace") for t in last.get("tasks", [])
                ]
                trace = next((t for t in traces if t), "")
                raise StackError(f"kafka connect: connector {name} FAILED: {str(trace)[:1500]}")
            if last.get("tasks") and all(state == "RUNNING" for state in states):
                return last
        time.sleep(0.5)
    raise StackError(
        f"kafka connect: connector {name} not RUNNING within {timeout:.0f} s (last status {last})"
    )


def restart_connector(url: str, name: str) -> None:
    """Restart connector `name` and its tasks through the REST API (the worker keeps running)."""
    response = _request("POST", f"{url}/connectors/{name}/restart?includeTasks=true&onlyFailed=false")
    if response.status_code not in (200, 202, 204):
        raise StackError(f"kafka connect: restarting {name} -> {response.status_code}: {response.text[:500]}")


def delete_connector(url: str, name: str) -> None:
    """Delete connector `name` (a no-op when it does not exist)."""
    response = _request("DELETE", f"{url}/connectors/{name}")
    if response.status_code not in (200, 204, 404):
        raise StackError(f"kafka connect: deleting {name} -> {response.status_code}: {response.text[:500]}")


class KafkaConnect:
    """The `connect` component: a distributed worker, plus (with `register`) the Debezium connector.

    Args:
        config: the stack's directories and ports.
        register: after the worker is up, PUT `deploy/connect/debezium-postgres.json` (database host and
            port taken from the stack) and wait until its task is RUNNING.
    """

    name = "connect"

    def __init__(self, config: StackConfig, *, register: bool = True) -> None:
        self.config = config
        self.register = register
        self.url = f"http://{config.host}:{config.connect_port}"
        self.worker_file = config.conf_dir / "connect-distributed.properties"
        self.log4j_file = config.conf_dir / "connect-log4j2.properties"
        self.connector_file = config.deploy_dir / "connect" / "debezium-postgres.json"
        self.daemon = Daemon(
            name=self.name,
            marker=str(self.worker_file.resolve()),
            pid_file=config.run_dir / "connect.pid",
            log_file=config.logs_dir / "connect.out",
            host=config.host,
            port=config.connect_port,
        )

    def connector_config(self, overrides: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
        """The Debezium connector's (name, config), pointed at this stack's PostgreSQL."""
        stack_overrides = {
            "database.hostname": self.config.host,
            "database.port": str(self.config.postgres_port),
            **(overrides or {}),
        }
        return load_connector_config(self.connector_file, stack_overrides)

    def write_config(self) -> None:
        """Render the worker and log4j2 properties."""
        self.config.conf_dir.mkdir(parents=True, exist_ok=True)
        self.worker_file.write_text(
            render_properties(worker_properties(self.config), "written by `yespo-connector stack up`"),
            encoding="utf-8",
        )
        self.log4j_file.write_text(render_properties(log4j2_properties()), encoding="utf-8")

    def _argv(self) -> list[str]:
        return [
            self.config.java,
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.log4j_file.resolve()}",
            "-cp",
            f"{self.config.libs_dir.resolve()}/*",
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(self.worker_file.resolve()),
        ]

    def _rest_ready(self) -> bool:
        try:
            plugins = httpx.get(f"{self.url}/connector-plugins", timeout=3)
            connectors = httpx.get(f"{self.url}/connectors", timeout=3)
        except httpx.HTTPError:
            return False
        return (
            plugins.status_code == 200
            and connectors.status_code == 200
            and any(p.get("class") == POSTGRES_CONNECTOR_CLASS for p in plugins.json())
        )

    def start_worker(self) -> str:
        """Start the worker (or reuse ours) and wait until its REST API lists the Debezium plugin."""
        pid = self.daemon.reconcile()
        if pid is not None:
            if not wait_until(self._rest_ready, timeout=self.config.start_timeout_s, interval=1):
                raise StackError(
                    f"kafka connect (pid {pid}) runs but REST does not answer:\n{tail(self.daemon.log_file)}"
                )
            return "already running"
        ensure_jars(self.config, with_debezium=True)
        self.write_config()
        started = time.monotonic()
        pid = self.daemon.start(self._argv(), cwd=self.config.stack_dir)
        ready = wait_until(
            self._rest_ready,
            timeout=self.config.start_timeout_s,
            interval=1,
            abort=lambda: self.daemon.alive_or_reason(pid),
        )
        if not ready:
            self.daemon.stop(timeout=10)
            raise StackError(
                f"kafka connect did not answer within {self.config.start_timeout_s:.0f} s; last lines of "
                f"{self.daemon.log_file}:\n{tail(self.daemon.log_file)}"
            )
        return f"started in {time.monotonic() - started:.1f} s"

    def up(self) -> ComponentStatus:
        """Start the worker; with `register`, register the Debezium connector and wait until it RUNS.

        Raises:
            StackError: the port is taken, the worker did not come up, or the connector failed.
        """
        detail = self.start_worker()
        if self.register:
            name, config = self.connector_config()
            register_connector(self.url, name, config)
            wait_running(self.url, name)
            detail += f"; connector {name} RUNNING"
        return self.status(detail=detail)

    def down(self) -> None:
        """Stop the worker (SIGTERM lets it leave the group and flush offsets). Connectors stay registered."""
        self.daemon.stop(timeout=30)

    def restart(self, *, wait_for: list[str] | None = None) -> None:
        """Stop and start the worker process, then wait until the named connectors are RUNNING again."""
        self.down()
        self.start_worker()
        for name in wait_for or []:
            wait_running(self.url, name)

    def status(self, detail: str = "") -> ComponentStatus:
        """Whether our worker runs and its REST API answers."""
        seen = self.daemon.observe()
        answering = seen.pid is not None and self._rest_ready()
        if seen.port_conflict:
            detail = detail or "port taken by another process"
        elif answering and not detail:
            try:
                names = _request("GET", f"{self.url}/connectors").json()
            except (StackError, ValueError):
                names = []
            detail = f"connectors: {', '.join(names) or 'none'}"
        return ComponentStatus(
            name=self.name, running=answering, endpoint=self.url, pid=seen.pid, detail=detail
        )


def restart_connect(config: StackConfig, *, wait_for: list[str] | None = None) -> None:
    """Restart the stack's Connect worker process (not just the connector) and wait for `wait_for` connectors.

    Used by end-to-end tests to prove that Debezium's replay after a worker restart is absorbed.
    """
    with stack_lock(config.stack_dir):
        KafkaConnect(config, register=False).restart(wait_for=wait_for)
