"""Batch planning for the deliver stage: which Yespo calls settle a batch of upsert/delete records.

Pure. Per customer the last record wins (a delete after an upsert sends only the delete; an upsert
after a soft delete sends only the upsert, which restores the contact; should Yespo reject the winning
upsert, `fallback` names the customer's record before it to send instead). An erase followed by more
records is never collapsed away: the later records are deferred to the next plan. Upserts are cut
into bulk chunks of at most `batch_size`; segment attach/detach calls carry at most 500 ids each.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgspec

from connector.contact import group_id
from connector.models import SourcePosition, older, same_point

__all__ = [
    "MAX_GROUP_IDS",
    "DeliveryPlan",
    "GroupCall",
    "LastWrites",
    "PendingRecord",
    "PlannedDelete",
    "PlannedUpsert",
    "external_id",
    "fallback",
    "keep_fields_of",
    "plan",
    "plan_group_calls",
    "segment_id",
]

logger = logging.getLogger(__name__)

MAX_GROUP_IDS = 500
"""Yespo's limit of ids per attach/detach call."""

T = TypeVar("T")


# Frozen msgspec Structs, not dataclasses: several per contact, ten times cheaper to build, and
# untracked by the garbage collector (gc=False: they hold JSON values and each other, never a cycle).
class PendingRecord(msgspec.Struct, Generic[T], frozen=True, gc=False):
    """One record of the upserts topic, as the planner needs it.

    Attributes:
        customer_key: the record key; records are collapsed per customer.
        ref: the caller's handle (e.g. a `RecordRef`); never inspected.
        op: "upsert" or "delete".
        contact: the contact in the example shape (upserts); its `groups` are the current segments.
        external_id: the contact's externalCustomerId (required for deletes and segment calls).
        erase: for deletes: permanent erasure instead of a soft delete.
        groups_removed: segment ids the customer left since the previous record.
        keep_fields: fields the contact leaves out because their value is unknown (Yespo keeps them).
        position: the source-log position of the change behind the record (`source.position`);
            None for records without one (resync, rebuild).
        retires: a delete of the customer's previous externalCustomerId (see `LastWrites`).
        handover: a row left the customer for another at `position` (see `LastWrites`).
        inherited_from: on a `retires` delete, the customer key that left the contact to this one
            (a primary-key change, see `connector.projection`); that key's upsert does not hold it.
    """

    customer_key: str
    ref: T
    op: Literal["upsert", "delete"]
    contact: Mapping[str, Any] | None = None
    external_id: str | None = None
    erase: bool = False
    groups_removed: tuple[int, ...] = ()
    keep_fields: tuple[str, ...] = ()
    position: SourcePosition | None = None
    retires: bool = False
    handover: bool = False
    inherited_from: str | None = None


class LastWrites:
    """Per Yespo contact (externalCustomerId): the customer key and source position of its last record.

    After a primary-key change the old and the new key address one contact from two partitions of
    the upserts topic, so their records reach the stage in no fixed order: the old key's last upsert
    can come after the new key's delete and bring the contact back. A record of another customer key
    that is older in the source log than the contact's last record is stale (`is_stale`). Only
    records with comparable positions are compared (`older`); the memory holds the last `max_size`
    contacts, more while a read-back needs it (`reserve`).

    A delete that retires a customer's previous externalCustomerId (`retires`) is stale whenever the
    contact's last record is another key's upsert, whatever the positions: that customer holds the
    contact now (two rows sharing an id, a mapping change whose old and new ids overlap), except the
    key the contact was inherited from (`inherited_from`): it left the contact to this customer.

    A primary-key change is one source event split in two (the old key's delete, the new key's
    create), so both keys' records of it have one position. The old key's record (`handover`: its
    rows were leaving, e.g. a child row cascaded to the new key before the customers row followed)
    is stale beside the new key's record at the same position too, and loses to it in `seed`.
    """

    def __init__(self, max_size: int = 100_000) -> None:
        # externalCustomerId -> (customer key, position, whether the record was an upsert)
        self._last: OrderedDict[str, tuple[str, SourcePosition, bool]] = OrderedDict()
        self._base = self._max = max_size

    def reserve(self, records: int) -> None:
        """Room for `records` more contacts beside the usual `max_size` (a read-back's worth)."""
        self._max = max(self._max, self._base + records)

    def is_stale(self, record: PendingRecord[Any]) -> bool:
        """True when `record` is older than the last record another key wrote to its contact.

        Otherwise the record becomes the contact's last one (records come in gathering order).
        """
        ext, position = record.external_id, record.position
        if ext is None:
            return False
        last = self._last.get(ext)
        if (
            record.retires
            and last is not None
            and last[0] != record.customer_key
            and last[0] != record.inherited_from
            and last[2]
        ):
            return True
        if position is None:
            return False
        if (
            last is not None
            and last[0] != record.customer_key
            and (older(position, last[1]) or (record.handover and same_point(position, last[1])))
        ):
            return True
        self._put(ext, record.customer_key, position, record.op == "upsert")
        return False

    def seed(self, record: PendingRecord[Any]) -> None:
        """Remember a record delivered before this process (read back from the committed history).

        Records of several partitions come in no order of their own: a contact keeps the record
        latest in the source log (one of another log replaces it).
        """
        ext, position = record.external_id, record.position
        if ext is None or position is None:
            return
        last = self._last.get(ext)
        if last is not None and (
            older(position, last[1]) or (record.handover and same_point(position, last[1]))
        ):
            return
        self._put(ext, record.customer_key, position, record.op == "upsert")

    def _put(self, ext: str, key: str, position: SourcePosition, upsert: bool) -> None:
        self._last[ext] = (key, position, upsert)
        self._last.move_to_end(ext)
        if len(self._last) > self._max:
            self._last.popitem(last=False)

    def __len__(self) -> int:
        return len(self._last)


def keep_fields_of(value: Mapping[str, Any]) -> tuple[str, ...] | None:
    """An upsert value's `keep_fields` (empty when absent), or None when it is not a list of strings."""
    kept = value.get("keep_fields")
    if kept is None:
        return ()
    if not isinstance(kept, list) or not all(type(k) is str for k in kept):
        return None
    return tuple(kept)


class PlannedUpsert(msgspec.Struct, Generic[T], frozen=True, gc=False):
    """One contact to add/update; its outcome settles every record in `covered`.

    Attributes:
        record: the winning (last) upsert of the customer.
        covered: every input record this call settles, in input order, `record` last.
        attach: segment ids of the final contact (attach after a successful upsert; idempotent).
        detach: segments left within the batch and not rejoined.
    """

    record: PendingRecord[T]
    covered: tuple[PendingRecord[T], ...]
    attach: tuple[int, ...] = ()
    detach: tuple[int, ...] = ()


class PlannedDelete(msgspec.Struct, Generic[T], frozen=True, gc=False):
    """One delete call; its outcome settles every record in `covered`."""

    record: PendingRecord[T]
    covered: tuple[PendingRecord[T], ...]
    erase: bool


class GroupCall(msgspec.Struct, frozen=True, gc=False):
    """One attach or detach call: at most `MAX_GROUP_IDS` externalCustomerIds, never empty."""

    action: Literal["attach", "detach"]
    group_id: int
    external_ids: tuple[str, ...]


class DeliveryPlan(msgspec.Struct, Generic[T], frozen=True, gc=False):
    """What to send for a batch, in this order: upsert chunks, segment calls, deletes.

    Attributes:
        upsert_chunks: bulk chunks of at most `batch_size` contacts (in single mode send each one).
        deletes: one call per deleted customer.
        rejected: records that cannot be sent, with a reason (e.g. a delete without externalCustomerId).
        deferred: records that must wait until this plan is done (they follow an erase of the same
            customer); plan them again afterwards.
    """

    upsert_chunks: tuple[tuple[PlannedUpsert[T], ...], ...]
    deletes: tuple[PlannedDelete[T], ...]
    rejected: tuple[tuple[PendingRecord[T], str], ...] = ()
    deferred: tuple[PendingRecord[T], ...] = ()

    @property
    def upserts(self) -> tuple[PlannedUpsert[T], ...]:
        """Every planned upsert, chunks flattened."""
        return tuple(u for chunk in self.upsert_chunks for u in chunk)


segment_id = group_id
"""A segment id as `connector.contact.group_id` reads it (None: not a valid id)."""


def _group_ids(contact: Mapping[str, Any] | None) -> tuple[int, ...]:
    groups = contact.get("groups") if contact is not None else None
    if not groups or not isinstance(groups, list):
        return ()
    out: list[int] = []
    for group in groups:
        gid = segment_id(group.get("id")) if isinstance(group, Mapping) else None
        if gid is None:
            logger.warning("segment without an integer id skipped")
        elif gid not in out:
            out.append(gid)
    return tuple(out)


def external_id(record: PendingRecord[T]) -> str | None:
    """The record's externalCustomerId: its own field, else the contact's (as a string), else None.

    An empty or blank id addresses no contact: None.
    """
    if record.external_id is not None and record.external_id.strip():
        return record.external_id
    if record.contact is not None and record.contact.get("externalCustomerId") is not None:
        ext = str(record.contact["externalCustomerId"])
        return ext if ext.strip() else None
    return None


def plan(records: Sequence[PendingRecord[T]], *, batch_size: int) -> DeliveryPlan[T]:
    """Collapse `records` per customer and lay out the calls.

    Args:
        records: records in consumption order (per customer, the topic order).
        batch_size: the largest bulk chunk (`yespo.batch_size`, at most 3000).

    Returns:
        The plan; every input record appears exactly once in `covered` of an upsert or delete, in
        `rejected`, or in `deferred` (in consumption order). A plan addresses each Yespo contact
        (`externalCustomerId`) from one customer key only: after a primary-key change the old and the
        new key address the same contact, and a plan collapses each key's records and sends upserts
        before deletes. So the first key's records up to another key's first record of the contact
        are planned, and the rest of them, the other keys' records, and those of any key sharing a
        contact with a waiting one wait for the next plan (a delete of the old key, then an upsert of
        the new one, must end with the contact live). Within a key, the records after an erase, or
        after a delete followed by an upsert of another contact, wait for the next plan too.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    per_customer: dict[str, list[PendingRecord[T]]] = {}
    first_key: dict[str, str] = {}
    shared: set[str] = set()  # contacts addressed from two customer keys in this batch
    for record in records:
        per_customer.setdefault(record.customer_key, []).append(record)
        ext = external_id(record)
        if ext is not None and first_key.setdefault(ext, record.customer_key) != record.customer_key:
            shared.add(ext)
    position: dict[int, int] = {}
    first_at: dict[str, dict[str, int]] = {}  # shared contact -> key -> position of its first record
    if shared:
        for i, record in enumerate(records):
            position[id(record)] = i
            if (ext := external_id(record)) in shared:
                first_at.setdefault(ext, {}).setdefault(record.customer_key, i)
    upserts: list[PlannedUpsert[T]] = []
    deletes: list[PlannedDelete[T]] = []
    rejected: list[tuple[PendingRecord[T], str]] = []
    deferred: list[PendingRecord[T]] = []
    claimed: set[str] = set()  # shared contacts this plan addresses, or that wait for a later plan
    for key, group in per_customer.items():
        cut = len(group)
        contacts = {ext for r in group if (ext := external_id(r)) in shared} if shared else None
        if contacts:
            if not claimed.isdisjoint(contacts):
                claimed |= contacts  # a third key of these contacts must not overtake this one
                deferred.extend(group)  # another key's records of one of its contacts come first
                continue
            claimed |= contacts
            # its records after another key's first record of one of these contacts wait too
            other = min(at for ext in contacts for k, at in first_at[ext].items() if k != key)
            cut = next((i for i, r in enumerate(group) if position[id(r)] > other), cut)
        # An erase must reach Yespo before anything that follows it, and so must a delete whose key
        # then addresses another contact (the row re-created with another externalCustomerId: a
        # collapse would drop the delete): cut after the first such delete.
        cut = next((i + 1 for i, r in enumerate(group[: cut - 1]) if _cuts(r, group[i + 1])), cut)
        segment = group[:cut]
        deferred.extend(group[cut:])
        last = segment[-1]
        covered = tuple(segment)
        if last.op == "delete":
            if external_id(last) is None:
                rejected.extend((r, "delete without externalCustomerId") for r in segment)
            else:
                deletes.append(PlannedDelete(last, covered, erase=last.erase))
            continue
        upserts.append(_planned_upsert(covered))
    chunks = tuple(tuple(upserts[i : i + batch_size]) for i in range(0, len(upserts), batch_size))
    if deferred:
        if not position:
            position = {id(r): i for i, r in enumerate(records)}
        deferred.sort(key=lambda r: position[id(r)])
    return DeliveryPlan(chunks, tuple(deletes), tuple(rejected), tuple(deferred))


def _planned_upsert(covered: tuple[PendingRecord[T], ...]) -> PlannedUpsert[T]:
    """The call for a customer's records `covered`, the last an upsert: its segments, and the ones left."""
    last = covered[-1]
    attach = _group_ids(last.contact)
    removed: list[int] = []
    for r in covered:
        if r.groups_removed:
            removed.extend(g for g in r.groups_removed if g not in attach and g not in removed)
    return PlannedUpsert(last, covered, attach, tuple(removed))


def _cuts(record: PendingRecord[T], following: PendingRecord[T]) -> bool:
    """Whether `record` must reach Yespo before the same key's `following` record (see `plan`)."""
    if record.op != "delete":
        return False
    return record.erase or ((ext := external_id(record)) is not None and ext != external_id(following))


def fallback(
    upsert: PlannedUpsert[T], *, to_upsert: bool = True
) -> tuple[PlannedUpsert[T] | PlannedDelete[T] | None, tuple[PendingRecord[T], ...]]:
    """What to send instead when Yespo rejects a customer's winning upsert, and what that dead-letters.

    Yespo must end as if the customer's records had been sent one by one: a rejected record applies
    nothing, so the contact keeps the record before it. `plan` folds the earlier records into the
    winning upsert (`covered`); when Yespo rejects it, only it is dead-lettered (with its own
    reason), and the call to send instead is the record right before it:

    1. an upsert (the winner's predecessor after the last delete): a `PlannedUpsert` of it that
       settles the records up to it (the earlier ones superseded), with its segments and the ones
       those records left. Should Yespo reject that one too, `fallback` of it goes one record
       further back, down to the delete;
    2. a delete (the rejected upsert would have restored a soft-deleted contact): a `PlannedDelete`
       that settles the records up to it, so the contact ends deleted;
    3. nothing when the rejected upsert is the customer's only record, or the record before it is
       a delete without an externalCustomerId (it addresses no contact): every record of `covered`
       is dead-lettered then.

    The records folded into the fallback count as delivered (or superseded) only once it succeeds.
    `to_upsert=False` (a refusal that is about the contact, not the record's content: an import that
    ended in ERROR again and again) never falls back to an earlier upsert, which would fail the same
    way: only case 2 applies, otherwise every record of `covered` is dead-lettered.

    Returns:
        (the call to send instead, or None; the records the rejection dead-letters: the rejected
        upsert alone when there is a call, all of `upsert.covered` when there is none).
    """
    covered = upsert.covered
    if len(covered) < 2:
        return None, covered
    head, rejected = covered[:-1], covered[-1:]
    before = head[-1]
    if before.op == "upsert":
        return (_planned_upsert(head), rejected) if to_upsert else (None, covered)
    if external_id(before) is None:
        return None, covered
    return PlannedDelete(before, head, erase=before.erase), rejected


def plan_group_calls(
    upserts: Iterable[PlannedUpsert[T]], *, max_ids: int = MAX_GROUP_IDS
) -> tuple[GroupCall, ...]:
    """Attach/detach calls for the given (successfully upserted) contacts.

    Contacts without an externalCustomerId cannot be addressed and are skipped. Calls are ordered by
    action (detach first, so a re-join within one batch ends attached) and segment id.
    """
    if not 1 <= max_ids <= MAX_GROUP_IDS:
        raise ValueError(f"max_ids must be within 1..{MAX_GROUP_IDS}")
    ids: dict[tuple[Literal["attach", "detach"], int], list[str]] = {}
    for item in upserts:
        ext = external_id(item.record)
        if ext is None:
            continue
        for gid in item.detach:
            ids.setdefault(("detach", gid), []).append(ext)
        for gid in item.attach:
            ids.setdefault(("attach", gid), []).append(ext)
    calls: list[GroupCall] = []
    for (action, gid), members in sorted(ids.items(), key=lambda kv: (kv[0][0] != "detach", kv[0][1])):
        unique = list(dict.fromkeys(members))
        for i in range(0, len(unique), max_ids):
            calls.append(GroupCall(action, gid, tuple(unique[i : i + max_ids])))
    return tuple(calls)
