"""The `source:` section: the Debezium topics to consume (customers and child tables) and their encoding.

The decode step reads its options from it (`decode.options`); routing, its topics.
"""

from __future__ import annotations

import logging
from typing import Final, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from connector.config.fields import STRICT, NonBlank, TopicName

__all__ = ["ChildSource", "CustomersSource", "SourceSettings"]

logger = logging.getLogger(__name__)


_URL_FORM: Final = "an http(s)://host[:port][/path] URL"


def _registry_url_or_none(value: str | None) -> str | None:
    """`value` without surrounding whitespace, checked as http(s)://host[:port][/path]; "" is None.

    The message never repeats the value (it may carry user:password).
    """
    if value is None or not value:
        return None
    url = value.strip()
    if not url:
        raise ValueError("must not be blank (leave it unset, or empty, for no registry)")
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number in 0-65535 raises here
    except ValueError:
        raise ValueError(f"not {_URL_FORM}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not {_URL_FORM}")
    if port == 0 or parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"not {_URL_FORM} (no port 0, query or fragment)")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError(f"not {_URL_FORM} (it holds spaces or control characters)")
    try:
        httpx.URL(url)  # what the registry client will build its requests from
    except httpx.InvalidURL:
        raise ValueError(f"not {_URL_FORM}") from None
    return url


_TOMBSTONE_DELETES: Final = (
    "true when the topic's deletes arrive only as tombstones (ExtractNewRecordState with "
    "delete.tombstone.handling.mode=tombstone, its default, or delete-to-tombstone): a tombstone "
    "then deletes the row even when the row has a source position"
)


class CustomersSource(BaseModel):
    """The Debezium topic of the customers table."""

    model_config = STRICT

    topic: TopicName
    key: list[str] = Field(default_factory=lambda: ["id"], min_length=1)
    table: str | None = Field(default=None, description="schema.table; default from the topic name")
    tombstone_deletes: bool = Field(default=False, description=_TOMBSTONE_DELETES)


class ChildSource(BaseModel):
    """A table whose rows belong to one customer (e.g. group memberships)."""

    model_config = STRICT

    name: str
    topic: TopicName
    customer_key: str
    key: list[str] = Field(min_length=1)
    table: str | None = None
    tombstone_deletes: bool = Field(default=False, description=_TOMBSTONE_DELETES)

    @field_validator("name")
    @classmethod
    def _own_name(cls, value: str) -> str:
        # the merge stage's state names the customers row `customers` and its own records `~...`
        if value == "customers" or value.startswith("~"):
            raise ValueError("a child's name cannot be 'customers' or start with '~' (reserved)")
        return value


class SourceSettings(BaseModel):
    """What to consume and how it is encoded."""

    model_config = STRICT

    format: Literal["auto", "json", "avro"] = "auto"
    schema_registry_url: str | None = Field(
        default=None,
        validate_default=True,  # so that `format: avro` without it is refused
        description="http(s)://host[:port][/path] of a Confluent-compatible registry; required for avro",
    )
    customers: CustomersSource = CustomersSource(topic="crm.public.customers")
    children: list[ChildSource] = Field(default_factory=list)
    column_types: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="table -> column -> Debezium/Connect logical type name, for schemaless JSON",
    )
    decimal_handling_mode: Literal["precise", "string", "double"] = Field(
        default="precise",
        description=(
            "the Debezium connector's decimal.handling.mode, for the decimal:<scale> column_types: "
            "with string, a text such as 1234 is the number, not base64 of its unscaled value"
        ),
    )
    truncate: Literal["ignore"] = "ignore"
    unavailable_value_placeholder: NonBlank = Field(
        default="__debezium_unavailable_value",
        description=(
            "Debezium's unavailable.value.placeholder (an unchanged TOAST value): set it when the "
            "Debezium connector sets another one, else the placeholder is taken for real data; "
            "as in Debezium, a hex: prefix means hex-encoded octets"
        ),
    )

    @field_validator("unavailable_value_placeholder")
    @classmethod
    def _placeholder(cls, value: str) -> str:
        from connector.decode.rows import placeholder_bytes  # the decoder's reading: one rule

        placeholder_bytes(value)  # ValueError: a malformed hex: placeholder
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        # a mounted secret ends in a newline; "" is how an environment file leaves it unset
        url = _registry_url_or_none(value)
        if url is None and info.data.get("format") == "avro":
            raise ValueError(
                "required when source.format is avro (Avro values name their writer schema by id)"
            )
        return url

    @property
    def topics(self) -> list[str]:
        """Every source topic: customers first, then the children."""
        return [self.customers.topic, *(c.topic for c in self.children)]
