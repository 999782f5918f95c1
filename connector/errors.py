"""The connector's one exception tree, grouped by what the runner must do.

```
ConnectorError
├── ConfigError                    fail fast at start-up (names the bad key)
├── PoisonMessageError             send the record to the DLQ, commit, continue
│   ├── DecodeError                  bytes that are not a Debezium event we understand
│   │   └── UnknownSchemaError         an Avro schema id the registry does not know (404)
│   ├── MappingError                 a customer that cannot become a Yespo contact
│   └── MergeError                   a change that cannot be folded into state
├── DeliveryError                  the Yespo API did not take a request
│   ├── RetryableDeliveryError       timeouts, 5xx, 429: back off and retry
│   │   └── DeliveryInterrupted        a revocation or stop cut an attempt short: not a failure
│   ├── PermanentDeliveryError       4xx other than 408/409/429: DLQ
│   └── AuthenticationError          401/403: stop the stage, commit nothing
├── SchemaRegistryUnavailableError  the registry does not answer: wait and retry, never skip
├── KafkaError                     a broker/client failure (carries retriable/fatal flags)
├── StateError                     local state cannot be trusted: stop the process
│   └── StageStuckError              a stage loop is stuck in a client call: exit, the supervisor restarts
├── GroupActiveError               an ops command needs the stage stopped: its group has live members
└── StackError                     the local Kafka/Connect/PostgreSQL stack could not be managed
```

Errors carry their context as attributes, never customer data: no PII and no secrets in messages.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConnectorError",
    "DecodeError",
    "DeliveryError",
    "DeliveryInterrupted",
    "GroupActiveError",
    "KafkaError",
    "MappingError",
    "MergeError",
    "PermanentDeliveryError",
    "PoisonMessageError",
    "RetryableDeliveryError",
    "SchemaRegistryUnavailableError",
    "StackError",
    "StageStuckError",
    "StateError",
    "UnknownSchemaError",
]


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """The configuration is wrong; `key` is the dotted path of the offending setting."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class PoisonMessageError(ConnectorError):
    """One record cannot be processed; it goes to the DLQ with `reason` and processing continues."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeError(PoisonMessageError):
    """The bytes are not a Debezium change event this connector understands."""


class UnknownSchemaError(DecodeError):
    """The schema registry answered that it does not know `schema_id` (404): the record is poison."""

    def __init__(self, schema_id: int, reason: str | None = None) -> None:
        super().__init__(reason or f"unknown Avro schema id {schema_id}")
        self.schema_id = schema_id


class MappingError(PoisonMessageError):
    """The customer's state cannot be turned into a Yespo contact."""


class MergeError(PoisonMessageError):
    """The change cannot be folded into the customer's state."""


class DeliveryError(ConnectorError):
    """The Yespo API did not accept a request."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RetryableDeliveryError(DeliveryError):
    """Timeout, 5xx or 429: try again after `retry_after` seconds (None: use the backoff policy)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class DeliveryInterrupted(RetryableDeliveryError):
    """A revocation or a stop cut an attempt short (`BatchDelivery.interrupt`).

    The batch is left uncommitted and read again later; not a failed attempt (no backoff, never
    given up on).
    """


class PermanentDeliveryError(DeliveryError):
    """A 4xx that retrying cannot fix (other than 401/403/408/409/429), or a redirect.

    `location`: a redirect's target, kept only where it cannot carry contact data (the start-up
    account check), so a config error can name the URL to set.
    """

    def __init__(self, message: str, *, status_code: int | None = None, location: str | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.location = location


class AuthenticationError(DeliveryError):
    """401/403: the API key is wrong or lacks rights. The stage stops; nothing is committed."""


class SchemaRegistryUnavailableError(ConnectorError):
    """The schema registry did not answer; the caller waits and retries (never skips)."""


class KafkaError(ConnectorError):
    """A Kafka client or broker failure, translated from confluent_kafka at one boundary."""

    def __init__(
        self,
        message: str,
        *,
        retriable: bool = False,
        fatal: bool = False,
        txn_requires_abort: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.fatal = fatal
        self.txn_requires_abort = txn_requires_abort
        self.code = code
        """The client's error name (`MSG_SIZE_TOO_LARGE`, `_TIMED_OUT`, ...), when it gave one."""


class StateError(ConnectorError):
    """Local state cannot be trusted (restore failed, fenced producer); the process must stop."""


class StageStuckError(StateError):
    """A stage loop stopped making progress inside a client call; the process must exit.

    `stage` names it ("merge" or "deliver").
    """

    def __init__(self, message: str, stage: str) -> None:
        super().__init__(message)
        self.stage = stage


class GroupActiveError(ConnectorError):
    """A consumer group still has live members; stop the connector's stage before changing its offsets."""

    def __init__(self, group: str, members: int) -> None:
        super().__init__(
            f"consumer group {group!r} has {members} live member(s); stop the connector's stage first"
        )
        self.group = group
        self.members = members


class StackError(ConnectorError):
    """The local stack (Kafka, Connect, PostgreSQL, stand-in) could not be started or stopped."""
