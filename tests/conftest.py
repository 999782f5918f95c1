"""Shared test set-up: environment isolation; integration fixtures are registered as plugins."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

pytest_plugins: list[str] = []


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM and SIGHUP end the run as Ctrl-C does, so fixtures tear down what they started.

    Without it a killed run (CI's time limit, a dropped SSH session) ends Python at once, and the
    broker, Kafka Connect and PostgreSQL it started (in sessions of their own) keep running.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _interrupt)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No YESPO_CONNECTOR_* or YESPO_API_KEY variable leaks into a test from the caller's shell."""
    for name in list(os.environ):
        if name.upper().startswith("YESPO_CONNECTOR_") or name == "YESPO_API_KEY":  # read case-insensitively
            monkeypatch.delenv(name, raising=False)
    yield
