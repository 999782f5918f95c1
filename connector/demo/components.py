"""The demo's own pieces on the local stack: where it runs, the connector's config and its process.

`run.py` starts them; `stack/local.py` starts `ConnectorProcess` too (`stack up --with connector`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from connector.config import Settings, load_settings
from connector.errors import StackError
from connector.stack.base import ComponentStatus, StackConfig, port_open
from connector.stack.daemon import Daemon
from connector.stack.standin import StandInServer

__all__ = [
    "FIELD_IDS",
    "ConnectorProcess",
    "DemoConfig",
    "port_busy",
    "write_connector_config",
]

logger = logging.getLogger(__name__)

# the stand-in's default catalog (connector/standin/records.py): the demo maps country to field 103
FIELD_IDS: Mapping[str, int] = {"birthDate": 101, "loyaltyLevel": 102, "country": 103}


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Where the demo runs: the stack's config (its `standin_port` is the demo stand-in's)."""

    stack: StackConfig

    @property
    def standin_port(self) -> int:
        """The demo stand-in's port (`StackConfig.standin_port`)."""
        return self.stack.standin_port

    @property
    def demo_dir(self) -> Path:
        """Config, API key file and run id of the demo."""
        return self.stack.stack_dir / "demo"

    @property
    def standin_url(self) -> str:
        """Base URL of the demo's stand-in."""
        return f"http://{self.stack.host}:{self.standin_port}"


def _cli_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from connector.cli import main; main()", *args]


class ConnectorProcess:
    """`yespo-connector run --stage all` on the demo's config, as a background process."""

    name = "connector"

    def __init__(self, demo: DemoConfig) -> None:
        self.demo = demo
        self.config_file = (demo.demo_dir / "connector.yaml").resolve()
        self.daemon = Daemon(
            name=self.name,
            marker=str(self.config_file),
            pid_file=demo.stack.run_dir / "connector.pid",
            log_file=demo.stack.logs_dir / "connector.out",
            host=demo.stack.host,
            port=0,
        )

    def up(self) -> ComponentStatus:
        """Start merge + deliver on the written config (or keep ours running).

        Raises:
            StackError: no config was written yet (only `yespo-connector demo` writes it), or the
                process exited at once (its log tail is in the message).
        """
        if not self.config_file.exists():
            raise StackError(f"no connector config at {self.config_file}: run `yespo-connector demo`")
        pid = self.daemon.reconcile()
        detail = "already running"
        if pid is None:
            argv = _cli_argv(
                [
                    "run",
                    "--config",
                    str(self.config_file),
                    "--stage",
                    "all",
                    "--create-topics",
                    "--instance-id",
                    "demo",
                ],
            )
            pid = self.daemon.start(argv, cwd=self.demo.stack.stack_dir)
            detail = "started (merge + deliver)"
        time.sleep(1)
        reason = self.daemon.alive_or_reason(pid)
        if reason is not None:
            raise StackError(reason)
        return self.status(detail)

    def down(self) -> None:
        """Stop it (SIGTERM: the stages finish their batch and commit)."""
        self.daemon.stop(timeout=30)

    def status(self, detail: str = "") -> ComponentStatus:
        """Whether it runs."""
        seen = self.daemon.observe()
        return ComponentStatus(self.name, seen.pid is not None, str(self.config_file), seen.pid, detail)


def write_connector_config(demo: DemoConfig, key_file: Path, run_id: str) -> Settings:
    """deploy/connector.yaml pointed at the stack's broker and the stand-in, on this run's own topics."""
    base = load_settings(demo.stack.deploy_dir / "connector.yaml")
    data = base.model_dump(mode="json", exclude={"yespo": {"api_key"}})
    prefix = f"yespo-demo-{run_id}"
    data["kafka"].update(
        {
            "bootstrap_servers": demo.stack.bootstrap_servers,
            "group_id": prefix,
            "transactional_id_prefix": prefix,
        }
    )
    data["state"].update(
        {"changes_topic": f"{prefix}.changes", "topic": f"{prefix}.customer-state", "partitions": 3}
    )
    data["output"].update(
        {
            "upserts_topic": f"{prefix}.contact-upserts",
            "dlq_topic": f"{prefix}.dlq",
            "audit_topic": f"{prefix}.audit",
        }
    )
    data["yespo"].update(
        {
            "base_url": demo.standin_url,
            "api_key_file": str(key_file.resolve()),
            "field_ids": dict(FIELD_IDS),
            "country_field": "country",
            "batch_linger_ms": 100,
        }
    )
    data["observability"].update({"metrics_port": 0, "log_format": "json"})
    settings = Settings(**data)
    path = demo.demo_dir / "connector.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return settings


def port_busy(demo: DemoConfig) -> list[str]:
    """Ports the demo needs that something else already listens on (for a clear message)."""
    busy = []
    standin = StandInServer(demo.stack)
    if port_open(demo.stack.host, demo.standin_port) and standin.daemon.observe().pid is None:
        busy.append(f"stand-in port {demo.standin_port}")
    return busy
