"""The settings sources below init kwargs: the environment, then the YAML file `load_settings` read.

`load_settings` sets `yaml_data` and `map_key_moves` for the one `Settings()` call it makes; the
sources read them there. No dependency on the models: `settings.py` wires the sources in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

__all__ = ["EnvSource", "KeyPath", "YamlSource", "map_key_moves", "respell", "yaml_data"]

logger = logging.getLogger(__name__)

yaml_data: ContextVar[Mapping[str, Any] | None] = ContextVar("yaml_data", default=None)
"""The YAML file's data while `load_settings` builds the settings (None: no file)."""


class YamlSource(PydanticBaseSettingsSource):
    """The YAML file, below the environment in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """The file's value of the section `field_name` (None when the file has none)."""
        return (yaml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """The file's sections (none when `load_settings` was not given a file)."""
        return dict(yaml_data.get() or {})


KeyPath = tuple[Any, ...]
"""A path of keys into the nested settings input: section, field, then a map's own keys."""

map_key_moves: ContextVar[Mapping[KeyPath, KeyPath | None] | None] = ContextVar("map_key_moves", default=None)
"""Where a variable's map key (lower-cased) goes: the spelling of the map's key, or None (refused)."""


class EnvSource(PydanticBaseSettingsSource):
    """The environment (pydantic-settings' own source), each map key in its spelling (`map_key_moves`)."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """What pydantic-settings' environment source gives for `field_name`."""
        return self._env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        """The variables' values, nested by section, each map key moved to its spelling or dropped."""
        return respell(self._env(), map_key_moves.get() or {})


def respell(tree: dict[str, Any], moves: Mapping[KeyPath, KeyPath | None]) -> dict[str, Any]:
    """`tree` (nested input) with the value at each key path of `moves` moved to its spelling, or dropped.

    `tree` is changed in place and returned; a key path `tree` does not hold is skipped.
    """
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
