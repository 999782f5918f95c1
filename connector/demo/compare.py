"""Expected vs actual: the mapping of the demo's database rows next to the stand-in's contacts."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.config import Settings
from connector.mapping import ContactMapper
from connector.models import CustomerView
from connector.sink.catalog import custom_field_names, resolve_field_ids
from connector.sink.wire import WireTranslator

__all__ = ["Comparison", "compare", "expected_views", "view_of_contact"]

logger = logging.getLogger(__name__)


def _translator(settings: Settings) -> WireTranslator:
    ids = resolve_field_ids(
        custom_field_names(settings.contact, settings.yespo), settings.yespo.field_ids, None
    )
    country = settings.yespo.country_field
    return WireTranslator(ids, ids.get(country) if country else None)


def expected_views(
    settings: Settings, rows: Mapping[int, Mapping[str, Any]], groups: Mapping[int, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Map the database rows to contacts, by externalCustomerId, in the stand-in dump's shape."""
    mapper = ContactMapper(settings.contact)
    wire = _translator(settings)
    out: dict[str, dict[str, Any]] = {}
    for cid, row in rows.items():
        result = mapper.map(CustomerView(str(cid), dict(row), {"groups": list(groups.get(cid, []))}))
        if result.contact is None:
            continue
        official = wire.contact(result.contact.to_json())
        out[official["externalCustomerId"]] = {
            "firstName": official.get("firstName"),
            "lastName": official.get("lastName"),
            "channels": sorted((ch["type"], ch["value"]) for ch in official["channels"]),
            "address": dict(official.get("address", {})),
            "fields": {str(f["id"]): f["value"] for f in official.get("fields", [])},
            "languageCode": official.get("languageCode"),
            "timeZone": official.get("timeZone"),
            "groups": sorted(result.contact.group_ids),
        }
    return out


def view_of_contact(dumped: Mapping[str, Any]) -> dict[str, Any]:
    """A stand-in dump entry in the shape of `expected_views`."""
    return {
        "firstName": dumped.get("firstName"),
        "lastName": dumped.get("lastName"),
        "channels": sorted((ch["type"], ch["value"]) for ch in dumped["channels"]),
        "address": dict(dumped["address"]),
        "fields": dict(dumped["fields"]),
        "languageCode": dumped.get("languageCode"),
        "timeZone": dumped.get("timeZone"),
        "groups": sorted(dumped["groups"]),
    }


@dataclass(frozen=True, slots=True)
class Comparison:
    """How far the stand-in is from the database."""

    rows: int
    live_contacts: int
    equal: int
    stale_live: int

    @property
    def done(self) -> bool:
        """Every row's contact is equal and no deleted customer is live."""
        return self.equal == self.rows and self.live_contacts == self.rows and self.stale_live == 0


def compare(expected: Mapping[str, dict[str, Any]], dump: Mapping[str, Any]) -> Comparison:
    """Count the stand-in's contacts that equal the mapping of the database rows."""
    live = {c["externalCustomerId"]: c for c in dump["contacts"] if not c["deleted"]}
    equal = sum(1 for ext, want in expected.items() if ext in live and view_of_contact(live[ext]) == want)
    return Comparison(len(expected), len(live), equal, len(set(live) - set(expected)))
