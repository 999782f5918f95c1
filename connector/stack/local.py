"""The local stack as a whole: which components exist, in which order they start and stop.

`kafka` always runs; `postgres` and `connect` are opt-in (`--with postgres,connect`). A new component
(the Yespo stand-in, a schema registry) is one class implementing `Component` plus one entry in
`COMPONENTS`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from connector.errors import StackError
from connector.stack.base import Component, ComponentStatus, StackConfig, stack_lock
from connector.stack.kafka import KafkaBroker

__all__ = ["COMPONENTS", "LocalStack", "local_kafka_stack", "parse_with"]

logger = logging.getLogger(__name__)


def _postgres(config: StackConfig) -> Component:
    from connector.stack.postgres import PostgresServer

    return PostgresServer(config)


def _connect(config: StackConfig) -> Component:
    from connector.stack.connect import KafkaConnect

    return KafkaConnect(config)


def _standin(config: StackConfig) -> Component:
    from connector.stack.standin import StandInServer

    return StandInServer(config)


def _connector(config: StackConfig) -> Component:
    from connector.demo.components import ConnectorProcess, DemoConfig

    return ConnectorProcess(DemoConfig(config))


# start order; `down` goes in reverse. kafka is mandatory, the rest are selected with --with.
COMPONENTS: dict[str, Callable[[StackConfig], Component]] = {
    "kafka": KafkaBroker,
    "postgres": _postgres,
    "connect": _connect,
    "stand-in": _standin,
    "connector": _connector,  # `yespo-connector run` on the config `yespo-connector demo` writes
}


def parse_with(value: str | Iterable[str] | None) -> list[str]:
    """Turn `"postgres,connect"` into the ordered component list (kafka first, start order kept).

    `connect` pulls in `postgres`, because the Debezium connector it registers reads from it.

    Raises:
        StackError: an unknown component name.
    """
    if value is None:
        names: list[str] = []
    elif isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    else:
        names = [part.strip() for part in value if part.strip()]
    unknown = sorted(set(names) - set(COMPONENTS))
    if unknown:
        raise StackError(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENTS)}")
    wanted = {"kafka", *names}
    if "connect" in wanted:
        wanted.add("postgres")
    return [name for name in COMPONENTS if name in wanted]


class LocalStack:
    """Start, stop and inspect the stack's components in one stack directory."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._components: dict[str, Component] = {}

    def component(self, name: str) -> Component:
        """The component called `name` (built once per stack object)."""
        if name not in self._components:
            if name not in COMPONENTS:
                raise StackError(f"unknown component {name}")
            self._components[name] = COMPONENTS[name](self.config)
        return self._components[name]

    def up(self, names: Iterable[str] = ("kafka",)) -> list[ComponentStatus]:
        """Start `names` in dependency order; components already running are reused."""
        wanted = parse_with(list(names))
        with stack_lock(self.config.stack_dir):
            return [self.component(name).up() for name in wanted]

    def down(self, names: Iterable[str] | None = None) -> None:
        """Stop `names` (default: every component), in reverse start order."""
        wanted = list(COMPONENTS) if names is None else [n for n in COMPONENTS if n in set(names)]
        with stack_lock(self.config.stack_dir):
            for name in reversed(wanted):
                self.component(name).down()

    def status(self) -> list[ComponentStatus]:
        """The status of every known component."""
        return [self.component(name).status() for name in COMPONENTS]

    @property
    def bootstrap_servers(self) -> str:
        """The broker's `host:port`."""
        return self.config.bootstrap_servers


@contextlib.contextmanager
def local_kafka_stack(config: StackConfig, names: Iterable[str] = ("kafka",)) -> Iterator[LocalStack]:
    """Bring the stack up for the duration of a `with` block, then stop everything it runs."""
    stack = LocalStack(config)
    try:
        stack.up(names)
        yield stack
    finally:
        stack.down()
