"""A test run ended by SIGTERM tears its fixtures down (tests/conftest.py), as Ctrl-C does."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_runs_fixture_teardown(tmp_path: Path) -> None:
    marker = tmp_path / "torn-down"
    started = tmp_path / "started"
    (tmp_path / "test_slow.py").write_text(
        "import time\n"
        "import pytest\n"
        "@pytest.fixture\n"
        "def stack():\n"
        f"    open({str(started)!r}, 'w').close()\n"
        "    yield\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "def test_waits(stack):\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the test never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert marker.exists(), "SIGTERM ended the run without the fixture's teardown"
