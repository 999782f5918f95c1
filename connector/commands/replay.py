"""`yespo-connector replay`: reset a stage's committed offsets to the earliest offsets or to a time."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Literal

import typer
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.table import Table

from connector import logs
from connector.commands._confighelp import config_keys_epilog
from connector.config import load_settings
from connector.kafka.clients import admin_config
from connector.ops.offsets import ResetPlan, apply_reset, parse_replay_target, plan_reset
from connector.ops.stages import stage_group

__all__ = ["register", "render_plan", "ttl_warning"]

logger = logging.getLogger(__name__)

CONFIG_KEYS = [
    "kafka.bootstrap_servers",
    "kafka.extra",
    "kafka.group_id",
    "kafka.deliver_group_id",
    "source.customers.topic",
    "source.children",
    "state.changes_topic",
    "state.delete_marker_ttl_hours",
    "output.upserts_topic",
    "observability.log_format",
    "observability.log_level",
]


def render_plan(plan: ResetPlan) -> Table:
    """The plan as a table: topic, partition, current committed -> new."""
    table = Table(title=f"{plan.stage} stage, group {plan.group}, to {plan.target}", box=None, pad_edge=False)
    for column in ("TOPIC", "PARTITION", "COMMITTED", "", "NEW"):
        table.add_column(column, justify="left" if column == "TOPIC" else "right", no_wrap=True)
    for r in plan.resets:
        table.add_row(
            r.topic, str(r.partition), "-" if r.current is None else str(r.current), "->", str(r.new)
        )
    return table


def ttl_warning(stage: str, target: dt.datetime | None, ttl_hours: float, now: dt.datetime) -> str | None:
    """The warning for a merge replay that re-reads source records older than the delete markers.

    A deleted customer's state is tombstoned once its marker expires (`state.delete_marker_ttl_hours`);
    replayed, its older records apply again: an upsert (version 1) reaches Yespo, restoring or
    re-creating the contact, until its replayed delete arrives. `target` None means `earliest`, which
    reaches as far back as the source topics' retention. None: no warning (the deliver stage, or a
    time within the TTL).
    """
    if stage != "merge":
        return None
    if target is None:
        reach = "from the earliest offsets"
    elif (now - target).total_seconds() > ttl_hours * 3600:
        reach = f"from {target.isoformat()}"
    else:
        return None
    return (
        f"warning: replaying the merge stage {reach} re-reads source records older than "
        f"state.delete_marker_ttl_hours ({ttl_hours:g} h): a customer deleted more than that long ago "
        "whose records the source topics still hold is upserted to Yespo again (a soft-deleted contact "
        "restored, an erased one re-created) until its replayed delete arrives. To avoid it, replay "
        f"from a time within the last {ttl_hours:g} h, or keep state.delete_marker_ttl_hours above the "
        'source topics\' retention (docs/operations.md, "From replay").'
    )


def replay(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file.")],
    from_: Annotated[
        str,
        typer.Option(
            "--from",
            help="'earliest', or an ISO-8601 time with a zone (2026-11-29T12:00:00Z): the first record "
            "at or after it.",
        ),
    ],
    stage: Annotated[
        Literal["merge", "deliver"],
        typer.Option(
            "--stage",
            help="merge: kafka.group_id on the source topics + state.changes_topic; "
            "deliver: kafka.deliver_group_id on output.upserts_topic.",
        ),
    ] = "merge",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")] = False,
) -> None:
    """Reset a stage's committed offsets so it re-processes from the earliest offsets or from a time.

    Every partition of the stage's topics moves (current committed -> new). Refuses while the
    stage's consumer group has live members: stop that stage first (--dry-run still shows the plan).
    Re-processing through the merge stage emits no duplicate upserts (state positions dedupe), except
    for customers deleted more than state.delete_marker_ttl_hours ago, whose old records re-create
    them until their delete is replayed (a warning names it); replaying the deliver stage re-sends
    the retained upserts to Yespo.
    """
    target = parse_replay_target(from_)
    settings = load_settings(config)
    logs.configure_from(settings)
    # librdkafka's own log lines go to Python logging instead of stderr (errors are raised anyway)
    admin = AdminClient(admin_config(settings, logger=logging.getLogger("connector.librdkafka")))
    # the changes topic never moves forward: a change routed but not merged yet would be lost
    keep = frozenset({settings.state.changes_topic}) if stage == "merge" else frozenset()
    plan = plan_reset(
        admin, stage_group(settings, stage), target, require_empty=not dry_run, never_forward=keep
    )
    # once there is a plan (a command that fails says only why, in one line)
    warning = ttl_warning(stage, target, settings.state.delete_marker_ttl_hours, dt.datetime.now(dt.UTC))
    if warning is not None:
        typer.echo(warning, err=True)
    console = Console()
    if not console.is_terminal:
        console = Console(width=240)
    console.print(render_plan(plan))
    if dry_run:
        console.print(f"dry run: {len(plan.resets)} partition(s) would move; nothing changed")
        if plan.members:
            console.print(
                f"note: group {plan.group} has {plan.members} live member(s); stop the {plan.stage} "
                "stage before replaying"
            )
        return
    apply_reset(admin, plan)
    console.print(f"reset {len(plan.resets)} partition(s) of group {plan.group} to {plan.target}")


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("replay", epilog=config_keys_epilog(CONFIG_KEYS))(replay)
