"""`yespo-connector dry-run`: what the merge stage would emit for a file of Debezium records."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from connector.app import build_decoder
from connector.commands._confighelp import config_keys_epilog
from connector.commands.decode import kcat_records, unwritable
from connector.config import load_settings
from connector.dryrun import DryRun

__all__ = ["register"]

logger = logging.getLogger(__name__)


def dry_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file (source:, contact:).")],
    input_file: Annotated[
        str,
        typer.Option(
            "--input", "-i", help="kcat -J lines (topic, partition, offset, key, payload); - = stdin"
        ),
    ],
    final: Annotated[bool, typer.Option("--final", help="Print only the final record per customer.")] = False,
) -> None:
    """Run decode -> merge -> mapping in memory and print each upsert/delete record, one JSON per line.

    Every event is projected on its own here; the running merge stage projects each customer once per
    transaction, so it may emit fewer (never different final) records. Reads config keys source.* (topics,
    keys, format, column_types) and contact.* (the mapping); every key can also come from
    YESPO_CONNECTOR_<SECTION>__<KEY>. Nothing is written to Kafka or Yespo.
    """
    settings = load_settings(config)
    run = DryRun(settings, build_decoder(settings))
    try:  # bytes: a line that is not UTF-8 is one error line (as `decode` reads it)
        stream = sys.stdin.buffer if input_file == "-" else Path(input_file).open("rb")  # noqa: SIM115
    except OSError as exc:  # as `decode` says it: one line, exit code 2
        raise typer.BadParameter(f"cannot read {input_file}: {exc.strerror}", param_hint="--input") from exc
    out = sys.stdout
    try:
        for item in kcat_records(stream):
            if isinstance(item, str):
                out.write(orjson.dumps({"error": item, "stage": "input"}).decode() + "\n")
                continue
            lines = list(run.feed(item))
            if not final:
                where = {"topic": item.topic, "partition": item.partition, "offset": item.offset}
                out.write(_encoded(lines, where))
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if final:
        for line in run.final():
            source = line.get("source") or {}
            where = {k: source[k] for k in ("topic", "partition", "offset") if k in source}
            out.write(_encoded([line], where))


def _encoded(lines: list[dict[str, Any]], where: dict[str, Any]) -> str:
    """The lines as JSON, one per line; or one error line when JSON cannot hold one of them.

    The merge stage dead-letters such a record (an integer beyond 64 bits, nesting deeper than 255
    levels) and writes none of its lines; so does this.
    """
    try:
        return "".join(orjson.dumps(line).decode() + "\n" for line in lines)
    except orjson.JSONEncodeError as exc:
        error = {"error": unwritable(exc), "stage": "output", **where}
        if lines and "customer_key" in lines[0]:
            error["customer_key"] = lines[0]["customer_key"]
        return orjson.dumps(error).decode() + "\n"


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    keys = [
        "source.format",
        "source.schema_registry_url",
        "source.customers.topic",
        "source.customers.key",
        "source.children",
        "source.column_types",
        "contact",
        "state.delete_marker_ttl_hours",
    ]
    app.command("dry-run", epilog=config_keys_epilog(keys))(dry_run)
