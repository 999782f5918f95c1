"""Bulk chunks whose imports are awaited: parts sent one by one, imports in ERROR isolated on evidence.

Used by `BatchDelivery` when `yespo.poll_import_status` is on. Yespo says nothing of why an import
ended in ERROR; another import that FINISHED meanwhile (a ticket) is the evidence that blames a contact.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence

from connector.errors import DeliveryInterrupted, RetryableDeliveryError
from connector.models import RawRecord
from connector.sink.batch import PlannedUpsert
from connector.sink.batch_state import Batch, ImportPart
from connector.sink.import_sessions import ImportSessions
from connector.sink.outcomes import BulkOutcome, ContactOutcome

__all__ = ["AwaitedBulk", "SendChunk", "SettleUpserts"]

logger = logging.getLogger(__name__)

SendChunk = Callable[[Sequence[PlannedUpsert[RawRecord]], Callable[[str], None] | None], BulkOutcome]
"""Send a chunk's upserts in bulk requests (isolating refused contacts), telling each import started."""
SettleUpserts = Callable[
    [Batch, Sequence[PlannedUpsert[RawRecord]], Sequence[ContactOutcome], int, str], None
]
"""Record each upsert's outcome (`BatchDelivery._settle_upserts`), refused ones as `dlq:<refused_as>`."""


class AwaitedBulk:
    """Delivers a batch's bulk chunks with every import awaited until it is over.

    Args:
        sessions: the delivery's awaited imports (polling, tracking).
        send: how a chunk is sent (`BatchDelivery._send_bulk`).
        settle: how upserts' outcomes are recorded (`BatchDelivery._settle_upserts`).
        import_error_attempts: imports of one contact that end in ERROR before its record goes to
            the DLQ (`yespo.import_error_attempts`; only while other imports finish).

    Shared by the stage's worker threads (the ticket count is every thread's).
    """

    def __init__(
        self,
        sessions: ImportSessions,
        send: SendChunk,
        settle: SettleUpserts,
        *,
        import_error_attempts: int,
    ) -> None:
        self._sessions = sessions
        self._send = send
        self._settle = settle
        self._interrupted = threading.Event()
        self._import_error_attempts = import_error_attempts
        self._tickets_lock = threading.Lock()
        self._tickets = 0
        """Bulk imports sent, by every worker thread (each import's ticket is the count after it)."""
        self._finished_ticket = 0
        """The highest ticket of an import that FINISHED: an import that ended in ERROR after the
        ticket count was t is judged a contact's own failure only once this exceeds t (`deliver`)."""

    def interrupt(self, on: bool) -> None:
        """While on, an attempt sends no further part of a chunk it is isolating (`deliver`).

        A revocation or a stop waits for the attempts on the wire, and an isolation can take many
        imports; the batch is abandoned and read again by the next owner.
        """
        if on:
            self._interrupted.set()
        else:
            self._interrupted.clear()

    def deliver(self, batch: Batch, chunk: tuple[PlannedUpsert[RawRecord], ...], attempts: int) -> None:
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
                could not be awaited (see `ImportSessions.poll`).
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
        waiting: list[ImportPart] = []
        try:
            while parts:
                part, mark = parts[0]
                if mark is not None and self._interrupted.is_set():  # isolating, and being left
                    raise DeliveryInterrupted("isolating imports in ERROR: interrupted")
                bulk, failed, now = self._import(batch, part)
                parts.pop(0)
                if not failed:
                    self._settle(batch, part, bulk.contacts, attempts, "rejected")
                    continue
                evidence = mark is not None and self._finished_ticket > max(mark, start)
                if len(part) == 1:
                    key = part[0].record.customer_key
                    errors = batch.import_errors.get(key, 0) + evidence
                    batch.import_errors[key] = errors
                    if errors >= self._import_error_attempts:
                        reason = f"bulk import ended in ERROR {errors} times while other imports finished"
                        outcome = ContactOutcome(0, part[0].record.external_id, False, None, reason)
                        self._settle(batch, part, (outcome,), attempts, "import_error")
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
        bulk = self._send(part, functools.partial(self._sessions.track, batch))
        counted_as = "import_probe_error" if probe else "import_error"
        failed = self._sessions.poll(batch, bulk.session_ids, counted_as)
        with self._tickets_lock:
            if not failed and bulk.session_ids:
                self._finished_ticket = max(self._finished_ticket, ticket)
            return bulk, failed, self._tickets

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
