"""`yespo-connector lag`: per-partition lag (records and seconds) and status of both stages' groups."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from connector import logs
from connector.commands._confighelp import config_keys_epilog
from connector.config import load_settings
from connector.errors import KafkaError
from connector.ops.lag import GroupLag, LagReader
from connector.ops.lag_status import LagStatus, LagWindows, worst_status
from connector.ops.signals import GracefulShutdown
from connector.ops.stages import stage_groups

__all__ = ["register", "render_json", "render_table"]

logger = logging.getLogger(__name__)

WINDOW_SAMPLES = 10

CONFIG_KEYS = [
    "kafka.bootstrap_servers",
    "kafka.extra",
    "kafka.group_id",
    "kafka.deliver_group_id",
    "source.customers.topic",
    "source.children",
    "state.changes_topic",
    "output.upserts_topic",
    "observability.log_format",
    "observability.log_level",
]

_STYLE = {
    LagStatus.OK: "green",
    LagStatus.WARN: "yellow",
    LagStatus.STALLED: "magenta",
    LagStatus.STOPPED: "red",
    LagStatus.ERROR: "bold red",
}

Statuses = dict[tuple[str, str, int], LagStatus]


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _group_status(group: GroupLag, statuses: Statuses) -> LagStatus:
    if group.error:
        return LagStatus.ERROR
    return worst_status(statuses[(group.group, p.topic, p.partition)] for p in group.partitions)


def render_json(groups: list[GroupLag], statuses: Statuses) -> str:
    """The sample as one JSON document (one line).

    Shape: `{"taken_at", "groups": [{stage, group, state, members, status, error, partitions:
    [{topic, partition, committed, start, end, lag, lag_seconds, status, error}]}]}`.
    """
    doc: dict[str, Any] = {"taken_at": _iso(groups[0].taken_at) if groups else None, "groups": []}
    for g in groups:
        doc["groups"].append(
            {
                "stage": g.stage,
                "group": g.group,
                "state": g.state,
                "members": g.members,
                "status": _group_status(g, statuses).value,
                "error": g.error,
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed": p.committed,
                        "start": p.start,
                        "end": p.end,
                        "lag": p.lag,
                        "lag_seconds": None if p.lag_seconds is None else round(p.lag_seconds, 3),
                        "status": statuses[(g.group, p.topic, p.partition)].value,
                        "error": p.error,
                    }
                    for p in g.partitions
                ],
            }
        )
    return json.dumps(doc)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_table(groups: list[GroupLag], statuses: Statuses) -> Group:
    """A rich renderable: one table per stage group, with a header line each."""
    parts: list[Any] = []
    for g in groups:
        status = _group_status(g, statuses)
        header = Text.assemble(
            (f"{g.stage}", "bold"),
            f"  group {g.group}  state {g.state}  members {g.members}  status ",
            (status.value, _STYLE[status]),
        )
        parts.append(header)
        if g.error:
            parts.append(Text(f"  error: {g.error}", style="red"))
            continue
        table = Table(box=None, pad_edge=False)
        for column in ("TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "LAG-SECONDS", "STATUS", "NOTE"):
            left = column in ("TOPIC", "STATUS", "NOTE")
            table.add_column(column, justify="left" if left else "right", no_wrap=column != "NOTE")
        for p in g.partitions:
            pstatus = statuses[(g.group, p.topic, p.partition)]
            table.add_row(
                p.topic,
                _num(p.partition) if p.partition >= 0 else "-",
                _num(p.committed),
                _num(p.end),
                _num(p.lag),
                _seconds(p.lag_seconds),
                Text(pstatus.value, style=_STYLE[pstatus]),
                p.error or "",
            )
        parts.append(table)
    if groups:
        parts.append(Text(f"taken at {_iso(groups[0].taken_at)}", style="dim"))
    return Group(*parts)


def _sample(
    reader: LagReader, windows: LagWindows, settings_groups: list[Any]
) -> tuple[list[GroupLag], Statuses]:
    groups = [reader.read(sg) for sg in settings_groups]
    statuses: Statuses = {}
    for g in groups:
        for key, sample in g.samples():
            statuses[key] = windows.add(key, sample)
    return groups, statuses


def lag(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (one document per sample) for scripts.")
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            help="Sample every SECONDS until Ctrl-C; status uses the last 10 samples "
            "(WARN: lag growing, STALLED: committed offset not moving).",
            min=0.5,
        ),
    ] = None,
) -> None:
    """Show each stage's consumer lag per partition: committed and end offsets, records and seconds behind.

    Merge stage: group kafka.group_id on the source topics and state.changes_topic. Deliver stage:
    group kafka.deliver_group_id on output.upserts_topic. END is the last stable offset (what a
    read_committed consumer can reach); LAG counts offsets as kafka-consumer-groups does (transaction
    markers included); LAG-SECONDS is the age of the oldest unconsumed record. STATUS: OK, WARN (lag
    growing), STALLED (committed offset not moving while lag > 0), STOPPED (no members and lag > 0),
    ERROR (cannot read, e.g. a topic that does not exist). Without --watch, the command exits 1 when a
    group or a partition is ERROR (after printing the sample). Safe while the connector runs: it joins
    no group and commits nothing.
    """
    settings = load_settings(config)
    logs.configure_from(settings)
    groups_to_read = stage_groups(settings)
    windows = LagWindows(WINDOW_SAMPLES)
    console = _console()
    with LagReader(settings.kafka.as_librdkafka()) as reader:
        if watch is None:
            # a group that cannot be read is shown as ERROR next to the others, then fails the command
            groups, statuses = _sample(reader, windows, groups_to_read)
            _emit(console, groups, statuses, as_json)
            _raise_for_errors(groups, statuses)
            return
        _watch(reader, windows, groups_to_read, console, as_json, watch)


def _raise_for_errors(groups: list[GroupLag], statuses: Statuses) -> None:
    """After a one-shot sample was printed: a group or a row with status ERROR fails the command (exit 1).

    A group that cannot be described, a topic that does not exist (a typo in a topic key) or offsets
    that cannot be read must not look like a healthy stage to a script or a probe.
    """
    failed: dict[str, list[str]] = {}  # reason -> the groups and rows it affects
    bad_groups = 0
    for g in groups:
        if g.error and not g.partitions:
            bad_groups += 1
            failed.setdefault(g.error, []).append(f"group {g.group}")
        for p in g.partitions:
            if statuses[(g.group, p.topic, p.partition)] is LagStatus.ERROR:
                row = f"{p.topic}[{p.partition}]" if p.partition >= 0 else p.topic
                failed.setdefault(p.error or g.error or "offsets unavailable", []).append(row)
    if failed:
        count = sum(len(rows) for rows in failed.values()) - bad_groups
        what = " and ".join(
            f"{n} {noun}" for n, noun in ((bad_groups, "group(s)"), (count, "partition(s)")) if n
        )
        reasons = "; ".join(
            f"{reason}: {', '.join(rows[:5])}{f' and {len(rows) - 5} more' if len(rows) > 5 else ''}"
            for reason, rows in failed.items()
        )
        raise KafkaError(f"{what} with status ERROR ({reasons})")


def _console() -> Console:
    console = Console()
    # Piped output: do not wrap at 80 columns, a script or a log keeps whole lines.
    return console if console.is_terminal else Console(width=240)


def _emit(console: Console, groups: list[GroupLag], statuses: Statuses, as_json: bool) -> None:
    if as_json:
        typer.echo(render_json(groups, statuses))
    else:
        console.print(render_table(groups, statuses))


def _watch(
    reader: LagReader,
    windows: LagWindows,
    groups_to_read: list[Any],
    console: Console,
    as_json: bool,
    every: float,
) -> None:
    if every <= 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint="--watch")
    with GracefulShutdown() as shutdown:
        if as_json or not console.is_terminal:
            while not shutdown.stop_requested:
                _emit(console, *_sample(reader, windows, groups_to_read), as_json)
                shutdown.wait(every)
            return
        with Live(console=console, auto_refresh=False) as live:
            while not shutdown.stop_requested:
                live.update(render_table(*_sample(reader, windows, groups_to_read)), refresh=True)
                shutdown.wait(every)


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("lag", epilog=config_keys_epilog(CONFIG_KEYS))(lag)
