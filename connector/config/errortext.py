"""Config error text: a failed validation or environment parse as one line naming the wrong keys.

It names the dotted key (`kafka.commit_interval_ms: ...`) or the variables, never a value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping

from pydantic import ValidationError
from pydantic_settings import SettingsError

from connector.config.settings import ENV_PREFIX

__all__ = ["format_validation_error", "settings_error_text"]

logger = logging.getLogger(__name__)


def format_validation_error(exc: ValidationError, *, reported: Collection[str] = ()) -> str:
    """One `key: message` per error, joined with "; ".

    An extra input at a key in `reported` (a mistyped variable already named) is left out. A check
    across sections (`Settings._cross_checks`) names its keys itself and is given as it is.
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


def settings_error_text(exc: SettingsError, environ: Mapping[str, str]) -> str:
    """One line naming the section and the variables that may hold the bad value (never the value).

    For a variable pydantic-settings could not parse (a list or map not given as JSON).
    """
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
