"""`yespo-connector dlq`: what the dead-letter topic holds, by stage, error class and reason."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from connector import logs
from connector.commands._confighelp import config_keys_epilog
from connector.config import load_settings
from connector.ops.dlq import DlqReader, summarize
from connector.ops.offsets import parse_time

__all__ = ["register"]

logger = logging.getLogger(__name__)

CONFIG_KEYS = [
    "kafka.bootstrap_servers",
    "kafka.extra",
    "kafka.group_id",
    "output.dlq_topic",
    "observability.log_format",
    "observability.log_level",
]


def dlq(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file.")],
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only records written at or after this ISO-8601 time (2026-11-29T12:00:00Z)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")] = False,
    top: Annotated[int, typer.Option("--top", min=1, help="Error classes and reasons to list.")] = 10,
) -> None:
    """Summarize the dead-letter topic: records by stage, error class, reason and source topic.

    Reads output.dlq_topic (read_committed) to its end and commits nothing; safe while the connector
    runs. Prints counts and the `yespo.*` headers' texts only, never a record's key or value (they are
    customer data). Records the deliver stage dead-lettered can be re-driven after fixing their cause
    with `resync --from-dlq`.
    """
    moment = parse_time(since, "--since") if since is not None else None
    settings = load_settings(config)
    logs.configure_from(settings)
    with DlqReader(settings) as reader:
        summary = summarize(reader.entries(moment))
    if as_json:
        typer.echo(json.dumps({"topic": settings.output.dlq_topic, **summary.as_json()}))
        return
    typer.echo(f"topic {settings.output.dlq_topic}")
    for line in summary.lines(top):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("dlq", epilog=config_keys_epilog(CONFIG_KEYS))(dlq)
