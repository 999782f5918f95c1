"""One batch's delivery: its plan run against the Yespo API, every record's outcome recorded.

`BatchDelivery.attempt` sends bulk upsert chunks (or single calls), then segment attach/detach (a
soft delete first leaves the segments its covered records left), then deletes; progress stays in the
`Batch`, so a retry resumes where the failure happened. Outcomes go to the `OutcomeRecorder`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from connector.errors import (
    AuthenticationError,
    DecodeError,
    DeliveryInterrupted,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from connector.models import RawRecord, SourcePosition
from connector.sink.batch import (
    DeliveryPlan,
    GroupCall,
    PendingRecord,
    PlannedDelete,
    PlannedUpsert,
    external_id,
    fallback,
    keep_fields_of,
    plan,
    plan_group_calls,
    segment_id,
)
from connector.sink.client import YespoClient
from connector.sink.outcomes import BulkOutcome, ContactOutcome
from connector.sink.recorder import OutboxWrite, OutcomeRecorder

__all__ = ["Batch", "BatchDelivery", "parse_upsert", "read_upsert"]

logger = logging.getLogger(__name__)

_Record = PendingRecord[RawRecord]
_Part = tuple[tuple[PlannedUpsert[RawRecord], ...], int | None]
"""Upserts to import together, and the ticket count when their last import ended in ERROR (or None)."""


@dataclass
class Batch:
    """Records in flight, the plan's progress, the retry state and the writes that wait for the end.

    Nothing of a batch reaches Kafka before the stage commits it: DLQ and audit records collect in
    `outbox`, so a batch abandoned by an authentication error, a stop or a revocation leaves no trace.
    `future`, `final`, `attempts`, `first_failure` and `retry_at` belong to the stage's loop; the rest
    is the plan's progress, kept across retries so a retry resumes where the failure happened.
    `offsets` holds, per partition, the offset to commit (its last record's plus one); `starts` its
    first record's offset (where a partition is read again from when the batch is dropped).
    """

    batch_id: str
    records: list[_Record]
    offsets: dict[tuple[str, int], int]
    outbox: list[OutboxWrite]
    keys: frozenset[str] = frozenset()
    future: Future[None] | None = None
    final: bool = False
    plan: DeliveryPlan[RawRecord] | None = None
    chunk: int = 0
    single: int = 0
    single_results: dict[int, ContactOutcome] = field(default_factory=dict)
    succeeded: list[tuple[PlannedUpsert[RawRecord], int | None]] = field(default_factory=list)
    group_calls: tuple[GroupCall, ...] | None = None
    group_call: int = 0
    group_failures: dict[str, str] = field(default_factory=dict)
    fallback_deletes: list[PlannedDelete[RawRecord]] = field(default_factory=list)
    fallback_upserts: list[PlannedUpsert[RawRecord]] = field(default_factory=list)
    """Upserts to send instead of rejected ones (`fallback`), for the next round of the chunk."""
    fallback_chunk: tuple[PlannedUpsert[RawRecord], ...] | None = None
    """The round of fallback upserts being sent (kept across retries, like a plan chunk)."""
    contacts_by_id: dict[str, list[Mapping[str, Any]]] | None = None
    """The records' contacts by externalCustomerId, built on the first need (`contacts_index`)."""
    delete: int = 0
    parts: list[_Part] | None = None
    """The current bulk chunk's parts still to import, in order (split when an import ends in ERROR)."""
    import_errors: dict[str, int] = field(default_factory=dict)
    """Imports of a single contact (by customer key) that ended in ERROR while others finished."""
    blind_split: bool = False
    """The current chunk was split once without evidence that Yespo applies other imports."""
    sessions: dict[str, float] = field(default_factory=dict)
    """Bulk imports this batch's attempts started that are not known to be over (FINISHED or ERROR),
    each with when it was first seen (the delivery's clock).

    Kept across attempts: one left behind by a failed attempt (its wait timed out, a status poll
    failed, a later half of a bisection raised) is awaited before the batch sends anything else,
    and the batch is final only once every one is over: Yespo may apply imports in any order, so
    one still queued could overtake a later write of its contacts. Such a wait is bounded
    (`BatchDelivery` drops a session Yespo answers 404 for, or one first seen longer ago than its
    `session_bound_s`). A batch abandoned (revocation, stop, give-up) hands them to the delivery
    (`BatchDelivery.abandon`).
    """
    attempts: int = 0
    first_failure: float | None = None
    retry_at: float = 0.0
    starts: dict[tuple[str, int], int] = field(default_factory=dict)

    def reset_plan(self, records: list[_Record]) -> None:
        """Start over on `records`, the deferred ones (after an erase, or another key's records).

        Failures keep being masked with every contact of the batch.
        """
        self.contacts_index()  # a later plan's failure may quote what an earlier plan sent
        self.records = records
        self.plan = None
        self.chunk = self.single = self.group_call = self.delete = 0
        self.parts, self.import_errors, self.blind_split = None, {}, False
        self.single_results = {}
        self.succeeded = []
        self.group_calls = None
        self.group_failures = {}
        self.fallback_deletes = []
        self.fallback_upserts, self.fallback_chunk = [], None

    def contacts_index(self) -> dict[str, list[Mapping[str, Any]]]:
        """The records' contacts by externalCustomerId (built once, on the first need)."""
        if self.contacts_by_id is None:
            self.contacts_by_id = {}
            for r in self.records:
                ext = external_id(r)
                if r.contact is not None and ext is not None:
                    self.contacts_by_id.setdefault(ext, []).append(r.contact)
        return self.contacts_by_id

    def deletes(self) -> tuple[PlannedDelete[RawRecord], ...]:
        """The plan's deletes, then those that replace rejected upserts (`fallback`)."""
        planned = self.plan.deletes if self.plan is not None else ()
        return (*planned, *self.fallback_deletes) if self.fallback_deletes else planned


def _position(source: Any) -> SourcePosition | None:
    """`source.position` of an upserts record (`[kind, part, ...]`), or None when absent or odd."""
    position = source.get("position") if isinstance(source, dict) else None
    if not isinstance(position, list) or len(position) < 2 or not isinstance(position[0], str):
        return None
    if not all(type(part) is int for part in position[1:]):
        return None
    return SourcePosition.from_json(position)


def _json_type(value: Any) -> str:
    """The JSON type name of a decoded value, for reasons that must not quote the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _blank(value: Any) -> bool:
    """True for an id that addresses no contact: empty or whitespace only (read as absent)."""
    return value is not None and not str(value).strip()


def parse_upsert(raw: RawRecord) -> _Record:
    """An upserts-topic record as the planner needs it.

    The value must be a JSON object with `op` upsert (and a `contact` object) or delete, and a
    `customer_key` (else the record key). A blank (empty or whitespace) `external_customer_id` or
    contact `externalCustomerId` is read as absent, like null: no contact is addressed by it (an
    upsert is then matched on its email or phone, a delete without an id is refused by the
    planner). A value that could not be written again (nested deeper than JSON encoders go) is
    refused too: its request body could never be sent.

    Raises:
        DecodeError: the record cannot be read; `reason` names the field and the type at fault,
            never a value (it goes to the DLQ headers and the audit record).
    """
    if raw.value is None:
        raise DecodeError("value is null (a tombstone)")
    try:
        value: Any = orjson.loads(raw.value)
    except orjson.JSONDecodeError:
        raise DecodeError("value is not valid JSON") from None
    if not isinstance(value, dict):
        raise DecodeError(f"value is {_json_type(value)}, not an object")
    try:
        orjson.dumps(value)  # TypeError when nested too deep (orjson reads 1024 levels, writes 255)
    except TypeError:
        raise DecodeError("value is nested too deep to be sent again") from None
    op = value.get("op")
    if op not in ("upsert", "delete"):
        raise DecodeError(f'op is not "upsert" or "delete" (it is {_json_type(op)})')
    contact = value.get("contact")
    if op == "upsert" and not isinstance(contact, dict):
        raise DecodeError(f"contact of an upsert is {_json_type(contact)}, not an object")
    if isinstance(contact, dict) and _blank(contact.get("externalCustomerId")):
        # sent as it is, "" would ride in a request deduplicated on externalCustomerId with no id
        contact = {k: v for k, v in contact.items() if k != "externalCustomerId"}
    ext = value.get("external_customer_id")
    if isinstance(ext, dict | list):
        raise DecodeError(f"external_customer_id is {_json_type(ext)}, not a string")
    if _blank(ext):
        ext = None
    key = value.get("customer_key")
    if key is None or key == "":
        key = (raw.key or b"").decode("utf-8", "replace")
        if not key:
            raise DecodeError("neither a customer_key nor a record key")
    elif not isinstance(key, str):
        raise DecodeError(f"customer_key is {_json_type(key)}, not a string")
    removed = value.get("groups_removed") or []
    if not isinstance(removed, list):
        raise DecodeError(f"groups_removed is {_json_type(removed)}, not an array")
    groups_removed: list[int] = []
    for i, group in enumerate(removed):
        gid = segment_id(group)  # never int(): it reads 5.9 as 5 and True as 1, another segment
        if gid is None:
            raise DecodeError(f"groups_removed[{i}] is {_json_type(group)}, not a segment id (1..2147483647)")
        groups_removed.append(gid)
    kept = keep_fields_of(value)
    if kept is None:  # unreadable: sent without it, the fields it names would be cleared
        fields = value.get("keep_fields")
        if not isinstance(fields, list):
            raise DecodeError(f"keep_fields is {_json_type(fields)}, not an array of strings")
        i, odd = next((i, f) for i, f in enumerate(fields) if type(f) is not str)
        raise DecodeError(f"keep_fields[{i}] is {_json_type(odd)}, not a string")
    try:
        position = _position(value.get("source"))
    except (ValueError, TypeError):
        position = None
    return PendingRecord(
        customer_key=key,
        ref=raw,
        op=op,
        contact=contact if isinstance(contact, dict) else None,
        external_id=str(ext) if ext is not None else None,
        erase=value.get("erase") is True,
        groups_removed=tuple(groups_removed),
        keep_fields=kept,
        position=position,
        retires=op == "delete" and value.get("retires") is True,
    )


def read_upsert(raw: RawRecord) -> _Record | None:
    """`parse_upsert`, or None when the record cannot be read (the read-back skips it)."""
    try:
        return parse_upsert(raw)
    except DecodeError:
        return None


class BatchDelivery:
    """Runs batches' plans; each attempt runs on one of the stage's worker threads.

    Args:
        client: the Yespo client (its rate limiter paces every request).
        recorder: counts outcomes and builds their audit and DLQ writes.
        mode: "bulk" or "single" (`yespo.mode`).
        batch_size: the largest bulk chunk (`yespo.batch_size`).
        poll_import_status: wait for each bulk import to finish (`yespo.poll_import_status`).
        import_timeout_s: how long at most (`yespo.import_status_timeout_s`).
        sleep: how to wait between import-status requests.
        import_error_attempts: imports of one contact that end in ERROR before its record goes to
            the DLQ (`yespo.import_error_attempts`; only while other imports finish).
        clock: monotonic seconds, for how long an import left behind has been awaited.

    An import left behind (by an earlier attempt of a batch, or by a batch abandoned on a
    revocation, a stop or a give-up: `abandon`) is awaited before an attempt sends anything, but
    not for ever: one whose status Yespo answers 404 for (a session it no longer knows) is over,
    and one first seen more than `session_bound_s` ago (`import_timeout_s` x
    `import_error_attempts`, 360 s by default) is dropped (logged, counted as
    `import_session_dropped`); its contacts are sent again.
    """

    def __init__(
        self,
        client: YespoClient,
        recorder: OutcomeRecorder,
        *,
        mode: Literal["bulk", "single"],
        batch_size: int,
        poll_import_status: bool,
        sleep: Callable[[float], None],
        import_timeout_s: float = 120.0,
        import_error_attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._clock = clock
        self.session_bound_s = import_timeout_s * max(1, import_error_attempts)
        """How long after it was first seen an import left behind is still awaited."""
        self._orphans_lock = threading.Lock()
        self._orphans: dict[str, float] = {}
        """Imports of abandoned batches not known to be over, with when each was first seen."""
        self._interrupted = threading.Event()
        self._import_error_attempts = import_error_attempts
        self._tickets_lock = threading.Lock()
        self._tickets = 0
        """Bulk imports sent, by every worker thread (each import's ticket is the count after it)."""
        self._finished_ticket = 0
        """The highest ticket of an import that FINISHED: an import that ended in ERROR after the
        ticket count was t is judged a contact's own failure only once this exceeds t (`_awaited_bulk`)."""
        self._recorder = recorder
        self._mode = mode
        self._batch_size = batch_size
        self._poll_import_status = poll_import_status
        self._import_timeout_s = import_timeout_s
        self._sleep = sleep

    def interrupt(self, on: bool) -> None:
        """While on, an attempt sends no further part of a chunk it is isolating (`_awaited_bulk`).

        A revocation or a stop waits for the attempts on the wire, and an isolation can take many
        imports; the batch is abandoned and read again by the next owner.
        """
        if on:
            self._interrupted.set()
        else:
            self._interrupted.clear()

    def abandon(self, batch: Batch) -> None:
        """Keep the imports `batch` still awaits: every later attempt awaits them first.

        Called for a batch the stage drops (a revocation, a stop) or gives up on: its records are
        read again (or were dead-lettered), and an import of it still queued at Yespo must not
        apply after their next write. Never blocks (nothing is polled here).
        """
        if not batch.sessions:
            return
        with self._orphans_lock:
            for sid, seen in batch.sessions.items():
                self._orphans.setdefault(sid, seen)
        batch.sessions = {}

    @property
    def orphan_sessions(self) -> dict[str, float]:
        """The imports of abandoned batches still awaited (a copy), with when each was first seen."""
        with self._orphans_lock:
            return dict(self._orphans)

    def attempt(self, batch: Batch) -> None:
        """Run (the rest of) the batch's plan (on a worker thread); raises what stops the attempt.

        Raises:
            RetryableDeliveryError: retry later; the batch keeps its progress.
            AuthenticationError, PermanentDeliveryError: stop the stage (see `DeliverStage`).
        """
        # imports left behind, by abandoned batches and by this batch's earlier attempts: over
        # before anything else is sent (their contacts are sent again, or were delivered: their
        # outcome changes nothing else); each awaited within `session_bound_s` of being first seen
        budget = self._import_timeout_s  # the attempt's wait for them, shared by every one
        if self._orphans:
            budget = self._await_earlier(self._orphans, None, budget)
        if batch.sessions:
            self._await_earlier(batch.sessions, "import_error", budget)
        while True:
            if batch.plan is None:
                batch.plan = plan(batch.records, batch_size=self._batch_size)
                for record, reason in batch.plan.rejected:
                    self._recorder.dead_letter(
                        batch.outbox,
                        record.ref,
                        "PermanentDeliveryError",
                        reason,
                        record,
                        "rejected",
                        0,
                        batch.batch_id,
                    )
            self._run_plan(batch, batch.plan)
            if not batch.plan.deferred:
                break
            # records after an erase of the same customer: a new plan once the erase is done
            batch.reset_plan(list(batch.plan.deferred))

    def _run_plan(self, batch: Batch, the_plan: DeliveryPlan[RawRecord]) -> None:
        attempts = batch.attempts + 1
        # Step 1: upserts (bulk chunks, or one call per contact), progress kept across retries.
        while batch.chunk < len(the_plan.upsert_chunks):
            if batch.fallback_chunk is None:
                self._send_upserts(batch, the_plan.upsert_chunks[batch.chunk])
                batch.single, batch.single_results = 0, {}
            # Step 1b: upserts sent instead of rejected ones (`fallback`), round by round: a
            # rejected fallback falls back further, down to a delete
            while batch.fallback_chunk is not None or batch.fallback_upserts:
                if batch.fallback_chunk is None:
                    batch.fallback_chunk, batch.fallback_upserts = tuple(batch.fallback_upserts), []
                self._send_upserts(batch, batch.fallback_chunk)
                batch.fallback_chunk = None
                batch.single, batch.single_results = 0, {}
            batch.chunk += 1
        # Step 2: segments of the contacts that were taken (idempotent calls); a soft-deleted contact
        # first leaves the segments its covered records left (a restore must not bring them back).
        if batch.group_calls is None:
            items = [item for item, _ in batch.succeeded]
            items.extend(_leaving_segments(d) for d in batch.deletes() if not d.erase)
            batch.group_calls = plan_group_calls(items)
        while batch.group_call < len(batch.group_calls):
            self._send_group_call(batch, batch.group_calls[batch.group_call])
            batch.group_call += 1
        # Step 3: the upserts' outcomes are final now (a failed segment call dead-letters its contacts).
        failures = batch.group_failures
        tally: dict[str, int] = {}
        for item, status in batch.succeeded:
            failure = failures.get(external_id(item.record) or "") if failures else None
            for rec in item.covered:
                if failure is None:
                    result = "delivered" if rec is item.record else "superseded"
                    self._recorder.settled(batch.outbox, rec, result, status, attempts, batch.batch_id, tally)
                else:
                    self._segment_failed(batch, rec, failure, attempts)
        batch.succeeded = []
        self._recorder.count_settled(tally)
        # Step 4: deletes, one call per customer (also a soft delete whose restoring upsert Yespo
        # rejected: that delete is then the customer's last record that applies).
        deletes = batch.deletes()
        while batch.delete < len(deletes):
            gone = deletes[batch.delete]
            ext = external_id(gone.record) or ""
            # a status that stops the stage raises: its text (logged) is masked as a refusal's is
            outcome = self._client.delete(ext, erase=gone.erase, about=self._about(batch, (ext,)))
            result = "erased" if gone.erase else "deleted"
            failure = batch.group_failures.get(ext)
            refusal = None if outcome.ok else outcome.reason
            for rec in gone.covered:
                if outcome.ok and failure is not None:
                    self._segment_failed(batch, rec, failure, attempts)
                elif outcome.ok:
                    self._recorder.settled(
                        batch.outbox,
                        rec,
                        result if rec is gone.record else "superseded",
                        outcome.status_code,
                        attempts,
                        batch.batch_id,
                        tally,
                    )
                else:
                    self._recorder.dead_letter(
                        batch.outbox,
                        rec.ref,
                        "PermanentDeliveryError",
                        refusal or "delete refused",
                        rec,
                        "rejected",
                        attempts,
                        batch.batch_id,
                    )
            batch.delete += 1
            self._recorder.count_settled(tally)

    @staticmethod
    def _about(batch: Batch, external_ids: Iterable[str]) -> list[Mapping[str, Any]]:
        """What the batch holds of these contacts, for the client to mask in a refusal's text.

        A delete or a segment call carries only externalCustomerIds (the client masks those), but the
        server may quote what it stores of the contact (a name, a town): every text value of the
        batch's records for these contacts is masked too, on Yespo's whole text, before emails and
        numbers are masked and the text is cut (`scrub_reason`).
        """
        index = batch.contacts_index()
        return [c for ext in dict.fromkeys(external_ids) for c in index.get(ext, ())]

    def _segment_failed(self, batch: Batch, rec: _Record, failure: str, attempts: int) -> None:
        """A contact whose segment call failed for good: dead-letter its record (`dlq:segment`)."""
        self._recorder.dead_letter(
            batch.outbox, rec.ref, "PermanentDeliveryError", failure, rec, "segment", attempts, batch.batch_id
        )

    def _send_upserts(self, batch: Batch, chunk: tuple[PlannedUpsert[RawRecord], ...]) -> None:
        attempts = batch.attempts + 1
        outcomes: Sequence[ContactOutcome]
        if self._mode == "bulk" and self._poll_import_status:
            self._awaited_bulk(batch, chunk, attempts)
            return
        if self._mode == "bulk":
            outcomes = self._send_bulk(chunk).contacts
        else:
            # One call per contact; a retry resumes at the contact that failed.
            while batch.single < len(chunk):
                one = self._client.send_single(chunk[batch.single].record.contact or {})
                batch.single_results[batch.single] = ContactOutcome(
                    batch.single, None, one.ok, one.status_code, one.reason
                )
                batch.single += 1
            outcomes = [batch.single_results[i] for i in range(len(chunk))]
        self._settle_upserts(batch, chunk, outcomes, attempts)

    def _send_bulk(
        self, chunk: Sequence[PlannedUpsert[RawRecord]], on_session: Callable[[str], None] | None = None
    ) -> BulkOutcome:
        bulk = self._client.send_bulk_isolating(
            [u.record.contact or {} for u in chunk],
            [u.record.keep_fields for u in chunk],
            on_session=on_session,
        )
        if bulk.error_messages:  # their text may quote contact data: counted, not logged
            logger.warning("bulk answer carried an errorMessage", extra={"count": len(bulk.error_messages)})
        return bulk

    def _awaited_bulk(self, batch: Batch, chunk: tuple[PlannedUpsert[RawRecord], ...], attempts: int) -> None:
        """Send the chunk in parts, each awaited until its import FINISHED; isolate imports in ERROR.

        Yespo says nothing of why an import ended in ERROR: a failure on its side or a contact it
        could not apply. The evidence that tells them apart is another import, sent in the same
        attempt after the part's previous ERROR, that FINISHED (tickets: an import sent before an
        outage, or before the retry's wait, and finished after it proves nothing). A part that ends
        in ERROR with that evidence is sent again in halves right away; without it the chunk is split
        once, and parts that end in ERROR wait for the batch's retry. A single contact's import that
        ended in ERROR `import_error_attempts` times, each with evidence, goes to the DLQ
        (`dlq:import_error`); the other contacts are delivered. A retry of waiting parts first sends
        again the last contact this batch delivered (`_probe`): if it too ends in ERROR, Yespo is
        failing imports and nothing else is sent (an outage costs one request per retry; with no
        delivered contact to probe, one per waiting part). A plan holds one upsert per
        externalCustomerId, so the parts' order does not matter to Yespo; waiting parts still keep
        their place. Progress (`parts`) survives the retry.

        Raises:
            RetryableDeliveryError: some parts ended in ERROR and wait for the retry, or an import
                could not be awaited (see `_poll_imports`).
            DeliveryInterrupted: `interrupt` is on (a revocation or a stop) and the next part is
                one being isolated.
        """
        if batch.parts is None:
            batch.parts = [(chunk, None)]
        parts = batch.parts
        with self._tickets_lock:
            start = self._tickets  # evidence must come from this attempt, not from before its wait
        if parts[0][1] is not None and not self._probe(batch):
            raise RetryableDeliveryError("bulk import ended in ERROR (a delivered contact's too)")
        waiting: list[_Part] = []
        try:
            while parts:
                part, mark = parts[0]
                if mark is not None and self._interrupted.is_set():  # isolating, and being left
                    raise DeliveryInterrupted("isolating imports in ERROR: interrupted")
                bulk, failed, now = self._import(batch, part)
                parts.pop(0)
                if not failed:
                    self._settle_upserts(batch, part, bulk.contacts, attempts)
                    continue
                evidence = mark is not None and self._finished_ticket > max(mark, start)
                if len(part) == 1:
                    key = part[0].record.customer_key
                    errors = batch.import_errors.get(key, 0) + evidence
                    batch.import_errors[key] = errors
                    if errors >= self._import_error_attempts:
                        reason = f"bulk import ended in ERROR {errors} times while other imports finished"
                        outcome = ContactOutcome(0, part[0].record.external_id, False, None, reason)
                        self._settle_upserts(batch, part, (outcome,), attempts, "import_error")
                        continue
                elif evidence or not batch.blind_split:
                    batch.blind_split = batch.blind_split or not evidence
                    half = len(part) // 2
                    parts[0:0] = [(part[:half], now), (part[half:], now)]
                    continue
                waiting.append((part, now))
        finally:
            parts[0:0] = waiting  # they came before every part still in `parts`
        if waiting:
            raise RetryableDeliveryError("bulk import ended in ERROR")
        batch.parts, batch.import_errors, batch.blind_split = None, {}, False

    def _import(
        self, batch: Batch, part: Sequence[PlannedUpsert[RawRecord]], *, probe: bool = False
    ) -> tuple[BulkOutcome, bool, int]:
        """Send one bulk request and await its imports (each kept in `batch.sessions` until over).

        Returns the answer, whether an import ended in ERROR, and the ticket count when that was seen.
        """
        with self._tickets_lock:
            self._tickets += 1
            ticket = self._tickets
        bulk = self._send_bulk(part, functools.partial(self._track, batch))
        counted_as = "import_probe_error" if probe else "import_error"
        failed = self._poll_imports(batch, bulk.session_ids, counted_as)
        with self._tickets_lock:
            if not failed and bulk.session_ids:
                self._finished_ticket = max(self._finished_ticket, ticket)
            return bulk, failed, self._tickets

    def _track(self, batch: Batch, session_id: str) -> None:
        """Keep an import the client was told of in `batch.sessions`, with when it was first seen."""
        batch.sessions.setdefault(session_id, self._clock())

    def _probe(self, batch: Batch) -> bool:
        """Send again one contact this batch has delivered (False: its import ended in ERROR too).

        The last one it delivered (`succeeded` is in delivery order): nothing of the batch was
        applied after it, so sending it again undoes nothing, even when Yespo matches another of
        the batch's contacts to the same person by a channel (a contact without an
        externalCustomerId); what is still to send goes after it, deletes and deferred records
        too. True without a request when the batch has delivered none yet.
        """
        if not batch.succeeded:
            return True
        _, failed, _ = self._import(batch, (batch.succeeded[-1][0],), probe=True)
        return not failed

    def _settle_upserts(
        self,
        batch: Batch,
        chunk: Sequence[PlannedUpsert[RawRecord]],
        outcomes: Sequence[ContactOutcome],
        attempts: int,
        refused_as: str = "rejected",
    ) -> None:
        """Record each upsert's outcome: accepted ones wait for their segment calls (`succeeded`).

        A refused one goes to the DLQ as `dlq:<refused_as>`; a soft delete it would undo still applies.
        """
        for item, outcome in zip(chunk, outcomes, strict=True):
            if outcome.ok:
                batch.succeeded.append((item, outcome.status_code))
                continue
            # the customer's record before the rejected upsert still applies: an upsert (step 1b)
            # or a soft delete the rejected upsert would have undone (step 4). Not an upsert after
            # an import error: it is about the contact, and the earlier upsert would fail the same way
            instead, rejected = fallback(item, to_upsert=refused_as == "rejected")
            if isinstance(instead, PlannedUpsert):
                batch.fallback_upserts.append(instead)
            elif instead is not None:
                batch.fallback_deletes.append(instead)
            for rec in rejected:
                self._recorder.dead_letter(
                    batch.outbox,
                    rec.ref,
                    "PermanentDeliveryError",
                    outcome.reason or "rejected",
                    rec,
                    refused_as,
                    attempts,
                    batch.batch_id,
                )

    def _send_group_call(self, batch: Batch, call: GroupCall) -> None:
        try:
            about = self._about(batch, call.external_ids)
            outcome = (
                self._client.attach(call.group_id, call.external_ids, about)
                if call.action == "attach"
                else self._client.detach(call.group_id, call.external_ids, about)
            )
            ok, why = outcome.ok, outcome.reason
        except PermanentDeliveryError as exc:
            if isinstance(exc, AuthenticationError):
                raise
            ok, why = False, str(exc)
        if ok:
            return
        logger.warning("segment call failed", extra={"group": call.group_id, "action": call.action})
        self._recorder.count("group_failed")
        reason = f"segment {call.group_id} {call.action} failed: {why}"  # masked by the client
        for ext in call.external_ids:
            batch.group_failures.setdefault(ext, reason)

    def _poll_imports(self, batch: Batch, session_ids: tuple[str, ...], counted_as: str) -> bool:
        """Wait until each import of this attempt is over; True when one ended in ERROR (send it again).

        Polls back off from 0.25 s to 5 s. An import in ERROR was not applied by Yespo; it is
        counted as `counted_as` (a probe's apart: it says Yespo fails imports, not a contact). An
        import is dropped from `batch.sessions` once over, not before.

        Raises:
            RetryableDeliveryError: an import still running after `import_timeout_s`, or whose
                status cannot be read (a 404 included: Yespo may not know a session yet): the part
                is sent again on the batch's retry (upserts are idempotent), so its records are
                never counted as delivered unapplied; the retry first awaits the imports still in
                `batch.sessions` (`_await_earlier`).
        """
        failed = False
        for sid in session_ids:  # every one awaited: one still queued could overtake a later write
            waited, delay = 0.0, 0.25
            while True:
                status = self._client.import_status(sid, mapping=False)
                if status.finished:
                    batch.sessions.pop(sid, None)
                    if status.failed:
                        logger.error("bulk import ended in ERROR", extra={"session": sid})
                        self._recorder.count(counted_as)
                        failed = True
                    break
                if waited >= self._import_timeout_s:
                    raise RetryableDeliveryError(
                        f"bulk import not finished after {self._import_timeout_s:g} s"
                    )
                self._sleep(delay)
                waited += delay
                delay = min(delay * 1.5, 5.0)
        return failed

    def _await_earlier(self, sessions: dict[str, float], counted_as: str | None, budget: float) -> float:
        """Wait until each import left behind in `sessions` is over or dropped; the budget left.

        `sessions` is a batch's (`counted_as`: how an ERROR is counted) or the abandoned batches'
        (None: an ERROR there is nobody's contact failure). An import is over once FINISHED or
        ERROR, or when its status answers 404 (Yespo no longer knows the session: evicted, or long
        over). One first seen more than `session_bound_s` ago is dropped once its status still says
        it runs or cannot be read: the wait on it ends, its contacts are sent again (a batch must
        not stall on a session for longer). `budget` is what is left of the attempt's wait for
        them (seconds slept; `import_timeout_s` for all of them).

        Raises:
            RetryableDeliveryError: an import still running (or unreadable) when the budget is spent,
                not yet past its bound: the batch's retry awaits it again.
        """
        delay = 0.25
        with self._orphans_lock:  # the abandoned batches' are shared by the workers
            todo = list(sessions.items())
        for sid, seen in todo:
            while sid in sessions:  # else another worker saw it end
                try:
                    status = self._client.import_status(sid, mapping=False)
                except RetryableDeliveryError as exc:
                    if exc.status_code == 404:
                        self._drop(sessions, sid, "Yespo does not know the session (404)")
                        break
                    if self._clock() - seen >= self.session_bound_s:
                        self._drop(sessions, sid, f"status unreadable for {self.session_bound_s:g} s")
                        break
                    raise
                if status.finished:
                    with self._orphans_lock:
                        sessions.pop(sid, None)
                    if status.failed and counted_as is not None:
                        logger.error("bulk import ended in ERROR", extra={"session": sid})
                        self._recorder.count(counted_as)
                    break
                if self._clock() - seen >= self.session_bound_s:
                    self._drop(sessions, sid, f"not finished {self.session_bound_s:g} s after it was sent")
                    break
                if budget <= 0:
                    raise RetryableDeliveryError(
                        f"earlier bulk import not finished after {self._import_timeout_s:g} s"
                    )
                wait = min(delay, budget)
                self._sleep(wait)
                budget -= wait
                delay = min(delay * 1.5, 5.0)
        return budget

    def _drop(self, sessions: dict[str, float], sid: str, why: str) -> None:
        """Stop awaiting import `sid` (its contacts are sent again); logged and counted."""
        with self._orphans_lock:
            sessions.pop(sid, None)
        logger.warning("no longer awaiting an earlier bulk import", extra={"session": sid, "reason": why})
        self._recorder.count("import_session_dropped")

    def give_up(self, batch: Batch, reason: str) -> None:
        """Dead-letter every record whose outcome is still open (the batch is then final).

        Its imports still awaited are kept (`abandon`): the records are re-driven later, and an
        import of them still queued must not apply after that.
        """
        self.abandon(batch)
        remaining: list[_Record] = []
        the_plan = batch.plan
        if the_plan is None:
            remaining = list(batch.records)
        else:
            for item, _ in batch.succeeded:
                remaining.extend(item.covered)
            chunks = list(the_plan.upsert_chunks[batch.chunk :])
            if batch.fallback_chunk is not None:  # the plan's chunk is settled; this round is not
                chunks[0] = batch.fallback_chunk
            if chunks and batch.parts is not None:  # the current chunk's parts not yet imported
                chunks[0] = tuple(u for part, _ in batch.parts for u in part)
            if batch.fallback_upserts:  # fallbacks of rejections already settled, not yet sent
                chunks.append(tuple(batch.fallback_upserts))
            for chunk in chunks:
                for upsert in chunk:
                    remaining.extend(upsert.covered)
            for delete in batch.deletes()[batch.delete :]:
                remaining.extend(delete.covered)
            remaining.extend(the_plan.deferred)
        for rec in remaining:
            self._recorder.dead_letter(
                batch.outbox,
                rec.ref,
                "RetryableDeliveryError",
                reason,
                rec,
                "gave_up",
                batch.attempts,
                batch.batch_id,
            )


def _leaving_segments(delete: PlannedDelete[RawRecord]) -> PlannedUpsert[RawRecord]:
    """The detach calls owed before a soft delete: segments its covered records left.

    The planner collapses an upsert followed by a delete into the delete alone, so the upsert's
    `groups_removed` would otherwise be lost, and a later restore would bring those memberships back.
    """
    removed = tuple(dict.fromkeys(g for rec in delete.covered for g in rec.groups_removed))
    return PlannedUpsert(delete.record, delete.covered, (), removed)
