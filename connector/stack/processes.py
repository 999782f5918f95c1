"""Process supervision for the local stack's daemons: pid files, liveness, start (own session) and stop.

Everything here is either pure (pid-file parsing) or a thin wrapper over one OS call; `daemon.py`
builds a daemon's lifecycle on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from connector.errors import StackError

__all__ = [
    "find_pids_by_marker",
    "missing_program",
    "pid_alive",
    "process_cmdline",
    "read_pid",
    "remove_pid_file",
    "start_process",
    "stop_pid",
    "tail",
    "write_pid",
]

logger = logging.getLogger(__name__)


def read_pid(path: Path) -> int | None:
    """The pid stored in `path` (first line), or None when the file is missing, empty or garbage."""
    try:
        first = path.read_text(encoding="ascii", errors="replace").splitlines()[0].strip()
    except (FileNotFoundError, IndexError):
        return None
    return int(first) if first.isdigit() and int(first) > 0 else None


def write_pid(path: Path, pid: int) -> None:
    """Write `pid` to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    tmp.replace(path)


def remove_pid_file(path: Path) -> None:
    """Delete a pid file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# daemons started by this process: kept referenced so that they are reaped through Popen (no zombie,
# no "subprocess still running" ResourceWarning when a test session stops the stack it started)
_children: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int) -> bool:
    """True when `pid` is a live process (zombies count as dead)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return False
    # the state letter follows the parenthesised command name, which may itself contain spaces
    state = stat.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"]


def process_cmdline(pid: int) -> list[str]:
    """The argv of `pid` ([] when it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def find_pids_by_marker(marker: str, proc: Path = Path("/proc")) -> list[int]:
    """Live processes whose argv contains `marker` exactly (an absolute config path identifies ours)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
            continue
        if marker.encode() in raw.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def missing_program(program: str) -> Iterator[None]:
    """A program that is not installed is a `StackError` naming it, not a FileNotFoundError traceback."""
    try:
        yield
    except FileNotFoundError:
        java = Path(program).name == "java"
        hint = " (a JDK 17 or later: deploy/local/system-deps.sh installs one)" if java else ""
        raise StackError(f"{program!r} not found: is it installed and on PATH?{hint}") from None


def start_process(argv: list[str], *, log_file: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a long-running daemon in its own session, stdout and stderr appended to `log_file`.

    The child survives the Python process (the stack outlives `stack up`).
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out, missing_program(argv[0]):
        proc = subprocess.Popen(  # noqa: S603 - argv built from our own config, no shell
            argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc


def stop_pid(pid: int, *, timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> bool:
    """SIGTERM `pid`, wait up to `timeout` seconds, then SIGKILL. True when it stopped gracefully."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return True
        sleep(0.2)
    logger.warning("pid %d ignored SIGTERM for %.0f s; sending SIGKILL", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not pid_alive(pid):
            break
        sleep(0.1)
    return False
