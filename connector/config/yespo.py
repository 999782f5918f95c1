"""The `yespo:` section: the contacts API, its key (never from the file) and how the deliver stage calls it.

`load_settings` reads the key from the variable `api_key_env` names, else from `api_key_file`
(`YespoSettings.with_key_from`); only what needs it fails without it (`require_api_key`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator

from connector.config.fields import STRICT, NonBlank
from connector.errors import ConfigError
from connector.normalize import Invalid, normalize_time_zone

__all__ = ["CONTACT_ZONE", "YespoSettings", "key_hint_for"]

logger = logging.getLogger(__name__)


_ENV_VAR_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UPPER_ENV_VAR_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]*")


CONTACT_ZONE: Final = "contact"
"""`yespo.datetime_zone`'s default: timestamps in each contact's own time zone."""


class YespoSettings(BaseModel):
    """The Yespo contacts API and how the deliver stage calls it."""

    model_config = STRICT

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
        return key_hint_for(self.api_key_env)

    def with_key_from(self, environ: Mapping[str, str]) -> YespoSettings:
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


def key_hint_for(api_key_env: str) -> str:
    """Where the key comes from, for error messages: `$YESPO_API_KEY or yespo.api_key_file`.

    Also for settings that did not load (`YespoSettings.api_key_hint` is the loaded settings' own):
    the variable's name `api_key_env` is shown only when it looks like one (upper case), so a key
    pasted there by mistake is never repeated.
    """
    shown = (
        f"${api_key_env}"
        if _UPPER_ENV_VAR_NAME.fullmatch(api_key_env)
        else "the variable yespo.api_key_env names"
    )
    return f"{shown} or yespo.api_key_file"
