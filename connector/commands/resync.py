"""`yespo-connector resync`: re-emit contact upserts for the customers in the state topic."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from connector import logs
from connector.commands._confighelp import config_keys_epilog
from connector.config import load_settings
from connector.ops.offsets import parse_time
from connector.ops.progress import LogProgress, ProgressReporter
from connector.ops.resync import run_resync
from connector.ops.signals import sigterm_unwinds

__all__ = ["RichProgress", "console", "progress_reporter", "register"]

logger = logging.getLogger(__name__)

CONFIG_KEYS = [
    "kafka.bootstrap_servers",
    "kafka.extra",
    "kafka.group_id",
    "kafka.transactional_id_prefix",
    "source.customers.topic",
    "source.children",
    "state.changes_topic",
    "state.topic",
    "output.upserts_topic",
    "output.dlq_topic",
    "contact",
    "observability.log_format",
    "observability.log_level",
]


class RichProgress:
    """A rich progress bar (for a terminal)."""

    def __init__(self, out: Console) -> None:
        """Draw on `out`."""
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
            transient=False,
        )
        self._task: int | None = None

    def start(self, total: int, description: str) -> None:  # noqa: D102
        self._progress.start()
        self._task = self._progress.add_task(description, total=max(total, 1))

    def advance(self, n: int = 1) -> None:  # noqa: D102
        if self._task is not None:
            self._progress.advance(self._task, n)  # type: ignore[arg-type]

    def finish(self) -> None:  # noqa: D102
        if self._task is not None:
            task = self._progress.tasks[0]
            self._progress.update(self._task, completed=task.total)  # type: ignore[arg-type]
        self._progress.stop()

    def close(self) -> None:
        """Stop the live display (shows the cursor again), e.g. before a failure's error line."""
        self._progress.stop()


def console() -> Console:
    """stdout; wide when it is not a terminal (no wrapping in logs and pipes)."""
    out = Console()
    return out if out.is_terminal else Console(width=240)


def progress_reporter(out: Console) -> ProgressReporter:
    """A rich bar on a terminal, periodic log lines otherwise."""
    return RichProgress(out) if out.is_terminal else LogProgress(interval_s=5.0)


def resync(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file.")],
    force: Annotated[
        bool, typer.Option("--force", help="Re-emit every customer with a contact, even when unchanged.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read the state and count; write nothing.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Customers per Kafka transaction.")
    ] = 5000,
    from_dlq: Annotated[
        bool,
        typer.Option(
            "--from-dlq",
            help="Only the customers whose records the deliver stage dead-lettered "
            "(output.dlq_topic), forced.",
        ),
    ] = False,
    with_erases: Annotated[
        bool,
        typer.Option(
            "--with-erases",
            help="With --from-dlq: also send dead-lettered erases that are not the customer's last record "
            "(it wipes the contact the customer has now; run it once).",
        ),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="With --from-dlq: only DLQ records written at or after this ISO-8601 time "
            "(2026-11-29T12:00:00Z).",
        ),
    ] = None,
) -> None:
    """Re-emit contact upserts from the state topic (repopulate a Yespo account, apply a mapping change).

    Maps every customer in state.topic with the current `contact` mapping. Without --force only
    customers whose contact differs from what was last emitted get an upsert (e.g. after a mapping
    change); with --force every customer with a contact gets exactly one. Each upsert (next version)
    and the customer's updated state record are written in one Kafka transaction (transactional.id
    <prefix>-<group_id>-resync), so the merge stage continues from the new versions.

    Refuses while the merge stage runs (its consumer group has live members): stop it first. While
    resync runs it holds the merge group, so a merge stage started meanwhile makes resync abort.

    With --from-dlq it re-drives what the deliver stage dead-lettered (after fixing the cause: Yespo
    was down longer than yespo.max_retry_seconds, a field id was wrong, ...): each customer named by
    such a DLQ record gets its current contact as a forced upsert, or its dead-lettered delete again
    when that delete is still its last record. Old records are never sent as they are, so nothing
    newer is overwritten. A dead-lettered erase that is not the customer's last record is reported,
    and sent (once) only with --with-erases. The DLQ records stay where they are.
    """
    # usage errors (exit 2), like a value typer rejects itself
    if since is not None and not from_dlq:
        raise typer.BadParameter("only with --from-dlq", param_hint="--since")
    if with_erases and not from_dlq:
        raise typer.BadParameter("only with --from-dlq", param_hint="--with-erases")
    moment = parse_time(since, "--since") if since is not None else None
    settings = load_settings(config)
    logs.configure_from(settings)
    out = console()
    with sigterm_unwinds():  # SIGTERM aborts the open transaction and leaves the group, as Ctrl-C does
        summary = run_resync(
            settings,
            force=force,
            dry_run=dry_run,
            batch_size=batch_size,
            progress=progress_reporter(out),
            from_dlq=from_dlq,
            since=moment,
            with_erases=with_erases,
        )
    for line in summary.lines():
        out.print(line)
    if dry_run:
        out.print("dry run: nothing written")
        if summary.members:
            out.print(
                f"note: group {settings.kafka.group_id} has {summary.members} live member(s); stop the "
                "merge stage before running this for real"
            )


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("resync", epilog=config_keys_epilog(CONFIG_KEYS))(resync)
