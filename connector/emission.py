"""Diff-only emission: what the merge stage writes to the upserts topic for one mapped customer.

Pure: `decide_emission(previous_fingerprint, previous_groups, result, on_delete)` -> `Emission | None`
compares a mapping (`connector.mapping`) with what was emitted last; `track_emission` keeps the
caller's state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from connector.mapping import MappingResult

__all__ = [
    "Emission",
    "EmittedState",
    "decide_emission",
    "track_emission",
]

logger = logging.getLogger(__name__)

OnDelete = Literal["delete", "erase", "ignore"]
_ON_DELETE: Final = frozenset(("delete", "erase", "ignore"))


@dataclass(frozen=True, slots=True)
class Emission:
    """One record for the upserts topic.

    Attributes:
        op: `upsert` (add or update the contact) or `delete`.
        contact: the contact's JSON form (`Contact.to_json()`) for an upsert; None for a delete.
        groups_removed: ids of groups the previously emitted contact had and this one has not (the
            deliver stage detaches them); empty for a delete here: the merge stage's projection
            (`connector.projection`) gives a soft delete the groups the contact had, since Yespo
            keeps a soft-deleted contact's segments and a restore brings them back.
        erase: for a delete, erase permanently (GDPR) instead of a soft delete.
        fingerprint: the contact's fingerprint for an upsert (store it); None after a delete.
        keep_fields: for an upsert, `MappingResult.kept`: fields the contact leaves out because their
            value is unknown; Yespo must keep them as they are (not clear them).
    """

    op: Literal["upsert", "delete"]
    contact: dict[str, Any] | None
    groups_removed: list[int]
    erase: bool
    fingerprint: str | None
    keep_fields: tuple[str, ...] = ()

    @property
    def group_ids(self) -> tuple[int, ...]:
        """Ids of the emitted contact's groups, sorted (empty for a delete): store them."""
        if self.contact is None:
            return ()
        return tuple(g["id"] for g in self.contact.get("groups", ()))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: `op`, `contact` (upserts only), `groups_removed`, `erase`."""
        out: dict[str, Any] = {"op": self.op}
        if self.contact is not None:
            out["contact"] = self.contact
        out["groups_removed"] = list(self.groups_removed)
        out["erase"] = self.erase
        if self.keep_fields:
            out["keep_fields"] = list(self.keep_fields)
        return out


def decide_emission(
    previous_fingerprint: str | None,
    previous_groups: Sequence[int] | None,
    result: MappingResult,
    on_delete: str,
) -> Emission | None:
    """What to emit for a customer, given what was emitted for it last.

    Args:
        previous_fingerprint: the fingerprint of the last emitted contact; None if nothing was
            emitted, or if the last emission was a delete.
        previous_groups: the group ids of the last emitted contact (`Emission.group_ids`).
        result: `map_contact` of the customer's current rows.
        on_delete: `delete` | `erase` | `ignore` (config `contact.on_delete`).

    Returns:
        None when nothing must be emitted: the contact is unchanged (same fingerprint); the customer
        is absent and nothing is live in Yespo (no previous fingerprint), or `on_delete` is
        `ignore`; or `result.error` is set (the caller dead-letters the record). Otherwise an
        upsert with the groups removed since the last emission, or a delete. Track the caller's
        state with `track_emission`.

    Raises:
        ValueError: `on_delete` is not one of the three policies.
    """
    if on_delete not in _ON_DELETE:
        raise ValueError(f"on_delete must be delete, erase or ignore, not {on_delete!r}")
    contact = result.contact
    if contact is None:
        if result.error is not None or previous_fingerprint is None or on_delete == "ignore":
            return None
        return Emission("delete", None, [], on_delete == "erase", None)
    fingerprint = result.fingerprint or contact.fingerprint()
    if fingerprint == previous_fingerprint:
        return None
    body = dict(result.contact_json) if result.contact_json is not None else contact.to_json()
    removed = sorted(set(previous_groups).difference(contact.group_ids)) if previous_groups else []
    return Emission("upsert", body, removed, False, fingerprint, result.kept)


@dataclass(frozen=True, slots=True)
class EmittedState:
    """What the caller keeps per customer: the last emitted contact's fingerprint and group ids."""

    fingerprint: str
    groups: tuple[int, ...]


def track_emission(previous: EmittedState | None, emission: Emission | None) -> EmittedState | None:
    """The caller's state after `emission`: unchanged for None, reset by a delete, replaced by an upsert."""
    if emission is None:
        return previous
    if emission.fingerprint is None:
        return None
    return EmittedState(emission.fingerprint, emission.group_ids)
