"""How the Yespo client reads answers: HTTP statuses classified, httpx exceptions translated, bodies parsed.

The one boundary where an httpx answer or exception becomes a verdict or a connector error
(`classify_response`, `transport_errors`); `YespoClient` and its call collaborators all read through it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, Protocol

import httpx
import msgspec
import orjson

from connector.errors import (
    AuthenticationError,
    ConfigError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from connector.sink.outcomes import ImportStatus, scrub_reason
from connector.sink.retry import parse_retry_after

__all__ = [
    "CONTACT_SPECIFIC",
    "REPEAT_WINDOW_S",
    "Requester",
    "Verdict",
    "as_list",
    "classify_response",
    "read_import_status",
    "read_json",
    "redirect_target",
    "transport_errors",
]

logger = logging.getLogger(__name__)

_WRITES: Final = frozenset({"add contact", "delete contact", "attach", "detach"})
"""Writes whose 409 is a repeat of a write in effect (`add contact`: see `RecentWrites` too); not a
bulk update, whose 409 proves nothing (`classify_response`)."""
_NOT_FOUND_OK: Final = frozenset({"delete contact"})
CONTACT_SPECIFIC: Final = frozenset({400, 413, 422})
"""Statuses that blame the request content: isolate the contact (bulk) or fail just it (single)."""
REPEAT_WINDOW_S: Final = 60.0
"""Yespo answers 409 to a byte-identical `POST /contact` within a minute of the first one."""


class Requester(Protocol):
    """One request through the client's HTTP plumbing (`YespoClient._request`): rate limit, auth, timing.

    Raises what `transport_errors` translates; the answer's status is the caller's to classify.
    """

    def __call__(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send `method path` (under the API root) and return the answer, whatever its status."""
        ...


Verdict = Literal["ok", "duplicate", "not found"]


def _body_text(response: httpx.Response, about: Sequence[Any], secrets: Iterable[str]) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        return "(undecodable body)"
    return scrub_reason(text, *about, secrets=secrets) if text.strip() else "(empty body)"


def classify_response(
    response: httpx.Response,
    operation: str,
    *,
    about: Sequence[Any] = (),
    secrets: Iterable[str] = (),
) -> Verdict:
    """The one place that decides what an HTTP status means.

    Args:
        response: the answer.
        operation: what was asked (`bulk update`, `add contact`, `delete contact`, ...).
        about: what the request carried (wire contacts, ids): a refusal's text may quote any of it,
            so every value is masked in the raised error's text (`scrub_reason`).
        secrets: the API key in the forms a body may echo (masked too).

    Returns:
        "ok" for 2xx; "duplicate" for 409 on a single-contact write (Yespo's "Duplicated request"
        within a minute: the same request came before); "not found" for 404 (or a 4xx saying "not
        found") on a delete: the contact is already gone.

    Raises:
        AuthenticationError: 401/403; the stage must stop, nothing is dead-lettered.
        RetryableDeliveryError: 408, 429, 5xx; `retry_after` from a `Retry-After` header if any.
            Also a 409 on a bulk update, to be sent again after the minute: it says the same body
            came within the minute, not that its import applied (an earlier one may have ended in
            ERROR, or another write may have come in between: A, B, A).
        PermanentDeliveryError: any other status (400 blames the request: isolate or DLQ); its text
            is "operation: HTTP status: " and the masked answer.
    """
    status = response.status_code
    if 200 <= status < 300:
        return "ok"
    if status in (401, 403):
        raise AuthenticationError(
            f"{operation}: HTTP {status}: the API key was refused (check the key and its rights)",
            status_code=status,
        )
    if status == 409 and operation == "bulk update":
        raise RetryableDeliveryError(
            f"{operation}: HTTP 409: a repeat within Yespo's one-minute window proves nothing was "
            "applied; sent again after the window",
            status_code=409,
            retry_after=REPEAT_WINDOW_S + 1,
        )
    if status == 409 and operation in _WRITES:
        return "duplicate"
    if status in (408, 429) or status >= 500:
        raise RetryableDeliveryError(
            f"{operation}: HTTP {status}",
            status_code=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    text = _body_text(response, about, secrets)
    if operation in _NOT_FOUND_OK and (status == 404 or "not found" in text.lower()):
        return "not found"
    raise PermanentDeliveryError(f"{operation}: HTTP {status}: {text}", status_code=status)


def redirect_target(response: httpx.Response) -> str | None:
    """A redirect's `Location` as scheme://host[:port][/path] (no query, no credentials), if any."""
    location = response.headers.get("location")
    if not location:
        return None
    url = response.url.join(location)
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


@contextlib.contextmanager
def transport_errors(operation: str) -> Iterator[None]:
    """Translate httpx exceptions (the one boundary); messages carry no URL, query or body."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise RetryableDeliveryError(f"{operation}: timeout ({type(exc).__name__})") from exc
    except httpx.UnsupportedProtocol as exc:
        raise ConfigError(f"{operation}: unsupported URL scheme", key="yespo.base_url") from exc
    except httpx.TransportError as exc:
        raise RetryableDeliveryError(f"{operation}: connection failed ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise RetryableDeliveryError(f"{operation}: HTTP client error ({type(exc).__name__})") from exc
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{operation}: invalid URL", key="yespo.base_url") from exc


def as_list(value: Any) -> list[Any]:
    """A JSON value that may be one item or a list of them, as a list (None: empty)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def read_json(response: httpx.Response, operation: str) -> Any:
    """The answer's JSON body (None when empty).

    Raises:
        RetryableDeliveryError: the body is not JSON.
    """
    try:
        return orjson.loads(response.content) if response.content.strip() else None
    except orjson.JSONDecodeError as exc:
        # A 2xx we cannot read leaves the outcome unknown; upserts are idempotent, so retry.
        raise RetryableDeliveryError(
            f"{operation}: unreadable answer body", status_code=response.status_code
        ) from exc


class _StatusHead(msgspec.Struct, gc=False):
    """The fields of an import-status answer that a waiting caller reads."""

    status: Any = None
    timestamp: Any = None
    description: Any = None


_STATUS_HEAD: Final = msgspec.json.Decoder(_StatusHead)


def _status_only(response: httpx.Response, operation: str) -> Mapping[str, Any] | None:
    """An import-status answer without its `mapping` (skipped by the parser, never built)."""
    if not response.content.strip():
        return None
    try:
        head = _STATUS_HEAD.decode(response.content)
    except msgspec.ValidationError:
        return None  # not an object: "answer without a status"
    except msgspec.DecodeError as exc:
        raise RetryableDeliveryError(
            f"{operation}: unreadable answer body", status_code=response.status_code
        ) from exc
    return {"status": head.status, "timestamp": head.timestamp, "description": head.description}


def read_import_status(
    response: httpx.Response, operation: str, *, mapping: bool, secrets: Iterable[str]
) -> ImportStatus:
    """A 2xx import-status answer as an `ImportStatus` (see `YespoClient.import_status`).

    `mapping`: read the `(dedupeValue, contactId)` pairs; False skips them. The description has
    `secrets` masked.

    Raises:
        RetryableDeliveryError: an unreadable answer or one without a status.
    """
    answer = read_json(response, operation) if mapping else _status_only(response, operation)
    if not isinstance(answer, Mapping) or not isinstance(answer.get("status"), str):
        raise RetryableDeliveryError(f"{operation}: answer without a status", status_code=200)
    pairs = tuple(
        (str(m.get("dedupeValue")), m["contactId"])
        for m in as_list(answer.get("mapping"))
        if isinstance(m, Mapping) and isinstance(m.get("contactId"), int)
    )
    description = answer.get("description")
    return ImportStatus(
        status=answer["status"],
        timestamp=answer.get("timestamp") if isinstance(answer.get("timestamp"), str) else None,
        description=(scrub_reason(description, secrets=secrets) if isinstance(description, str) else None),
        mapping=pairs,
    )
