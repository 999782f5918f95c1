"""State -> upsert record: run the mapping on a customer's current rows and decide what to emit.

Pure. Wraps `connector.mapping` (contact shape, normalization) and `connector.emission` (diff rule)
and builds the upserts topic's record value (`schemas/upsert.schema.json`). A primary-key change
moves a customer to a new key: its delete is suppressed (the new key's upsert reaches the same Yespo
contact through externalCustomerId), only the fingerprint is reset. The new key answers for that
contact from then on: if its rows map to no contact before it ever emitted one (the moved customer
deleted in the same transaction as it arrived), it deletes the contact the old key left live
(`adopted`). Its records carry `handover` when a row left it for another customer in the same
projection: at the same source position the other customer's record is the newer one.

The old key also hands its contact over (`Projection.handover`): the merge stage writes a `HANDOVER`
change to the changes topic for the new key, in the same transaction, and the new key keeps it
(`CustomerState.inherited`) until a projection settles it (`MappingProjector._settle`): its own
contact has the same externalCustomerId (the segments the old contact had and the new one has not
are detached), another id (the inherited contact is retired), or it holds no contact after the move
(the inherited contact is deleted, per `on_delete`). This covers a key change that changes the id in
the same statement, and a key change without `ON UPDATE CASCADE` (the old contact's segments), in
whatever order the handover and the new key's rows arrive. Until the new key's customers row has
arrived the inherited contact waits.

A live customer whose externalCustomerId changes (A -> B, same customer key) addresses another Yespo
contact: bulk imports deduplicate on externalCustomerId and never rewrite it, so B is created beside
A. The contact A is retired first: a delete of A (per `contact.on_delete`; none with `ignore`) is
written just before B's upsert, one version below it, in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import replace as replaced
from typing import Any, Protocol

from msgspec.structs import replace

from connector.merge import CustomerState, Inherited, RowState, merge_change, view_of
from connector.models import older
from connector.routing import CUSTOMERS, HANDOVER, RoutedChange

__all__ = [
    "Emitted",
    "MappingProjector",
    "Projection",
    "Projector",
    "adopted_rows",
    "customer_leaves",
    "handover_change",
    "hands_over",
    "leaves",
    "newest_change",
    "upsert_record",
    "upsert_records",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Emitted:
    """One record for the upserts topic (without version and source, added by `upsert_record`)."""

    op: str
    contact: Mapping[str, Any] | None
    groups_removed: tuple[int, ...]
    erase: bool
    external_id: str | None
    keep_fields: tuple[str, ...] = ()
    retires: bool = False
    inherited_from: str | None = None


@dataclass(frozen=True, slots=True)
class Projection:
    """What a merged state yields: the new state (fingerprint/groups/version updated) and emissions.

    `retired` is a delete of the contact's previous externalCustomerId, written just before `emitted`;
    `settled`, the delete of an inherited contact (`CustomerState.inherited`), written first.
    `handover`: the contact this customer leaves live for the key its customers row moved to (the
    merge stage passes it on with `handover_change`).
    """

    state: CustomerState
    emitted: Emitted | None
    error: str | None = None
    dropped: tuple[str, ...] = ()
    retired: Emitted | None = None
    settled: Emitted | None = None
    handover: Inherited | None = None

    def emissions(self) -> tuple[Emitted, ...]:
        """The records to write, in order (`state.version` is the last one's version)."""
        return tuple(e for e in (self.settled, self.retired, self.emitted) if e is not None)


class Projector(Protocol):
    """The mapping seam of the merge stage."""

    def project(
        self, state: CustomerState, *, moved: bool, adopted: CustomerState | None = None
    ) -> Projection:
        """Map `state` to a contact and decide whether something must be emitted.

        `moved`: the customers row left for another key (a delete is not emitted). `adopted`: the
        rows that came from another customer in this projection's changes (`adopted_rows`).
        """
        ...

    def affects_contact(
        self, before: CustomerState | None, after: CustomerState, change: RoutedChange
    ) -> bool:
        """False when `change` cannot alter the mapped contact (mapping can be skipped)."""
        ...


class MappingProjector:
    """The production projector, on `connector.mapping`."""

    def __init__(self, mapping: Any) -> None:
        from connector.mapping import ContactMapper  # the mapping config drives everything

        self._mapper = ContactMapper(mapping)
        self._on_delete = str(mapping.on_delete)
        columns = [mapping.externalCustomerId, mapping.firstName, mapping.lastName, mapping.languageCode]
        columns += [mapping.timeZone, *(c.column for c in mapping.channels), *mapping.fields.values()]
        if mapping.address is not None:
            columns += list(mapping.address.model_dump().values())
        self._customer_columns = tuple(sorted({c for c in columns if c is not None}))
        groups = mapping.groups
        self._group_child = groups.child if groups is not None else None
        self._group_columns = tuple(c for c in (groups.id, groups.name) if c) if groups is not None else ()

    def affects_contact(  # noqa: D102
        self, before: CustomerState | None, after: CustomerState, change: RoutedChange
    ) -> bool:
        if before is None or after.inherited is not before.inherited:
            return True  # an inherited contact to settle (see `_settle`)
        # merge shares what a change leaves alone: a row (or children mapping) that is the same
        # object on both sides has the same inputs
        if before.customer is not after.customer and not _same(
            self._customer_inputs(before), self._customer_inputs(after)
        ):
            return True
        if self._group_child is None:
            return False
        rows_before = before.children.get(self._group_child)
        rows_after = after.children.get(self._group_child)
        return rows_before is not rows_after and self._group_inputs(rows_before) != self._group_inputs(
            rows_after
        )

    def _customer_inputs(self, state: CustomerState) -> tuple[Any, ...] | None:
        """The mapped customer columns (None: no live customers row)."""
        row = state.customer
        if row is None or row.values is None:
            return None
        values = row.values
        return tuple([values.get(c) for c in self._customer_columns])

    def _group_inputs(self, rows: Mapping[str, RowState] | None) -> tuple[str, ...]:
        """The live group rows' (id, name), order-free."""
        if not rows:
            return ()
        columns = self._group_columns
        return tuple(
            sorted(
                repr(tuple([r.values.get(c) for c in columns])) for r in rows.values() if r.values is not None
            )
        )

    def project(  # noqa: D102
        self, state: CustomerState, *, moved: bool, adopted: CustomerState | None = None
    ) -> Projection:
        from connector.emission import decide_emission

        result = self._mapper.map(view_of(state))
        dropped = tuple(f"{d.field}: {d.reason}" for d in result.dropped)
        if result.error is not None:
            return Projection(state, None, result.error, dropped)
        if moved and result.contact is None:
            return self._leave(state, dropped)
        # a customer that never emitted answers for the contact it moved in with (see the docstring)
        inherited = (
            self._inherited(adopted) if state.external_id is None and state.fingerprint is None else None
        )
        emission = decide_emission(state.fingerprint, list(state.groups), result, self._on_delete)
        if emission is None:
            if inherited is not None and result.contact is None and self._on_delete != "ignore":
                return self._settle(self._adopted_delete(state, inherited, dropped), result)
            return self._settle(Projection(state, None, None, dropped), result)
        retired = None
        if emission.op == "upsert":
            contact = emission.contact or {}
            external_id = contact.get("externalCustomerId")
            previous = state.external_id or (inherited[0] if inherited is not None else None)
            if previous is not None and external_id is not None and external_id != previous:
                retired = self._retire(previous, state.groups)
            new_state = replace(
                state,
                fingerprint=emission.fingerprint,
                groups=tuple(emission.group_ids),
                version=state.version + (1 if retired is None else 2),
                # an upsert without an id is matched by email or phone and leaves the contact's id
                # as it was in Yespo: the state keeps addressing that contact (its later retirement
                # or delete, an erase included, needs the id)
                external_id=external_id if external_id is not None else previous,
            )
            removed = tuple(emission.groups_removed)
        else:
            external_id = state.external_id
            # A soft delete keeps the contact's segments in Yespo, and restoring the contact (a
            # re-created customer, a customer that takes this externalCustomerId) brings them back:
            # the delete detaches them (`groups_removed`). The state remembers them too, so the
            # re-created customer's first upsert detaches the ones it no longer has even if the
            # delete never reached Yespo. An erase removes the memberships with the contact.
            removed = () if emission.erase else state.groups
            new_state = replace(
                state, fingerprint=None, groups=removed, version=state.version + 1, external_id=None
            )
        emitted = Emitted(
            emission.op,
            emission.contact,
            removed,
            bool(emission.erase),
            external_id,
            emission.keep_fields,
        )
        return self._settle(Projection(new_state, emitted, None, dropped, retired), result)

    def _leave(self, state: CustomerState, dropped: tuple[str, ...]) -> Projection:
        """The customers row left for another key: no delete; the contact is handed over instead.

        The contact this customer holds (or an inherited one it has not settled: a key that moved
        on before its row arrived) is the new key's to settle. A contact matched without an id
        (by email or phone) cannot be named: nothing is handed over.
        """
        handover = state.inherited
        if state.fingerprint is not None and state.external_id is not None:
            handover = Inherited(state.external_id, state.groups, None, state.customer_key)
        if state.fingerprint is None or self._on_delete == "ignore":
            # nothing live, or a contact `ignore` keeps: the state keeps what it remembers
            cleared = replace(state, inherited=None)
        else:
            cleared = replace(state, fingerprint=None, groups=(), external_id=None, inherited=None)
        return Projection(cleared, None, None, dropped, handover=handover)

    def _settle(self, projection: Projection, result: Any) -> Projection:
        """Settle the inherited contact of `projection.state`, if any, against what it now holds.

        - It holds a contact with the inherited id: the segments the inherited contact had and this
          one has not are detached (added to the upsert, or a new upsert when there is none).
        - It holds a contact matched without an id: the contact it found is the inherited one.
        - It holds a contact with another id: the inherited contact is retired.
        - It holds none and its customers row came after the move (or maps to no contact): nobody
          holds the inherited contact any more, so it is deleted (per `on_delete`).
        - Otherwise (the row has not arrived) it waits.
        A contact already deleted by this projection (a retirement of the same id) is not deleted
        again.
        """
        state = projection.state
        held = state.inherited
        if held is None:
            return projection
        done = replace(state, inherited=None)
        if any(e.op == "delete" and e.external_id == held.external_id for e in projection.emissions()):
            return replaced(projection, state=done)
        if state.fingerprint is not None:
            if state.external_id is None:
                return replaced(projection, state=replace(done, external_id=held.external_id))
            if state.external_id == held.external_id:
                return self._take_over(projection, done, held, result)
        else:
            customer = state.customer
            if customer is None or not (
                customer.live
                or held.position is None
                or customer.position is None
                or not older(customer.position, held.position)
            ):
                return projection  # the new key's row has not arrived yet
        # retired: another id holds the customer's contact, or no contact is held after the move
        retired = self._retire(held.external_id, held.groups)
        if retired is not None:
            retired = replaced(retired, inherited_from=held.origin)
        return self._settled(projection, done, retired)

    def _take_over(
        self, projection: Projection, done: CustomerState, held: Inherited, result: Any
    ) -> Projection:
        """The customer's contact is the inherited one: detach the segments only the old one had."""
        from connector.emission import decide_emission

        emitted = projection.emitted
        missing = set(held.groups).difference(done.groups)
        if emitted is not None:
            missing.difference_update(emitted.groups_removed)
        if not missing:
            return replaced(projection, state=done)
        if emitted is not None and emitted.op == "upsert":
            removed = tuple(sorted({*emitted.groups_removed, *missing}))
            return replaced(projection, state=done, emitted=replaced(emitted, groups_removed=removed))
        emission = decide_emission(None, sorted({*done.groups, *missing}), result, self._on_delete)
        if emission is None or emission.op != "upsert":
            return replaced(projection, state=done)
        upsert = Emitted(
            "upsert",
            emission.contact,
            tuple(emission.groups_removed),
            False,
            held.external_id,
            emission.keep_fields,
        )
        return replaced(projection, state=replace(done, version=done.version + 1), emitted=upsert)

    def _settled(self, projection: Projection, done: CustomerState, delete: Emitted | None) -> Projection:
        """`projection` with `delete` (of the inherited contact) written first."""
        if delete is None:
            return replaced(projection, state=done)
        return replaced(projection, state=replace(done, version=done.version + 1), settled=delete)

    def _inherited(self, adopted: CustomerState | None) -> tuple[str, tuple[int, ...]] | None:
        """(externalCustomerId, group ids) of the contact `adopted` rows map to; None if none."""
        if adopted is None:
            return None
        contact = self._mapper.map(view_of(adopted)).contact
        if contact is None or not contact.externalCustomerId:
            return None
        return contact.externalCustomerId, tuple(contact.group_ids)

    def _adopted_delete(
        self, state: CustomerState, inherited: tuple[str, tuple[int, ...]], dropped: tuple[str, ...]
    ) -> Projection:
        """The delete of the contact a customer moved in with and left before it emitted anything."""
        external_id, groups = inherited
        erase = self._on_delete == "erase"
        removed = () if erase else groups
        new_state = replace(
            state, fingerprint=None, groups=removed, version=state.version + 1, external_id=None
        )
        return Projection(new_state, Emitted("delete", None, removed, erase, external_id), None, dropped)

    def _retire(self, external_id: str, groups: tuple[int, ...]) -> Emitted | None:
        """The delete of a contact the customer no longer addresses (None with `on_delete: ignore`).

        A soft delete detaches the contact's segments (`groups`) first, as any delete does: whoever
        restores that contact later must not find them; the new contact's upsert attaches the
        current ones.
        """
        if self._on_delete == "ignore":
            return None
        erase = self._on_delete == "erase"
        return Emitted("delete", None, () if erase else groups, erase, external_id, retires=True)


def _same(a: Any, b: Any) -> bool:
    """`a == b` where 1, 1.0 and True differ too (a JSON column going from 1 to true changes the contact)."""
    if a != b:
        return False
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return all(_same(v, b[k]) for k, v in a.items())
    if type(a) in (list, tuple):
        return all(map(_same, a, b))
    return True


def adopted_rows(changes: Sequence[RoutedChange]) -> CustomerState | None:
    """The rows `changes` brought from another customer, folded from nothing (None: no customers row).

    A primary-key change moves the customers row (and, by `ON UPDATE CASCADE`, its child rows) to a
    new key with `moved` upserts: what they map to is the contact the old key left live in Yespo.
    """
    moved_in = [c for c in changes if c.moved and c.op == "upsert"]
    first = next((c for c in moved_in if c.source == CUSTOMERS), None)
    if first is None:
        return None
    state: CustomerState | None = None
    for change in moved_in:
        if change.source == CUSTOMERS and change is not first:
            continue
        outcome = merge_change(state, change, now_ms=0)
        if outcome.applied:
            state = outcome.state
    return state


def newest_change(changes: Sequence[RoutedChange]) -> RoutedChange:
    """The change of `changes` (one customer's, in merge order) newest in the source log.

    The record's `source`: the deliver stage compares records of one contact by its position
    (`LastWrites`). A customer's changes come from several source topics, which interleave in no
    source order: the last one merged (a customers row) can be older than a child row merged before
    it, and the record reflects both. Changes without a position are not compared (the last stays).
    """
    best = changes[-1]
    for change in changes:
        newest, position = best.position, change.position
        if change is not best and position is not None and newest is not None and older(newest, position):
            best = change
    return best


def handover_change(leaving: RoutedChange, contact: Inherited) -> RoutedChange | None:
    """The changes-topic record that passes `contact` to the key `leaving` (a customers row) left for.

    None when the event did not name that key (`RoutedChange.to`). It carries the primary-key
    change's position and source record, and the old key as its row key.
    """
    if leaving.to is None or leaving.to == leaving.customer_key:
        return None
    return RoutedChange(
        customer_key=leaving.to,
        source=HANDOVER,
        row_key=leaving.customer_key,
        op="handover",
        row={"ext": contact.external_id, "groups": list(contact.groups)},
        position=leaving.position,
        ts_ms=leaving.ts_ms,
        snapshot=False,
        moved=False,
        origin=leaving.origin,
    )


def leaves(change: RoutedChange) -> bool:
    """True for a row leaving its customer for another (a `moved` delete, not a `moved` upsert)."""
    return change.moved and change.op != "upsert"


def customer_leaves(change: RoutedChange) -> bool:
    """True for the customers row leaving for another key: `Projector.project`'s `moved`."""
    return change.source == CUSTOMERS and leaves(change)


def hands_over(changes: Sequence[RoutedChange]) -> bool:
    """True when one of `changes` is a row leaving its customer for another (`leaves`)."""
    return any(map(leaves, changes))


def upsert_records(
    projection: Projection, change: RoutedChange, *, handover: bool = False
) -> list[dict[str, Any]]:
    """The upserts topic's values of `projection`, in order, with consecutive versions."""
    emitted = projection.emissions()
    first = projection.state.version - len(emitted) + 1
    return [
        upsert_record(projection.state, e, change, version=first + i, handover=handover)
        for i, e in enumerate(emitted)
    ]


def upsert_record(
    state: CustomerState,
    emitted: Emitted,
    change: RoutedChange,
    *,
    version: int | None = None,
    handover: bool = False,
) -> dict[str, Any]:
    """The upserts topic's value for `emitted` (state already carries the new version).

    `version` defaults to the state's. `keep_fields` is present only when the contact has fields of
    unknown value (see `connector.mapping`), `retires` only on the delete of a previous
    externalCustomerId's contact, `handover` only when a row left the customer for another in the
    changes projected (see `connector.sink.batch.LastWrites`).
    """
    record: dict[str, Any] = {
        "op": emitted.op,
        "customer_key": state.customer_key,
        "external_customer_id": emitted.external_id,
        "contact": emitted.contact,
        "groups_removed": list(emitted.groups_removed),
        "erase": emitted.erase,
        "version": state.version if version is None else version,
        "source": {
            "topic": change.origin.topic,
            "partition": change.origin.partition,
            "offset": change.origin.offset,
            "position": change.position.as_json() if change.position is not None else None,
        },
    }
    if emitted.keep_fields:
        record["keep_fields"] = list(emitted.keep_fields)
    if emitted.retires:
        record["retires"] = True
    if emitted.inherited_from is not None:
        record["inherited_from"] = emitted.inherited_from
    if handover:
        record["handover"] = True
    return record
