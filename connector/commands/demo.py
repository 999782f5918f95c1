"""`yespo-connector demo [--down]`: the whole chain on this machine (what `make demo` runs).

Ports come from the same flags / `YESPO_STACK_*` variables as `yespo-connector stack`, the stand-in's
included (`--standin-port`, `YESPO_STACK_STANDIN_PORT`, default 8089); the demo remembers them for
`stack status/down`.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console

from connector.commands.stack import (
    ConnectPort,
    ControllerPort,
    JarsDir,
    KafkaPort,
    MavenRepo,
    PostgresPort,
    StackDir,
    StandinPort,
    build_config,
    save_ports,
)
from connector.errors import StackError

__all__ = ["register"]

logger = logging.getLogger(__name__)


def demo(
    down: Annotated[
        bool, typer.Option("--down", help="Stop the connector, the stand-in and the stack instead.")
    ] = False,
    stack_dir: StackDir = None,
    jars_dir: JarsDir = None,
    kafka_port: KafkaPort = None,
    controller_port: ControllerPort = None,
    postgres_port: PostgresPort = None,
    connect_port: ConnectPort = None,
    standin_port: StandinPort = None,
    maven_repo_local: MavenRepo = None,
) -> None:
    """Run the demo: stack up, sample customers, connector catching up, live changes, the result.

    PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> merge -> deliver -> the Yespo stand-in, all on
    loopback. The first run downloads jars (Maven Central) and, as root, PostgreSQL (Debian).
    """
    from connector.demo.components import DemoConfig, port_busy
    from connector.demo.run import run_demo, stop_demo

    config = build_config(
        stack_dir,
        jars_dir,
        kafka_port,
        controller_port,
        postgres_port,
        connect_port,
        maven_repo_local,
        standin_port=standin_port,
    )
    settings = DemoConfig(config)
    console = Console(width=None if sys.stdout.isatty() else 110, highlight=False)
    if down:
        stop_demo(settings, console)
        return
    busy = port_busy(settings)
    if busy:
        raise StackError(f"in use by another process: {', '.join(busy)} (pick another with --standin-port)")
    save_ports(config)  # `stack status/down` and the next `demo` use these ports too
    run_demo(settings, console)


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("demo")(demo)
