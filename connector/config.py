"""Settings: the YAML file of `../shared/examples/connector.yaml`, overridden by the environment.

Precedence (highest first): `YESPO_CONNECTOR_<SECTION>__<KEY>` environment variables, the YAML file,
defaults. Settings are loaded once, in `cli.py`, and handed down. This is the only module that reads
`os.environ`. Config errors name the dotted key that is wrong (`kafka.commit_interval_ms: ...`), or
the `YESPO_CONNECTOR_*` variable that sets nothing (a typo), never a value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import httpx
import phonenumbers
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from connector.envnames import env_names, map_key_names, unknown_env_names
from connector.errors import ConfigError
from connector.normalize import Invalid, normalize_time_zone

__all__ = [
    "CONNECTOR_KAFKA_PROPERTIES",
    "CONTACT_ZONE",
    "ENV_PREFIX",
    "AddressMapping",
    "ChannelMapping",
    "ChildSource",
    "ContactMapping",
    "CustomersSource",
    "GroupsMapping",
    "KafkaSettings",
    "ObservabilitySettings",
    "OutputSettings",
    "Settings",
    "SourceSettings",
    "StateSettings",
    "YespoSettings",
    "load_settings",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "YESPO_CONNECTOR_"

_Strict = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf/.nan: no setting means them


_LIBRDKAFKA_MESSAGE_MAX_BYTES: Final = 1_000_000
"""librdkafka's default `message.max.bytes`."""
_SECRET_PROPERTY: Final = re.compile(r"password|passphrase|secret|\.pem$|oauthbearer\.config|^sasl\.jaas")
"""librdkafka properties whose values are secrets (`sasl.password`, `ssl.key.password`, `...passphrase`)."""

CONNECTOR_KAFKA_PROPERTIES: Final[Mapping[str, str | None]] = {
    # set from a config key of their own (librdkafka's `metadata.broker.list` is bootstrap.servers)
    "bootstrap.servers": "kafka.bootstrap_servers",
    "metadata.broker.list": "kafka.bootstrap_servers",
    "group.id": "kafka.group_id or kafka.deliver_group_id",
    "transactional.id": "kafka.transactional_id_prefix",
    "transaction.timeout.ms": "kafka.transaction_timeout_ms",
    "max.poll.interval.ms": "kafka.max_poll_interval_ms",
    "session.timeout.ms": "kafka.session_timeout_ms",
    # offsets are committed with the transaction (merge) or after delivery (deliver), never on their own
    "enable.auto.commit": None,
    "enable.auto.offset.store": None,
    # stages read only committed records, and a new group (or a lost offset) reads from the start
    "isolation.level": None,
    "auto.offset.reset": None,
    # off in the stages' loops, on where a read must stop at a partition's end (restore, ops scans)
    "enable.partition.eof": None,
    # exactly once: transactions need an idempotent producer that waits for every replica
    "enable.idempotence": None,
    "acks": None,
    "request.required.acks": None,
    # librdkafka's lines go through Python logging (redaction); its statistics feed the lag metrics
    "logger": None,
    "stats_cb": None,
    "statistics.interval.ms": None,
    # static membership: replicas share one config, and members with one id fence each other
    "group.instance.id": None,
}
"""librdkafka properties the connector sets itself in `kafka.clients`, which `kafka.extra` may not set.

Each maps to the config key that sets it, or to None when the connector needs its own value.
`kafka.extra` overrides every other property the connector sets (tuning: `linger.ms`,
`compression.type`, batch and fetch sizes, ...). Partitioning is not here: every record whose
partition matters is written to an explicit partition (`routing.partition_for`).
"""


def _not_set_by_connector(name: str) -> str:
    if name in CONNECTOR_KAFKA_PROPERTIES:
        key = CONNECTOR_KAFKA_PROPERTIES[name]
        why = f"use {key}" if key else "the connector needs its own value"
        raise ValueError(f"set by the connector ({why})")
    return name


_ClientProperty = Annotated[str, AfterValidator(_not_set_by_connector)]
"""A `kafka.extra` property name: not one of `CONNECTOR_KAFKA_PROPERTIES`."""


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]
"""A name or address that means nothing when empty or only spaces (and fails only later, obscurely)."""


def _blank_is_no_value(value: str | None) -> str | None:
    # "" is how an environment file leaves an optional setting unset (deploy/.env.example), and it
    # means the default; only spaces are a mistake
    if value and not value.strip():
        raise ValueError("must not be blank (leave it unset, or empty, for the default)")
    return value


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


class KafkaSettings(BaseModel):
    """Kafka connection and the merge stage's transaction cadence."""

    model_config = _Strict

    # blank: librdkafka starts with no broker to connect to; a blank group.id aborts the Python process
    bootstrap_servers: NonBlank = "127.0.0.1:9092"
    group_id: NonBlank = "yespo-connector"
    deliver_group_id: Annotated[str | None, AfterValidator(_blank_is_no_value)] = Field(
        default=None, description='default "<group_id>-deliver"; must differ from group_id'
    )
    transactional_id_prefix: str = "yespo-connector"
    commit_interval_ms: int = Field(default=200, gt=0, le=60_000)
    commit_max_records: int = Field(default=10_000, gt=0)
    transaction_timeout_ms: int = Field(default=60_000, gt=0)
    max_poll_interval_ms: int = Field(default=300_000, gt=0)
    session_timeout_ms: int = Field(default=45_000, gt=0)
    topic_replication_factor: int = Field(default=1, gt=0)
    extra: dict[_ClientProperty, str] = Field(default_factory=dict)

    @property
    def deliver_group(self) -> str:
        """The deliver stage's consumer group."""
        return self.deliver_group_id or f"{self.group_id}-deliver"

    @property
    def secret_values(self) -> tuple[str, ...]:
        """The `extra` values that are secrets (passwords, client secrets, keys): never shown."""
        return tuple(v for k, v in self.extra.items() if _SECRET_PROPERTY.search(k) and v)

    def __repr_args__(self) -> Any:  # repr() and str() mask the secret `extra` values
        for name, value in super().__repr_args__():
            if name == "extra":
                value = {k: "**********" if _SECRET_PROPERTY.search(k) else v for k, v in value.items()}
            yield name, value

    @field_validator("deliver_group_id")
    @classmethod
    def _own_deliver_group(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and value == info.data.get("group_id"):
            # e.g. the deliver stage's replicas would count as live merge members, and rebuild-state
            # and resync refuse to run while the merge group has any
            raise ValueError(
                "must differ from kafka.group_id: each stage needs a consumer group of its own (with "
                "one, a rebalance of either stage stops both, and the commands that need the merge "
                "group empty would wait for the deliver stage's members)"
            )
        return value

    @field_validator("max_poll_interval_ms")
    @classmethod
    def _poll_interval_fits_a_merge_step(cls, value: int) -> int:
        # a merge step's blocking calls (sending the offsets, the commit's attempts, the aborts on a
        # slow broker) share 80 % of it less 15 s: below 30 s they would not fit, and the group
        # would evict the member mid-commit (librdkafka also needs it >= session.timeout.ms)
        if value < 30_000:
            raise ValueError(
                "must be at least 30000 (30 s): the merge stage's commit, with its retries on a slow "
                "broker, must fit between two polls"
            )
        return value

    @model_validator(mode="after")
    def _timeout_above_commit_interval(self) -> KafkaSettings:
        if self.transaction_timeout_ms < 5 * self.commit_interval_ms:
            raise ValueError("transaction_timeout_ms must be at least 5 x commit_interval_ms")
        return self

    @property
    def message_max_bytes(self) -> int:
        """The producer's largest record (librdkafka `message.max.bytes`, settable in `extra`)."""
        return int(self.extra.get("message.max.bytes", _LIBRDKAFKA_MESSAGE_MAX_BYTES))

    @field_validator("extra")
    @classmethod
    def _message_max_bytes_is_a_size(cls, extra: dict[str, str]) -> dict[str, str]:
        raw = extra.get("message.max.bytes")
        if raw is not None and (not raw.isdigit() or not 10_000 <= int(raw) <= 1_000_000_000):
            raise ValueError("message.max.bytes must be a whole number of bytes from 10000 to 1000000000")
        # the stages' rebalance callbacks take and give back whole assignments (eager protocol)
        if "cooperative" in extra.get("partition.assignment.strategy", "").lower():
            raise ValueError(
                "partition.assignment.strategy: cooperative assignors are not supported (the stages "
                "rebalance eagerly: range or roundrobin)"
            )
        if extra.get("group.protocol", "classic").strip().lower() != "classic":
            raise ValueError("group.protocol: only 'classic' is supported (the stages rebalance eagerly)")
        return extra

    def as_librdkafka(self) -> dict[str, str | int | float | bool]:
        """Client properties common to every client; `extra` is passed through as-is."""
        conf: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap_servers}
        conf.update(self.extra)
        return conf


_TOMBSTONE_DELETES: Final = (
    "true when the topic's deletes arrive only as tombstones (ExtractNewRecordState with "
    "delete.tombstone.handling.mode=tombstone, its default, or delete-to-tombstone): a tombstone "
    "then deletes the row even when the row has a source position"
)


TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
"""A Kafka topic name: 1 to 249 of letters, digits, `.`, `_` and `-` (what the broker accepts)."""


class CustomersSource(BaseModel):
    """The Debezium topic of the customers table."""

    model_config = _Strict

    topic: TopicName
    key: list[str] = Field(default_factory=lambda: ["id"], min_length=1)
    table: str | None = Field(default=None, description="schema.table; default from the topic name")
    tombstone_deletes: bool = Field(default=False, description=_TOMBSTONE_DELETES)


class ChildSource(BaseModel):
    """A table whose rows belong to one customer (e.g. group memberships)."""

    model_config = _Strict

    name: str
    topic: TopicName
    customer_key: str
    key: list[str] = Field(min_length=1)
    table: str | None = None
    tombstone_deletes: bool = Field(default=False, description=_TOMBSTONE_DELETES)


class SourceSettings(BaseModel):
    """What to consume and how it is encoded."""

    model_config = _Strict

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


class StateSettings(BaseModel):
    """The internal changes topic and the compacted per-customer state topic."""

    model_config = _Strict

    changes_topic: TopicName = "yespo-connector.changes"
    partitions: int = Field(default=6, gt=0, le=10_000)
    topic: TopicName = "yespo-connector.customer-state"
    delete_marker_ttl_hours: float = Field(default=168, ge=0)


class OutputSettings(BaseModel):
    """Topics the connector writes."""

    model_config = _Strict

    upserts_topic: TopicName = "yespo-connector.contact-upserts"
    dlq_topic: TopicName = "yespo-connector.dlq"
    audit_topic: TopicName = "yespo-connector.audit"


ChannelType = Literal["email", "sms", "webPush", "mobilePush", "viber", "appInbox", "telegram"]


class ChannelMapping(BaseModel):
    """One channel of the contact and the customers column that holds its value."""

    model_config = _Strict

    type: ChannelType
    column: str


class AddressMapping(BaseModel):
    """Address parts in the example's shape, each from a customers column."""

    model_config = _Strict

    city: str | None = None
    region: str | None = None
    country: str | None = None
    postalCode: str | None = None
    addressLine: str | None = None


class GroupsMapping(BaseModel):
    """Groups (static segments) from a child table's rows."""

    model_config = _Strict

    child: str
    id: str
    name: str | None = None


class ContactMapping(BaseModel):
    """Contact field <- column of the customers row or child rows (the `contact:` section)."""

    model_config = _Strict

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


_ENV_VAR_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UPPER_ENV_VAR_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]*")


CONTACT_ZONE: Final = "contact"
"""`yespo.datetime_zone`'s default: timestamps in each contact's own time zone."""


class YespoSettings(BaseModel):
    """The Yespo contacts API and how the deliver stage calls it."""

    model_config = _Strict

    base_url: NonBlank = "https://yespo.io"  # blank: every request fails (no http:// or https://)
    api_key_env: NonBlank = "YESPO_API_KEY"
    api_key_file: Path | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    _api_key_file_error: str | None = PrivateAttr(default=None)  # why `api_key_file` gave no key
    mode: Literal["bulk", "single"] = "bulk"
    batch_size: int = Field(default=2000, gt=0, le=3000)
    max_requests_per_second: float = Field(default=100, gt=0, le=200)
    field_ids: dict[str, int] = Field(default_factory=dict)
    field_types: dict[
        str,
        Literal[
            "TEXTFIELD",
            "COMBOBOX",
            "CHECKBOXLIST",
            "TEXTAREA",
            "DATE",
            "NUMBER",
            "DATETIME",
            "DECIMAL",
            "TAGS",
        ],
    ] = Field(
        default_factory=dict,
        description=(
            "custom field (by name) -> its Yespo catalog type, for fields whose id is configured (the "
            "others take theirs from GET /api/v1/addressbooks): each value is fitted to its type "
            "(a timestamp to DATETIME's yyyy-MM-ddTHH:mm, 5.0 to NUMBER's 5) or left out"
        ),
    )
    country_field: str | None = Field(
        default=None, description="custom field (by name) that receives address.country; None drops it"
    )
    datetime_zone: str = Field(
        default=CONTACT_ZONE,
        description=(
            "the time zone a timestamp is written in for a DATETIME or DATE custom field: 'contact' "
            "for the contact's own timeZone (UTC when it has none), as Yespo's API guide says "
            "timestamps are; or an IANA zone name, e.g. 'UTC' or the account's zone (the legacy "
            "guide says the requesting user's zone)"
        ),
    )
    request_timeout_s: float = Field(default=30, gt=0)
    max_retry_seconds: float = Field(default=3600, gt=0, description="give up (DLQ) after this long")
    poll_import_status: bool = Field(
        default=True,
        description=(
            "wait for GET /api/v1/importstatus/{id} to report FINISHED after each bulk request: Yespo "
            "applies bulk imports asynchronously, and segment calls and the next batch must follow it"
        ),
    )
    import_status_timeout_s: float = Field(
        default=120,
        gt=0,
        description=(
            "how long to wait for a bulk import to finish (poll_import_status); an import still "
            "running then fails the attempt and the batch is retried"
        ),
    )
    import_error_attempts: int = Field(
        default=3,
        ge=1,
        description=(
            "a bulk import that ends in ERROR is sent again in halves, down to single contacts, "
            "while other imports finish; a contact whose own import ended in ERROR this many times, "
            "each time while another import sent after its previous ERROR finished, goes to the DLQ "
            "(dlq:import_error)"
        ),
    )
    batch_linger_ms: int = Field(default=500, ge=0)
    read_back_records: int = Field(
        default=20_000,
        ge=0,
        description=(
            "offsets per assigned upserts partition read back (newest first) below its committed "
            "offset on each assignment, so an old key's record after a primary-key change cannot "
            "bring back a contact an earlier process deleted (superseded); 0 turns the read-back off"
        ),
    )

    @field_validator("datetime_zone")
    @classmethod
    def _zone_name(cls, value: str) -> str:
        if value == CONTACT_ZONE:
            return value
        zone = normalize_time_zone(value)
        if isinstance(zone, Invalid):
            raise ValueError("neither 'contact' nor an IANA time zone name (e.g. UTC, Europe/Kyiv)")
        return zone

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, key: SecretStr | None) -> SecretStr | None:
        # "" is no key (the deliver stage refuses to start without one); spaces would be sent as the
        # key, and every request refused (401)
        if key is not None and key.get_secret_value() and not key.get_secret_value().strip():
            raise ValueError("must not be blank")
        return key

    @field_validator("api_key_file", mode="before")
    @classmethod
    def _empty_file_is_none(cls, value: Any) -> Any:
        # "" is how an environment file leaves it unset (deploy/.env.example); Path("") would be "."
        if isinstance(value, str) and not value.strip():
            if value:
                raise ValueError("must not be blank (leave it unset, or empty, for no file)")
            return None
        return value

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str) -> str:
        # never echoed: a key pasted here by mistake must not reach an error message
        if not _ENV_VAR_NAME.fullmatch(value):
            raise ValueError("not an environment variable name (letters, digits and _)")
        return value

    @property
    def has_api_key(self) -> bool:
        """Whether a (non-empty) API key was found."""
        return self.api_key is not None and bool(self.api_key.get_secret_value())

    def require_api_key(self) -> str:
        """The API key.

        Only what needs the key calls this (the deliver stage, `validate-config --stage deliver`):
        `yespo.api_key_file` is often mounted only where the deliver stage runs, so a file that could
        not be read when the settings were loaded is an error here, not at load.

        Raises:
            ConfigError: no key was found (names `yespo.api_key_env` and where a key comes from), or
                the key file could not be read or is empty (names `yespo.api_key_file`).
        """
        if self.api_key is not None and self.has_api_key:
            return self.api_key.get_secret_value()
        if self._api_key_file_error is not None:
            raise ConfigError(self._api_key_file_error, key="yespo.api_key_file")
        raise ConfigError(f"no Yespo API key (set {self.api_key_hint()})", key="yespo.api_key_env")

    def api_key_hint(self) -> str:
        """Where the key comes from, for error messages: `$YESPO_API_KEY or yespo.api_key_file`.

        The variable's name is shown only when it looks like one (upper case): a key pasted into
        `api_key_env` by mistake is never repeated.
        """
        return _api_key_hint(self.api_key_env)

    def _with_key_from(self, environ: Mapping[str, str]) -> YespoSettings:
        """A copy with the key from the variable `api_key_env` names, else from `api_key_file`.

        A key file that cannot be read, or is empty, is recorded for `require_api_key`, not raised.
        """
        value = environ.get(self.api_key_env, "")
        if value.strip():  # a trailing newline (echo, secrets) is not part of the key
            return self.model_copy(update={"api_key": SecretStr(value.strip())})
        if self.api_key_file is None:
            return self
        try:
            key = self.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            error = f"cannot read the API key file ({exc.strerror})"
        except UnicodeDecodeError:
            error = "the API key file is not UTF-8 text"
        else:
            if key:
                return self.model_copy(update={"api_key": SecretStr(key)})
            error = "the API key file is empty"  # e.g. a secret mounted before it was filled in
        copy = self.model_copy()
        copy._api_key_file_error = error
        return copy


def _api_key_hint(api_key_env: str) -> str:
    shown = (
        f"${api_key_env}"
        if _UPPER_ENV_VAR_NAME.fullmatch(api_key_env)
        else "the variable yespo.api_key_env names"
    )
    return f"{shown} or yespo.api_key_file"


_LOOPBACK: Final = "127.0.0.1"


def _blank_is_loopback(value: str) -> str:
    # "" leaves it unset (deploy/.env.example), as for deliver_group_id; the server would otherwise
    # bind "" = every interface, exposing /metrics where the default exposes nothing
    return _blank_is_no_value(value) or _LOOPBACK


class ObservabilitySettings(BaseModel):
    """Metrics, health and logs."""

    model_config = _Strict

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    metrics_host: Annotated[str, AfterValidator(_blank_is_loopback)] = Field(
        default=_LOOPBACK,
        description=(
            "address the metrics and health server binds to; empty means the default, 127.0.0.1 "
            "(this host only); 0.0.0.0 binds every interface (in a container)"
        ),
    )
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    liveness_timeout_s: float = Field(
        default=60, gt=0, description="/healthz fails when a stage loop has not ticked for this long"
    )
    stall_exit_s: float = Field(
        default=600,
        ge=0,
        description=(
            "a stage loop that has not ticked for this long is stuck in a client call: the process "
            "exits with an error so that its supervisor restarts it (0: never)"
        ),
    )


_yaml_data: ContextVar[Mapping[str, Any] | None] = ContextVar("_yaml_data", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML file, below the environment in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_yaml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


_KeyPath = tuple[Any, ...]
"""A path of keys into the nested settings input: section, field, then a map's own keys."""

_map_key_moves: ContextVar[Mapping[_KeyPath, _KeyPath | None] | None] = ContextVar(
    "_map_key_moves", default=None
)
"""Where a variable's map key (lower-cased) goes: the spelling of the map's key, or None (refused)."""


class _EnvSource(PydanticBaseSettingsSource):
    """The environment (pydantic-settings' own source), each map key in its spelling (`_map_key_spelling`)."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        return _respell(self._env(), _map_key_moves.get() or {})


class Settings(BaseSettings):
    """The whole configuration. Frozen; build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        nested_model_default_partial_update=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    source: SourceSettings = SourceSettings()
    state: StateSettings = StateSettings()
    output: OutputSettings = OutputSettings()
    contact: ContactMapping = ContactMapping()
    yespo: YespoSettings = YespoSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init kwargs, then the environment, then the YAML file."""
        return (init_settings, _EnvSource(settings_cls, env_settings), _YamlSource(settings_cls))

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        names = [c.name for c in self.source.children]
        if len(set(names)) != len(names):
            raise ValueError("source.children: child names must be unique")
        if len(self.source.customers.key) > 1 and self.source.children:
            raise ValueError(
                "source.children: a child names its customer by one column (customer_key), so the "
                "customers table needs a one-column key (source.customers.key) when children are configured"
            )
        topics = self.source.topics
        if len(set(topics)) != len(topics):
            raise ValueError(
                "source.children: every source table needs its own topic (a topic is listed twice)"
            )
        if self.contact.groups is not None and self.contact.groups.child not in names:
            raise ValueError(
                f"contact.groups.child: {self.contact.groups.child!r} is not a name in source.children"
            )
        self._distinct_topics()
        return self

    def _distinct_topics(self) -> None:
        # each topic holds one kind of record, read by one reader: with output.dlq_topic equal to
        # state.changes_topic the merge stage reads its dead letters back as changes, fails on
        # them and dead-letters them again, for ever
        source = {self.source.customers.topic: "source.customers.topic"}
        for i, child in enumerate(self.source.children):
            source.setdefault(child.topic, f"source.children.{i}.topic")
        internal = {
            "state.changes_topic": self.state.changes_topic,
            "state.topic": self.state.topic,
            "output.upserts_topic": self.output.upserts_topic,
            "output.dlq_topic": self.output.dlq_topic,
            "output.audit_topic": self.output.audit_topic,
        }
        seen: dict[str, str] = {}
        for key, topic in internal.items():
            other = source.get(topic) or seen.get(topic)
            if other is not None:
                raise ValueError(f"{key}: the same topic as {other}; every topic needs a name of its own")
            seen[topic] = key


_SETTINGS_ENV: Final = env_names(Settings, ENV_PREFIX)
"""Every `YESPO_CONNECTOR_*` name that sets a field or a section (`..._KAFKA` as JSON), upper-case."""

_OPTION_ENV: Final = frozenset({ENV_PREFIX + "INSTANCE_ID"})
"""`YESPO_CONNECTOR_*` variables that are not settings: command-line options' (`run --instance-id`)."""


def _format_validation_error(exc: ValidationError, *, reported: Collection[str] = ()) -> str:
    """One `key: message` per error.

    An extra input at a key in `reported` (a mistyped variable already named) is left out.
    """
    lines = []
    for err in exc.errors():
        # a refused map key (`kafka.extra`'s) is located at `<map>.<key>.[key]`
        key = ".".join(str(p) for p in err["loc"] if p != "[key]") or "(top level)"
        if err["type"] == "extra_forbidden" and key.lower() in reported:
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if not err["loc"] and err["type"] == "value_error":
            lines.append(msg)  # a check across sections (`_cross_checks`) names its keys itself
            continue
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


_QUOTED: Final = re.compile(r"'[^']*'|\"[^\"]*\"")
"""Quoted text in a YAML parser's message: a token of the file, never shown."""

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_UNCONVERTIBLE: Final = (
    "YAML cannot read the value as its type (a date that does not exist, a !!int that is not a "
    "number, ...): quote it to make it text"
)


class _MisreadError(Exception):
    """A value YAML cannot convert, or a key written twice (then `first_line` is set): at dotted `key`."""

    def __init__(self, key: str, line: int, first_line: int | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.line = line
        self.first_line = first_line

    def describe(self, path: str | Path) -> str:
        if self.first_line is not None:
            return (
                f"written twice in config file {path} (lines {self.first_line} and {self.line}): YAML "
                "would keep only the last one; write each key once"
            )
        return f"config file {path}, line {self.line}: {_UNCONVERTIBLE}"


class _ConfigLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping key written twice and locates a value it cannot convert.

    PyYAML keeps the last of two equal keys and drops the first silently: a section appended again at
    the end of the file would replace the whole first one.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._paths: dict[int, str] = {}  # id(node) -> dotted key, for messages

    def construct_document(self, node: yaml.Node) -> Any:
        self._index(node, "")
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError):
            # `2024-02-30` read as a date, `!!int x`: the message names the key, never the value
            raise _MisreadError(self._paths.get(id(node), ""), node.start_mark.line + 1) from None

    def _index(self, node: yaml.Node, path: str) -> None:
        if id(node) in self._paths:
            return  # an alias: indexed where its anchor is
        self._paths[id(node)] = path
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, f"{path}.{i}" if path else str(i))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                self._paths.setdefault(id(key_node), path)
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                sub = f"{path}.{name}" if path else name
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = self.construct_object(key_node)  # `1` and `0x1` are the same key
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise _MisreadError(sub, line, first_line=seen[key])
                    seen[key] = line
                self._index(value_node, sub)


def _parse_yaml(text: str, path: str | Path) -> Any:
    """The file's YAML document; every error is a `ConfigError` giving a position, never the file's text."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader
    except _MisreadError as exc:
        raise ConfigError(exc.describe(path), key=exc.key or None) from None
    except yaml.reader.ReaderError as exc:
        # a character YAML does not allow (a control character): its position, not the character
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        raise ConfigError(
            f"config file {path} is not valid YAML at line {line}, column {column}: {exc.reason}"
        ) from None
    except yaml.YAMLError as exc:
        # the position only: the parser's own message quotes the line, which may hold a secret
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        # what it quotes is the file's own text (an unquoted password starting with ! or *)
        problem = _QUOTED.sub("'...'", problem)
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    except (ValueError, TypeError, OverflowError):
        # a conversion outside any one node (the loader locates those of a value)
        raise ConfigError(f"config file {path}: {_UNCONVERTIBLE}") from None


def _refuse_secrets_in_file(data: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """The API key is never read from the file (it is often committed, and copied around)."""
    yespo = data.get("yespo")
    if isinstance(yespo, dict) and "api_key" in yespo:
        hint = _api_key_hint(_raw_api_key_env(data, environ))
        raise ConfigError(
            f"not read from the config file (secrets come only from the environment or a file): remove "
            f"it and set {hint}",
            key="yespo.api_key",
        )


def load_settings(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Load the YAML file at `path` (optional), apply the environment, validate.

    Raises:
        ConfigError: the file is unreadable or not YAML, or a key is unknown or invalid; the message
            names the dotted key. Also when a `YESPO_CONNECTOR_*` variable sets nothing (a typo such
            as `YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVER`): the message names the variable, never its
            value, and the closest valid name.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        loaded = _parse_yaml(text, path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    env = os.environ if environ is None else environ
    _refuse_secrets_in_file(data, env)
    moves, refused = _map_key_spelling(data, env)
    token = _yaml_data.set(data)
    moves_token = _map_key_moves.set(moves)
    settings: Settings | None = None
    failure: str | None = None
    invalid: ValidationError | None = None
    try:
        # A given environment (tests) is applied as explicit nested values.
        settings = Settings() if environ is None else Settings(**_respell(_env_to_nested(environ), moves))
    except ValidationError as exc:
        invalid = exc
    except SettingsError as exc:
        # e.g. YESPO_CONNECTOR_SOURCE__CUSTOMERS__KEY=id where a JSON list (["id"]) is expected
        failure = _settings_error_text(exc, env)
    finally:
        _yaml_data.reset(token)
        _map_key_moves.reset(moves_token)
    # A mistyped variable would set nothing, silently; named first, as the likely cause of a failure.
    key_env = settings.yespo.api_key_env if settings is not None else _raw_api_key_env(data, env)
    unknown = unknown_env_names(env, _SETTINGS_ENV, ENV_PREFIX, others={*_OPTION_ENV, key_env}) + refused
    if invalid is not None:
        # pydantic's "extra inputs" error of a mistyped variable repeats what `unknown` says
        typos = {
            ".".join(name[len(ENV_PREFIX) :].lower().split("__"))
            for name in env
            if name.upper().startswith(ENV_PREFIX)
        }
        failure = _format_validation_error(invalid, reported=typos if unknown else ())
    if unknown or settings is None:
        raise ConfigError("; ".join([*unknown, *([failure] if failure else [])]))
    # the key file is read here, but only what needs the key fails on it (`require_api_key`): it is
    # often mounted only where the deliver stage runs
    return settings.model_copy(update={"yespo": settings.yespo._with_key_from(env)})


def _settings_error_text(exc: SettingsError, environ: Mapping[str, str]) -> str:
    """One line naming the section and the variables that may hold the bad value (never the value)."""
    match = re.search(r'field "([^"]+)"', str(exc))
    section = match.group(1) if match else None
    # the section's own variable (a whole section as JSON) and the ones below it
    whole = ENV_PREFIX + section.upper() if section else None
    prefix = whole + "__" if whole else ENV_PREFIX
    names = sorted(name for name in environ if name.upper() == whole or name.upper().startswith(prefix))
    where = f" ({', '.join(names)})" if names else ""
    return (
        f"{section or 'settings'}: an environment variable{where} does not parse: lists and maps are "
        'given as JSON (e.g. ["id"] or {"a": 1})'
    )


def _raw_api_key_env(data: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """`yespo.api_key_env` from the variable or the file, for settings that did not load."""
    names = {name.upper(): value for name, value in environ.items()}
    if ENV_PREFIX + "YESPO__API_KEY_ENV" in names:
        return names[ENV_PREFIX + "YESPO__API_KEY_ENV"]
    with contextlib.suppress(ValueError):  # the whole section as JSON
        section = json.loads(names.get(ENV_PREFIX + "YESPO", "null"))
        if isinstance(section, dict) and isinstance(section.get("api_key_env"), str):
            return str(section["api_key_env"])
    yespo = data.get("yespo")
    named = yespo.get("api_key_env") if isinstance(yespo, dict) else None
    return named if isinstance(named, str) else "YESPO_API_KEY"


def _env_to_nested(environ: Mapping[str, str]) -> dict[str, Any]:
    """The given variables that name a section, nested; like pydantic-settings, case-insensitive."""
    out: dict[str, Any] = {}
    for name, value in environ.items():
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        # the others (YESPO_CONNECTOR_INSTANCE_ID, typos) set nothing; `unknown_env_names` names typos
        if not name.upper().startswith(ENV_PREFIX) or parts[0] not in Settings.model_fields:
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


_CASE_INSENSITIVE_MAPS: Final = frozenset({"kafka.extra"})
"""Maps whose keys a variable name can spell: librdkafka's property names are lower-case."""


def _map_key_spelling(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[_KeyPath, _KeyPath | None], list[str]]:
    """Where the variables that set one key of a map put it, and a line for each one refused.

    A variable name is read lower-cased, so `..._YESPO__FIELD_IDS__BIRTHDATE` spells `birthdate`. It
    sets the key of the map (from the YAML file, else the default) equal to it case-insensitively, in
    that key's spelling. In a map of case-sensitive names (all but `_CASE_INSENSITIVE_MAPS`) a key
    that matches none, or more than one, is refused (None): the map is set whole, as JSON, instead.
    """
    moves: dict[_KeyPath, _KeyPath | None] = {}
    refused: list[str] = []
    for name, target in sorted(map_key_names(environ, _SETTINGS_ENV, ENV_PREFIX).items()):
        if target.map.key in _CASE_INSENSITIVE_MAPS:
            continue
        path = tuple(target.map.key.split("."))
        node: Any = _configured_map(data, path)
        spelled: list[Any] = []
        for depth, part in enumerate(target.keys):
            if not isinstance(node, Mapping):  # below a value: its validation names the key
                spelled += target.keys[depth:]
                break
            matches = [key for key in node if str(key).lower() == part]
            if len(matches) != 1:
                refused.append(_refused_map_key(name, target.map.key, matches))
                break
            spelled.append(matches[0])
            node = node[matches[0]]
        moves[path + target.keys] = path + tuple(spelled) if len(spelled) == len(target.keys) else None
    return moves, refused


def _refused_map_key(name: str, key: str, matches: list[Any]) -> str:
    # the names of the keys only (they are in the file or the variable's name), never a value
    whole = ENV_PREFIX + "__".join(key.split(".")).upper()
    if matches:
        found = f"more than one key of {key} ({', '.join(map(str, matches))})"
    else:
        found = f"no key of {key} in the config file (a variable name cannot spell a camelCase key)"
    return (
        f"{name}: {key}'s keys are case-sensitive and the name, read lower-cased, matches {found}: "
        f"set the whole map as JSON in {whole} instead"
    )


def _configured_map(data: Mapping[str, Any], path: _KeyPath) -> Mapping[Any, Any]:
    """The map at `path` in the YAML file's data, else its default."""
    node: Any = data
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(node, Mapping):
        return node
    default: Any = Settings.model_fields[path[0]].get_default(call_default_factory=True)
    for part in path[1:]:
        default = getattr(default, part, None)
    return default if isinstance(default, Mapping) else {}


def _respell(tree: dict[str, Any], moves: Mapping[_KeyPath, _KeyPath | None]) -> dict[str, Any]:
    """`tree` (nested input) with the value at each key path of `moves` moved to its spelling, or dropped."""
    for source, target in moves.items():
        parents: list[tuple[dict[Any, Any], Any]] = []
        node: Any = tree
        for part in source[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                node = None
                break
            parents.append((node, part))
            node = node[part]
        if not isinstance(node, dict) or source[-1] not in node:
            continue
        value = node.pop(source[-1])
        for parent, part in reversed(parents):  # no empty map left under the lower-case spelling
            if parent[part]:
                break
            del parent[part]
        if target is not None:
            node = tree
            for part in target[:-1]:
                node = node.setdefault(part, {})
            node[target[-1]] = value
    return tree
