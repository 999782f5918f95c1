"""SIGTERM stops resync and rebuild-state as Ctrl-C does: the open transaction is aborted, the group left.

Killed on the spot instead (SIGTERM's default action: kubectl delete, docker stop, systemd), the open
transaction would hold read_committed readers of the state topic behind it until
transaction.timeout.ms, and the merge group would stay held until the session timed out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from connector import cli
from connector.ops import rebuild, resync
from connector.ops.resync_decision import ResyncDecision
from connector.ops.signals import TerminatedError, sigterm_unwinds

from .test_config import REPO_EXAMPLE
from .test_config_errors import clean_logs  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]

Setter = Callable[[Any, str, Any], None]


class _Producer:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def begin_transaction(self, *a: Any) -> None:
        self.calls.append("begin")

    def abort_transaction(self, *a: Any) -> None:
        self.calls.append("abort")

    def send_offsets_to_transaction(self, *a: Any) -> None:
        self.calls.append("offsets")

    def commit_transaction(self, *a: Any) -> None:
        self.calls.append("commit")

    def poll(self, t: float = 0) -> int:
        return 0

    def flush(self, t: float | None = None) -> int:
        return 0


def _fence_class(calls: list[str]) -> type:
    class Fence:
        group = "yespo-connector"

        def __init__(self, settings: Any, **kw: Any) -> None:
            calls.append("fence joined")

        def check(self) -> None:
            pass

        def committed(self, timeout: float = 30.0) -> list[TopicPartition]:
            return [TopicPartition("crm.public.customers", 0, 1)]

        def start_offsets(self, timeout: float = 10.0) -> list[TopicPartition]:
            return [TopicPartition("crm.public.customers", 0, 0)]

        def metadata(self) -> None:
            return None

        def close(self) -> None:
            calls.append("fence closed")

    return Fence


class _Scanner:
    topic = "state"

    def __init__(self, settings: Any) -> None:
        pass

    def partitions(self) -> dict[int, int]:
        return {0: 1}

    def scan(self, partition: int, on_records: Any = None) -> dict[str, tuple[bytes, int]]:
        return {"42": (b"x", 0)}

    def close(self) -> None:
        pass

    @staticmethod
    def partition_ids(admin: Any, topic: str) -> list[tuple[str, int]]:
        return [(topic, 0)]


def _rig(command: str, calls: list[str], produce: Callable[..., None], setattr_: Setter) -> None:
    """Kafka doubles under the real command: a merge group with no members, one customer to write."""
    producer = _Producer(calls)
    if command == "resync":
        setattr_(resync, "AdminClient", lambda conf: object())
        setattr_(resync, "live_members", lambda admin, group: 0)
        setattr_(resync, "ensure_topics", lambda *a, **k: None)
        setattr_(resync, "StateScanner", _Scanner)
        setattr_(resync, "GroupFence", _fence_class(calls))
        setattr_(resync, "wait_until_stable", lambda *a, **k: None)
        setattr_(resync, "transactional_producer", lambda *a, **k: producer)
        setattr_(resync, "decode_state", lambda value: object())
        setattr_(
            resync,
            "decide_resync",
            lambda *a, **k: ResyncDecision("upsert", None, {"op": "upsert"}),
        )
        setattr_(resync, "MappingProjector", lambda contact: object())
        setattr_(resync, "produce", produce)
    else:
        setattr_(rebuild, "AdminClient", lambda conf: object())
        setattr_(rebuild, "live_members", lambda admin, group: 0)
        setattr_(rebuild, "ensure_topics", lambda *a, **k: None)
        setattr_(rebuild, "GroupFence", _fence_class(calls))
        setattr_(rebuild, "StateScanner", _Scanner)
        setattr_(rebuild, "wait_until_stable", lambda *a, **k: None)
        setattr_(rebuild, "_scan", lambda *a: {0: ["k1", "k2"]})
        setattr_(rebuild, "plan_offsets", lambda *a, **k: ())
        setattr_(rebuild, "transactional_producer", lambda *a, **k: producer)
        setattr_(rebuild, "produce", produce)


def _argv(command: str) -> list[str]:
    return [command, "-c", str(REPO_EXAMPLE), *(["--yes"] if command == "rebuild-state" else [])]


@pytest.fixture
def sigterm_survives() -> Iterator[list[int]]:
    """A SIGTERM handler that only records: without the commands' own handling the run goes on."""
    seen: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, record)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("clean_logs")
@pytest.mark.parametrize("command", ["resync", "rebuild-state"])
def test_sigterm_in_an_open_transaction_aborts_it_and_leaves_the_group(
    monkeypatch: pytest.MonkeyPatch, sigterm_survives: list[int], command: str
) -> None:
    calls: list[str] = []

    def produce(producer: Any, topic: str, **kw: Any) -> None:
        calls.append("produce")
        if calls.count("produce") == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here, in the main thread

    _rig(command, calls, produce, monkeypatch.setattr)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_argv(command))
    assert exit_info.value.code == 143  # 128 + SIGTERM, as a shell reports a terminated process
    assert calls == ["fence joined", "begin", "produce", "abort", "fence closed"]
    assert sigterm_survives == []  # handled by the command, which then put the previous handler back
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert sigterm_survives == [signal.SIGTERM]


_DRIVER = """
import sys, time
from pathlib import Path
from connector import cli
from tests.unit.test_ops_sigterm import _argv, _rig

log = Path(sys.argv[2])
class Calls(list):
    def append(self, event):
        super().append(event)
        with log.open("a") as f:
            f.write(event + "\\n")
calls = Calls()
def produce(producer, topic, **kw):
    calls.append("produce")
    time.sleep(30)  # the transaction is open; SIGTERM arrives here
_rig(sys.argv[1], calls, produce, setattr)
cli.main(_argv(sys.argv[1]))
"""


@pytest.mark.parametrize("command", ["resync", "rebuild-state"])
def test_a_terminated_process_aborts_its_transaction_and_exits_143(tmp_path: Path, command: str) -> None:
    """The real process, SIGTERM at its default disposition (as in a container), not pytest's handler."""
    log = tmp_path / "calls.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, command, str(log)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and "produce" in log.read_text()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the command never opened its transaction"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert log.read_text().splitlines() == ["fence joined", "begin", "produce", "abort", "fence closed"]


def test_sigterm_unwinds_once_then_ignores_repeats_and_restores_the_handler(
    sigterm_survives: list[int],
) -> None:
    with pytest.raises(TerminatedError), sigterm_unwinds():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    with sigterm_unwinds():
        with pytest.raises(TerminatedError):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)  # while cleaning up: must not interrupt the cleanup
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert sigterm_survives == []
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert sigterm_survives == [signal.SIGTERM]
