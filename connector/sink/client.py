"""YespoClient: the deliver stage's calls to the Yespo contacts API, on an injected `httpx.Client`.

Every method makes single attempts (no hidden retry loop): retryable failures raise
`RetryableDeliveryError` for the caller's backoff (`retry.py`). httpx exceptions are translated in one
place (`_transport_errors`) and HTTP statuses are classified in one place (`classify_response`).
The API key is sent as Basic-auth password and never appears in logs, errors or reprs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx
import msgspec
import orjson

from connector.config import ContactMapping, YespoSettings
from connector.errors import (
    AuthenticationError,
    ConfigError,
    MappingError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from connector.sink.batch import MAX_GROUP_IDS
from connector.sink.outcomes import (
    BulkOutcome,
    ContactOutcome,
    ImportStatus,
    Outcome,
    scrub_reason,
)
from connector.sink.ratelimit import RateLimiter
from connector.sink.retry import RetryPolicy, UniformSource, parse_retry_after
from connector.sink.wire import (
    BulkEnvelope,
    WireTranslator,
    check_offline_config,
    custom_field_names,
    dedupe_for,
    dropped_fields,
    managed_contact_fields,
    parse_field_catalog,
    parse_field_types,
    resolve_field_ids,
)

__all__ = ["MAX_BULK_CONTACTS", "USERNAME", "RequestObserver", "YespoClient", "api_root", "classify_response"]

logger = logging.getLogger(__name__)

MAX_BULK_CONTACTS: Final = 3000
USERNAME: Final = "yespo-connector"
"""Basic-auth user name; Yespo ignores it (the password is the API key)."""

_WRITES: Final = frozenset({"add contact", "delete contact", "attach", "detach"})
"""Writes whose 409 is a repeat of a write in effect (`add contact`: see `_RecentWrites` too); not a
bulk update, whose 409 proves nothing (`classify_response`)."""
_NOT_FOUND_OK: Final = frozenset({"delete contact"})
_CONTACT_SPECIFIC: Final = frozenset({400, 413, 422})
"""Statuses that blame the request content: isolate the contact (bulk) or fail just it (single)."""
REPEAT_WINDOW_S: Final = 60.0
"""Yespo answers 409 to a byte-identical `POST /contact` within a minute of the first one."""
SessionObserver = Callable[[str], None]
"""Told of each bulk import's `asyncSessionId` as soon as an answer carries it."""

RequestObserver = Callable[[str, str, float], None]
"""Told of every request once it ends: (URL path, e.g. `/api/v1/contact`, with any ids in it;
the HTTP status code or `error` when no response came; seconds)."""


class _RecentWrites:
    """The last single-contact write this process made to each contact, for Yespo's repeat window.

    A 409 means "the same request came within a minute", not "this request is in effect": for a
    contact sent A, then B, then A again within the minute, Yespo keeps B. Only `confirmed` tells
    the two apart: a 409 counts as delivered when this process's last write to the contact was this
    very one. Without an entry (a restart, or a partition that moved from another instance, whose
    writes this process never saw) nothing is known, so the write is sent again after the window;
    a revocation empties the memory (`YespoClient.forget_recent_writes`): a partition that leaves
    and comes back may have been written by another instance meanwhile. A write whose answer was
    lost (a timeout, a 5xx) may or may not have applied: the contact's last write is then unknown
    (`unsettled`) until a write of it is answered, and no 409 counts for it, not even one for the
    lost write's own retry (a 409 proves that an identical body came within the minute, not that the
    lost one did: A, B, then A lost, and the retry's 409 may repeat the first A while Yespo keeps
    B). Entries older than two windows are dropped (a 409 cannot be about them), so the memory
    holds at most two minutes of single-mode writes (200 requests/s at most).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._pruned = clock()

    def record(self, contact: str, write: bytes) -> None:
        """`write` (a body digest, or `DELETED`) reached `contact`."""
        now = self._clock()
        with self._lock:
            self._last[contact] = (write, now)
            if now - self._pruned > REPEAT_WINDOW_S:
                self._last = {k: v for k, v in self._last.items() if now - v[1] < 2 * REPEAT_WINDOW_S}
                self._pruned = now

    def unsettled(self, contact: str, failure: RetryableDeliveryError) -> None:
        """A write to `contact` failed without an answer that says whether it applied.

        A timeout or a lost connection, a 408 or a 5xx: a later 409 must not be taken for a repeat of
        the write before it (A, then B lost but applied, then A again: Yespo keeps B). A 429 or a 409
        says Yespo applied nothing: the last write stays what it was.
        """
        if failure.status_code not in (409, 429):
            self.record(contact, _UNKNOWN)

    def confirmed(self, contact: str, write: bytes) -> bool:
        """True when this process's last write to `contact` was `write` itself."""
        with self._lock:
            last = self._last.get(contact)
        return last is not None and last[0] == write

    def clear(self) -> None:
        """Forget every write (the contacts may be written by another process from now on)."""
        with self._lock:
            self._last = {}


_DELETED: Final = b"delete"
_UNKNOWN: Final = b"unknown"
"""The contact's last write is not known (its answer was lost): equal to no body digest (16 bytes)."""


def _contact_identity(wire: Mapping[str, Any]) -> str:
    """Which contact a single-contact body addresses: its externalCustomerId, else its channels."""
    ext = wire.get("externalCustomerId")
    if ext:
        return f"ext:{ext}"
    channels = wire.get("channels") or ()
    return "channels:" + ",".join(sorted(str(c.get("value")) for c in channels if isinstance(c, Mapping)))


Verdict = Literal["ok", "duplicate", "not found"]


def api_root(base_url: str) -> str:
    """`https://yespo.io` or `https://api.yespo.io/api` -> the `.../api/v1` root."""
    base = base_url.rstrip("/")
    if base.endswith("/api/v1"):
        return base
    if base.endswith("/api"):
        return base + "/v1"
    return base + "/api/v1"


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


def _redirect_target(response: httpx.Response) -> str | None:
    """A redirect's `Location` as scheme://host[:port][/path] (no query, no credentials), if any."""
    location = response.headers.get("location")
    if not location:
        return None
    url = response.url.join(location)
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


@contextlib.contextmanager
def _transport_errors(operation: str) -> Iterator[None]:
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


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _names_a_failure(entry: Any) -> bool:
    """Whether a `failedContacts` entry reports anything.

    Not `{}`, `""`, nor an object without an error, channels or externalCustomerId (XML-born
    answers write an empty list so).
    """
    if isinstance(entry, Mapping):
        return bool(entry.get("error") or entry.get("channels") or entry.get("externalCustomerId"))
    return bool(entry)


def _channels_key(channels: Any) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            (str(c.get("type")), str(c.get("value"))) for c in _as_list(channels) if isinstance(c, Mapping)
        )
    )


@dataclass(slots=True)
class _Partial:
    """Accumulated results of one or more bulk requests (mutable while isolating)."""

    outcomes: dict[int, ContactOutcome] = field(default_factory=dict)
    session_ids: list[str] = field(default_factory=list)
    error_messages: list[str] = field(default_factory=list)
    requests: int = 0
    unattributed: int = 0
    """`failedContacts` entries that matched no sent contact (their contact counts as delivered)."""
    ambiguous: int = 0
    """`failedContacts` entries that matched several sent contacts (all of them count as failed)."""

    def merge(self, other: _Partial) -> None:
        self.outcomes.update(other.outcomes)
        self.session_ids.extend(other.session_ids)
        self.error_messages.extend(other.error_messages)
        self.requests += other.requests
        self.unattributed += other.unattributed
        self.ambiguous += other.ambiguous


class _StatusHead(msgspec.Struct, gc=False):
    """The fields of an import-status answer that a waiting caller reads."""

    status: Any = None
    timestamp: Any = None
    description: Any = None


_STATUS_HEAD: Final = msgspec.json.Decoder(_StatusHead)

_Item = tuple[int, str | None, dict[str, Any]]
"""(input index, externalCustomerId, wire contact)."""


class YespoClient:
    """Calls to the Yespo contacts API with the connector's wire format and status policy.

    Args:
        http: the HTTP client (tests pass `httpx.Client(transport=httpx.MockTransport(...))`).
        settings: `yespo:` settings; `api_key` must be set.
        mapping: the `contact:` mapping; decides `contactFields` and the custom fields.
        clock: monotonic seconds, for the rate limiter.
        sleep: how to wait for a rate-limit token (waits are at most `1 / max_requests_per_second`).
        rng: jitter source for `retry_delay`.
        limiter: a shared rate limiter (default: one of `settings.max_requests_per_second`).
        on_request: told of each request's duration, failed ones (timeouts, connection errors)
            included (`RequestObserver`); the rate limiter's wait is not counted.

    Raises:
        ConfigError: no API key, a channel mapping the API cannot carry, or a configured custom-field
            id outside int32.
    """

    def __init__(
        self,
        http: httpx.Client,
        settings: YespoSettings,
        mapping: ContactMapping,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: UniformSource | None = None,
        limiter: RateLimiter | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        api_key = settings.require_api_key()
        check_offline_config(mapping, settings)
        self._http = http
        self._settings = settings
        self._mapping = mapping
        self._auth = httpx.BasicAuth(USERNAME, api_key)
        credentials = f"{USERNAME}:{api_key}"
        self._secrets = (
            api_key,
            quote(api_key, safe=""),
            credentials,
            base64.b64encode(credentials.encode()).decode(),  # the Basic credentials as sent
        )
        """What a refusal's text may echo of the key (a gateway quoting the request): masked."""
        self._root = api_root(settings.base_url)
        self._root_path = httpx.URL(self._root).path.rstrip("/")
        self._on_request = on_request
        self._sleep = sleep
        self._rng: UniformSource = rng if rng is not None else random.Random()  # noqa: S311 - jitter
        self._limiter = limiter or RateLimiter(settings.max_requests_per_second, clock)
        self._recent = _RecentWrites(clock)
        self.retry_policy = RetryPolicy(max_retry_seconds=settings.max_retry_seconds)
        self._names = custom_field_names(mapping, settings)
        self._contact_fields = managed_contact_fields(mapping)
        self._translator: WireTranslator | None = None
        self._envelope: BulkEnvelope | None = None
        if all(name in settings.field_ids for name in self._names):
            self._install(self._resolve(settings.field_ids, None))

    def __repr__(self) -> str:
        return f"YespoClient(root={self._root!r}, mode={self._settings.mode!r})"

    def forget_recent_writes(self) -> None:
        """Forget the single-contact writes this process made (call when partitions are revoked).

        A 409 counts as delivered only when this process's last write to the contact was the refused
        body (`send_single`). Once a partition has left, its contacts may be written by another
        instance, which this process never sees: a memory kept across that would trust a 409 that
        repeats a write another instance has replaced since (A here, B there, then A here again).
        """
        self._recent.clear()

    # -- start-up ---------------------------------------------------------------------------------

    @property
    def dropped_fields(self) -> tuple[str, ...]:
        """Mapped fields the API cannot receive (the caller warns once at start-up)."""
        return dropped_fields(self._mapping, self._settings)

    @property
    def envelope(self) -> BulkEnvelope:
        """`contactFields` and `customFieldsIDs` of every bulk request (after `resolve_fields`)."""
        self._require_resolved()
        assert self._envelope is not None
        return self._envelope

    def resolve_fields(self) -> Mapping[str, int]:
        """Resolve custom-field names to ids; call once at start-up.

        Names missing from `yespo.field_ids` are looked up in `GET /api/v1/addressbooks` (`name` or
        `fieldKey`). No request is made when every name is configured.

        Returns:
            name -> id for every custom field the connector writes.

        Raises:
            ConfigError: a name is unknown (the message names the field).
            AuthenticationError, RetryableDeliveryError, PermanentDeliveryError: the catalog request
                failed.
        """
        configured = dict(self._settings.field_ids)
        catalog = None
        types: dict[int, str] = {}
        if any(name not in configured for name in self._names):
            response = self._request("GET", "/addressbooks", "address books")
            classify_response(response, "address books", secrets=self._secrets)
            body = self._json(response, "address books")
            catalog, types = parse_field_catalog(body), parse_field_types(body)
        ids = self._resolve(configured, catalog)
        self._install(ids, types)
        return ids

    def _resolve(self, configured: Mapping[str, int], catalog: Mapping[str, int] | None) -> dict[str, int]:
        key_of = {}
        if self._settings.country_field:
            key_of[self._settings.country_field] = "yespo.country_field"
        return resolve_field_ids(self._names, configured, catalog, key_of=key_of)

    def _install(self, ids: Mapping[str, int], catalog_types: Mapping[int, str] | None = None) -> None:
        country = self._settings.country_field
        country_id = ids.get(country) if country and country in self._names else None
        names = {name: ids[name] for name in self._names}
        types = dict(catalog_types or {})
        types.update((names[n], kind) for n, kind in self._settings.field_types.items() if n in names)
        self._translator = WireTranslator(names, country_id, types, self._settings.datetime_zone)
        self._envelope = BulkEnvelope(self._contact_fields, tuple(dict.fromkeys(names.values())))

    def _require_resolved(self) -> None:
        if self._translator is None:
            raise ConfigError(
                "custom-field ids are not resolved: call YespoClient.resolve_fields() at start-up",
                key="yespo.field_ids",
            )

    def translate(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """One example-shape contact in the official wire shape (see `wire.py`).

        Raises:
            MappingError: the contact names a custom field without an id, or an unknown channel type.
        """
        self._require_resolved()
        assert self._translator is not None
        return self._translator.contact(contact)

    def bulk_body(self, wire_contacts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The `POST /api/v1/contacts` body for already-translated contacts."""
        return self.envelope.body(wire_contacts)

    # -- HTTP plumbing ----------------------------------------------------------------------------

    def ready_in(self) -> float:
        """Seconds until the rate limiter lets the next request through (0.0: now)."""
        return self._limiter.peek_delay()

    def retry_delay(
        self, attempt: int, elapsed: float, retry_after: float | None, *, status_code: int | None = None
    ) -> float | None:
        """The backoff before retry `attempt` (None: give up and dead-letter), see `RetryPolicy`.

        After a 409 (`status_code`: Yespo's repeat window, bulk or single) the wait is at least its
        `retry_after` (the window and a second), above the policy's cap and past
        `max_retry_seconds` if need be: a retry inside the window only meets the 409 again.
        """
        must_wait = retry_after if status_code == 409 else None
        return self.retry_policy.next_delay(attempt, elapsed, retry_after, self._rng, must_wait=must_wait)

    def _request(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        self._limiter.acquire(self._sleep)
        headers = {"Accept": "application/json"}
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        status = "error"  # no response: a timeout, a connection error
        try:
            with _transport_errors(operation):
                response = self._http.request(
                    method,
                    self._root + path,
                    content=content,
                    headers=headers,
                    params=params,
                    auth=self._auth,
                    timeout=self._settings.request_timeout_s,
                )
            status = str(response.status_code)
        finally:
            if self._on_request is not None:
                self._on_request(self._root_path + path, status, time.perf_counter() - started)
        logger.debug(
            'yespo call operation="%s" status=%d seconds=%.3f',
            operation,
            response.status_code,
            time.perf_counter() - started,
        )
        return response

    @staticmethod
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

    @staticmethod
    def _json(response: httpx.Response, operation: str) -> Any:
        try:
            return orjson.loads(response.content) if response.content.strip() else None
        except orjson.JSONDecodeError as exc:
            # A 2xx we cannot read leaves the outcome unknown; upserts are idempotent, so retry.
            raise RetryableDeliveryError(
                f"{operation}: unreadable answer body", status_code=response.status_code
            ) from exc

    # -- bulk -------------------------------------------------------------------------------------

    def _translate_all(
        self, contacts: Sequence[Mapping[str, Any]]
    ) -> tuple[list[_Item], dict[int, ContactOutcome]]:
        self._require_resolved()
        assert self._translator is not None
        translate = self._translator.contact
        items: list[_Item] = []
        failed: dict[int, ContactOutcome] = {}
        for index, contact in enumerate(contacts):
            ext = (
                contact.get("externalCustomerId")
                if type(contact) is dict or isinstance(contact, Mapping)
                else None
            )
            ext_id = ext if type(ext) is str else None if ext is None else str(ext)
            try:
                items.append((index, ext_id, translate(contact)))
            except MappingError as exc:
                failed[index] = ContactOutcome(index, ext_id, False, None, scrub_reason(exc.reason))
        return items, failed

    def _by_envelope(
        self, items: list[_Item], keep: Sequence[Sequence[str]] | None
    ) -> list[tuple[BulkEnvelope, list[_Item]]]:
        """`items` grouped by the envelope they need: one request per distinct `keep_fields` set.

        And per `dedupeOn` (`dedupe_for`): contacts without an externalCustomerId go in requests of
        their own, matched on their email or phone.
        """
        envelope = self.envelope
        kept_paths = keep if keep and any(keep) else None
        if kept_paths is None and all(ext is not None for _, ext, _ in items):
            return [(envelope, items)]
        groups: dict[tuple[str, tuple[str, ...]], list[_Item]] = {}
        for item in items:
            paths = tuple(sorted(kept_paths[item[0]])) if kept_paths is not None else ()
            groups.setdefault((dedupe_for(item[2]), paths), []).append(item)
        out = []
        for (dedupe_on, paths), group in groups.items():
            kept = envelope
            if paths:
                assert self._translator is not None
                kept = envelope.keeping(*self._translator.kept_fields(paths))
            out.append((kept.deduping_on(dedupe_on), group))
        return out

    def _post_bulk(
        self,
        items: Sequence[_Item],
        envelope: BulkEnvelope,
        *,
        on_session: SessionObserver | None = None,
        splitting: bool = False,
    ) -> _Partial:
        """One `POST /api/v1/contacts` attempt; raises on a whole-request failure.

        A refusal's text has every value of the sent contacts masked; with `splitting` (the caller
        sends the halves of a refused request again) a 400/413/422 of several contacts is not read.
        """
        operation = "bulk update"
        wires = [wire for _, _, wire in items]
        response = self._request("POST", "/contacts", operation, body=envelope.body(wires))
        status = response.status_code
        if splitting and len(items) > 1 and status in _CONTACT_SPECIFIC:
            raise PermanentDeliveryError(f"{operation}: HTTP {status}", status_code=status)
        classify_response(response, operation, about=wires, secrets=self._secrets)
        part = _Partial(requests=1)
        part.outcomes = {index: ContactOutcome(index, ext, True, status) for index, ext, _ in items}
        answer = self._json(response, operation)
        if not isinstance(answer, Mapping):
            return self._started(part, operation, status)
        session = answer.get("asyncSessionId")
        if isinstance(session, str) and session:
            part.session_ids.append(session)
            if on_session is not None:
                on_session(session)
        if isinstance(answer.get("errorMessage"), str) and answer["errorMessage"]:
            # Yespo's text may quote data of any contact: it never reaches logs or the DLQ (counted)
            message = scrub_reason(answer["errorMessage"], secrets=self._secrets)
            if not part.session_ids:
                # no import was started that could be awaited: nothing says any contact was taken
                raise RetryableDeliveryError(
                    f"{operation}: HTTP {status} with an errorMessage ({len(message)} characters) and no "
                    "asyncSessionId",
                    status_code=status,
                )
            part.error_messages.append(message)
            logger.warning("bulk update answered with an errorMessage (%d contacts)", len(items))
        listed = [f for f in _as_list(answer.get("failedContacts") or None) if _names_a_failure(f)]
        if not listed:
            # every contact was taken (also `{}` or `""`: an empty list as XML-born answers write it)
            return self._started(part, operation, status)
        # Yespo's `FailedContact` has no externalCustomerId: an entry names its contact by the
        # channels it echoes (or by an externalCustomerId, when one is there)
        by_ext: dict[str, list[int]] = {}
        by_channels: dict[tuple[tuple[str, str], ...], list[int]] = {}
        by_index = {index: wire for index, _, wire in items}
        for index, ext, wire in items:
            if ext is not None:
                by_ext.setdefault(ext, []).append(index)
            channels = _channels_key(wire.get("channels"))
            if channels:
                by_channels.setdefault(channels, []).append(index)
        for failed in listed:
            if not isinstance(failed, Mapping):
                failed = {}  # names no contact
            error = str(failed.get("error") or "rejected by Yespo")
            ext = failed.get("externalCustomerId")
            hits = by_ext.get(str(ext), []) if ext is not None else []
            if not hits:
                hits = by_channels.get(_channels_key(failed.get("channels")), [])
                if len(hits) > 1:
                    part.ambiguous += 1  # contacts that share these channels: any of them
            if not hits and len(items) == 1:
                hits = [items[0][0]]  # the request held only this contact
            if not hits:
                part.unattributed += 1
            for index in hits:
                prior = part.outcomes[index]
                part.outcomes[index] = ContactOutcome(
                    index,
                    prior.external_id,
                    False,
                    response.status_code,
                    scrub_reason(error, by_index[index], secrets=self._secrets),
                )
        if part.unattributed:
            logger.warning("%d failedContacts entries matched no sent contact", part.unattributed)
        return self._started(part, operation, status)

    @staticmethod
    def _started(part: _Partial, operation: str, status: int) -> _Partial:
        """`part`, unless its answer counts a contact as taken without an import that could apply it.

        Yespo's bulk 200 always carries the `asyncSessionId` of the import it queued. Without one
        nothing says any contact was taken: the request is sent again (upserts are idempotent), with
        polling (nothing to await) or without it (the session is what proves an import was queued),
        unless `failedContacts` rejected every contact (no import is owed then).
        """
        if part.session_ids:
            return part
        taken = sum(1 for outcome in part.outcomes.values() if outcome.ok)
        if not taken:
            return part
        logger.warning(
            "bulk update answered HTTP %d without an asyncSessionId (%d of %d contacts not rejected): "
            "no import to await; the request is sent again",
            status,
            taken,
            len(part.outcomes),
        )
        raise RetryableDeliveryError(
            f"{operation}: HTTP {status} without an asyncSessionId: no import was queued for {taken} "
            "contacts; sent again",
            status_code=status,
        )

    @staticmethod
    def _finish(total: int, pre: Mapping[int, ContactOutcome], part: _Partial) -> BulkOutcome:
        merged = {**part.outcomes, **pre} if pre else part.outcomes
        return BulkOutcome(
            contacts=tuple([merged[i] for i in range(total)]),
            session_ids=tuple(part.session_ids),
            error_messages=tuple(part.error_messages),
            requests=part.requests,
            unattributed_failures=part.unattributed,
        )

    def _check_size(self, contacts: Sequence[Mapping[str, Any]]) -> None:
        if len(contacts) > MAX_BULK_CONTACTS:
            raise ValueError(f"at most {MAX_BULK_CONTACTS} contacts per bulk request")

    def send_bulk(
        self,
        contacts: Sequence[Mapping[str, Any]],
        keep: Sequence[Sequence[str]] | None = None,
        *,
        on_session: SessionObserver | None = None,
    ) -> BulkOutcome:
        """One `POST /api/v1/contacts` with these example-shape contacts (at most 3000).

        Contacts that cannot be translated are not sent and come back failed (`status_code` None).
        `failedContacts` (an object or an array) marks the contacts Yespo rejected.

        `keep[i]` are contact i's `keep_fields` (upserts topic): fields of unknown value that Yespo
        must keep. Contacts with such fields go in their own request, whose `contactFields` and
        `customFieldsIDs` leave those fields out (one request per distinct set).

        `on_session` is told of each import as soon as its answer comes, also when a later request
        of the call fails: an import started is awaited even when the call raises.

        Raises:
            ValueError: more than 3000 contacts.
            PermanentDeliveryError: a whole-request 4xx (a 400: use `send_bulk_isolating`).
            RetryableDeliveryError, AuthenticationError: see `classify_response` (also a 409).
                Also a 200 without an `asyncSessionId` (no import was queued), unless its
                `failedContacts` rejected every contact of the request.
        """
        self._check_size(contacts)
        items, pre = self._translate_all(contacts)
        part = _Partial()
        if items:
            for envelope, group in self._by_envelope(items, keep):
                part.merge(self._post_bulk(group, envelope, on_session=on_session))
        return self._finish(len(contacts), pre, part)

    def send_bulk_isolating(
        self,
        contacts: Sequence[Mapping[str, Any]],
        keep: Sequence[Sequence[str]] | None = None,
        *,
        on_session: SessionObserver | None = None,
    ) -> BulkOutcome:
        """Like `send_bulk`, but a whole-request 400 (also 413/422) bisects the batch recursively.

        The halves are sent until each rejected request holds one contact, which is then reported
        failed with the server's reason; every other contact is delivered. k bad contacts among n
        cost about 2k·log2(n) extra requests. Each request is still a single attempt.

        Raises:
            RetryableDeliveryError: any request of the bisection hit a retryable failure; retry the
                whole batch later (upserts are idempotent). The imports of the halves accepted
                before it were told to `on_session`.
            AuthenticationError, PermanentDeliveryError (other statuses): as in `send_bulk`.
        """
        self._check_size(contacts)
        items, pre = self._translate_all(contacts)
        part = _Partial()
        if items:
            for envelope, group in self._by_envelope(items, keep):
                part.merge(self._isolate(group, envelope, on_session))
        return self._finish(len(contacts), pre, part)

    def _isolate(
        self, items: Sequence[_Item], envelope: BulkEnvelope, on_session: SessionObserver | None
    ) -> _Partial:
        sessions: list[str] = []
        try:
            part = self._post_bulk(items, envelope, on_session=on_session, splitting=True)
        except PermanentDeliveryError as exc:
            if exc.status_code not in _CONTACT_SPECIFIC:
                raise  # its text has every sent value masked (`_post_bulk`)
            if len(items) == 1:
                index, ext, _ = items[0]
                outcome = ContactOutcome(index, ext, False, exc.status_code, str(exc))
                return _Partial(outcomes={index: outcome}, requests=1)
        else:
            if not (part.unattributed or part.ambiguous) or len(items) == 1:
                return part
            # a rejection that names no single sent contact: the halves are sent again (upserts are
            # idempotent) until each entry names its contact; this answer's import is awaited too
            # (still queued, it could apply after a later write)
            sessions = part.session_ids
            logger.warning(
                "%d failedContacts entries matched no single sent contact: sending the request again "
                "in halves",
                part.unattributed + part.ambiguous,
            )
        mid = len(items) // 2
        part = _Partial(session_ids=list(sessions), requests=1)
        part.merge(self._isolate(items[:mid], envelope, on_session))
        part.merge(self._isolate(items[mid:], envelope, on_session))
        return part

    # -- single contact, deletes, segments ----------------------------------------------------------

    def _outcome(self, response: httpx.Response, operation: str, about: Sequence[Any]) -> tuple[Outcome, Any]:
        """The answer as an `Outcome` (and the response to read, when it is a plain success).

        `about`: what the request carried (a wire contact, an externalCustomerId, a segment's ids)
        and what the server may know of those contacts; a refusal's text has all of it masked
        (`scrub_reason`), whether it is returned as the reason or raised.
        """
        try:
            verdict = classify_response(response, operation, about=about, secrets=self._secrets)
        except AuthenticationError:
            raise  # the stage stops: never a refusal of these contacts
        except PermanentDeliveryError as exc:
            if exc.status_code in _CONTACT_SPECIFIC:
                return Outcome(False, exc.status_code, reason=str(exc)), None
            raise PermanentDeliveryError(str(exc), status_code=exc.status_code) from None
        if verdict != "ok":
            return Outcome(True, response.status_code, reason=verdict), None
        return Outcome(True, response.status_code), response

    def send_single(self, contact: Mapping[str, Any]) -> Outcome:
        """`POST /api/v1/contact` with one example-shape contact.

        Returns:
            ok with Yespo's `contact_id`; ok with reason "duplicate" for a 409 repeat of the write in
            effect; not ok with the reason for a contact the API rejected (400/413/422) or that
            cannot be translated.

        Raises:
            RetryableDeliveryError: also for a 409 repeat that is not known to be the contact's
                last write: a later write may have replaced it (A, B, then A again within a minute:
                Yespo keeps B), or this process never saw the earlier writes (a restart, a partition
                that moved here), or the contact's last write is unknown (its answer was lost, also
                this very body's: the 409 may be about an earlier identical one); to be sent again
                once the minute is over (`retry_after`).
            AuthenticationError, PermanentDeliveryError (other 4xx; the contact's values masked).
        """
        try:
            wire = self.translate(contact)
        except MappingError as exc:
            return Outcome(False, None, reason=scrub_reason(exc.reason, contact))
        operation = "add contact"
        identity = _contact_identity(wire)
        digest = hashlib.blake2b(orjson.dumps(wire), digest_size=16).digest()
        try:
            response = self._request("POST", "/contact", operation, body=wire)
            outcome, ok_response = self._outcome(response, operation, (wire, contact))
        except RetryableDeliveryError as exc:
            self._recent.unsettled(identity, exc)  # it may have applied: no 409 counts until known
            raise
        if outcome.ok and outcome.reason == "duplicate" and not self._recent.confirmed(identity, digest):
            raise RetryableDeliveryError(
                f"{operation}: HTTP 409: a repeat within Yespo's one-minute window of a request that "
                "is not known to be the contact's last write; sent again after the window",
                status_code=409,
                retry_after=REPEAT_WINDOW_S + 1,
            )
        if outcome.ok and outcome.reason is None:
            self._recent.record(identity, digest)
        if ok_response is None:
            return outcome
        answer = self._json(ok_response, operation)
        cid = answer.get("id") if isinstance(answer, Mapping) else None
        return Outcome(True, response.status_code, contact_id=cid if isinstance(cid, int) else None)

    def delete(self, external_id: str, *, erase: bool, about: Sequence[Any] = ()) -> Outcome:
        """`DELETE /api/v1/contact?externalCustomerId=...&erase=...`; a missing contact is ok.

        A refusal's reason (and a raised error's text) has the externalCustomerId masked, also
        URL-encoded as the query carried it, and every value of `about` (what the caller holds of
        the contact: the server may quote what it stores of it, a name, a town).

        Raises:
            RetryableDeliveryError, AuthenticationError, PermanentDeliveryError (other 4xx).
        """
        if not external_id:
            raise ValueError("external_id must not be empty")
        operation = "delete contact"
        params = {"externalCustomerId": external_id, "erase": "true" if erase else "false"}
        try:
            response = self._request("DELETE", "/contact", operation, params=params)
            outcome = self._outcome(response, operation, (external_id, *about))[0]
        except RetryableDeliveryError as exc:
            self._recent.unsettled(f"ext:{external_id}", exc)  # it may have deleted the contact
            raise
        if outcome.ok:
            self._recent.record(f"ext:{external_id}", _DELETED)
        return outcome

    def _group_call(
        self, action: str, group_id: int, external_ids: Sequence[str], about: Sequence[Any]
    ) -> Outcome:
        # An empty id list would detach EVERY contact from the segment: never send one.
        if not 1 <= len(external_ids) <= MAX_GROUP_IDS:
            raise ValueError(f"{action}: between 1 and {MAX_GROUP_IDS} ids per call")
        body = {"externalCustomerIds": [str(x) for x in external_ids]}
        response = self._request("POST", f"/group/{int(group_id)}/contacts/{action}", action, body=body)
        return self._outcome(response, action, (body, *about))[0]

    def attach(self, group_id: int, external_ids: Sequence[str], about: Sequence[Any] = ()) -> Outcome:
        """Add contacts (by externalCustomerId, 1..500) to static segment `group_id`.

        A refusal's reason (and a raised error's text) has every sent externalCustomerId masked,
        and every value of `about` (what the caller holds of those contacts).
        """
        return self._group_call("attach", group_id, external_ids, about)

    def detach(self, group_id: int, external_ids: Sequence[str], about: Sequence[Any] = ()) -> Outcome:
        """Remove contacts (by externalCustomerId, 1..500) from static segment `group_id`.

        A refusal's reason (and a raised error's text) has every sent externalCustomerId masked,
        and every value of `about` (what the caller holds of those contacts).
        """
        return self._group_call("detach", group_id, external_ids, about)

    def import_status(self, session_id: str, *, mapping: bool = True) -> ImportStatus:
        """`GET /api/v1/importstatus/{session_id}` of a bulk request.

        Args:
            session_id: the bulk request's `asyncSessionId`.
            mapping: read the `(dedupeValue, contactId)` pairs; False skips them (one per contact
                of the import: a waiting caller only needs the status) and leaves `mapping` empty.

        Raises:
            RetryableDeliveryError: an unreadable answer or one without a status; also any other
                4xx than 401/403 (a session Yespo does not know, yet or any more): the caller sends
                the chunk again, which a retry policy bounds, rather than stop the stage (a restart
                would send it again too, and could meet the same answer for ever); see also
                `classify_response`.
        """
        operation = "import status"
        response = self._request("GET", f"/importstatus/{quote(session_id, safe='')}", operation)
        try:
            classify_response(response, operation, secrets=self._secrets)
        except PermanentDeliveryError as exc:
            raise RetryableDeliveryError(str(exc), status_code=exc.status_code) from None
        answer = self._json(response, operation) if mapping else self._status_only(response, operation)
        if not isinstance(answer, Mapping) or not isinstance(answer.get("status"), str):
            raise RetryableDeliveryError(f"{operation}: answer without a status", status_code=200)
        pairs = tuple(
            (str(m.get("dedupeValue")), m["contactId"])
            for m in _as_list(answer.get("mapping"))
            if isinstance(m, Mapping) and isinstance(m.get("contactId"), int)
        )
        description = answer.get("description")
        return ImportStatus(
            status=answer["status"],
            timestamp=answer.get("timestamp") if isinstance(answer.get("timestamp"), str) else None,
            description=(
                scrub_reason(description, secrets=self._secrets) if isinstance(description, str) else None
            ),
            mapping=pairs,
        )

    def account_info(self) -> Mapping[str, Any]:
        """`GET /api/v1/account/info`: a connectivity and credentials check for start-up."""
        operation = "account info"
        response = self._request("GET", "/account/info", operation)
        try:
            classify_response(response, operation, secrets=self._secrets)
        except PermanentDeliveryError as exc:
            if 300 <= response.status_code < 400:  # no contact data in this request: name the target
                exc.location = _redirect_target(response)
            raise
        answer = self._json(response, operation)
        return answer if isinstance(answer, Mapping) else {}
