"""`load_settings`: the YAML file, overridden by the environment, validated into `Settings`.

The only module of `connector/` that reads `os.environ`. It refuses a secret in the file and a
`YESPO_CONNECTOR_*` variable that sets nothing (a typo), and spells a variable's map key as the map does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError
from pydantic_settings import SettingsError

from connector.config.errortext import format_validation_error, settings_error_text
from connector.config.settings import ENV_PREFIX, Settings
from connector.config.settings_sources import KeyPath, map_key_moves, respell, yaml_data
from connector.config.yaml_file import parse_yaml
from connector.config.yespo import key_hint_for
from connector.envnames import env_names, map_key_names, unknown_env_names
from connector.errors import ConfigError

__all__ = ["load_settings"]

logger = logging.getLogger(__name__)


_SETTINGS_ENV: Final = env_names(Settings, ENV_PREFIX)
"""Every `YESPO_CONNECTOR_*` name that sets a field or a section (`..._KAFKA` as JSON), upper-case."""

_OPTION_ENV: Final = frozenset({ENV_PREFIX + "INSTANCE_ID"})
"""`YESPO_CONNECTOR_*` variables that are not settings: command-line options' (`run --instance-id`)."""


def _refuse_secrets_in_file(data: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """The API key is never read from the file (it is often committed, and copied around)."""
    yespo = data.get("yespo")
    if isinstance(yespo, dict) and "api_key" in yespo:
        hint = key_hint_for(_raw_api_key_env(data, environ))
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
        loaded = parse_yaml(text, path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    env = os.environ if environ is None else environ
    _refuse_secrets_in_file(data, env)
    moves, refused = _map_key_spelling(data, env)
    token = yaml_data.set(data)
    moves_token = map_key_moves.set(moves)
    settings: Settings | None = None
    failure: str | None = None
    invalid: ValidationError | None = None
    try:
        # A given environment (tests) is applied as explicit nested values.
        settings = Settings() if environ is None else Settings(**respell(_env_to_nested(environ), moves))
    except ValidationError as exc:
        invalid = exc
    except SettingsError as exc:
        # e.g. YESPO_CONNECTOR_SOURCE__CUSTOMERS__KEY=id where a JSON list (["id"]) is expected
        failure = settings_error_text(exc, env)
    finally:
        yaml_data.reset(token)
        map_key_moves.reset(moves_token)
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
        failure = format_validation_error(invalid, reported=typos if unknown else ())
    if unknown or settings is None:
        raise ConfigError("; ".join([*unknown, *([failure] if failure else [])]))
    # the key file is read here, but only what needs the key fails on it (`require_api_key`): it is
    # often mounted only where the deliver stage runs
    return settings.model_copy(update={"yespo": settings.yespo.with_key_from(env)})


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
) -> tuple[dict[KeyPath, KeyPath | None], list[str]]:
    """Where the variables that set one key of a map put it, and a line for each one refused.

    A variable name is read lower-cased, so `..._YESPO__FIELD_IDS__BIRTHDATE` spells `birthdate`. It
    sets the key of the map (from the YAML file, else the default) equal to it case-insensitively, in
    that key's spelling. In a map of case-sensitive names (all but `_CASE_INSENSITIVE_MAPS`) a key
    that matches none, or more than one, is refused (None): the map is set whole, as JSON, instead.
    """
    moves: dict[KeyPath, KeyPath | None] = {}
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


def _configured_map(data: Mapping[str, Any], path: KeyPath) -> Mapping[Any, Any]:
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
