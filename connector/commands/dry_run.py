"""`yespo-connector dry-run`: what the merge stage would emit for a file of Debezium records."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from connector.app import build_decoder
from connector.commands._confighelp import config_keys_epilog
from connector.commands.decode import kcat_records
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
    try:
        stream = sys.stdin if input_file == "-" else Path(input_file).open(encoding="utf-8")  # noqa: SIM115
    except OSError as exc:  # as `decode` says it: one line, exit code 2
        raise typer.BadParameter(f"cannot read {input_file}: {exc.strerror}", param_hint="--input") from exc
    out = sys.stdout
    try:
        for item in kcat_records(stream):
            if isinstance(item, str):
                out.write(orjson.dumps({"error": item, "stage": "input"}).decode() + "\n")
                continue
            for line in run.feed(item):
                if not final:
                    out.write(orjson.dumps(line).decode() + "\n")
    finally:
        if stream is not sys.stdin:
            stream.close()
    if final:
        for line in run.final():
            out.write(orjson.dumps(line).decode() + "\n")


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
