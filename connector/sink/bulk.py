"""Bulk updates of the Yespo contacts API: `POST /api/v1/contacts`, and the isolation of refused contacts.

Contacts are grouped by the envelope they need (`keep_fields`, `dedupeOn`), a whole-request refusal
is bisected down to the contact at fault (`send_isolating`), and each `failedContacts` entry is
attributed to the sent contact it names. Single attempts only, like every `YespoClient` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from connector.errors import MappingError, PermanentDeliveryError, RetryableDeliveryError
from connector.sink.outcomes import BulkOutcome, ContactOutcome, scrub_reason
from connector.sink.responses import (
    CONTACT_SPECIFIC,
    Requester,
    as_list,
    classify_response,
    read_json,
)
from connector.sink.wire import BulkEnvelope, WireTranslator, dedupe_for

__all__ = ["MAX_BULK_CONTACTS", "BulkSender", "SessionObserver"]

logger = logging.getLogger(__name__)

MAX_BULK_CONTACTS: Final = 3000
SessionObserver = Callable[[str], None]
"""Told of each bulk import's `asyncSessionId` as soon as an answer carries it."""


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
        sorted((str(c.get("type")), str(c.get("value"))) for c in as_list(channels) if isinstance(c, Mapping))
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


_Item = tuple[int, str | None, dict[str, Any]]
"""(input index, externalCustomerId, wire contact)."""


class BulkSender:
    """The bulk requests of a `YespoClient` (`send_bulk`, `send_bulk_isolating`).

    Args:
        request: the client's request plumbing (rate limit, auth, transport-error translation).
        secrets: the API key in the forms a refusal's text may echo (masked).
        resolved: the client's wire translator and bulk envelope (raises `ConfigError` before
            `resolve_fields`).
    """

    def __init__(
        self,
        request: Requester,
        secrets: Sequence[str],
        resolved: Callable[[], tuple[WireTranslator, BulkEnvelope]],
    ) -> None:
        self._request = request
        self._secrets = secrets
        self._resolved = resolved

    def _translate_all(
        self, contacts: Sequence[Mapping[str, Any]]
    ) -> tuple[list[_Item], dict[int, ContactOutcome]]:
        translate = self._resolved()[0].contact
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
        translator, envelope = self._resolved()
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
                kept = envelope.keeping(*translator.kept_fields(paths))
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
        if splitting and len(items) > 1 and status in CONTACT_SPECIFIC:
            raise PermanentDeliveryError(f"{operation}: HTTP {status}", status_code=status)
        classify_response(response, operation, about=wires, secrets=self._secrets)
        part = _Partial(requests=1)
        part.outcomes = {index: ContactOutcome(index, ext, True, status) for index, ext, _ in items}
        answer = read_json(response, operation)
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
        listed = [f for f in as_list(answer.get("failedContacts") or None) if _names_a_failure(f)]
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

    def send(
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
            PermanentDeliveryError: a whole-request 4xx (a 400: use `send_isolating`).
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

    def send_isolating(
        self,
        contacts: Sequence[Mapping[str, Any]],
        keep: Sequence[Sequence[str]] | None = None,
        *,
        on_session: SessionObserver | None = None,
    ) -> BulkOutcome:
        """Like `send`, but a whole-request 400 (also 413/422) bisects the batch recursively.

        The halves are sent until each rejected request holds one contact, which is then reported
        failed with the server's reason; every other contact is delivered. k bad contacts among n
        cost about 2k·log2(n) extra requests. Each request is still a single attempt.

        Raises:
            RetryableDeliveryError: any request of the bisection hit a retryable failure; retry the
                whole batch later (upserts are idempotent). The imports of the halves accepted
                before it were told to `on_session`.
            AuthenticationError, PermanentDeliveryError (other statuses): as in `send`.
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
            if exc.status_code not in CONTACT_SPECIFIC:
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
