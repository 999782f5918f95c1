"""`yespo-connector validate-config`: load and check a config file, report the first bad key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from connector.config import load_settings
from connector.kafka.clients import check_client_config

__all__ = ["register"]

logger = logging.getLogger(__name__)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="The YAML config file (keys may be overridden by YESPO_CONNECTOR_* env).",
        exists=False,
    ),
]


def validate_config(config: ConfigOption) -> None:
    """Load the config file, apply the environment and validate every key."""
    settings = load_settings(config)
    check_client_config(settings)  # kafka.extra: what librdkafka itself refuses
    typer.echo(
        f"config OK: {len(settings.source.topics)} source topic(s), "
        f"{settings.state.partitions} state partition(s), yespo mode {settings.yespo.mode}"
    )


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command(
        "validate-config",
        epilog=(
            "Reads every key of the file; each can be overridden as YESPO_CONNECTOR_<SECTION>__<KEY> "
            "(e.g. YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS); deploy/.env.example lists them all."
        ),
    )(validate_config)
