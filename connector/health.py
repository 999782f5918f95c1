"""Liveness and readiness state, and the HTTP server for `/metrics`, `/healthz` and `/readyz`.

The run loop calls `Health.tick()` every iteration; a stage calls `Health.set_ready(...)` when its
assigned partitions are restored (and `set_ready(False, reason)` when it stops on an auth failure).
`HealthServer` serves both, plus the Prometheus registry, from a background thread.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final

from connector.config import ObservabilitySettings
from connector.errors import ConfigError
from connector.metrics import CONTENT_TYPE, Metrics

__all__ = ["Health", "HealthServer"]

logger = logging.getLogger(__name__)


class Health:
    """Thread-safe liveness and readiness, per component (e.g. "merge", "deliver").

    Liveness: every component that has ticked must have ticked within `liveness_timeout_s`; before
    any tick the process counts as alive for `liveness_timeout_s` after construction. Readiness: at
    least one component has reported, and every component that reported is ready.
    """

    def __init__(
        self, *, liveness_timeout_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Create the state; `clock` is monotonic seconds (injected by tests)."""
        if liveness_timeout_s <= 0:
            raise ValueError("liveness_timeout_s must be positive")
        self._timeout = liveness_timeout_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._ticks: dict[str, float] = {}
        self._ready: dict[str, tuple[bool, str]] = {}

    def tick(self, component: str = "main") -> None:
        """Record that `component`'s loop made progress (call once per loop iteration)."""
        now = self._clock()
        with self._lock:
            self._ticks[component] = now

    def set_ready(self, ready: bool, reason: str = "", *, component: str = "main") -> None:
        """Report `component` ready or not; `reason` is shown by `/readyz` (a code, never PII)."""
        with self._lock:
            self._ready[component] = (ready, reason)

    def forget(self, component: str) -> None:
        """Drop `component` (its loop ended on purpose); it no longer counts for either probe."""
        with self._lock:
            self._ticks.pop(component, None)
            self._ready.pop(component, None)

    def stalled(self, threshold_s: float) -> list[tuple[str, float]]:
        """(component, idle seconds) of every loop that has ticked once and not for `threshold_s`."""
        now = self._clock()
        with self._lock:
            ticks = dict(self._ticks)
        return [(c, now - last) for c, last in sorted(ticks.items()) if now - last > threshold_s]

    def liveness(self) -> tuple[bool, str]:
        """(alive, reason): False when a loop has not ticked for longer than the timeout."""
        now = self._clock()
        with self._lock:
            ticks = dict(self._ticks)
        if not ticks:
            idle = now - self._started
            if idle > self._timeout:
                return False, f"no loop has ticked in {idle:.0f} s since start"
            return True, "starting"
        stalled = self.stalled(self._timeout)
        if stalled:
            component, idle = stalled[0]
            return False, f"{component}: loop has not ticked for {idle:.0f} s"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready when every component that reported is ready."""
        with self._lock:
            states = dict(self._ready)
        if not states:
            return False, "starting"
        for component, (ready, reason) in sorted(states.items()):
            if not ready:
                return False, f"{component}: {reason or 'not ready'}"
        return True, "ok"


class HealthServer:
    """`/metrics`, `/healthz`, `/readyz` on `host:port`, served from a daemon thread.

    `/healthz` and `/readyz` answer 200 or 503 with a small JSON body `{"status", "reason"}`.
    Port 0 picks a free port (see `address`). Use as a context manager or call `start`/`stop`.
    A connection that sends nothing (or half a request), or reads nothing, for `socket_timeout_s` is
    closed, so idle clients cannot pin handler threads. A client that goes away before its answer is
    logged at DEBUG; any other failure of a request as one WARNING line (never a raw traceback).
    """

    def __init__(
        self,
        health: Health,
        metrics: Metrics | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        socket_timeout_s: float = 10.0,
    ) -> None:
        """Prepare the server; nothing listens until `start()`."""
        if socket_timeout_s <= 0:
            raise ValueError("socket_timeout_s must be positive")
        self.health = health
        self.metrics = metrics
        self._host = host
        self._port = port
        self._socket_timeout_s = socket_timeout_s
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(
        cls, settings: ObservabilitySettings, health: Health, metrics: Metrics | None = None
    ) -> HealthServer:
        """A server on `observability.metrics_host:metrics_port`."""
        return cls(health, metrics, host=settings.metrics_host, port=settings.metrics_port)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); valid after `start()`."""
        if self._server is None:
            return self._host, self._port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises:
            ConfigError: the address cannot be bound (in use, not local, no permission).
        """
        if self._server is not None:
            return
        try:
            server = _Server((self._host, self._port), _make_handler(self))
        except OSError as exc:
            # an unknown name or an address that is not this host's is the host's fault, else the port's
            bad_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            key = "observability.metrics_host" if bad_host else "observability.metrics_port"
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port} ({exc.strerror})", key=key
            ) from exc
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="health-server", daemon=True
        )
        self._thread.start()
        logger.info("serving /metrics /healthz /readyz", extra={"address": "{}:{}".format(*self.address)})

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


_GONE: Final = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""What a client that closed its connection before the answer (a scrape or probe timeout) raises."""


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver prints a traceback to stderr here: outside logging (not JSON, not redacted)
        exc = sys.exc_info()[1]
        if isinstance(exc, _GONE):
            logger.debug("health server client went away", extra={"error": type(exc).__name__})
        else:
            logger.warning("health server request failed", extra={"error": f"{type(exc).__name__}: {exc}"})


def _make_handler(owner: HealthServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        server_version = "yespo-connector"
        timeout = owner._socket_timeout_s  # applied to the connection's socket by `setup()`

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and owner.metrics is not None:
                self._send(200, owner.metrics.render(), CONTENT_TYPE)
            elif path == "/healthz":
                self._probe(owner.health.liveness())
            elif path == "/readyz":
                self._probe(owner.health.readiness())
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _probe(self, result: tuple[bool, str]) -> None:
            ok, reason = result
            body = json.dumps({"status": "ok" if ok else "unavailable", "reason": reason}).encode()
            self._send(200 if ok else 503, body + b"\n", "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except _GONE as exc:  # the client gave up waiting (scrape or probe timeout)
                self.close_connection = True
                gone = {"error": type(exc).__name__}
                logger.debug("health server client went away before its answer", extra=gone)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("http %s", format % args)

    return _Handler
