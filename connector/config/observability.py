"""The `observability:` section: the metrics and health server, logs, and the stall watchdog.

`health.py` serves what it configures; `logs.py` formats what it selects.
"""

from __future__ import annotations

import logging
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, Field

from connector.config.fields import STRICT, blank_is_no_value

__all__ = ["ObservabilitySettings"]

logger = logging.getLogger(__name__)


_LOOPBACK: Final = "127.0.0.1"


def _blank_is_loopback(value: str) -> str:
    # "" leaves it unset (deploy/.env.example), as for deliver_group_id; the server would otherwise
    # bind "" = every interface, exposing /metrics where the default exposes nothing
    return blank_is_no_value(value) or _LOOPBACK


class ObservabilitySettings(BaseModel):
    """Metrics, health and logs."""

    model_config = STRICT

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: Annotated[str, AfterValidator(_blank_is_loopback)] = Field(
        default=_LOOPBACK,
        description=(
            "address the metrics and health server binds to; empty means the default, 127.0.0.1 "
            "(this host only); 0.0.0.0 binds every interface (in a container)"
        ),
    )
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    liveness_timeout_s: float = Field(
        default=60, gt=0, description="/healthz fails when a stage loop has not ticked for this long"
    )
    stall_exit_s: float = Field(
        default=600,
        ge=0,
        description=(
            "a stage loop that has not ticked for this long is stuck in a client call: the process "
            "exits with an error so that its supervisor restarts it (0: never)"
        ),
    )
