"""The `yespo-connector` command line: parse arguments, load settings, run, map errors to exit codes.

Each command group lives in its own module under `connector/commands/` and exposes
`register(app: typer.Typer) -> None`; this module discovers them, so adding a command touches one file.
`main` is the only place that turns exceptions into exit codes: a `ConnectorError` prints one line
`TypeName: message` (through `logs.redact`) and exits 1; so does a Kafka client that refuses its
configuration (`_INVALID_ARG`, e.g. a `kafka.extra` CA file that does not exist), naming `kafka.extra`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import sys
from typing import Annotated

import typer
from confluent_kafka import KafkaError as ClientError
from confluent_kafka import KafkaException

import connector.commands
from connector import __version__
from connector.errors import ConfigError, ConnectorError
from connector.logs import redact
from connector.ops.signals import TerminatedError

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="yespo-connector",
    help=(
        "Debezium CDC -> per-customer state in a compacted Kafka topic -> Yespo contacts, exactly-once.\n\n"
        "Every config key can also come from the environment as YESPO_CONNECTOR_<SECTION>__<KEY> "
        "(e.g. YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"yespo-connector {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
        ),
    ] = False,
) -> None:
    """Yespo connector."""


def reflowed(doc: str) -> str:
    """A docstring as `--help` text: each paragraph's lines joined into one line.

    Typer keeps the single line breaks of every paragraph after the first, and the terminal then
    wraps those lines again, which leaves ragged text. List items (`-`, `*`) and indented lines keep
    their own line.
    """
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and not line.startswith((" ", "-", "*")):
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _register_commands(target: typer.Typer) -> None:
    for info in sorted(pkgutil.iter_modules(connector.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"connector.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(target)
    for group in (target, *(g.typer_instance for g in target.registered_groups if g.typer_instance)):
        for command in group.registered_commands:
            if command.help is None and command.callback is not None and command.callback.__doc__:
                command.help = reflowed(command.callback.__doc__)


_register_commands(app)


def _refused_config(exc: KafkaException) -> ConfigError | None:
    """The `ConfigError` for a client librdkafka would not build (`_INVALID_ARG`), else None.

    The ops commands build their clients from `kafka.extra` as they go; a property librdkafka refuses
    only when a client is built (a CA file that does not exist) is reported as `validate-config`
    reports it.
    """
    err = exc.args[0] if exc.args else None
    if not isinstance(err, ClientError) or err.code() != ClientError._INVALID_ARG:
        return None
    return ConfigError(
        f"the Kafka client refuses the configuration: {err.name()}: {err.str()}", key="kafka.extra"
    )


def _fail(exc: Exception) -> None:
    # Outside the logging filters: the printed line is redacted here (a registered secret, an email
    # address or a phone number quoted by a library's message).
    typer.echo(redact(f"{type(exc).__name__}: {exc}"), err=True)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script (usage errors exit 2, connector errors exit 1, SIGTERM 143)."""
    try:
        app(args=argv, prog_name="yespo-connector")
    except ConnectorError as exc:
        _fail(exc)
    except KafkaException as exc:
        refused = _refused_config(exc)
        if refused is None:
            raise
        _fail(refused)
    except KeyboardInterrupt:
        sys.exit(130)
    except TerminatedError:
        sys.exit(TerminatedError.exit_code)  # 143: an ops command stopped by SIGTERM, cleaned up
