"""YespoClient: the deliver stage's calls to the Yespo contacts API, on an injected `httpx.Client`.

Every method makes single attempts (no hidden retry loop): retryable failures raise
`RetryableDeliveryError` for the caller's backoff (`retry.py`). httpx exceptions are translated in one
place (`transport_errors`) and HTTP statuses are classified in one place (`classify_response`), both in
`responses.py`; bulk requests are `bulk.py`'s, single-contact calls `contact_calls.py`'s.
The API key is sent as Basic-auth password and never appears in logs, errors or reprs.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import httpx
import orjson

from connector.config import ContactMapping, YespoSettings
from connector.errors import ConfigError, PermanentDeliveryError, RetryableDeliveryError
from connector.gctune import weak_method
from connector.sink.bulk import BulkSender, SessionObserver
from connector.sink.catalog import (
    check_offline_config,
    custom_field_names,
    dropped_fields,
    parse_field_catalog,
    parse_field_types,
    resolve_field_ids,
)
from connector.sink.contact_calls import ContactCalls
from connector.sink.outcomes import BulkOutcome, ImportStatus, Outcome
from connector.sink.ratelimit import RateLimiter
from connector.sink.recent_writes import RecentWrites
from connector.sink.responses import (
    classify_response,
    read_import_status,
    read_json,
    redirect_target,
    transport_errors,
)
from connector.sink.retry import RetryPolicy, UniformSource
from connector.sink.wire import BulkEnvelope, WireTranslator, managed_contact_fields

__all__ = ["USERNAME", "RequestObserver", "YespoClient", "api_root"]

logger = logging.getLogger(__name__)

USERNAME: Final = "yespo-connector"
"""Basic-auth user name; Yespo ignores it (the password is the API key)."""

RequestObserver = Callable[[str, str, float], None]
"""Told of every request once it ends: (URL path, e.g. `/api/v1/contact`, with any ids in it;
the HTTP status code or `error` when no response came; seconds)."""


def api_root(base_url: str) -> str:
    """`https://yespo.io` or `https://api.yespo.io/api` -> the `.../api/v1` root."""
    base = base_url.rstrip("/")
    if base.endswith("/api/v1"):
        return base
    if base.endswith("/api"):
        return base + "/v1"
    return base + "/api/v1"


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
        self._recent = RecentWrites(clock)
        self.retry_policy = RetryPolicy(max_retry_seconds=settings.max_retry_seconds)
        self._names = custom_field_names(mapping, settings)
        self._contact_fields = managed_contact_fields(mapping)
        self._translator: WireTranslator | None = None
        self._envelope: BulkEnvelope | None = None
        request = weak_method(self._request)  # the collaborators call back: no cycle (gctune.weak_method)
        self._bulk = BulkSender(request, self._secrets, weak_method(self._resolved))
        self._calls = ContactCalls(request, self._secrets, weak_method(self.translate), self._recent)
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
            body = read_json(response, "address books")
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

    def _resolved(self) -> tuple[WireTranslator, BulkEnvelope]:
        self._require_resolved()
        assert self._translator is not None and self._envelope is not None
        return self._translator, self._envelope

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
            with transport_errors(operation):
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

    # -- bulk -------------------------------------------------------------------------------------

    def send_bulk(
        self,
        contacts: Sequence[Mapping[str, Any]],
        keep: Sequence[Sequence[str]] | None = None,
        *,
        on_session: SessionObserver | None = None,
    ) -> BulkOutcome:
        """One `POST /api/v1/contacts` with these example-shape contacts (at most 3000).

        See `BulkSender.send` for `keep`, `on_session`, the outcomes and what it raises.
        """
        return self._bulk.send(contacts, keep, on_session=on_session)

    def send_bulk_isolating(
        self,
        contacts: Sequence[Mapping[str, Any]],
        keep: Sequence[Sequence[str]] | None = None,
        *,
        on_session: SessionObserver | None = None,
    ) -> BulkOutcome:
        """Like `send_bulk`, but a whole-request 400 (also 413/422) bisects the batch recursively.

        See `BulkSender.send_isolating` for what the bisection costs and what it raises.
        """
        return self._bulk.send_isolating(contacts, keep, on_session=on_session)

    # -- single contact, deletes, segments ----------------------------------------------------------

    def send_single(self, contact: Mapping[str, Any]) -> Outcome:
        """`POST /api/v1/contact` with one example-shape contact.

        See `ContactCalls.send_single` for the outcomes and when a 409 counts as delivered.
        """
        return self._calls.send_single(contact)

    def delete(self, external_id: str, *, erase: bool, about: Sequence[Any] = ()) -> Outcome:
        """`DELETE /api/v1/contact?externalCustomerId=...&erase=...`; a missing contact is ok.

        See `ContactCalls.delete`.
        """
        return self._calls.delete(external_id, erase=erase, about=about)

    def attach(self, group_id: int, external_ids: Sequence[str], about: Sequence[Any] = ()) -> Outcome:
        """Add contacts (by externalCustomerId, 1..500) to static segment `group_id`.

        See `ContactCalls.attach` (what a refusal's text masks).
        """
        return self._calls.attach(group_id, external_ids, about)

    def detach(self, group_id: int, external_ids: Sequence[str], about: Sequence[Any] = ()) -> Outcome:
        """Remove contacts (by externalCustomerId, 1..500) from static segment `group_id`.

        See `ContactCalls.detach` (what a refusal's text masks).
        """
        return self._calls.detach(group_id, external_ids, about)

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
        return read_import_status(response, operation, mapping=mapping, secrets=self._secrets)

    def account_info(self) -> Mapping[str, Any]:
        """`GET /api/v1/account/info`: a connectivity and credentials check for start-up."""
        operation = "account info"
        response = self._request("GET", "/account/info", operation)
        try:
            classify_response(response, operation, secrets=self._secrets)
        except PermanentDeliveryError as exc:
            if 300 <= response.status_code < 400:  # no contact data in this request: name the target
                exc.location = redirect_target(response)
            raise
        answer = read_json(response, operation)
        return answer if isinstance(answer, Mapping) else {}
