"""The stand-in's API endpoints: auth, rate limit, validation, then the store; no sockets here.

`StandInApp.handle` takes a parsed request and returns a `Reply`, so the HTTP layer (`server.py`) is
thin and the endpoints are testable without a network. Nothing here logs customer data or the key.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hmac
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from connector.gctune import weak_method
from connector.standin.faults import Faults
from connector.standin.imports import ImportJob, ImportWorker
from connector.standin.limits import DuplicateWindow, SlidingWindow
from connector.standin.records import BulkRequest, BulkResult
from connector.standin.rules import NO_CHANNEL, contact_problem
from connector.standin.store import ContactStore
from connector.standin.validation import RequestValidator

__all__ = ["Reply", "StandInApp"]

logger = logging.getLogger(__name__)

_MAX_GROUP_IDS: Final = 500


@dataclass(slots=True)
class Reply:
    """An HTTP answer; `after` runs once the answer is on the wire."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)
    after: Callable[[], None] | None = None


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, orjson.dumps(value), "application/json; charset=UTF-8", headers or {})


def _text(status: int, text: str) -> Reply:
    return Reply(status, text.encode())


class _BadRequest(Exception):
    def __init__(self, reply: Reply) -> None:
        self.reply = reply


_Route = tuple[str, re.Pattern[str], str, str]
"""(method, compiled path, handler name, OpenAPI path template)."""


def _route(method: str, template: str, name: str) -> _Route:
    # a `{name}` segment matches any segment: its schema (int32, int64, string) is checked after the
    # match, so that an id out of range answers 400 as in Yespo, not 404 (`RequestValidator.path_error`)
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return method, re.compile(pattern), name, template


_ROUTES: Final[tuple[_Route, ...]] = tuple(
    _route(method, "/api/v1/" + template, name)
    for method, template, name in (
        ("POST", "contact", "add_contact"),
        ("DELETE", "contact", "delete_by_external_id"),
        ("GET", "contact/{id}", "get_contact"),
        ("PUT", "contact/{id}", "update_contact"),
        ("DELETE", "contact/{id}", "delete_by_id"),
        ("POST", "contacts", "bulk_update"),
        ("GET", "contacts", "search"),
        ("GET", "importstatus/{sessionId}", "import_status"),
        ("GET", "groups", "groups"),
        ("POST", "group/{id}/contacts/attach", "modify_group"),
        ("POST", "group/{id}/contacts/detach", "modify_group"),
        ("GET", "addressbooks", "address_books"),
        ("GET", "account/info", "account_info"),
    )
)


class StandInApp:
    """The Yespo API as the stand-in implements it.

    Args:
        api_key: the one valid key (Basic-auth password; the user name is ignored).
        store: the account.
        validator: compiled request validators.
        faults: injected faults.
        clock: monotonic seconds (rate limit, duplicate window, bulk delay).
        rate_limit: requests per second over the API endpoints except search (None: unlimited);
            search has its own window of at most 50/s (spec section 7).
        duplicate_window_s: a byte-identical `POST /contact`, or `PUT /contact/{id}` to the same id,
            within this time gets 409.
        bulk_delay_s: 0 applies bulk requests before answering; more applies them later on a
            worker thread: the import status is STARTED for the first half of the delay, IMPORTING
            for the second, then FINISHED (or ERROR, an injected `fail_imports` fault included).
    """

    def __init__(
        self,
        *,
        api_key: str,
        store: ContactStore,
        validator: RequestValidator,
        faults: Faults,
        clock: Callable[[], float],
        rate_limit: float | None = 200.0,
        duplicate_window_s: float = 60.0,
        bulk_delay_s: float = 0.0,
    ) -> None:
        self._key = api_key.encode()
        self.store = store
        self.validator = validator
        self.faults = faults
        self._clock = clock
        self.window = SlidingWindow(rate_limit, clock)
        # GET /api/v1/contacts has its own, lower limit (spec section 7: 50 requests/s); the general
        # one is for the "methods not listed", so a search counts in its own window only
        self.search_window = SlidingWindow(None if rate_limit is None else min(rate_limit, 50.0), clock)
        self._duplicates = DuplicateWindow(duplicate_window_s, clock)
        self.bulk_delay_s = bulk_delay_s
        self._imports = ImportWorker(
            store, clock, weak_method(self._fail_import), weak_method(self._count_applied)
        )
        self._stats_lock = threading.Lock()
        self.reset_stats()

    # -- lifecycle, stats ---------------------------------------------------------------------------

    def start_worker(self, sleep: Callable[[float], None]) -> None:
        """Start the delayed-bulk worker thread (only needed when `bulk_delay_s` > 0)."""
        self._imports.start(sleep)

    def stop_worker(self) -> None:
        """Stop the worker after the queued imports."""
        self._imports.stop()

    def _fail_import(self, sid: str) -> None:
        """End an import in ERROR by an injected fault; Yespo applies nothing of such an import."""
        if self.store.set_session(sid, "ERROR"):  # False: a reset forgot it
            self._count(imports_failed=1)

    def _count_applied(self, result: BulkResult | None) -> None:
        if result is not None:  # None: a reset forgot the session, nothing was applied
            self._count(contacts_applied=len(result.mapping), contacts_skipped_deleted=result.skipped_deleted)

    def reset_stats(self) -> None:
        """Zero the counters and forget the duplicate and rate windows."""
        with self._stats_lock:
            self.counters: collections.Counter[str] = collections.Counter()
            self.requests: collections.Counter[str] = collections.Counter()
        self._duplicates.clear()
        self.window.clear()
        self.search_window.clear()

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            self.counters.update(deltas)

    def stats(self) -> dict[str, Any]:
        """Counters (by name) and requests by "METHOD route status"."""
        with self._stats_lock:
            return {
                "counters": dict(self.counters),
                "requests": dict(self.requests),
                "requests_total": sum(self.requests.values()),
                "faults_injected": self.faults.injected,
            }

    # -- entry point --------------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        """Answer one API request."""
        route_name = "unknown"
        template = ""
        allowed = False
        match: re.Match[str] | None = None
        for route_method, pattern, name, route_template in _ROUTES:
            found = pattern.fullmatch(path)
            if found:
                allowed = True
                if route_method == method:
                    match, route_name, template = found, name, route_template
                    break
        reply = self._dispatch(method, match, route_name, template, allowed, query, headers, body)
        with self._stats_lock:
            self.requests[f"{method} {route_name} {reply.status}"] += 1
        return reply

    def _dispatch(
        self,
        method: str,
        match: re.Match[str] | None,
        route_name: str,
        template: str,
        allowed: bool,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        if not self._authorized(headers.get("authorization")):
            return _json(401, {"status": 401, "error": "Unauthorized"})
        fault = self.faults.reply()
        if fault is not None:
            extra = {} if fault.retry_after is None else {"Retry-After": _seconds(fault.retry_after)}
            return Reply(fault.status, fault.text.encode(), headers=extra)
        if not (self.search_window if route_name == "search" else self.window).admit():
            self._count(rate_limited=1)
            return _text(429, "Too many requests: more than the allowed requests per 1 second")
        if match is None:
            return _text(405, "Method not allowed") if allowed else _text(404, "Not found")
        if (error := self.validator.path_error(method, template, match.groupdict())) is not None:
            self._count(bad_requests=1)
            return _text(400, f"Bad request: {error}")
        try:
            handler: Callable[..., Reply] = getattr(self, "_" + route_name)
            return handler(match, query, headers, body)
        except _BadRequest as exc:
            self._count(bad_requests=1)
            return exc.reply

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _, sep, password = decoded.partition(b":")
        return bool(sep) and hmac.compare_digest(password, self._key)

    def _body(self, headers: Mapping[str, str], body: bytes, schema: str | None) -> Any:
        ctype = headers.get("content-type", "")
        if not ctype.lower().startswith("application/json"):
            raise _BadRequest(_text(415, "Unsupported media type"))
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _BadRequest(_text(400, "Bad request: malformed JSON")) from None
        if schema is not None and (error := self.validator.validate(schema, value)) is not None:
            raise _BadRequest(_text(400, f"Bad request: {error}"))
        return value

    # -- contacts -------------------------------------------------------------------------------------

    def _single_problem(self, contact: Mapping[str, Any]) -> str | None:
        return contact_problem(contact) or self.store.field_problem(contact)

    def _duplicate(self) -> Reply:
        self._count(duplicates=1)
        return _text(409, "Duplicated request")

    def _add_contact(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        contact = self._body(headers, raw, "Contact")
        if not contact["channels"]:
            return _text(400, f"Bad request: {NO_CHANNEL}")
        if (problem := self._single_problem(contact)) is not None:
            return _text(400, f"Bad request: {problem}")
        if self._duplicates.claim("POST contact", raw) is None:
            return self._duplicate()
        cid, created = self.store.upsert_single(contact)
        self._count(contacts_received=1, contacts_applied=1, contacts_created=int(created))
        return _json(200, {"id": cid})

    def _update_contact(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        contact = self._body(headers, raw, "ContactUpdate")
        if (problem := self._single_problem(contact)) is not None:
            return _text(400, f"Bad request: {problem}")
        contact_id = int(match["id"])
        claim = self._duplicates.claim(f"PUT contact/{contact_id}", raw)
        if claim is None:
            return self._duplicate()
        try:
            updated = self.store.update_by_id(contact_id, contact)
        except ValueError as exc:  # spec section 5: the call fails (status not documented)
            self._duplicates.release(claim)
            return _text(400, f"Bad request: {exc}")
        if updated:
            return _text(200, "")
        self._duplicates.release(claim)
        return _text(404, "Contact not found")

    def _bulk_update(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        body = self._body(headers, raw, None)
        if (error := self.validator.validate_bulk(body)) is not None:
            return _text(400, f"Bad request: {error}")
        contacts = body["contacts"]
        problems = {
            i: problem for i, c in enumerate(contacts) if (problem := self._single_problem(c)) is not None
        }
        request = BulkRequest(
            contacts=contacts,
            dedupe_on=body["dedupeOn"],
            contact_fields=frozenset(body["contactFields"]) if "contactFields" in body else None,
            custom_field_ids=frozenset(body["customFieldsIDs"]) if "customFieldsIDs" in body else None,
            restore_deleted=bool(body.get("restoreDeleted", False)),
            group_names=tuple(body.get("groupNames") or ()),
            group_names_exclude=tuple(body.get("groupNamesExclude") or ()),
            field_id=body.get("fieldId"),
        )
        if request.dedupe_on == "fieldId":
            return _text(400, "Bad request: dedupeOn fieldId is not implemented by the stand-in")
        sid = self.store.new_session()
        self._count(contacts_received=len(contacts), bulk_requests=1)
        failed: dict[int, str] = dict(problems)
        fail = self.faults.import_fails(c.get("externalCustomerId") for c in contacts)
        if self.bulk_delay_s > 0 and self._imports.running:
            now, delay = self._clock(), self.bulk_delay_s
            self._imports.submit(ImportJob(now + delay / 2, now + delay, sid, request, problems, fail))
        elif fail:
            self._fail_import(sid)
        else:
            result = self.store.run_import(sid, request, problems)
            if result is not None:
                failed.update(result.failed)
            self._count_applied(result)
        self._count(contacts_failed=len(failed))
        answer: dict[str, Any] = {"asyncSessionId": sid}
        # the rejected contacts echoed as the official `FailedContact` (which has no externalCustomerId)
        keys = self.validator.failed_contact_keys
        entries = [
            {**{k: v for k, v in contacts[i].items() if k in keys}, "error": reason}
            for i, reason in sorted(failed.items())
        ]
        if entries:
            answer["failedContacts"] = entries[0] if len(entries) == 1 else entries
        return _json(200, answer)

    def _import_status(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        session = self.store.session(match["sessionId"])
        if session is None:
            return _text(404, "Import session not found")
        return _json(200, session)

    def _get_contact(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        found = self.store.get(int(match["id"]))
        return _text(404, "Contact not found") if found is None else _json(200, found)

    def _search(self, match: re.Match[str], query: Mapping[str, str], headers: Any, raw: bytes) -> Reply:
        criteria = {k: query.get(k) for k in ("externalCustomerId", "email", "sms", "firstname", "lastname")}
        if criteria["externalCustomerId"] is not None and any(
            v is not None for k, v in criteria.items() if k != "externalCustomerId"
        ):
            return _text(400, "Bad request: externalCustomerId cannot be combined with other criteria")
        try:
            start = int(query.get("startindex", "1"))
            rows = min(int(query.get("maxrows", "500")), 500)
        except ValueError:
            return _text(400, "Bad request: startindex and maxrows must be integers")
        if start < 1 or rows < 1:
            return _text(400, "Bad request: startindex and maxrows start at 1")
        page, total = self.store.search(
            external_id=criteria["externalCustomerId"],
            email=criteria["email"],
            sms=criteria["sms"],
            first_name=criteria["firstname"],
            last_name=criteria["lastname"],
            start=start,
            max_rows=rows,
        )
        return _json(200, page, {"TotalCount": str(total)})

    def _erase_flag(self, query: Mapping[str, str]) -> bool:
        value = query.get("erase", "false").lower()
        if value not in ("true", "false"):
            raise _BadRequest(_text(400, "Bad request: erase must be true or false"))
        return value == "true"

    def _delete_by_external_id(
        self, match: re.Match[str], query: Mapping[str, str], headers: Any, raw: bytes
    ) -> Reply:
        ext = query.get("externalCustomerId")
        if not ext:
            return _text(400, "Bad request: externalCustomerId is required")
        erase = self._erase_flag(query)
        if not self.store.delete_external(ext, erase=erase):
            return _text(404, "Contact not found")
        self._count(**{"erased" if erase else "deleted": 1})
        return _text(200, "")

    def _delete_by_id(
        self, match: re.Match[str], query: Mapping[str, str], headers: Any, raw: bytes
    ) -> Reply:
        erase = self._erase_flag(query)
        if not self.store.delete_id(int(match["id"]), erase=erase):
            return _text(404, "Contact not found")
        self._count(**{"erased" if erase else "deleted": 1})
        return _text(200, "")

    # -- segments, catalog, account ------------------------------------------------------------------

    def _groups(self, match: re.Match[str], query: Mapping[str, str], headers: Any, raw: bytes) -> Reply:
        groups = self.store.groups(query.get("name"))
        try:
            start = max(int(query.get("startindex", "1")), 1)
            rows = min(max(int(query.get("maxrows", "500")), 1), 500)
        except ValueError:
            return _text(400, "Bad request: startindex and maxrows must be integers")
        return _json(200, groups[start - 1 : start - 1 + rows])

    def _modify_group(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        body = self._body(headers, raw, "ModifyContactsInGroup")
        contact_ids = body.get("contactIds") or []
        external_ids = body.get("externalCustomerIds") or []
        if contact_ids and external_ids:
            return _text(400, "Bad request: use either contactIds or externalCustomerIds")
        if len(contact_ids) > _MAX_GROUP_IDS or len(external_ids) > _MAX_GROUP_IDS:
            return _text(400, f"Bad request: at most {_MAX_GROUP_IDS} ids per request")
        action = match.string.rsplit("/", 1)[1]  # the route ends in /attach or /detach
        attach = action == "attach"
        result = self.store.modify_group(
            int(match["id"]), attach=attach, contact_ids=contact_ids, external_ids=external_ids
        )
        if result is None:
            return _text(404, "Group not found")
        changed, unknown = result
        self._count(**{f"group_{action}ed": changed, "group_unknown_ids": unknown})
        return _text(200, "Contacts were attached" if attach else "Contacts were detached")

    def _address_books(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        fields = [
            {
                "id": f.id,
                "name": f.name,
                "fieldKey": f.name,
                "description": {"type": f.type, "required": False, "readonly": False},
            }
            for f in self.store.catalog
        ]
        group = {
            "name": "Contact data",
            "profileKey": "CONTACT",
            "fields": fields[0] if len(fields) == 1 else fields,
        }
        # One-element lists are objects in Yespo's answers: the one address book is an object.
        return _json(200, {"addressBook": {"addressBookId": 1, "name": "Default", "fieldGroups": group}})

    def _account_info(self, match: re.Match[str], query: Any, headers: Any, raw: bytes) -> Reply:
        return _json(200, {"userEmail": "owner@standin.invalid", "organisationName": "Yespo stand-in"})


def _seconds(value: float) -> str:
    # Retry-After is delta-seconds, a non-negative integer (RFC 9110 10.2.3): round a fraction up
    return str(max(0, math.ceil(value)))
