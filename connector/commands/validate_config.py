"""`yespo-connector validate-config`: load and check a config file, report the first bad key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from connector.app import STAGES
from connector.config import load_settings
from connector.kafka.clients import check_client_config
from connector.sink.catalog import check_offline_config

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


StageOption = Annotated[
    str | None,
    typer.Option(
        "--stage",
        help="merge | deliver | all: also require what that stage needs at start-up (the API key).",
    ),
]


def validate_config(config: ConfigOption, stage: StageOption = None) -> None:
    """Load the config file, apply the environment and validate every key.

    Also runs the deliver stage's start-up checks that need no network (channel types, configured
    custom-field ids). The Yespo API key is often injected only where the connector runs: without
    --stage a missing key is a note; with --stage deliver or all it is an error.
    """
    if stage is not None and stage not in STAGES:  # a usage error (exit 2)
        raise typer.BadParameter(f"{stage!r} is not one of {', '.join(STAGES)}", param_hint="--stage")
    settings = load_settings(config)
    check_client_config(settings)  # kafka.extra: what librdkafka itself refuses
    check_offline_config(settings.contact, settings.yespo)
    if stage in ("deliver", "all"):
        settings.yespo.require_api_key()
    typer.echo(
        f"config OK: {len(settings.source.topics)} source topic(s), "
        f"{settings.state.partitions} state partition(s), yespo mode {settings.yespo.mode}"
    )
    if not settings.yespo.has_api_key and stage is None:
        typer.echo(
            f"note: no Yespo API key here ({settings.yespo.api_key_hint()}); the deliver stage needs one",
            err=True,
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
