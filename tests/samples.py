"""Sample data shared by tests: Yespo's "Add/Update a Contact" example and the example mapping."""

from __future__ import annotations

import copy
from typing import Any

# The "Add/Update a Contact Request Example" (spec/add-update-contact-request-example.md), verbatim.
_EXAMPLE_CONTACT: dict[str, Any] = {
    "firstName": "John",
    "lastName": "Smith",
    "channels": [
        {"type": "email", "value": "john.smith@example.com"},
        {"type": "sms", "value": "+1234567890"},
        {"type": "webPush", "value": "subscription-id-12345"},
    ],
    "address": {
        "city": "New York",
        "region": "NY",
        "country": "US",
        "postalCode": "10001",
        "addressLine": "123 Main Street",
    },
    "fields": [{"name": "birthDate", "value": "1990-01-01"}, {"name": "loyaltyLevel", "value": "Gold"}],
    "externalCustomerId": "EM12790",
    "groups": [{"id": 1001, "name": "Newsletter Subscribers"}],
    "languageCode": "en",
    "timeZone": "America/New_York",
}


def example_contact(**overrides: Any) -> dict[str, Any]:
    """A fresh copy of the example contact, with top-level keys replaced by `overrides`."""
    return {**copy.deepcopy(_EXAMPLE_CONTACT), **overrides}
