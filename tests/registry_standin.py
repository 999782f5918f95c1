"""A small Confluent-compatible Schema Registry stand-in for tests (stdlib HTTP server in a thread).

Endpoints: POST /subjects/{s}/versions, GET /schemas/ids/{id}, GET /subjects/{s}/versions/{v}
(number or `latest`), POST /subjects/{s}, GET /subjects, GET/PUT /config. Bodies and errors follow
the Confluent REST API. Schemas live in a `RegistryStore` that survives `stop()`/`start()`, so a test
can take the registry down and bring it back on the same port; `fail_status` makes every request
answer that HTTP status (e.g. 503).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["RegistryStandIn", "RegistryStore"]

_CT = "application/vnd.schemaregistry.v1+json"


def _canonical(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return text


@dataclass
class RegistryStore:
    """Registered schemas: ids are global, versions per subject (1-based)."""

    schemas: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (schema text, type)
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject -> ids by version
    compatibility: str = "BACKWARD"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, subject: str, text: str, schema_type: str = "AVRO") -> int:
        with self.lock:
            canon = _canonical(text)
            sid = next((i for i, (t, _) in self.schemas.items() if _canonical(t) == canon), None)
            if sid is None:
                sid = max(self.schemas, default=0) + 1
                self.schemas[sid] = (text, schema_type)
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid


def _version(subject: str, version: int, sid: int, store: RegistryStore) -> dict[str, Any]:
    return {"subject": subject, "version": version, "id": sid, "schema": store.schemas[sid][0]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", _CT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: int, message: str) -> None:
        self._send(status, {"error_code": code, "message": message})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        return json.loads(raw or b"{}")

    def _dispatch(self, method: str) -> None:
        store = self.server.store
        self.server.requests.append((method, self.path))
        if self.server.fail_status is not None:
            self._error(self.server.fail_status, self.server.fail_status * 100, "stand-in told to fail")
            return
        path = self.path.split("?")[0].rstrip("/")
        if method == "GET" and (m := re.fullmatch(r"/schemas/ids/(\d+)", path)):
            entry = store.schemas.get(int(m.group(1)))
            if entry is None:
                self._error(404, 40403, "Schema not found")
                return
            body = {"schema": entry[0]}
            if entry[1] != "AVRO":
                body["schemaType"] = entry[1]
            self._send(200, body)
        elif method == "POST" and (m := re.fullmatch(r"/subjects/([^/]+)/versions", path)):
            req = self._body()
            if not isinstance(req.get("schema"), str):
                self._error(422, 42201, "Invalid schema")
                return
            sid = store.register(m.group(1), req["schema"], req.get("schemaType", "AVRO"))
            self._send(200, {"id": sid})
        elif method == "GET" and (m := re.fullmatch(r"/subjects/([^/]+)/versions/([^/]+)", path)):
            versions = store.subjects.get(m.group(1))
            if not versions:
                self._error(404, 40401, "Subject not found")
                return
            v = m.group(2)
            idx = len(versions) if v == "latest" else int(v) if v.isdigit() else 0
            if not 1 <= idx <= len(versions):
                self._error(404, 40402, "Version not found")
                return
            sid = versions[idx - 1]
            self._send(200, _version(m.group(1), idx, sid, store))
        elif method == "POST" and (m := re.fullmatch(r"/subjects/([^/]+)", path)):
            req = self._body()
            versions = store.subjects.get(m.group(1))
            if not versions:
                self._error(404, 40401, "Subject not found")
                return
            canon = _canonical(str(req.get("schema")))
            for idx, sid in enumerate(versions, start=1):
                if _canonical(store.schemas[sid][0]) == canon:
                    self._send(200, _version(m.group(1), idx, sid, store))
                    return
            self._error(404, 40403, "Schema not found")
        elif method == "GET" and path == "/subjects":
            self._send(200, sorted(store.subjects))
        elif method == "GET" and path == "/config":
            self._send(200, {"compatibilityLevel": store.compatibility})
        elif method == "PUT" and path == "/config":
            level = self._body().get("compatibility")
            if not isinstance(level, str):
                self._error(422, 42203, "Invalid compatibility level")
                return
            store.compatibility = level
            self._send(200, {"compatibility": level})
        else:
            self._error(404, 404, "Not found")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: RegistryStore) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.fail_status: int | None = None
        self.requests: list[tuple[str, str]] = []


class RegistryStandIn:
    """The stand-in server: `start()` on 127.0.0.1 (a free port first, the same port on restart)."""

    def __init__(self, store: RegistryStore | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store or RegistryStore()
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []
        self._fail_status: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def fail_status(self) -> int | None:
        return self._fail_status

    @fail_status.setter
    def fail_status(self, status: int | None) -> None:
        self._fail_status = status
        if self._server is not None:
            self._server.fail_status = status

    def start(self) -> RegistryStandIn:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), self.store)
        server.fail_status = self._fail_status
        server.requests = self.requests
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="registry-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> RegistryStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
