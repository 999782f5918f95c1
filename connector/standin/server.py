"""The Yespo stand-in's HTTP server: `StandIn(api_key=..., port=0).start()` returns its URL.

A stdlib `ThreadingHTTPServer` (HTTP/1.1 keep-alive) in front of `StandInApp`, plus the admin
endpoints under `/_standin/` (no auth): contact dump, stats, reset and fault injection. An outage in
"refuse" mode closes the listening socket and every open connection, then rebinds the same port.
Request logging names only the route and status: never queries, bodies or credentials.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from connector.standin.faults import Faults, OutageMode
from connector.standin.records import DEFAULT_CUSTOM_FIELDS, FieldDef
from connector.standin.routes import Reply, StandInApp
from connector.standin.store import ContactStore
from connector.standin.validation import RequestValidator, load_spec

__all__ = ["StandIn"]

logger = logging.getLogger(__name__)

_ADMIN = "/_standin/"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: StandIn) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection cut by an outage or a client is normal here; log without the traceback."""
        logger.debug("stand-in connection ended with an error")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.owner._track(self.connection, add=False)

    def handle(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the stdlib line holds the query string (customer data)."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            reply = self.server.owner._answer(self.command, parts.path, query, headers, body)
        except Exception as exc:  # a stand-in bug must not look like a transport fault to the client
            logger.error("stand-in failed on %s %s: %s", self.command, parts.path, type(exc).__name__)
            reply = Reply(500, b"stand-in internal error")
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()
        if reply.after is not None:
            reply.after()

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class StandIn:
    """A local Yespo contacts API for tests, benchmarks and the `stand-in` command.

    Args:
        api_key: the only accepted key.
        host: interface to bind.
        port: port to bind (0: any free port; kept across "refuse" outages).
        rate_limit: requests per second over the API (Yespo's default is 200; None: unlimited).
        custom_fields: the catalog, name -> id (default birthDate=101, loyaltyLevel=102, country=103).
        field_types: optional name -> catalog type (DATE, NUMBER, TEXTFIELD, ...).
        groups: preset segments, id -> name.
        auto_create_groups: attach/detach to an unknown segment id creates it (else 404).
        bulk_delay_s: apply bulk imports this long after answering (0: before answering).
        duplicate_window_s: a byte-identical `POST /contact` (or `PUT /contact/{id}`) within this
            window gets 409.
        outage_mode: "refuse" (close the socket) or "503" for `outage()`.
        clock: monotonic seconds.
        spec_path: the OpenAPI document (default `schemas/yespo-openapi.json`).
    """

    def __init__(
        self,
        *,
        api_key: str,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: float | None = 200.0,
        custom_fields: Mapping[str, int] | None = None,
        field_types: Mapping[str, str] | None = None,
        groups: Mapping[int, str] | None = None,
        auto_create_groups: bool = True,
        bulk_delay_s: float = 0.0,
        duplicate_window_s: float = 60.0,
        outage_mode: OutageMode = "refuse",
        clock: Callable[[], float] = time.monotonic,
        spec_path: Path | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self.outage_mode: OutageMode = outage_mode
        self.faults = Faults(clock)
        self.store = ContactStore(
            _catalog(custom_fields, field_types), groups, auto_create_groups=auto_create_groups
        )
        started = time.perf_counter()
        validator = RequestValidator(load_spec(spec_path))
        logger.debug("stand-in validators compiled in %.3f s", time.perf_counter() - started)
        self.app = StandInApp(
            api_key=api_key,
            store=self.store,
            validator=validator,
            faults=self.faults,
            clock=clock,
            rate_limit=rate_limit,
            duplicate_window_s=duplicate_window_s,
            bulk_delay_s=bulk_delay_s,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._outage_timer: threading.Timer | None = None
        self._down = False

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://host:port`, the base URL to give the client."""
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The bound port."""
        return self._port

    def start(self) -> str:
        """Bind, serve on a background thread and return the URL."""
        with self._lifecycle:
            self._bind()
            self.app.start_worker(time.sleep)
            logger.info("stand-in listening on %s", self.url)
            return self.url

    def _bind(self) -> None:
        server = _Server((self._host, self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="standin-http", daemon=True
        )
        self._thread.start()
        self._down = False

    def _unbind(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        # Their handler threads now see EOF and close them; wait a little for that, then close.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with self._conn_lock:
                if not self._connections:
                    break
            time.sleep(0.01)
        with self._conn_lock:
            leftovers, self._connections = list(self._connections), set()
        for conn in leftovers:
            conn.close()

    def stop(self) -> None:
        """Stop serving and close every connection."""
        with self._lifecycle:
            self._cancel_outage_timer()
            self._down = False
            self._unbind()
            self.app.stop_worker()

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._conn_lock:
            (self._connections.add if add else self._connections.discard)(conn)

    # -- faults and inspection (Python API) ------------------------------------------------------------

    def outage(self, seconds: float | None = None, *, mode: OutageMode | None = None) -> None:
        """Go down for `seconds` (None: until `restore`): refuse connections, or answer 503."""
        chosen = mode or self.outage_mode
        if chosen == "503":
            self.faults.outage_503(seconds)
            return
        with self._lifecycle:
            self._cancel_outage_timer()
            if not self._down:
                self._unbind()
                self._down = True
            if seconds is not None:
                timer = threading.Timer(seconds, self._outage_over)
                timer.args = (timer,)
                timer.daemon = True
                self._outage_timer = timer
                timer.start()

    def _outage_over(self, timer: threading.Timer) -> None:
        """The timer of an outage: ends it unless another outage, a restore or a stop came since."""
        with self._lifecycle:
            if self._outage_timer is timer:
                self.restore()

    def _cancel_outage_timer(self) -> None:
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None

    def restore(self) -> None:
        """End an outage (either mode)."""
        self.faults.outage_503(0)
        with self._lifecycle:
            self._cancel_outage_timer()
            if self._down:
                self._bind()

    def reset(self) -> None:
        """Forget contacts, sessions, counters and faults."""
        self.store.reset()
        self.faults.clear()
        self.faults.injected = 0
        self.app.reset_stats()

    def contacts(self) -> dict[str, Any]:
        """The dump served at `GET /_standin/contacts`."""
        return self.store.dump()

    def stats(self) -> dict[str, Any]:
        """The counters served at `GET /_standin/stats`."""
        return self.app.stats()

    # -- request entry -------------------------------------------------------------------------------

    def _answer(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> Reply:
        if path.startswith(_ADMIN):
            return self._admin(method, path[len(_ADMIN) :], body)
        delay = self.faults.added_latency
        if delay > 0:
            time.sleep(delay)
        reply = self.app.handle(method, path, query, headers, body)
        logger.debug('stand-in %s path_kind="%s" status=%d', method, path.split("/")[3:4], reply.status)
        return reply

    def _admin(self, method: str, action: str, raw: bytes) -> Reply:
        try:
            args: dict[str, Any] = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return Reply(400, b"malformed JSON")
        ok = Reply(200, b'{"ok":true}', "application/json")
        try:
            if method == "GET" and action == "contacts":
                return Reply(200, orjson.dumps(self.contacts()), "application/json")
            if method == "GET" and action == "stats":
                return Reply(200, orjson.dumps(self.stats()), "application/json")
            if method != "POST":
                return Reply(405, b"use POST")
            if action == "reset":
                self.reset()
            elif action == "faults/fail-next":
                self.faults.fail_next(int(args.get("count", 1)), int(args.get("status", 500)))
            elif action == "faults/fail-imports":
                self.faults.fail_imports(int(args.get("count", 0)), args.get("external_ids") or ())
            elif action == "faults/throttle":
                retry_after = args.get("retry_after")
                self.faults.throttle(
                    float(args["seconds"]), None if retry_after is None else float(retry_after)
                )
            elif action == "faults/latency":
                self.faults.latency(float(args["seconds"]))
            elif action == "faults/outage":
                seconds = float(args["seconds"]) if args.get("seconds") is not None else math.nan
                mode = args.get("mode", self.outage_mode)
                if mode not in ("refuse", "503") or (mode == "refuse" and math.isnan(seconds)):
                    return Reply(400, b"mode refuse|503; refuse needs seconds (nothing could end it)")
                # On its own thread: going down waits for every connection, this one included.
                ok.after = threading.Thread(
                    target=self.outage,
                    args=(None if math.isnan(seconds) else seconds,),
                    kwargs={"mode": mode},
                    daemon=True,
                ).start
            elif action == "faults/clear":
                ok.after = self.restore
                self.faults.clear()
            else:
                return Reply(404, b"unknown admin action")
        except (KeyError, TypeError, ValueError) as exc:
            return Reply(400, f"bad arguments: {type(exc).__name__}".encode())
        return ok


def _catalog(names: Mapping[str, int] | None, types: Mapping[str, str] | None) -> Iterable[FieldDef]:
    if names is None:
        defaults = {f.name: f.type for f in DEFAULT_CUSTOM_FIELDS}
        return [
            FieldDef(f.id, f.name, (types or {}).get(f.name, defaults[f.name])) for f in DEFAULT_CUSTOM_FIELDS
        ]
    return [FieldDef(fid, name, (types or {}).get(name, "TEXTFIELD")) for name, fid in names.items()]
