"""Shared plumbing of the local stack: its directory layout, the Component seam, port and polling helpers.

Everything here is either pure (property rendering) or a thin wrapper over one OS call, so the
components in `kafka.py`, `postgres.py` and `connect.py` read as short protocols; their processes are
started and stopped through `processes.py`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from connector.errors import StackError

__all__ = [
    "Component",
    "ComponentStatus",
    "StackConfig",
    "default_deploy_dir",
    "free_port",
    "listen_port_range",
    "port_open",
    "render_properties",
    "stack_lock",
    "wait_until",
]

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def default_deploy_dir() -> Path:
    """The repository's `deploy/` directory (POMs, schema SQL, connector JSON) next to the package."""
    return Path(__file__).resolve().parents[2] / "deploy"


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Where the local stack lives and which loopback ports it uses.

    Attributes:
        stack_dir: data, logs, pid files and rendered configs (`<repo>/.stack` by default).
        jars_dir: where `libs/` and `plugins/` are fetched; defaults to `stack_dir`. Tests point a
            throw-away `stack_dir` at the repository's jars so they are copied only once.
        deploy_dir: the repository's `deploy/` directory.
        kafka_port: the broker's PLAINTEXT listener; the KRaft controller listens on
            `controller_port` (default `kafka_port + 1`).
        kafka_bootstrap: the broker Connect talks to; defaults to this stack's broker.
        connect_group: Connect's group id; also the prefix of its three internal topics, so several
            workers can share one broker without colliding.
        standin_port: the Yespo stand-in's port (the `stand-in` component, the demo).
        maven_repo_local: passed as `-Dmaven.repo.local` (None: Maven's default `~/.m2`).
        broker_properties: `server.properties` entries added to (or replacing) the stack's own; for
            brokers that tests configure differently.
    """

    stack_dir: Path
    jars_dir: Path | None = None
    deploy_dir: Path = field(default_factory=default_deploy_dir)
    host: str = LOOPBACK
    kafka_port: int = 9092
    controller_port: int | None = None
    kafka_bootstrap: str | None = None
    postgres_port: int = 5432
    connect_port: int = 8083
    standin_port: int = 8089
    connect_group: str = "yespo-stack-connect"
    java: str = "java"
    mvn: str = "mvn"
    maven_repo_local: Path | None = None
    start_timeout_s: float = 90.0
    broker_properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def kafka_controller_port(self) -> int:
        """The KRaft controller listener port."""
        return self.controller_port if self.controller_port is not None else self.kafka_port + 1

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` of this stack's broker."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def connect_bootstrap(self) -> str:
        """The broker Kafka Connect uses."""
        return self.kafka_bootstrap or self.bootstrap_servers

    @property
    def libs_dir(self) -> Path:
        """Broker and Connect jars (one classpath)."""
        return (self.jars_dir or self.stack_dir) / "libs"

    @property
    def plugins_dir(self) -> Path:
        """Kafka Connect `plugin.path` (one sub-directory per plugin)."""
        return (self.jars_dir or self.stack_dir) / "plugins"

    @property
    def conf_dir(self) -> Path:
        """Rendered configuration files."""
        return self.stack_dir / "conf"

    @property
    def logs_dir(self) -> Path:
        """Process output and log4j logs."""
        return self.stack_dir / "logs"

    @property
    def run_dir(self) -> Path:
        """Pid files."""
        return self.stack_dir / "run"

    @property
    def data_dir(self) -> Path:
        """Persistent data (broker log dirs, PostgreSQL cluster)."""
        return self.stack_dir / "data"


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """What `stack status` reports for one component."""

    name: str
    running: bool
    endpoint: str
    pid: int | None = None
    detail: str = ""


class Component(Protocol):
    """One process of the local stack. Adding a component means one class with these three methods."""

    name: str

    def up(self) -> ComponentStatus:
        """Start the component (or adopt a running one) and wait until it answers."""
        ...

    def down(self) -> None:
        """Stop the component; a no-op when it is not running."""
        ...

    def status(self) -> ComponentStatus:
        """Report whether the component runs, without changing anything."""
        ...


def render_properties(entries: Mapping[str, str] | Iterable[tuple[str, str]], header: str = "") -> str:
    r"""Render a Java `.properties` file: one `key=value` per line, comments on their own lines.

    Java treats `#` as a comment only at the start of a line and `\` as an escape, so values are
    written with backslashes doubled; newlines in keys or values are rejected.

    Raises:
        ValueError: a key is empty or contains whitespace, `=`, `:` or `#`; a value contains a newline.
    """
    items = entries.items() if isinstance(entries, Mapping) else entries
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key, value in items:
        if not key or any(ch in key for ch in " \t\r\n=:#!\\"):
            raise ValueError(f"invalid properties key {key!r}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"newline in the value of {key!r}")
        lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
    return "\n".join(lines) + "\n"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LISTEN_PORTS_FROM = 10000  # below: well-known and registered services (5432, 8083, 9092, ...)


def listen_port_range(range_file: Path = _EPHEMERAL_RANGE_FILE) -> range:
    """Ports to pick listen ports from: those below the kernel's ephemeral range, from 10000 on.

    The kernel hands ports of the ephemeral range to every outgoing connection (a Kafka client's,
    a JVM's), so a port picked there and bound minutes later (a test session starts Connect long
    after it picked Connect's port) can be taken meanwhile. Empty when the ephemeral range leaves
    fewer than 1000 ports below it, or cannot be read (not Linux).
    """
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    if low - _LISTEN_PORTS_FROM < 1000:
        return range(0)
    return range(_LISTEN_PORTS_FROM, low - 1)  # - 1: a pair's second port stays below `low` too


def _bindable(host: str, port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise
        return False
    return True


def free_port(host: str = LOOPBACK, *, pairs: bool = False) -> int:
    """A port nobody listens on now; with `pairs`, `port + 1` is free as well (broker + controller).

    Picked at random from `listen_port_range()`, outside the ports the kernel gives to outgoing
    connections; where that range is empty, from the kernel's own choice (bind to port 0).
    """
    ports = listen_port_range()
    for _ in range(200):
        if ports:
            port = secrets.choice(ports)
            if not _bindable(host, port):
                continue
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        if not pairs or _bindable(host, port + 1):
            return port
    raise StackError("no free port pair found" if pairs else "no free port found")


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.5,
    abort: Callable[[], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False).

    Raises:
        StackError: `abort` returned a reason (e.g. the process died), so waiting longer is pointless.
    """
    deadline = clock() + timeout
    while True:
        if predicate():
            return True
        if abort is not None and (reason := abort()) is not None:
            raise StackError(reason)
        if clock() >= deadline:
            return False
        sleep(interval)


@contextlib.contextmanager
def stack_lock(stack_dir: Path, name: str = ".lock") -> Iterator[None]:
    """Serialize work on one stack directory across processes (an flock on `stack_dir/name`).

    Not re-entrant: two different `name`s are needed for nested sections.
    """
    stack_dir.mkdir(parents=True, exist_ok=True)
    with (stack_dir / name).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
