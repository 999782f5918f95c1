"""A stage that does not stop in time makes the process exit with an error, not 0 (review)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from connector import app
from connector.config import load_settings
from connector.errors import ConnectorError

from .test_config import REPO_EXAMPLE


class SlowToStop:
    """Runs until asked to stop, then takes `closing_s` to close (a long commit or abort)."""

    def __init__(self, closing_s: float) -> None:
        self.closing_s = closing_s
        self._stop = threading.Event()
        self.closed = threading.Event()

    @property
    def ready(self) -> bool:
        return True

    def run(self) -> None:
        self._stop.wait(30)
        threading.Event().wait(self.closing_s)
        self.closed.set()

    def stop(self) -> None:
        self._stop.set()


def _sigterm_soon() -> None:
    threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGTERM)).start()


def test_a_stage_still_closing_after_the_stop_timeout_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = SlowToStop(closing_s=3)
    monkeypatch.setattr(app, "STOP_TIMEOUT_S", 0.5)
    monkeypatch.setattr(app, "_build", lambda *a, **k: stage)
    _sigterm_soon()
    with pytest.raises(ConnectorError, match=r"deliver-stage did not stop within 0.5 s"):
        app.run_stages(load_settings(REPO_EXAMPLE), "deliver", serve_metrics=False)
    assert not stage.closed.is_set()


def test_a_stage_that_closes_in_time_stops_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = SlowToStop(closing_s=0.2)
    monkeypatch.setattr(app, "STOP_TIMEOUT_S", 5.0)
    monkeypatch.setattr(app, "_build", lambda *a, **k: stage)
    _sigterm_soon()
    app.run_stages(load_settings(REPO_EXAMPLE), "deliver", serve_metrics=False)
    assert stage.closed.is_set()
