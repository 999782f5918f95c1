"""The `stand-in` component of the local stack: the Yespo stand-in on `StackConfig.standin_port`.

Started as a daemon like the broker: its pid file lives in the stack's run dir, its output in the
logs dir, and its argv carries a marker unique to the stack directory so a left-over process is found
again. It accepts one development API key, `DEV_API_KEY` (export it as `YESPO_API_KEY` for the
connector); never a real one.
"""

from __future__ import annotations

import logging
import sys
import time

import httpx

from connector.errors import StackError
from connector.stack.base import ComponentStatus, StackConfig, wait_until
from connector.stack.daemon import Daemon
from connector.stack.processes import tail

__all__ = ["DEV_API_KEY", "StandInServer"]

logger = logging.getLogger(__name__)

DEV_API_KEY = "local-dev-key"
"""The only key the local stand-in accepts (a development value, not a secret)."""


class StandInServer:
    """The `stand-in` component: `up` starts `yespo-connector stand-in` and waits until it answers."""

    name = "stand-in"

    def __init__(self, config: StackConfig, *, port: int | None = None) -> None:
        self.config = config
        self.port = port if port is not None else config.standin_port
        # `python -c CODE stand-in ...`: CODE names this stack's directory, so it is our marker.
        self.code = f"from connector.cli import main; main()  # stand-in of {config.stack_dir.resolve()}"
        self.daemon = Daemon(
            name=self.name,
            marker=self.code,
            pid_file=config.run_dir / "stand-in.pid",
            log_file=config.logs_dir / "stand-in.out",
            host=config.host,
            port=self.port,
        )

    @property
    def url(self) -> str:
        """The base URL to configure as `yespo.base_url`."""
        return f"http://{self.config.host}:{self.port}"

    def argv(self) -> list[str]:
        """The command line of the daemon."""
        return [
            sys.executable, "-c", self.code, "stand-in",
            "--host", self.config.host, "--port", str(self.port), "--api-key", DEV_API_KEY,
        ]  # fmt: skip

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/_standin/stats", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def up(self) -> ComponentStatus:
        """Start the stand-in, or reuse ours if it already runs; wait until it answers.

        Raises:
            StackError: the port belongs to another process, or the stand-in does not answer in time.
        """
        pid = self.daemon.reconcile()
        if pid is not None:
            if not wait_until(self._answers, timeout=self.config.start_timeout_s, interval=0.2):
                raise StackError(
                    f"stand-in (pid {pid}) runs but does not answer:\n{tail(self.daemon.log_file)}"
                )
            return self.status(detail="already running")
        self.config.stack_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        pid = self.daemon.start(self.argv(), cwd=self.config.stack_dir)
        ready = wait_until(
            self._answers,
            timeout=self.config.start_timeout_s,
            interval=0.2,
            abort=lambda: self.daemon.alive_or_reason(pid),
        )
        if not ready:
            self.daemon.stop(timeout=10)
            raise StackError(
                f"stand-in did not answer within {self.config.start_timeout_s:.0f} s; last lines of "
                f"{self.daemon.log_file}:\n{tail(self.daemon.log_file)}"
            )
        return self.status(detail=f"started in {time.monotonic() - started:.1f} s")

    def down(self) -> None:
        """Stop the stand-in (SIGTERM, then SIGKILL); a no-op if it is not running."""
        self.daemon.stop(timeout=10)

    def status(self, detail: str = "") -> ComponentStatus:
        """Whether our stand-in runs and answers."""
        return self.daemon.status(self.name, f"{self.url} (API key {DEV_API_KEY!r})", self._answers, detail)
