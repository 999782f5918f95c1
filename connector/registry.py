"""Confluent-compatible Schema Registry client (writer schemas by id) and the wait-and-retry helper.

Decoding Avro needs the writer schema of every id it meets. `SchemaRegistryClient.get` fetches
`GET /schemas/ids/{id}` once per id and caches the parsed fastavro schema. The registry's own "not
found" answer (a 404 with `error_code` 40401-40403, or Apicurio <= 2.0.1's `error_code` 404 beside a
`message`) is final for the record (`UnknownSchemaError` -> DLQ); any other 404 (a wrong base path,
a proxy's page), an unreachable registry, a timeout or a 5xx raises
`SchemaRegistryUnavailableError`, which is never a reason to skip a record:
`wait_for_registry` (or `RetryingSchemaLookup`) backs off and tries again.

A registry replica can answer "not found" for an id registered a moment ago: followers learn new
schemas from the `_schemas` topic after the leader wrote them, and a record's producer may be quicker.
With `not_found_grace_s`, an id's "not found" is final only once the registry has kept saying it for
that long since it first did; until then it counts as unavailable, so the record waits instead of
going to the DLQ. The merge stage uses 5 s; the `decode` command answers at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx
import orjson
from fastavro import parse_schema
from fastavro.schema import SchemaParseException, UnknownType

from connector.decode.avro import SchemaLookup
from connector.errors import SchemaRegistryUnavailableError, UnknownSchemaError

__all__ = [
    "Backoff",
    "RetryingSchemaLookup",
    "SchemaRegistryClient",
    "StaticSchemaLookup",
    "wait_for_registry",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
_NOT_FOUND_CODES: Final = frozenset({40401, 40402, 40403})
"""The registry's own 404 `error_code`s: subject, version or schema not found."""
_NO_ROUTE: Final = re.compile(
    r"RESTEASY003210|could not find resource|^\s*HTTP 404 Not Found\s*$", re.IGNORECASE
)
"""JAX-RS's "no such path" texts: Apicurio's native API (a wrong base path) wraps them as error 404."""


@contextmanager
def _registry_errors(action: str) -> Iterator[None]:
    """Translate httpx failures (the one boundary to the registry) into SchemaRegistryUnavailableError.

    An `httpx.InvalidURL` (not an `httpx.HTTPError`) is a registry URL no request can be built from:
    unavailable too, never a reason to dead-letter the record.
    """
    try:
        yield
    except httpx.HTTPError as exc:
        raise SchemaRegistryUnavailableError(
            f"schema registry unreachable while {action} ({type(exc).__name__})"
        ) from exc
    except httpx.InvalidURL as exc:
        raise SchemaRegistryUnavailableError(
            f"source.schema_registry_url is not a usable URL (found while {action})"
        ) from exc


def _is_not_found(response: httpx.Response) -> bool:
    """Whether a 404 is the registry saying it lacks the schema, not a wrong path or a proxy's page.

    Confluent, Karapace and Apicurio >= 2.1 answer `error_code` 40401-40403; Apicurio's ccompat API
    up to 2.0.1 answers `{"error_code": 404, "message": "No content with id: 7"}`
    (Apicurio/apicurio-registry#1547). Its native API answers a path it does not serve (a base URL
    without `/apis/ccompat/v7`) in the same shape, with JAX-RS's "Could not find resource" or
    "HTTP 404 Not Found": those stay a wrong path.
    """
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(body, Mapping):
        return False
    code = body.get("error_code")
    if type(code) is not int:  # not True (a bool is an int), not 404.0
        return False
    if code == 404:
        message = body.get("message")
        return isinstance(message, str) and bool(message.strip()) and not _NO_ROUTE.search(message)
    return code in _NOT_FOUND_CODES


def _parse_avro(schema_id: int, text: str) -> Any:
    try:
        return parse_schema(orjson.loads(text))
    except (orjson.JSONDecodeError, SchemaParseException, UnknownType, ValueError, TypeError, KeyError):
        raise UnknownSchemaError(schema_id, f"Avro schema id {schema_id} cannot be parsed") from None


class SchemaRegistryClient:
    """A `SchemaLookup` over the Confluent Schema Registry REST API (also Apicurio's ccompat API).

    Args:
        url: base URL, e.g. `http://127.0.0.1:8081` or `http://host/apis/ccompat/v7`.
        client: the httpx client to use (tests pass one with a `MockTransport`); default: a new
            client with `timeout_s`.
        timeout_s: request timeout of the default client.
        not_found_grace_s: how long an id's "not found" counts as unavailable (a lagging replica)
            before it is final (`UnknownSchemaError`); 0: final at once.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client | None = None,
        timeout_s: float = 10.0,
        not_found_grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = url.rstrip("/")
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._owns_client = client is None
        self._schemas: dict[int, Any] = {}
        self._grace_s = not_found_grace_s
        self._clock = clock
        self._not_found_since: dict[int, float] = {}  # id -> when the registry first said "not found"

    def __enter__(self) -> SchemaRegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            self._client.close()

    def get(self, schema_id: int) -> Any:
        """The parsed writer schema of `schema_id`, from the cache or the registry (one attempt).

        Raises:
            UnknownSchemaError: a 404 with error_code 40401-40403 (or 404 with a message, as
                Apicurio <= 2.0.1 answers) once `not_found_grace_s` passed since the first, a
                non-Avro schema, or a schema fastavro cannot parse.
            SchemaRegistryUnavailableError: transport error, timeout, 5xx, an invalid URL, a 404 that
                is not the registry's "not found" (a wrong base path), a "not found" within the
                grace, or any other answer that waiting or a config fix might fix.
        """
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        with _registry_errors("fetching a schema"):
            response = self._client.get(f"{self._base}/schemas/ids/{schema_id}")
        if response.status_code == 404:
            if _is_not_found(response):
                now = self._clock()
                if now - self._not_found_since.setdefault(schema_id, now) < self._grace_s:
                    raise SchemaRegistryUnavailableError(
                        f"schema registry does not know schema id {schema_id} yet (a replica may lag "
                        f"behind the registration); final after {self._grace_s:g} s"
                    )
                raise UnknownSchemaError(schema_id)
            raise SchemaRegistryUnavailableError(
                f"schema registry answered HTTP 404 without a schema-not-found error code for schema id "
                f"{schema_id}: check that source.schema_registry_url is the registry's Confluent-compatible "
                "API (Apicurio: /apis/ccompat/v7)"
            )
        if response.status_code != 200:
            raise SchemaRegistryUnavailableError(
                f"schema registry answered HTTP {response.status_code} for schema id {schema_id}"
            )
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise SchemaRegistryUnavailableError(
                "schema registry answered with a body that is not JSON"
            ) from None
        if not isinstance(body, Mapping) or not isinstance(body.get("schema"), str):
            raise SchemaRegistryUnavailableError("schema registry answered without a schema")
        schema_type = body.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise UnknownSchemaError(schema_id, f"schema id {schema_id} is {schema_type}, not Avro")
        parsed = _parse_avro(schema_id, body["schema"])
        self._schemas[schema_id] = parsed
        return parsed

    def register(self, subject: str, schema: Mapping[str, Any] | str) -> int:
        """Register `schema` under `subject` (`POST /subjects/{subject}/versions`); returns its id.

        Raises:
            SchemaRegistryUnavailableError: the registry did not accept the request.
        """
        text = schema if isinstance(schema, str) else orjson.dumps(schema).decode("utf-8")
        with _registry_errors("registering a schema"):
            response = self._client.post(
                f"{self._base}/subjects/{quote(subject, safe='')}/versions",
                content=orjson.dumps({"schema": text}),
                headers={"Content-Type": _CONTENT_TYPE},
            )
        if response.status_code != 200:
            raise SchemaRegistryUnavailableError(f"schema registry answered HTTP {response.status_code}")
        return int(orjson.loads(response.content)["id"])


class StaticSchemaLookup:
    """A `SchemaLookup` over schemas given up front (tests, benchmarks, offline decoding)."""

    def __init__(self, schemas: Mapping[int, Mapping[str, Any] | str]) -> None:
        self._schemas = {
            sid: _parse_avro(sid, s if isinstance(s, str) else orjson.dumps(s).decode("utf-8"))
            for sid, s in schemas.items()
        }

    def get(self, schema_id: int) -> Any:
        """The schema of `schema_id`.

        Raises:
            UnknownSchemaError: the id was not given.
        """
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise UnknownSchemaError(schema_id) from None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: `initial_s * multiplier**attempt`, capped at `max_s`."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        return float(min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64)))


def wait_for_registry(
    call: Callable[[], T],
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    max_wait_s: float | None = None,
) -> T:
    """Run `call`, retrying with backoff while it raises `SchemaRegistryUnavailableError`.

    Use it around `decode_event` (or a registry lookup): the same record is retried, never skipped
    and never sent to the DLQ because the registry is down.

    Args:
        call: the operation to run.
        backoff: the delay policy (default `Backoff()`).
        sleep: how to wait (injected in tests).
        clock: monotonic seconds (injected in tests).
        max_wait_s: give up after about this long by re-raising; None waits forever.

    Raises:
        SchemaRegistryUnavailableError: still unavailable after `max_wait_s`.
    """
    policy = backoff or Backoff()
    started = clock()
    attempt = 0
    while True:
        try:
            return call()
        except SchemaRegistryUnavailableError as exc:
            delay = policy.delay(attempt)
            if max_wait_s is not None and clock() - started + delay > max_wait_s:
                raise
            logger.warning("schema registry unavailable (%s); retry %d in %.1fs", exc, attempt + 1, delay)
            sleep(delay)
            attempt += 1


class RetryingSchemaLookup:
    """A `SchemaLookup` that waits out registry outages (`wait_for_registry` around each lookup)."""

    def __init__(
        self,
        lookup: SchemaLookup,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float | None = None,
    ) -> None:
        self._lookup = lookup
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._max_wait_s = max_wait_s

    def get(self, schema_id: int) -> Any:
        """The schema of `schema_id`, waiting while the registry is unavailable.

        Raises:
            UnknownSchemaError: the registry does not know the id.
            SchemaRegistryUnavailableError: still unavailable after `max_wait_s`.
        """
        return wait_for_registry(
            lambda: self._lookup.get(schema_id),
            backoff=self._backoff,
            sleep=self._sleep,
            clock=self._clock,
            max_wait_s=self._max_wait_s,
        )
