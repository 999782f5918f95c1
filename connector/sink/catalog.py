"""The custom-field setup of the deliver stage: the account's field catalog and the start-up checks.

Field names resolve to Yespo ids from `yespo.field_ids`, then the catalog of `GET /api/v1/addressbooks`;
mappings the official API cannot carry are refused at start-up with the config key at fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from connector.config import ContactMapping, YespoSettings
from connector.errors import ConfigError
from connector.sink.responses import as_list
from connector.sink.wire import CHANNEL_TYPES

__all__ = [
    "check_channel_mapping",
    "check_offline_config",
    "custom_field_names",
    "dropped_fields",
    "parse_field_catalog",
    "parse_field_types",
    "resolve_field_ids",
]

_MAX_FIELD_ID: Final = 2**31 - 1  # `ContactField.id` and `customFieldsIDs` items are int32


def check_channel_mapping(mapping: ContactMapping) -> None:
    """Refuse channel mappings the official API cannot carry.

    Raises:
        ConfigError: a channel type without an official `Channel.type` (e.g. telegram), or more than
            two channels of one type (Yespo's limit).
    """
    counts: dict[str, int] = {}
    for i, channel in enumerate(mapping.channels):
        official = CHANNEL_TYPES.get(channel.type)
        if official is None:
            raise ConfigError(
                f"channel type {channel.type!r} has no type in the Yespo contacts API",
                key=f"contact.channels.{i}.type",
            )
        counts[official] = counts.get(official, 0) + 1
        if counts[official] > 2:
            raise ConfigError(
                f"at most two channels of type {channel.type!r}", key=f"contact.channels.{i}.type"
            )


def _maps_country(mapping: ContactMapping) -> bool:
    return mapping.address is not None and mapping.address.country is not None


def custom_field_names(mapping: ContactMapping, settings: YespoSettings) -> tuple[str, ...]:
    """Names of the custom fields the connector writes: `contact.fields` plus the country field."""
    names = list(mapping.fields)
    if _maps_country(mapping) and settings.country_field and settings.country_field not in names:
        names.append(settings.country_field)
    return tuple(names)


def dropped_fields(mapping: ContactMapping, settings: YespoSettings) -> tuple[str, ...]:
    """Mapped fields the API cannot receive and that are dropped (warn about them once at start-up)."""
    if _maps_country(mapping) and not settings.country_field:
        return ("address.country",)
    return ()


def _catalog_fields(body: Any) -> Iterable[tuple[int, Mapping[str, Any]]]:
    """(id, entry) of every well-formed field of `GET /api/v1/addressbooks`.

    One-element lists may come as bare objects (spec section 1).
    """
    books = as_list(body.get("addressBook")) if isinstance(body, Mapping) else []
    for book in books:
        if not isinstance(book, Mapping):
            continue
        for group in as_list(book.get("fieldGroups")):
            if not isinstance(group, Mapping):
                continue
            for entry in as_list(group.get("fields")):
                if not isinstance(entry, Mapping):
                    continue
                fid = entry.get("id")
                if not isinstance(fid, bool) and isinstance(fid, int):
                    yield fid, entry


def parse_field_catalog(body: Any) -> dict[str, int]:
    """`GET /api/v1/addressbooks` -> {name: id, fieldKey: id}.

    Names win over field keys when they collide. Malformed entries are skipped.
    """
    by_name: dict[str, int] = {}
    by_key: dict[str, int] = {}
    for fid, entry in _catalog_fields(body):
        if isinstance(entry.get("name"), str):
            by_name.setdefault(entry["name"], fid)
        if isinstance(entry.get("fieldKey"), str):
            by_key.setdefault(entry["fieldKey"], fid)
    return {**by_key, **by_name}


def parse_field_types(body: Any) -> dict[int, str]:
    """`GET /api/v1/addressbooks` -> {id: type} (`description.type`, e.g. DATE).

    Entries without a type are left out.
    """
    types: dict[int, str] = {}
    for fid, entry in _catalog_fields(body):
        description = entry.get("description")
        kind = description.get("type") if isinstance(description, Mapping) else None
        if isinstance(kind, str) and kind:
            types.setdefault(fid, kind.upper())
    return types


def check_offline_config(mapping: ContactMapping, settings: YespoSettings) -> None:
    """The deliver stage's start-up checks that need no network (`validate-config` runs them).

    Raises:
        ConfigError: a channel type the API cannot carry, a configured field id outside int32, or
            a type for a custom field the mapping does not write.
    """
    check_channel_mapping(mapping)
    names = custom_field_names(mapping, settings)
    configured = settings.field_ids
    resolve_field_ids([n for n in names if n in configured], configured, None)
    for name in settings.field_types:
        if name not in names:
            raise ConfigError(
                f"custom field {name!r} has a type but the mapping writes no such field",
                key=f"yespo.field_types.{name}",
            )


def resolve_field_ids(
    names: Iterable[str],
    configured: Mapping[str, int],
    catalog: Mapping[str, int] | None,
    *,
    key_of: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Map every custom-field name to its Yespo id: `yespo.field_ids` first, then the catalog.

    Args:
        names: the names to resolve.
        configured: `yespo.field_ids`.
        catalog: `parse_field_catalog` of the account's address books (None if not fetched).
        key_of: name -> config key to blame in the error (default `contact.fields.<name>`).

    Raises:
        ConfigError: a name is in neither, or a configured id is not an int32 above 0 (it would be
            in every bulk request's `customFieldsIDs`, and Yespo would refuse them all).
    """
    out: dict[str, int] = {}
    for name in names:
        if name in configured:
            field_id = configured[name]
            if not 0 < field_id <= _MAX_FIELD_ID:
                raise ConfigError(
                    f"custom field {name!r}: a Yespo field id is from 1 to {_MAX_FIELD_ID} (int32)",
                    key=f"yespo.field_ids.{name}",
                )
            out[name] = field_id
        elif catalog is not None and name in catalog:
            out[name] = catalog[name]
        else:
            where = (key_of or {}).get(name, f"contact.fields.{name}")
            raise ConfigError(
                f"custom field {name!r} is not in yespo.field_ids nor in the account's "
                "address books (GET /api/v1/addressbooks)",
                key=where,
            )
    return out
