"""`yespo-connector validate-config`: load and check a config file, report the first bad key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from connector.app import STAGES
from connector.config import Settings, load_settings
from connector.errors import ConfigError
from connector.kafka.clients import check_client_config
from connector.sink.wire import check_channel_mapping, custom_field_names, resolve_field_ids

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
    if stage is not None and stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}", key="--stage")
    settings = load_settings(config)
    check_client_config(settings)  # kafka.extra: what librdkafka itself refuses
    check_deliver_config(settings)
    has_key = settings.yespo.api_key is not None and bool(settings.yespo.api_key.get_secret_value())
    if not has_key and stage in ("deliver", "all"):
        raise ConfigError(
            f"no Yespo API key (set {settings.yespo.api_key_hint()})",
            key="yespo.api_key_env",
        )
    typer.echo(
        f"config OK: {len(settings.source.topics)} source topic(s), "
        f"{settings.state.partitions} state partition(s), yespo mode {settings.yespo.mode}"
    )
    if not has_key and stage is None:
        typer.echo(
            f"note: no Yespo API key here ({settings.yespo.api_key_hint()}); the deliver stage needs one",
            err=True,
        )


def check_deliver_config(settings: Settings) -> None:
    """The deliver stage's start-up checks that need no network.

    Raises:
        ConfigError: a channel type the API cannot carry, or a configured field id outside int32.
    """
    check_channel_mapping(settings.contact)
    names = custom_field_names(settings.contact, settings.yespo)
    configured = settings.yespo.field_ids
    resolve_field_ids([n for n in names if n in configured], configured, None)


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command(
        "validate-config",
        epilog=(
            "Reads every key of the file; each can be overridden as YESPO_CONNECTOR_<SECTION>__<KEY> "
            "(e.g. YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS); deploy/.env.example lists them all."
        ),
    )(validate_config)
