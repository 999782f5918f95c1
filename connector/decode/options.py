"""What decoding needs besides the record: `DecodeOptions` (from Settings) and the `Ignored` outcome."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from connector.decode.jsonconv import table_converter
from connector.decode.logical import DECIMAL_MODES, Converter, DecimalMode
from connector.decode.rows import DEFAULT_PLACEHOLDER, ToastForms
from connector.errors import ConfigError, DecodeError
from connector.models import RecordRef

if TYPE_CHECKING:
    from connector.config import Settings

__all__ = ["DecodeOptions", "Ignored", "IgnoredKind"]

logger = logging.getLogger(__name__)

IgnoredKind = Literal["truncate", "message", "heartbeat", "transaction"]


@dataclass(frozen=True, slots=True)
class Ignored:
    """A record that is valid but carries no row change for us (counted by the caller, not a failure).

    Attributes:
        reason: short, content-free explanation.
        kind: "truncate" (`op: t`), "message" (`op: m`), "heartbeat" (`__debezium-heartbeat.*`) or
            "transaction" (BEGIN/END on a `*.transaction` topic).
        ref: the Kafka record it came from.
    """

    reason: str
    kind: str
    ref: RecordRef | None = None


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How to decode: wire format and the facts the bytes may not carry.

    Attributes:
        format: "auto" (Avro when the value starts with the Confluent magic byte 0, else JSON),
            "json" or "avro".
        column_types: table (`schema.table`) -> column -> logical type name, used only for JSON
            without schemas (full Connect/Debezium names such as `io.debezium.time.Date`, or the
            aliases in `connector.decode.logical.ALIASES`; decimals as `decimal:<scale>`).
            Without an entry, schemaless values stay as JSON gave them.
        topic_tables: topic -> `schema.table`, used when a record names no table.
        key_columns: topic -> key columns, used to take the key from the row of a keyless record.
        toast_placeholder: Debezium's `unavailable.value.placeholder`.
        heartbeat_topic_prefix: topics starting with this are heartbeats (`topic.heartbeat.prefix`).
        decimal_handling_mode: Debezium's `decimal.handling.mode`, for the `column_types` decimals:
            "string" reads every text as a decimal number ("1234"), "double" only "NaN"/"Infinity"/
            "-Infinity" (JsonConverter's double specials), "precise" base64 of the unscaled value
            unless the text cannot be base64 ('.' or a leading '-'). With schemas the schema says
            which form a value has.
        native: use the C fast path for schemaless JSON envelopes when it is built
            (`connector.decode.native`); results are the same either way.
        native_context: what the fast path reads (None: every record takes the Python path).

    Raises:
        ConfigError: a `column_types` entry names an unknown type, or a `hex:` placeholder is malformed.
    """

    format: Literal["auto", "json", "avro"] = "auto"
    column_types: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    topic_tables: Mapping[str, str] = field(default_factory=dict)
    key_columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    toast_placeholder: str = DEFAULT_PLACEHOLDER
    heartbeat_topic_prefix: str = "__debezium-heartbeat"
    native: bool = True
    decimal_handling_mode: DecimalMode = "precise"
    _table_converters: dict[str, Converter | None] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _toast: ToastForms = field(init=False, repr=False, compare=False, default_factory=ToastForms)
    native_context: tuple[Any, ...] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.decimal_handling_mode not in DECIMAL_MODES:
            reason = f"decimal handling mode must be one of {', '.join(DECIMAL_MODES)}"
            raise ConfigError(reason, key="source.decimal_handling_mode")
        for table, columns in self.column_types.items():
            try:
                self._table_converters[table] = table_converter(columns, self.decimal_handling_mode)
            except DecodeError as exc:
                raise ConfigError(exc.reason, key=f"source.column_types.{table}") from None
        if self.toast_placeholder != DEFAULT_PLACEHOLDER:
            try:
                toast = ToastForms(self.toast_placeholder)
            except ValueError as exc:
                raise ConfigError(str(exc), key="source.unavailable_value_placeholder") from None
            object.__setattr__(self, "_toast", toast)
        from connector.decode.native import native_context

        object.__setattr__(self, "native_context", native_context(self))

    @property
    def toast(self) -> ToastForms:
        """The placeholder forms to recognise."""
        return self._toast

    def table_converter(self, table: str) -> Converter | None:
        """The schemaless row converter of `table` (None: keep values as JSON gave them)."""
        return self._table_converters.get(table)

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeOptions:
        """Options from the `source:` section: format, column types, tables and keys, TOAST placeholder."""
        source = settings.source
        topic_tables: dict[str, str] = {}
        key_columns: dict[str, tuple[str, ...]] = {source.customers.topic: tuple(source.customers.key)}
        if source.customers.table:
            topic_tables[source.customers.topic] = source.customers.table
        for child in source.children:
            key_columns[child.topic] = tuple(child.key)
            if child.table:
                topic_tables[child.topic] = child.table
        return cls(
            format=source.format,
            column_types={t: dict(cols) for t, cols in source.column_types.items()},
            topic_tables=topic_tables,
            key_columns=key_columns,
            toast_placeholder=source.unavailable_value_placeholder,
            decimal_handling_mode=source.decimal_handling_mode,
        )
