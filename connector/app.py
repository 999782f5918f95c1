"""Build and run the stages: wires settings, clients, metrics, health and signals together.

The only module that orchestrates; each stage's logic lives in its own module (`merge_stage`,
`deliver`). `run_stages` runs one or both stages on threads, serves /metrics, /healthz and
/readyz, and stops gracefully on SIGTERM or the first Ctrl-C.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.decode import DecodeOptions, decode_event
from connector.decode.native import describe_fast_path
from connector.errors import ConnectorError, StageStuckError
from connector.health import Health, HealthServer
from connector.kafka.clients import admin_config, check_client_config
from connector.kafka.topics import ensure_topics
from connector.merge_stage import Decoder, MergeStage
from connector.metrics import Metrics
from connector.models import RawRecord
from connector.ops.signals import GracefulShutdown
from connector.projection import MappingProjector
from connector.registry import RetryingSchemaLookup, SchemaRegistryClient

__all__ = ["STAGES", "Stage", "build_decoder", "build_merge_stage", "run_stages"]

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0
"""How long the stages have to stop (commit or abort, close) once asked; the Kubernetes manifest's
terminationGracePeriodSeconds is as long. A stage still running then is reported and the exit is 1."""

REGISTRY_NOT_FOUND_GRACE_S = 5.0
"""How long the merge stage takes a registry's "schema not found" for a replica's lag (the record waits)
before it is final (the record goes to the DLQ): `registry.SchemaRegistryClient`."""

STAGES = ("merge", "deliver", "all")


class Stage(Protocol):
    """What `run_stages` needs of a stage."""

    def run(self) -> None: ...  # noqa: D102
    def stop(self) -> None: ...  # noqa: D102
    @property
    def ready(self) -> bool: ...  # noqa: D102


def build_decoder(settings: Settings) -> Decoder:
    """`decode_event` with the configured options and, for Avro, a registry lookup.

    The lookup waits out short registry outages; longer ones surface as
    `SchemaRegistryUnavailableError`, so the stage rolls back and retries later (never skips, never
    dead-letters).
    """
    options = DecodeOptions.from_settings(settings)
    logger.info("decode: %s", describe_fast_path(options))
    lookup = None
    if settings.source.schema_registry_url:
        lookup = RetryingSchemaLookup(
            SchemaRegistryClient(
                settings.source.schema_registry_url, not_found_grace_s=REGISTRY_NOT_FOUND_GRACE_S
            ),
            max_wait_s=10,
        )

    def decode(record: RawRecord) -> Any:
        return decode_event(record, options=options, schemas=lookup)

    return decode


def build_merge_stage(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    create_topics: bool = False,
    instance_id: str | None = None,
    on_tick: Callable[[], None] | None = None,
) -> MergeStage:
    """The production merge stage."""
    return MergeStage(
        settings,
        projector=MappingProjector(settings.contact),
        decoder=build_decoder(settings),
        metrics=metrics,
        create_topics=create_topics,
        instance_id=instance_id,
        on_tick=on_tick,
    )


def _build(
    name: str,
    settings: Settings,
    metrics: Metrics,
    health: Health,
    create_topics: bool,
    instance_id: str | None,
) -> Stage:
    tick = lambda: health.tick(name)  # noqa: E731
    if name == "merge":
        return build_merge_stage(
            settings, metrics=metrics, create_topics=create_topics, instance_id=instance_id, on_tick=tick
        )
    from connector.deliver import build_deliver_stage

    return build_deliver_stage(settings, metrics=metrics, on_tick=tick)


def _stalled(health: Health, threshold_s: float, failed: set[str]) -> StageStuckError | None:
    """The first stage loop stuck in a client call for `threshold_s`, as an error to stop on.

    E.g. librdkafka#5456/#5511: `send_offsets_to_transaction` ignores its timeout after a broker
    restart. Nothing can interrupt that call: the process must exit (the supervisor restarts it; the
    uncommitted work is read again).
    """
    if threshold_s <= 0:
        return None
    for component, idle in health.stalled(threshold_s):
        if component not in failed:
            failed.add(component)
            message = (
                f"{component} stage made no progress for {idle:.0f} s (a Kafka client call does not "
                "return); exiting so that the supervisor restarts it"
            )
            logger.error(message, extra={"stage": component})
            return StageStuckError(message, component)
    return None


def run_stages(
    settings: Settings,
    stage: str,
    *,
    create_topics: bool = False,
    instance_id: str | None = None,
    serve_metrics: bool = True,
) -> None:
    """Run `stage` ("merge", "deliver" or "all") until SIGTERM / Ctrl-C or a fatal error.

    Raises:
        ConnectorError: a stage stopped on an error (the first one is re-raised).
    """
    names = ["merge", "deliver"] if stage == "all" else [stage]
    check_client_config(settings)  # a bad kafka.extra property: a ConfigError naming it, not a traceback
    if create_topics:
        # the merge stage checks partition counts and compaction itself when it starts
        ensure_topics(AdminClient(admin_config(settings)), settings, create=True, strict=False)
    metrics = Metrics()
    health = Health(liveness_timeout_s=settings.observability.liveness_timeout_s)
    server = HealthServer.from_settings(settings.observability, health, metrics) if serve_metrics else None
    stages = {n: _build(n, settings, metrics, health, create_topics, instance_id) for n in names}
    errors: list[BaseException] = []
    failed: set[str] = set()
    failing = threading.Lock()  # a stage marked failed is never marked ready again by the loop below
    stuck_threads: set[str] = set()

    def runner(name: str, st: Stage) -> None:
        try:
            st.run()
        except BaseException as exc:
            errors.append(exc)
            with failing:
                failed.add(name)
                health.set_ready(False, f"{name} stage stopped: {type(exc).__name__}", component=name)
            shutdown.request_stop(f"{name} failed")

    with GracefulShutdown() as shutdown:
        if server is not None:
            server.start()
        threads = [
            threading.Thread(target=runner, args=(n, s), name=f"{n}-stage", daemon=True)
            for n, s in stages.items()
        ]
        for t in threads:
            t.start()
        try:
            while not shutdown.wait(0.5):
                for n, st in stages.items():
                    with failing:
                        if n not in failed:
                            health.set_ready(
                                st.ready, "" if st.ready else "restoring or not assigned", component=n
                            )
                if not any(t.is_alive() for t in threads):
                    break
                stuck = _stalled(health, settings.observability.stall_exit_s, failed)
                if stuck is not None:
                    errors.append(stuck)
                    stuck_threads.add(f"{stuck.stage}-stage")
                    shutdown.request_stop("a stage is stuck")
        finally:
            logger.info("stopping", extra={"reason": shutdown.reason or "stages ended"})
            for st in stages.values():
                st.stop()
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for t in threads:
                if t.name in stuck_threads:
                    continue  # blocked in a client call: it cannot be joined, the process exits
                t.join(max(0.1, deadline - time.monotonic()))
            late = [t.name for t in threads if t.is_alive() and t.name not in stuck_threads]
            if late:
                # its open transaction (if any) is aborted by the broker after
                # kafka.transaction_timeout_ms; what it did not commit is read again on restart
                message = f"{', '.join(late)} did not stop within {STOP_TIMEOUT_S:g} s; exiting anyway"
                logger.error(message)
                errors.append(ConnectorError(message))
            if server is not None:
                server.stop()
    if errors:
        first = errors[0]
        if isinstance(first, ConnectorError | KeyboardInterrupt):
            raise first
        raise ConnectorError(f"stage failed: {type(first).__name__}: {first}") from first
