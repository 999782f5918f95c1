"""`yespo-connector stack up|down|status`: manage the local Kafka (+ PostgreSQL, Kafka Connect) stack.

Ports and directories come from flags or `YESPO_STACK_*` environment variables, so a second stack
(tests, a colleague's broker on 9092) can run next to the default one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from connector.stack.base import ComponentStatus, StackConfig, default_deploy_dir
from connector.stack.local import COMPONENTS, LocalStack, parse_with
from connector.stack.maven import ensure_jars
from connector.stack.postgres import superuser_dsn
from connector.stack.smoke import smoke_check

__all__ = ["StandinPort", "build_config", "register", "resolve_ports", "save_ports"]

logger = logging.getLogger(__name__)

stack_app = typer.Typer(
    name="stack",
    help="The local stack: a real single-node KRaft broker (+ PostgreSQL, Kafka Connect/Debezium).",
    no_args_is_help=True,
)

StackDir = Annotated[
    Path | None,
    typer.Option("--stack-dir", envvar="YESPO_STACK_DIR", help="Data, logs, pids (default: <repo>/.stack)."),
]
JarsDir = Annotated[
    Path | None,
    typer.Option(
        "--jars-dir", envvar="YESPO_STACK_JARS_DIR", help="libs/ and plugins/ (default: stack dir)."
    ),
]
KafkaPort = Annotated[
    int | None,
    typer.Option(
        "--kafka-port", envvar="YESPO_STACK_KAFKA_PORT", help="Broker port (default: last up, else 9092)."
    ),
]
ControllerPort = Annotated[
    int | None,
    typer.Option(
        "--controller-port",
        envvar="YESPO_STACK_CONTROLLER_PORT",
        help="Controller port (default: kafka port + 1).",
    ),
]
PostgresPort = Annotated[
    int | None,
    typer.Option(
        "--postgres-port",
        envvar="YESPO_STACK_POSTGRES_PORT",
        help="PostgreSQL port (default: last up, else 5432).",
    ),
]
ConnectPort = Annotated[
    int | None,
    typer.Option(
        "--connect-port",
        envvar="YESPO_STACK_CONNECT_PORT",
        help="Kafka Connect port (default: last up, else 8083).",
    ),
]
StandinPort = Annotated[
    int | None,
    typer.Option(
        "--standin-port",
        envvar="YESPO_STACK_STANDIN_PORT",
        help="The Yespo stand-in's port (default: last up or demo, else 8089).",
    ),
]
MavenRepo = Annotated[
    Path | None,
    typer.Option(
        "--maven-repo-local", envvar="YESPO_STACK_MAVEN_REPO", help="Local Maven repository (default: ~/.m2)."
    ),
]
With = Annotated[
    str,
    typer.Option(
        "--with",
        envvar="YESPO_STACK_WITH",
        help=f"Extra components, comma-separated: {', '.join(list(COMPONENTS)[1:])}.",
    ),
]


_DEFAULT_PORTS: dict[str, int | None] = {
    "kafka_port": 9092,
    "controller_port": None,
    "postgres_port": 5432,
    "connect_port": 8083,
    "standin_port": 8089,
}
_PORTS_FILE = "ports.json"


def resolve_ports(explicit: dict[str, int | None], saved: dict[str, int | None]) -> dict[str, int | None]:
    """Per port: the flag/env value if given, else the stack dir's last `up` value, else the default."""
    resolved: dict[str, int | None] = {}
    for key, default in _DEFAULT_PORTS.items():
        value = explicit.get(key)
        resolved[key] = value if value is not None else saved.get(key, default)
    return resolved


def _load_saved(root: Path) -> dict[str, int | None]:
    try:
        data = json.loads((root / "run" / _PORTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in _DEFAULT_PORTS and (v is None or isinstance(v, int))}


def save_ports(config: StackConfig) -> None:
    """Remember the stack's ports in its stack dir (`build_config` reads them when none is given)."""
    ports = {
        "kafka_port": config.kafka_port,
        "controller_port": config.controller_port,
        "postgres_port": config.postgres_port,
        "connect_port": config.connect_port,
        "standin_port": config.standin_port,
    }
    config.run_dir.mkdir(parents=True, exist_ok=True)
    (config.run_dir / _PORTS_FILE).write_text(json.dumps(ports) + "\n", encoding="utf-8")


def build_config(
    stack_dir: Path | None = None,
    jars_dir: Path | None = None,
    kafka_port: int | None = None,
    controller_port: int | None = None,
    postgres_port: int | None = None,
    connect_port: int | None = None,
    maven_repo_local: Path | None = None,
    *,
    standin_port: int | None = None,
) -> StackConfig:
    """A `StackConfig` from CLI values; ports not given come from the stack dir's last `up`, then defaults."""
    deploy = default_deploy_dir()
    root = (stack_dir or deploy.parent / ".stack").absolute()
    explicit = {
        "kafka_port": kafka_port,
        "controller_port": controller_port,
        "postgres_port": postgres_port,
        "connect_port": connect_port,
        "standin_port": standin_port,
    }
    ports = resolve_ports(explicit, _load_saved(root))
    return StackConfig(
        stack_dir=root,
        jars_dir=jars_dir.absolute() if jars_dir else None,
        deploy_dir=deploy,
        kafka_port=ports["kafka_port"] or 9092,
        controller_port=ports["controller_port"],
        postgres_port=ports["postgres_port"] or 5432,
        connect_port=ports["connect_port"] or 8083,
        standin_port=ports["standin_port"] or 8089,
        maven_repo_local=maven_repo_local.absolute() if maven_repo_local else None,
    )


def _print(statuses: list[ComponentStatus]) -> None:
    for status in statuses:
        state = "running" if status.running else "stopped"
        pid = f"pid {status.pid}" if status.pid else ""
        typer.echo(f"{status.name:<9} {state:<8} {status.endpoint:<48} {pid:<10} {status.detail}".rstrip())


@stack_app.command("up")
def up(
    with_: With = "",
    stack_dir: StackDir = None,
    jars_dir: JarsDir = None,
    kafka_port: KafkaPort = None,
    controller_port: ControllerPort = None,
    postgres_port: PostgresPort = None,
    connect_port: ConnectPort = None,
    standin_port: StandinPort = None,
    maven_repo_local: MavenRepo = None,
) -> None:
    """Fetch jars (once), start the stack, wait until it answers, print its endpoints. Idempotent."""
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
    statuses = LocalStack(config).up(parse_with(with_))
    save_ports(config)
    _print(statuses)
    typer.echo(f"\nexport KAFKA_BOOTSTRAP_SERVERS={config.bootstrap_servers}")
    names = {s.name for s in statuses}
    if "postgres" in names:
        typer.echo(f"export POSTGRES_DSN={superuser_dsn(config)}")
    if "connect" in names:
        typer.echo(f"export KAFKA_CONNECT_URL=http://{config.host}:{config.connect_port}")


@stack_app.command("down")
def down(
    stack_dir: StackDir = None,
    kafka_port: KafkaPort = None,
    controller_port: ControllerPort = None,
    postgres_port: PostgresPort = None,
    connect_port: ConnectPort = None,
    standin_port: StandinPort = None,
) -> None:
    """Stop every component of the stack (SIGTERM, then SIGKILL) and remove pid files. Data is kept."""
    config = build_config(
        stack_dir, None, kafka_port, controller_port, postgres_port, connect_port, standin_port=standin_port
    )
    LocalStack(config).down()
    typer.echo(f"stack in {config.stack_dir} stopped")


@stack_app.command("status")
def status(
    stack_dir: StackDir = None,
    kafka_port: KafkaPort = None,
    controller_port: ControllerPort = None,
    postgres_port: PostgresPort = None,
    connect_port: ConnectPort = None,
    standin_port: StandinPort = None,
) -> None:
    """Show which components run and where (exit 0 either way)."""
    config = build_config(
        stack_dir, None, kafka_port, controller_port, postgres_port, connect_port, standin_port=standin_port
    )
    _print(LocalStack(config).status())


@stack_app.command("fetch")
def fetch(
    with_: With = "",
    stack_dir: StackDir = None,
    jars_dir: JarsDir = None,
    maven_repo_local: MavenRepo = None,
) -> None:
    """Only download the jars (Kafka libs; the Debezium plugin too with --with connect)."""
    config = build_config(stack_dir, jars_dir, maven_repo_local=maven_repo_local)
    filled = ensure_jars(config, with_debezium="connect" in parse_with(with_))
    for path in filled:
        typer.echo(f"fetched {path}")
    typer.echo(f"jars up to date in {config.jars_dir or config.stack_dir}")


@stack_app.command("smoke")
def smoke(
    bootstrap: Annotated[
        str | None,
        typer.Option("--bootstrap", help="Another broker (default: this stack's)."),
    ] = None,
    kafka_port: KafkaPort = None,
) -> None:
    """Commit one record transactionally and read it back read_committed (proves the broker works)."""
    target = bootstrap or build_config(kafka_port=kafka_port).bootstrap_servers
    seconds = smoke_check(target)
    typer.echo(
        f"smoke check OK on {target}: transactional produce -> read_committed consume in {seconds:.2f} s"
    )


def register(app: typer.Typer) -> None:
    """Add the `stack` command group to the CLI."""
    app.add_typer(stack_app, name="stack")
