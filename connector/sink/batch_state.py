"""A batch in flight: its records, its plan's progress (kept across retries), its writes held for the commit.

`BatchDelivery` advances a `Batch` through its plan; the stage's loop owns its retry state and commits
its offsets and outbox once the batch is final.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from connector.models import RawRecord
from connector.sink.batch import (
    DeliveryPlan,
    GroupCall,
    PendingRecord,
    PlannedDelete,
    PlannedUpsert,
    external_id,
)
from connector.sink.outcomes import ContactOutcome
from connector.sink.recorder import OutboxWrite

__all__ = ["Batch", "ImportPart"]

logger = logging.getLogger(__name__)

_Record = PendingRecord[RawRecord]
ImportPart = tuple[tuple[PlannedUpsert[RawRecord], ...], int | None]
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
    parts: list[ImportPart] | None = None
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
