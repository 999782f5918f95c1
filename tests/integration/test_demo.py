"""The README's first command works: `make demo` runs the whole chain, `make demo-down` stops it.

`make demo` is what a user types on a fresh machine; nothing else in the suite runs it. It runs here
on a stack of its own (a temporary stack dir, free ports, the session's jars), the way the README
says to move its ports, and the test checks what the user is told and what the stand-in really holds:
- the demo exits 0 and reports every live contact equal to the mapping of its database row;
- the stand-in, read directly (not through the demo's own comparison), shows the live changes the
  demo applied (customer 7 moved to Lviv and joined segment 11, 10 left segment 12, 12's last name
  cleared, 13 deleted);
- `make demo-down` leaves no port listening and no process of the demo's stack running.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connector.stack.base import LOOPBACK, free_port, port_open
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

_DEMO_TIMEOUT_S = 600


def _processes_under(stack_dir: Path) -> dict[int, str]:
    """Running processes whose command line names the stack dir (broker, Connect, PostgreSQL, connector)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            zombie = (proc / "stat").read_text().rpartition(") ")[2].startswith("Z")
        except OSError:
            continue
        if str(stack_dir) in cmdline and not zombie:
            found[int(proc.name)] = cmdline[:200]
    return found


def _make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", target],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=_DEMO_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def demo_env() -> Iterator[tuple[dict[str, str], dict[str, int], Path]]:
    # not under pytest's 0700 basetemp: PostgreSQL runs as the `postgres` OS user when we are root
    stack_dir = Path(tempfile.mkdtemp(prefix="yespo-it-demo-"))
    stack_dir.chmod(0o755)
    kafka = free_port(pairs=True)
    ports = {
        "KAFKA": kafka,
        "CONTROLLER": kafka + 1,
        "POSTGRES": free_port(),
        "CONNECT": free_port(),
        "STANDIN": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("YESPO_")}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env["YESPO_STACK_DIR"] = str(stack_dir)
    env["YESPO_STACK_JARS_DIR"] = os.environ.get("YESPO_STACK_JARS_DIR") or str(REPO / ".stack")
    env.update({f"YESPO_STACK_{name}_PORT": str(port) for name, port in ports.items()})
    try:
        yield env, ports, stack_dir
    finally:  # whatever the test saw: nothing of the demo outlives it
        _make("demo-down", env)
        for pid in _processes_under(stack_dir):  # a failed `demo-down` must not leak JVMs into later tests
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(stack_dir, ignore_errors=True)


def test_make_demo_then_demo_down(demo_env: tuple[dict[str, str], dict[str, int], Path]) -> None:
    env, ports, stack_dir = demo_env

    run = _make("demo", env)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    final = re.search(
        r"(\d+)/(\d+) contacts equal the mapping of their database rows; "
        r"deleted but still live: (\d+)",
        output,
    )
    assert final, output[-4000:]
    equal, rows, stale = (int(g) for g in final.groups())
    assert (equal, stale) == (rows, 0), final.group(0)
    assert rows == 1999, final.group(0)  # demo-data.sql's 2000 customers, one deleted live
    for name, port in ports.items():
        assert port_open(LOOPBACK, port), f"{name} port {port} not listening after `make demo`"
    running = _processes_under(stack_dir)
    assert len(running) >= 4, running  # broker, PostgreSQL, Connect, connector (the check below sees them)

    # the stand-in itself, not the demo's comparison
    dump = httpx.get(f"http://{LOOPBACK}:{ports['STANDIN']}/_standin/contacts", timeout=30).json()
    by_ext = {c["externalCustomerId"]: c for c in dump["contacts"]}
    live = [c for c in dump["contacts"] if not c["deleted"]]
    assert len(live) == 1999
    assert by_ext["crm-13"]["deleted"] is True
    seven = by_ext["crm-7"]
    assert seven["address"]["town"] == "Lviv"
    assert {ch["type"]: ch["value"] for ch in seven["channels"]}["sms"] == "380671234567"
    assert 11 in seven["groups"]
    assert 12 not in by_ext["crm-10"]["groups"]
    assert by_ext["crm-12"].get("lastName") in (None, "")

    down = _make("demo-down", env)
    assert down.returncode == 0, (down.stdout + down.stderr)[-4000:]
    listening = [f"{name} {port}" for name, port in ports.items() if port_open(LOOPBACK, port)]
    assert not listening, f"still listening after `make demo-down`: {listening}"
    assert not _processes_under(stack_dir)
