"""Single-contact calls of the Yespo contacts API: add/update one contact, delete one, segment attach/detach.

Each call is one attempt; a contact-specific refusal (400/413/422) comes back as a failed `Outcome`
with its reason masked, and a 409 counts as delivered only for the contact's last write (`RecentWrites`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import orjson

from connector.errors import (
    AuthenticationError,
    MappingError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from connector.sink.batch import MAX_GROUP_IDS
from connector.sink.outcomes import Outcome, scrub_reason
from connector.sink.recent_writes import DELETED, RecentWrites, contact_identity
from connector.sink.responses import (
    CONTACT_SPECIFIC,
    REPEAT_WINDOW_S,
    Requester,
    classify_response,
    read_json,
)

__all__ = ["ContactCalls"]

logger = logging.getLogger(__name__)


class ContactCalls:
    """The single-contact, delete and segment calls of a `YespoClient`.

    Args:
        request: the client's request plumbing (rate limit, auth, transport-error translation).
        secrets: the API key in the forms a refusal's text may echo (masked).
        translate: the client's example shape -> wire translation (`YespoClient.translate`).
        recent: the client's memory of its recent single-contact writes.
    """

    def __init__(
        self,
        request: Requester,
        secrets: Sequence[str],
        translate: Callable[[Mapping[str, Any]], dict[str, Any]],
        recent: RecentWrites,
    ) -> None:
        self._request = request
        self._secrets = secrets
        self._translate = translate
        self._recent = recent

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
            if exc.status_code in CONTACT_SPECIFIC:
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
            wire = self._translate(contact)
        except MappingError as exc:
            return Outcome(False, None, reason=scrub_reason(exc.reason, contact))
        operation = "add contact"
        identity = contact_identity(wire)
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
        answer = read_json(ok_response, operation)
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
            self._recent.record(f"ext:{external_id}", DELETED)
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
