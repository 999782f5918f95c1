"""The `contact:` section: which customers column or child-table column fills each Yespo contact field.

The mapping step (`mapping.py`) and the deliver stage's request bodies (`sink/wire.py`) follow it.
"""

from __future__ import annotations

import logging
from typing import Literal

import phonenumbers
from pydantic import BaseModel, Field, field_validator

from connector.config.fields import STRICT

__all__ = ["AddressMapping", "ChannelMapping", "ChannelType", "ContactMapping", "GroupsMapping"]

logger = logging.getLogger(__name__)


ChannelType = Literal["email", "sms", "webPush", "mobilePush", "viber", "appInbox", "telegram"]


class ChannelMapping(BaseModel):
    """One channel of the contact and the customers column that holds its value."""

    model_config = STRICT

    type: ChannelType
    column: str


class AddressMapping(BaseModel):
    """Address parts in the example's shape, each from a customers column."""

    model_config = STRICT

    city: str | None = None
    region: str | None = None
    country: str | None = None
    postalCode: str | None = None
    addressLine: str | None = None


class GroupsMapping(BaseModel):
    """Groups (static segments) from a child table's rows."""

    model_config = STRICT

    child: str
    id: str
    name: str | None = None


class ContactMapping(BaseModel):
    """Contact field <- column of the customers row or child rows (the `contact:` section)."""

    model_config = STRICT

    externalCustomerId: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    channels: list[ChannelMapping] = Field(default_factory=list)
    address: AddressMapping | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    groups: GroupsMapping | None = None
    languageCode: str | None = None
    timeZone: str | None = None
    on_delete: Literal["delete", "erase", "ignore"] = "delete"
    default_phone_region: str | None = Field(
        default=None, description="ISO 3166 region for phone numbers written without a country code"
    )
    phone_validation: Literal["valid", "possible"] = Field(
        default="valid",
        description="valid: only numbers in an allocated range of their region; possible: length check only",
    )
    name_rules: Literal["yespo", "basic"] = Field(
        default="yespo",
        description="yespo: all of Yespo's name rules; basic: at most 40 characters and at least one letter",
    )

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("not an ISO 3166-1 alpha-2 region known to the phone-number library")
        return region
