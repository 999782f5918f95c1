"""Resync's pure step: what to re-emit for one customer, and at which versions.

From its state (`decide_resync`) or from what the deliver stage's DLQ holds for it (`decide_redrive`);
no clients: `ops.resync` reads the state topic and the DLQ, and writes the decisions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from msgspec.structs import replace

from connector.merge import CustomerState
from connector.models import RecordRef
from connector.ops.dlq import Redrive, record_version
from connector.projection import Projector, upsert_records
from connector.routing import RoutedChange

__all__ = ["ResyncDecision", "decide_redrive", "decide_resync"]

logger = logging.getLogger(__name__)

RESYNC_SOURCE = "resync"

Kind = Literal["upsert", "delete", "unchanged", "absent", "unmappable", "held"]


@dataclass(frozen=True, slots=True)
class ResyncDecision:
    """What resync does with one customer.

    Attributes:
        kind: `upsert`/`delete` (a record is written), `unchanged` (the contact equals the stored
            fingerprint), `absent` (no contact and nothing live in Yespo), `unmappable` (the mapping
            reports an error; the merge stage dead-letters such customers, resync only counts them),
            `held` (a re-driven delete whose externalCustomerId another live customer now holds).
        state: the state to write (new version, fingerprint, groups, external id); None for a
            tombstone. Meaningful only when `record` is set.
        record: the upserts topic's value, or None when nothing is written.
        first: records written just before `record`, in order, with the versions below its own: a
            re-driven erase, and the delete retiring the contact's previous externalCustomerId
            (`connector.projection`).
        erase_skipped: a dead-lettered erase of this customer that is not sent (see `decide_redrive`).
        erase_sent: `first` starts with a re-driven erase.
        retired: how many of the records written are deletes retiring a previous externalCustomerId.
    """

    kind: Kind
    state: CustomerState | None = None
    record: dict[str, Any] | None = None
    first: tuple[dict[str, Any], ...] = ()
    erase_skipped: bool = False
    erase_sent: bool = False
    retired: int = 0


def decide_resync(
    state: CustomerState, projector: Projector, *, force: bool, origin: RecordRef
) -> ResyncDecision:
    """Map `state` with the current mapping and decide what to re-emit. Pure.

    Without `force`, this is exactly what the merge stage would emit for the customer now: an upsert
    when the mapped contact's fingerprint differs from the stored one (e.g. after a mapping change),
    a delete when the contact is gone but one is live in Yespo. With `force`, every customer with a
    contact gets an upsert, even when unchanged. The record has the merge stage's shape
    (`schemas/upsert.schema.json`), version = stored version + 1 and `source` = the state record
    (`origin`, position null).
    """
    probe = replace(state, fingerprint=None) if force else state
    projection = projector.project(probe, moved=False)
    if projection.error is not None:
        return ResyncDecision("unmappable")
    emitted = projection.emitted
    if emitted is None:
        if force and state.fingerprint is not None:
            # forced, but no contact to send (e.g. on_delete=ignore kept a fingerprint): leave it
            return ResyncDecision("absent")
        return ResyncDecision("unchanged" if state.fingerprint is not None else "absent")
    change = RoutedChange(
        state.customer_key, RESYNC_SOURCE, "", "upsert", None, None, None, False, False, origin
    )
    *first, record = upsert_records(projection, change)
    new_state: CustomerState | None = projection.state
    if new_state is not None and new_state.is_empty():
        new_state = None
    kind: Kind = "upsert" if emitted.op == "upsert" else "delete"
    return ResyncDecision(kind, new_state, record, tuple(first), retired=len(first))


def decide_redrive(
    state: CustomerState | None,
    target: Redrive,
    projector: Projector,
    *,
    origin: RecordRef,
    held: Callable[[str], bool] = lambda external_id: False,
    erases: bool = False,
) -> ResyncDecision:
    """What re-driving one customer's dead-lettered upsert-topic records writes. Pure.

    First the dead-lettered deletes that retired a previous externalCustomerId of the customer
    (`Redrive.retired`) are sent again, before anything else (the deliver stage sends them before
    the upsert that follows): each one unless it names the customer's contact now or one `held` by
    another live customer. Then as follows.

    A customer with a contact now gets it as a forced upsert (`decide_resync(force=True)`), whose
    `groups_removed` also names the segments the dead-lettered records were to detach (unless the
    contact is in them again). A customer without a contact gets its last dead-lettered delete
    again: sending it twice is harmless (a missing contact counts as deleted), and the state's
    version cannot tell whether it was overtaken (versions restart at 1 after a rebuild). Its
    dead-lettered erase only when that is still its last record (with the state's version, or no
    state left); otherwise nothing: a newer record was written after it, and it stands (if it failed
    too, it is in the DLQ and is the one re-driven). No delete or erase is re-driven for an
    externalCustomerId that `held` says another live customer now has (a primary-key change, a
    re-insert under another key): it would delete that contact.

    A dead-lettered erase (GDPR) that is not the customer's last word cannot be checked against what
    happened since (a later erase may have gone through, or an earlier re-drive sent it), and sending
    it again wipes the contact the customer has now. It is sent only with `erases` (before the
    upsert, as the deliver stage sends an erase before what follows it, or alone for a customer
    without a contact); otherwise the decision reports it (`erase_skipped`).

    Args:
        state: the customer's state, None when the state topic has none.
        target: what the DLQ holds for the customer.
        projector: the mapping.
        origin: the state record (or, without state, the DLQ record) the output names as its source.
        held: whether another live customer's contact has this externalCustomerId.
        erases: send a dead-lettered erase that is not the customer's last word (`--with-erases`).
    """
    source = {"topic": origin.topic, "partition": origin.partition, "offset": origin.offset, "position": None}
    decision = _redrive(state, target, projector, source, origin=origin, held=held, erases=erases)
    return _with_retired(decision, state, target, held, source)


def _redrive(
    state: CustomerState | None,
    target: Redrive,
    projector: Projector,
    source: Mapping[str, Any],
    *,
    origin: RecordRef,
    held: Callable[[str], bool],
    erases: bool,
) -> ResyncDecision:
    """`decide_redrive` without the retiring deletes."""
    erase = target.erase
    erase_ext = erase.get("external_customer_id") if erase is not None else None
    if not isinstance(erase_ext, str) or not erase_ext:
        erase = None
    if state is not None:
        decision = decide_resync(state, projector, force=True, origin=origin)
        if decision.kind == "upsert" and decision.record is not None and decision.state is not None:
            removed = set(decision.record["groups_removed"]) | (
                target.groups_removed - set(decision.state.groups)
            )
            record = {**decision.record, "groups_removed": sorted(removed)}
            if erase is None:
                return dataclasses.replace(decision, record=record)
            if not erases or held(str(erase_ext)):
                return dataclasses.replace(decision, record=record, erase_skipped=True)
            chain = [{**erase, "source": source}, *decision.first, record]
            chain = [{**r, "version": state.version + i} for i, r in enumerate(chain, 1)]
            new_state = replace(decision.state, version=state.version + len(chain))
            return ResyncDecision(
                "upsert", new_state, chain[-1], tuple(chain[:-1]), retired=decision.retired, erase_sent=True
            )
        if state.fingerprint is not None:  # unmappable now, but its last contact is live: no delete
            return dataclasses.replace(decision, erase_skipped=erase is not None)
        fallback = decision if decision.kind == "unmappable" else ResyncDecision("absent")
    else:
        fallback = ResyncDecision("absent")
    last = target.last
    resend: Mapping[str, Any] | None = None
    # Here the customer has no contact now. A plain delete is harmless to send again (the contact
    # is gone or should be); versions say nothing across a rebuild (they restart at 1), so only an
    # erase, which would wipe a contact that came back, needs to be the customer's last word.
    plain = last is not None and not last.get("erase")
    last_word = state is None or target.last_version == state.version or plain
    if last is not None and target.last_op == "delete" and last_word:
        resend = last
    if resend is None and erase is not None and erases:
        resend = erase
    skipped = erase is not None and resend is not erase and not (resend is not None and resend.get("erase"))
    if resend is None:
        return dataclasses.replace(fallback, erase_skipped=skipped)
    ext = resend.get("external_customer_id")
    if isinstance(ext, str) and held(ext):
        return ResyncDecision("held", erase_skipped=erase is not None)
    version = (state.version if state is not None else record_version(resend)) + 1
    record = {**resend, "version": version, "source": source}
    gone: CustomerState | None = replace(state, version=version) if state is not None else None
    return ResyncDecision("delete", gone, record, erase_skipped=skipped)


def _with_retired(
    decision: ResyncDecision,
    state: CustomerState | None,
    target: Redrive,
    held: Callable[[str], bool],
    source: Mapping[str, Any],
) -> ResyncDecision:
    """`decision` with the dead-lettered retiring deletes it may send written first (see `decide_redrive`)."""
    current = state.external_id if state is not None and state.fingerprint is not None else None
    retires = [
        {**record, "source": source}
        for ext, record in target.retired.items()
        if ext != current and not held(ext)
    ]
    if not retires:
        return decision
    chain = [*retires, *decision.first, *([decision.record] if decision.record is not None else [])]
    base = state.version if state is not None else max(record_version(r) or 0 for r in chain)
    chain = [{**r, "version": base + i} for i, r in enumerate(chain, 1)]
    version = base + len(chain)
    new_state = decision.state if decision.record is not None else state
    if new_state is not None:
        new_state = replace(new_state, version=version)
    kind: Kind = decision.kind if decision.record is not None else "delete"
    return dataclasses.replace(
        decision,
        kind=kind,
        state=new_state,
        record=chain[-1],
        first=tuple(chain[:-1]),
        retired=decision.retired + len(retires),
    )
