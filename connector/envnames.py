"""Which `YESPO_CONNECTOR_*` environment variable names set something, and what a mistyped one meant.

Pure: it walks the settings model and is handed the names; `config/loading.py` reads the environment.
"""

from __future__ import annotations

import difflib
import logging
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["EnvName", "MapKey", "env_names", "is_service_link", "map_key_names", "unknown_env_names"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EnvName:
    """The setting an environment variable name sets.

    Attributes:
        key: its dotted path (`kafka.extra`, `contact.firstName`).
        kind: "section" (a nested model: its fields below it, or the whole section as JSON),
            "map" (a free-form map: any key below it is the map's own), or "value" (nothing below it).
    """

    key: str
    kind: Literal["section", "map", "value"]


@dataclass(frozen=True, slots=True)
class MapKey:
    """The map a variable sets one key of, and that key's path below it (lower-case, one part per `__`)."""

    map: EnvName
    keys: tuple[str, ...]


def env_names(model: type[BaseModel], prefix: str) -> dict[str, EnvName]:
    """Every variable name that sets a field or a section of `model`, upper-case, by name."""
    out: dict[str, EnvName] = {}
    _walk(model, prefix, "", out)
    return out


def _walk(model: type[BaseModel], name: str, key: str, out: dict[str, EnvName]) -> None:
    for field_name, field in model.model_fields.items():
        sub_name = name + field_name.upper()
        sub_key = f"{key}.{field_name}" if key else field_name
        annotation = _without_none(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out[sub_name] = EnvName(sub_key, "section")
            _walk(annotation, sub_name + "__", sub_key, out)
        elif get_origin(annotation) in (dict, Mapping):
            out[sub_name] = EnvName(sub_key, "map")
        else:
            out[sub_name] = EnvName(sub_key, "value")


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


_SERVICE_LINK: Final = re.compile(
    r".*(_SERVICE_HOST|_SERVICE_PORT(_[A-Z0-9_]+)?|_PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)"
)
_SERVICE_LINK_URL: Final = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)


def is_service_link(name: str, value: str | None) -> bool:
    """True for a variable Kubernetes injects for a Service (`<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT`...).

    A Service named `yespo-connector-metrics` puts `YESPO_CONNECTOR_METRICS_SERVICE_HOST`,
    `YESPO_CONNECTOR_METRICS_PORT=tcp://10.0.0.1:9464`, `..._PORT_9464_TCP_ADDR`, ... into every pod
    of its namespace (unless `enableServiceLinks: false`). Settings names always have a `__`; these
    never do. A bare `<SERVICE>_PORT` counts only with its `tcp://host:port` value, so that a typo
    such as `YESPO_CONNECTOR_OBSERVABILITY_METRICS_PORT=9464` is still reported.
    """
    upper = name.upper()
    if "__" in upper:
        return False
    if _SERVICE_LINK.fullmatch(upper) is not None:
        return True
    return upper.endswith("_PORT") and value is not None and _SERVICE_LINK_URL.match(value) is not None


def unknown_env_names(
    names: Iterable[str] | Mapping[str, str],
    known: Mapping[str, EnvName],
    prefix: str,
    *,
    others: Iterable[str] = (),
) -> list[str]:
    """One line for each `prefix`ed name that sets nothing; it names the variable, never its value.

    Names are compared with `known` case-insensitively (as pydantic-settings reads them; the names
    below a map are its own keys), and with `others` (variables read by other code, e.g. a
    command-line option) exactly, as `os.environ` is. A line suggests the closest valid name.
    Kubernetes' service-link variables are not ours (`is_service_link`; given a mapping, the value
    of a bare `..._PORT` tells).
    """
    exact = set(others)
    values: Mapping[str, str] = names if isinstance(names, Mapping) else {}
    lines = []
    for name in sorted(names):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known or name in exact:
            continue
        if is_service_link(name, values.get(name)):
            continue
        parts = upper[len(prefix) :].split("__")
        parents = [prefix + "__".join(parts[:i]) for i in range(1, len(parts))]
        kinds = {known[p].kind: p for p in reversed(parents) if p in known}
        if "map" in kinds:
            continue  # a key of a free-form map (kafka.extra, contact.fields, ...)
        if "value" in kinds:
            whole = kinds["value"]
            lines.append(f"{name}: {known[whole].key} has no keys below it (set {whole}; a list as JSON)")
            continue
        lines.append(f"{name}: not a setting{_suggestion(upper, known, exact, prefix)}")
    return lines


def map_key_names(names: Iterable[str], known: Mapping[str, EnvName], prefix: str) -> dict[str, MapKey]:
    """The `prefix`ed names that set one key of a free-form map (`..._YESPO__FIELD_IDS__BIRTHDATE`), by name.

    Names are compared case-insensitively, and the keys are lower-cased, as pydantic-settings reads
    them: a variable name cannot tell `birthDate` from `birthdate`.
    """
    out: dict[str, MapKey] = {}
    for name in names:
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known:
            continue
        parts = name[len(prefix) :].split("__")
        for end in range(1, len(parts)):
            setting = known.get(prefix + "__".join(parts[:end]).upper())
            if setting is not None and setting.kind == "map":
                out[name] = MapKey(setting, tuple(p.lower() for p in parts[end:]))
                break
    return out


def _suggestion(upper: str, known: Mapping[str, EnvName], others: set[str], prefix: str) -> str:
    # compared without the prefix that every candidate shares, which would make any two names look alike
    candidates = {n[len(prefix) :]: n for n in [*known, *others] if n.startswith(prefix)}
    # the whole name first, then without its last `__` parts (a map's own keys follow a mistyped map)
    parts = upper[len(prefix) :].split("__")
    match: list[str] = []
    for end in range(len(parts), 0, -1):
        match = difflib.get_close_matches("__".join(parts[:end]), list(candidates), n=1, cutoff=0.75)
        if match:
            break
    if not match:
        return ""
    best = candidates[match[0]]
    setting = known.get(best)
    return f" (did you mean {best}" + (f", i.e. {setting.key}" if setting is not None else "") + "?)"
