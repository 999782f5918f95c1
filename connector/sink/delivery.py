"""One batch's delivery: its plan run against the Yespo API, every record's outcome recorded.

`BatchDelivery.attempt` sends bulk upsert chunks (or single calls), then segment attach/detach (a
soft delete first leaves the segments its covered records left), then deletes; progress stays in the
`Batch` (`batch_state.py`), so a retry resumes where the failure happened. Outcomes go to the
`OutcomeRecorder`; bulk imports are awaited by `ImportSessions` and `AwaitedBulk`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from connector.errors import AuthenticationError, PermanentDeliveryError
from connector.gctune import weak_method
from connector.models import RawRecord
from connector.sink.awaited_bulk import AwaitedBulk
from connector.sink.batch import (
    DeliveryPlan,
    GroupCall,
    PendingRecord,
    PlannedDelete,
    PlannedUpsert,
    external_id,
    fallback,
    plan,
    plan_group_calls,
)
from connector.sink.batch_state import Batch
from connector.sink.client import YespoClient
from connector.sink.import_sessions import ImportSessions
from connector.sink.outcomes import BulkOutcome, ContactOutcome
from connector.sink.recorder import OutcomeRecorder

__all__ = ["BatchDelivery"]

logger = logging.getLogger(__name__)

_Record = PendingRecord[RawRecord]


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
        self._imports = ImportSessions(
            client,
            recorder,
            sleep=sleep,
            clock=clock,
            import_timeout_s=import_timeout_s,
            session_bound_s=import_timeout_s * max(1, import_error_attempts),
        )
        self._awaited = AwaitedBulk(
            self._imports,
            weak_method(self._send_bulk),  # AwaitedBulk calls back: no cycle (gctune.weak_method)
            weak_method(self._settle_upserts),
            import_error_attempts=import_error_attempts,
        )
        self._recorder = recorder
        self._mode = mode
        self._batch_size = batch_size
        self._poll_import_status = poll_import_status

    @property
    def session_bound_s(self) -> float:
        """How long after it was first seen an import left behind is still awaited."""
        return self._imports.session_bound_s

    def interrupt(self, on: bool) -> None:
        """While on, an attempt sends no further part of a chunk it is isolating (a revocation, a stop).

        See `AwaitedBulk.interrupt`.
        """
        self._awaited.interrupt(on)

    def abandon(self, batch: Batch) -> None:
        """Keep the imports `batch` still awaits: every later attempt awaits them first.

        See `ImportSessions.abandon`. Never blocks (nothing is polled here).
        """
        self._imports.abandon(batch)

    @property
    def orphan_sessions(self) -> dict[str, float]:
        """The imports of abandoned batches still awaited (a copy), with when each was first seen."""
        return self._imports.orphans

    def attempt(self, batch: Batch) -> None:
        """Run (the rest of) the batch's plan (on a worker thread); raises what stops the attempt.

        Raises:
            RetryableDeliveryError: retry later; the batch keeps its progress.
            AuthenticationError, PermanentDeliveryError: stop the stage (see `DeliverStage`).
        """
        self._imports.await_left_behind(batch)
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
            self._awaited.deliver(batch, chunk, attempts)
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
