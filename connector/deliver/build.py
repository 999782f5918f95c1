"""Wiring of the production deliver stage: an httpx client, the Yespo client on it, the stage."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import httpx

from connector.config import Settings
from connector.deliver.stage import DeliverStage
from connector.metrics import Metrics
from connector.sink.client import RequestObserver, YespoClient

__all__ = ["build_deliver_stage"]

logger = logging.getLogger(__name__)

_ENDPOINT_IDS = re.compile(r"/\d+(?=/|$)")


def _endpoint(path: str) -> str:
    path = path.split("?", 1)[0]
    if "/importstatus/" in path:
        return "/api/v1/importstatus/{id}"
    return _ENDPOINT_IDS.sub("/{id}", path)


def build_deliver_stage(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    on_tick: Callable[[], None] | None = None,
    http: httpx.Client | None = None,
) -> DeliverStage:
    """The production deliver stage on an httpx client (request durations fed to `metrics`)."""
    owned = http is None
    if http is None:
        http = httpx.Client(timeout=settings.yespo.request_timeout_s)
    on_request: RequestObserver | None = None
    if metrics is not None:
        durations = metrics.http_request_duration

        def observe(path: str, status: str, seconds: float) -> None:  # ids in paths become {id}
            durations.labels(endpoint=_endpoint(path), status=status).observe(seconds)

        on_request = observe
    client = YespoClient(http, settings.yespo, settings.contact, on_request=on_request)
    return DeliverStage(
        settings,
        client=client,
        metrics=metrics,
        on_tick=on_tick,
        on_close=http.close if owned else None,
    )
