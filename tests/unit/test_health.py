from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from connector.config import ObservabilitySettings
from connector.errors import ConfigError
from connector.health import Health, HealthServer
from connector.metrics import Metrics


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_alive_while_starting_then_dead_without_ticks() -> None:
    clock = FakeClock()
    health = Health(liveness_timeout_s=30, clock=clock)
    assert health.liveness() == (True, "starting")
    clock.now += 31
    alive, reason = health.liveness()
    assert not alive and "since start" in reason


def test_liveness_follows_the_slowest_loop() -> None:
    clock = FakeClock()
    health = Health(liveness_timeout_s=10, clock=clock)
    health.tick("merge")
    health.tick("deliver")
    clock.now += 8
    health.tick("merge")
    assert health.liveness() == (True, "ok")
    clock.now += 5  # deliver idle 13 s, merge 5 s
    alive, reason = health.liveness()
    assert not alive and reason.startswith("deliver:")
    health.forget("deliver")
    assert health.liveness() == (True, "ok")


def test_readiness_needs_every_reporting_component() -> None:
    health = Health(clock=FakeClock())
    assert health.readiness() == (False, "starting")
    health.set_ready(False, "restoring state", component="merge")
    assert health.readiness() == (False, "merge: restoring state")
    health.set_ready(True, component="merge")
    assert health.readiness() == (True, "ok")
    health.set_ready(False, "stopped on authentication failure", component="deliver")
    assert health.readiness() == (False, "deliver: stopped on authentication failure")


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Health(liveness_timeout_s=0)


@pytest.fixture
def served() -> Iterator[tuple[HealthServer, Health, Metrics, FakeClock]]:
    clock = FakeClock()
    health = Health(liveness_timeout_s=10, clock=clock)
    metrics = Metrics(CollectorRegistry())
    with HealthServer(health, metrics, host="127.0.0.1", port=0) as server:
        yield server, health, metrics, clock


def get(server: HealthServer, path: str) -> httpx.Response:
    host, port = server.address
    return httpx.get(f"http://{host}:{port}{path}", timeout=5)


def test_metrics_endpoint_parses_and_counts(served: tuple[HealthServer, Health, Metrics, FakeClock]) -> None:
    server, _, metrics, _ = served
    metrics.events.labels(table="public.customers", op="c").inc(3)
    metrics.dlq_records.labels(stage="deliver", reason="PermanentDeliveryError").inc()
    response = get(server, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert values[("yespo_connector_events_total", (("op", "c"), ("table", "public.customers")))] == 3
    assert (
        values[
            (
                "yespo_connector_dlq_records_total",
                (("reason", "PermanentDeliveryError"), ("stage", "deliver")),
            )
        ]
        == 1
    )


def test_probes_answer_200_or_503(served: tuple[HealthServer, Health, Metrics, FakeClock]) -> None:
    server, health, _, clock = served
    ready = get(server, "/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "unavailable", "reason": "starting"}
    health.tick("merge")
    health.set_ready(True, component="merge")
    assert get(server, "/healthz").json() == {"status": "ok", "reason": "ok"}
    assert get(server, "/readyz").status_code == 200
    clock.now += 11
    dead = get(server, "/healthz")
    assert dead.status_code == 503
    assert json.loads(dead.text)["reason"].startswith("merge: loop has not ticked")
    assert get(server, "/nope").status_code == 404


def test_stop_closes_the_port() -> None:
    server = HealthServer(Health(), None, port=0)
    server.start()
    host, port = server.address
    assert httpx.get(f"http://{host}:{port}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"http://{host}:{port}/metrics", timeout=5).status_code == 404  # no registry given
    server.stop()
    server.stop()  # idempotent
    with socket.socket() as s:
        assert s.connect_ex((host, port)) != 0


def test_busy_port_is_a_config_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = HealthServer.from_settings(ObservabilitySettings(metrics_port=port), Health())
        with pytest.raises(ConfigError, match=r"observability\.metrics_port"):
            server.start()


def test_binds_localhost_by_default() -> None:
    assert ObservabilitySettings().metrics_host == "127.0.0.1"


def test_a_stage_stuck_past_the_stall_limit_is_reported_once_as_an_error_to_exit_on() -> None:
    from connector.app import _stalled
    from connector.errors import StateError

    clock = FakeClock()
    health = Health(liveness_timeout_s=10, clock=clock)
    health.tick("merge")
    health.tick("deliver")
    clock.now += 30
    health.tick("deliver")
    failed: set[str] = set()
    assert _stalled(health, 60, failed) is None  # merge idle 30 s: not yet
    assert _stalled(health, 0, failed) is None  # 0: the watchdog is off
    clock.now += 31  # merge idle 61 s, deliver 31 s
    stuck = _stalled(health, 60, failed)
    assert isinstance(stuck, StateError) and stuck.stage == "merge"
    assert "merge stage made no progress for 61 s" in str(stuck)
    assert failed == {"merge"}
    assert _stalled(health, 60, failed) is None  # reported once


def test_a_stage_that_fails_while_the_loop_reads_its_readiness_stays_not_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the loop reads `ready` of a stage that is failing right then: the failure must win, or
    # /readyz would answer 200 while the process shuts down
    import threading
    import time

    from connector import app
    from connector.config import load_settings
    from connector.errors import ConnectorError
    from connector.health import Health
    from tests.unit.test_config import REPO_EXAMPLE

    healths: list[Health] = []

    class Recorded(Health):
        def __init__(self, **kw: object) -> None:
            super().__init__(**kw)  # type: ignore[arg-type]
            healths.append(self)

    class FailsWhenAsked:
        def __init__(self) -> None:
            self.asked = threading.Event()

        @property
        def ready(self) -> bool:
            self.asked.set()  # the stage fails now, while the loop holds this answer
            time.sleep(0.3)
            return True

        def run(self) -> None:
            self.asked.wait(10)
            raise ConnectorError("boom")

        def stop(self) -> None:
            pass

    monkeypatch.setattr(app, "Health", Recorded)
    monkeypatch.setattr(app, "_build", lambda *a, **k: FailsWhenAsked())
    with pytest.raises(ConnectorError, match="boom"):
        app.run_stages(load_settings(REPO_EXAMPLE), "deliver", serve_metrics=False)
    ready, reason = healths[0].readiness()
    assert not ready and "deliver stage stopped" in reason


def test_a_connection_that_never_finishes_its_request_is_closed_after_the_socket_timeout() -> None:
    server = HealthServer(Health(), None, port=0, socket_timeout_s=0.2)
    with server, socket.create_connection(server.address, timeout=5) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        assert idle.recv(1024) == b""  # closed by the server (not a client-side timeout)


def test_the_default_socket_timeout_is_10_s() -> None:
    with HealthServer(Health(), None, port=0) as server:
        assert server._server is not None
        assert server._server.RequestHandlerClass.timeout == 10.0  # type: ignore[attr-defined]


def _reset(sock: socket.socket) -> None:
    """Close with an RST: a client that gives up (a probe timeout) rather than one that hangs up."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _health_log(caplog: pytest.LogCaptureFixture, count: int) -> list[tuple[int, str]]:
    """connector.health's records (but `serving` and access lines), once `count` are there or after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        got = [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "connector.health" and not r.getMessage().startswith(("serving", "http "))
        ]
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def test_a_client_that_goes_away_mid_request_is_one_debug_line_not_a_traceback(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="connector.health")
    with HealthServer(Health(), None, port=0) as server:
        reading = socket.create_connection(server.address, timeout=5)
        reading.sendall(b"GET /healthz HTTP/1.1\r\n")  # the handler waits for the headers...
        time.sleep(0.2)
        _reset(reading)  # ...and reads a connection reset
        assert _health_log(caplog, 1) == [(logging.DEBUG, "health server client went away")]
    assert "Traceback" not in capfd.readouterr().err


class _AnswersAfter(Health):
    """Answers /healthz only once `go` is set (after the test's client went away)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked, self.go = threading.Event(), threading.Event()

    def liveness(self) -> tuple[bool, str]:
        self.asked.set()
        self.go.wait(5)
        return super().liveness()


def test_an_answer_to_a_client_that_went_away_is_one_debug_line(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="connector.health")
    health = _AnswersAfter()
    with HealthServer(health, None, port=0) as server:
        client = socket.create_connection(server.address, timeout=5)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.asked.wait(5)
        _reset(client)  # a probe timeout: gone before the answer
        health.go.set()
        assert _health_log(caplog, 1) == [(logging.DEBUG, "health server client went away before its answer")]
    assert "Traceback" not in capfd.readouterr().err


def test_any_other_request_failure_is_one_warning_line(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Metrics):
        def render(self) -> bytes:
            raise ValueError("render failed")

    caplog.set_level(logging.DEBUG, logger="connector.health")
    with HealthServer(Health(), Broken(CollectorRegistry()), port=0) as server:
        with pytest.raises(httpx.HTTPError):
            get(server, "/metrics")
        assert _health_log(caplog, 1) == [(logging.WARNING, "health server request failed")]
    assert "Traceback" not in capfd.readouterr().err
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.error == "ValueError: render failed"  # type: ignore[attr-defined]
