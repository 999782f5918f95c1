"""`yespo-connector run`: run the merge stage, the deliver stage, or both in one process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from connector import logs
from connector.app import STAGES, run_stages
from connector.commands._confighelp import config_keys_epilog
from connector.config import load_settings

__all__ = ["register"]

logger = logging.getLogger(__name__)

HELP = (
    "Run the connector until SIGTERM or Ctrl-C (a second Ctrl-C exits at once).\n\n"
    "--stage merge: consume the Debezium topics (source.customers.topic, source.children[].topic) and the "
    "changes topic (state.changes_topic) as group kafka.group_id; write state (state.topic), upserts "
    "(output.upserts_topic) and DLQ records (output.dlq_topic) in one transaction every "
    "kafka.commit_interval_ms.\n\n"
    "--stage deliver: consume output.upserts_topic as kafka.deliver_group_id (default <group_id>-deliver) "
    "and call the Yespo API (yespo.base_url, yespo.mode, yespo.batch_size, yespo.max_requests_per_second); "
    "the API key comes from the variable named by yespo.api_key_env (default YESPO_API_KEY) or "
    "yespo.api_key_file.\n\n"
    "Serves /metrics, /healthz and /readyz on observability.metrics_host:metrics_port. Every key can be set "
    "as YESPO_CONNECTOR_<SECTION>__<KEY>, e.g. YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS."
)


def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The YAML config file.")],
    stage: Annotated[str, typer.Option("--stage", help="merge | deliver | all")] = "all",
    create_topics: Annotated[
        bool, typer.Option("--create-topics", help="Create missing internal/state/upserts/DLQ/audit topics.")
    ] = False,
    instance_id: Annotated[
        str | None,
        typer.Option(
            "--instance-id",
            envvar="YESPO_CONNECTOR_INSTANCE_ID",
            help="Stable id of this process (transactional.id suffix); default: the host name.",
        ),
    ] = None,
) -> None:
    """Run the connector."""
    if stage not in STAGES:  # a usage error (exit 2), like a value typer rejects itself
        raise typer.BadParameter(f"{stage!r} is not one of {', '.join(STAGES)}", param_hint="--stage")
    settings = load_settings(config)
    logs.configure_from(settings)  # the API key and kafka.extra's passwords never reach a log line
    run_stages(settings, stage, create_topics=create_topics, instance_id=instance_id)


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    keys = [
        "kafka.bootstrap_servers",
        "kafka.group_id",
        "kafka.deliver_group_id",
        "kafka.transactional_id_prefix",
        "kafka.commit_interval_ms",
        "kafka.transaction_timeout_ms",
        "kafka.extra",
        "source.customers.topic",
        "source.children",
        "state.changes_topic",
        "state.topic",
        "state.partitions",
        "output.upserts_topic",
        "output.dlq_topic",
        "output.audit_topic",
        "contact",
        "yespo.base_url",
        "yespo.api_key_env",
        "yespo.mode",
        "yespo.batch_size",
        "yespo.max_requests_per_second",
        "observability.metrics_port",
        "observability.log_format",
    ]
    app.command("run", help=HELP, epilog=config_keys_epilog(keys))(run)
