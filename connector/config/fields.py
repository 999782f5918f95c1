"""Field types and the model config the settings sections share: strict, frozen, no blank names.

Pure declarations; the sections (`kafka.py`, `source.py`, ...) build their fields from them.
"""

from __future__ import annotations

import logging
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

__all__ = ["STRICT", "NonBlank", "TopicName", "blank_is_no_value"]

logger = logging.getLogger(__name__)

STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf/.nan: no setting means them
"""Every section's `model_config`: unknown keys refused, frozen, no infinities or NaN."""


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]
"""A name or address that means nothing when empty or only spaces (and fails only later, obscurely)."""


def blank_is_no_value(value: str | None) -> str | None:
    """`value` as given, for an optional setting where "" means the default.

    Raises:
        ValueError: `value` is only spaces (a mistake, not a way to leave it unset).
    """
    # "" is how an environment file leaves an optional setting unset (deploy/.env.example), and it
    # means the default; only spaces are a mistake
    if value and not value.strip():
        raise ValueError("must not be blank (leave it unset, or empty, for the default)")
    return value


TopicName = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
"""A Kafka topic name: 1 to 249 of letters, digits, `.`, `_` and `-` (what the broker accepts)."""
