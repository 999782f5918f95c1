"""`yespo-connector rebuild-state`: clear the merge stage's state and reprocess the source topics."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from connector import logs
from connector.commands._confighelp import config_keys_epilog
from connector.commands.resync import console, progress_reporter
from connector.config import load_settings
from connector.errors import ConfigError
from connector.ops.rebuild import run_rebuild
from connector.ops.signals import sigterm_unwinds

__all__ = ["register"]

logger = logging.getLogger(__name__)

CONFIG_KEYS = [
    "kafka.bootstrap_servers",
    "kafka.extra",
    "kafka.group_id",
    "kafka.transactional_id_prefix",
    "kafka.transaction_timeout_ms",
    "source.customers.topic",
    "source.children",
    "state.changes_topic",
    "state.topic",
    "observability.log_format",
    "observability.log_level",
]


def rebuild_state(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read the state and plan; change nothing.")
    ] = False,
) -> None:
    """Clear the state and make the merge stage reprocess the source topics from the start.

    In ONE Kafka transaction: a tombstone for every key of state.topic, and the merge group's
    offsets moved (source topics to earliest, state.changes_topic to its end). The next merge run
    re-sends EVERY live customer to Yespo (a full re-sync; upsert versions restart at 1). Refuses
    while the merge stage runs; asks for confirmation unless --yes.
    """
    settings = load_settings(config)
    logs.configure_from(settings)
    if not yes and not dry_run:
        if not sys.stdin.isatty():
            raise ConfigError("rebuild-state clears the state and re-sends every contact: pass --yes")
        typer.confirm(
            f"Clear {settings.state.topic} and rewind group {settings.kafka.group_id}? The next merge "
            "run re-sends every contact to Yespo.",
            abort=True,
        )
    out = console()
    with sigterm_unwinds():  # SIGTERM aborts the open transaction and leaves the group, as Ctrl-C does
        summary = run_rebuild(settings, dry_run=dry_run, progress=progress_reporter(out))
    for line in summary.lines():
        out.print(line)
    if dry_run:
        out.print("dry run: nothing changed")
        if summary.members:
            out.print(
                f"note: group {settings.kafka.group_id} has {summary.members} live member(s); stop the "
                "merge stage before running this for real"
            )
    else:
        out.print("start the merge stage to reprocess the source topics")


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("rebuild-state", epilog=config_keys_epilog(CONFIG_KEYS))(rebuild_state)
