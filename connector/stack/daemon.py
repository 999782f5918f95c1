"""A long-running JVM process of the stack, found again by its pid file or, failing that, by its argv.

A daemon is "ours" when its argv contains the absolute path of the config file this stack rendered, so a
broker left behind by a killed run (pid file lost or stale) is recognised and reused, and a foreign
process on our port is reported instead of being killed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from connector.errors import StackError
from connector.stack.base import ComponentStatus, port_open
from connector.stack.processes import (
    find_pids_by_marker,
    pid_alive,
    process_cmdline,
    read_pid,
    remove_pid_file,
    start_process,
    stop_pid,
    tail,
    write_pid,
)

__all__ = ["Daemon", "Observation", "observe"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Observation:
    """What is running for one daemon.

    Attributes:
        pid: our live process, or None.
        stale_pid_file: the pid file names a process that is gone or is not ours.
        port_conflict: the port is taken by something that is not our process.
        adopted: `pid` was found by its argv, not through the pid file (a run that lost its pid file).
    """

    pid: int | None
    stale_pid_file: bool
    port_conflict: bool
    adopted: bool = False


def observe(
    pid_in_file: int | None,
    *,
    is_ours: Callable[[int], bool],
    marker_pids: Sequence[int],
    port_busy: bool,
) -> Observation:
    """Decide what runs, from the pid file, the processes carrying our marker, and the port (pure)."""
    if pid_in_file is not None and is_ours(pid_in_file):
        return Observation(pid=pid_in_file, stale_pid_file=False, port_conflict=False)
    stale = pid_in_file is not None
    if marker_pids:
        return Observation(pid=marker_pids[0], stale_pid_file=stale, port_conflict=False, adopted=True)
    return Observation(pid=None, stale_pid_file=stale, port_conflict=port_busy)


@dataclass(frozen=True, slots=True)
class Daemon:
    """One JVM daemon: `argv` must contain `marker` (an absolute path unique to this stack dir)."""

    name: str
    marker: str
    pid_file: Path
    log_file: Path
    host: str
    port: int

    def _is_ours(self, pid: int) -> bool:
        return pid_alive(pid) and self.marker in process_cmdline(pid)

    def status(
        self, name: str, endpoint: str, answers: Callable[[], bool], detail: str = ""
    ) -> ComponentStatus:
        """`stack status` for this daemon: running means our process is up and `answers()`."""
        seen = self.observe()
        answering = seen.pid is not None and answers()
        if seen.port_conflict:
            detail = detail or "port taken by another process"
        elif seen.pid is not None and not answering:
            detail = detail or "process up, not answering"
        elif seen.stale_pid_file:
            detail = detail or "stale pid file from a killed run (`up` clears it)"
        return ComponentStatus(name=name, running=answering, endpoint=endpoint, pid=seen.pid, detail=detail)

    def observe(self) -> Observation:
        """Look at the pid file, /proc and the port; change nothing."""
        pid_in_file = read_pid(self.pid_file)
        marker_pids = (
            [] if pid_in_file is not None and self._is_ours(pid_in_file) else find_pids_by_marker(self.marker)
        )
        return observe(
            pid_in_file,
            is_ours=self._is_ours,
            marker_pids=marker_pids,
            port_busy=port_open(self.host, self.port),
        )

    def reconcile(self) -> int | None:
        """Repair the pid file to match reality; returns our running pid or None.

        Raises:
            StackError: the port is taken by a process that is not this stack's.
        """
        seen = self.observe()
        if seen.stale_pid_file and seen.pid is None:
            logger.info("%s: removing stale pid file %s", self.name, self.pid_file)
            remove_pid_file(self.pid_file)
        if seen.adopted and seen.pid is not None:
            logger.info("%s: adopting pid %d left by an earlier run", self.name, seen.pid)
            write_pid(self.pid_file, seen.pid)
        if seen.port_conflict:
            raise StackError(
                f"{self.name}: port {self.host}:{self.port} is in use by a process that is not this stack's "
                f"(pick another port, or stop it)"
            )
        return seen.pid

    def start(self, argv: list[str], cwd: Path) -> int:
        """Start the process and record its pid."""
        if self.marker not in argv:
            raise StackError(f"{self.name}: argv does not carry the marker {self.marker}")
        proc = start_process(argv, log_file=self.log_file, cwd=cwd)
        write_pid(self.pid_file, proc.pid)
        return proc.pid

    def alive_or_reason(self, pid: int) -> str | None:
        """None while `pid` lives; otherwise why waiting is pointless (with the log tail)."""
        if pid_alive(pid):
            return None
        return f"{self.name} exited during start-up; last lines of {self.log_file}:\n{tail(self.log_file)}"

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop our process (SIGTERM, then SIGKILL) and remove the pid file. False if nothing ran."""
        seen = self.observe()
        pids = {p for p in [seen.pid, *find_pids_by_marker(self.marker)] if p is not None}
        for pid in sorted(pids):
            logger.info("%s: stopping pid %d", self.name, pid)
            if not stop_pid(pid, timeout=timeout):
                logger.warning("%s: pid %d had to be killed", self.name, pid)
        remove_pid_file(self.pid_file)
        return bool(pids)
