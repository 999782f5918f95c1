"""Reading the config file's YAML: a key written twice is refused, a value YAML cannot convert is located.

Every error names a line (and the dotted key) of the file, never its text, which may hold a secret.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Final

import yaml

from connector.errors import ConfigError

__all__ = ["parse_yaml"]

logger = logging.getLogger(__name__)


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


def parse_yaml(text: str, path: str | Path) -> Any:
    """The file's YAML document; every error is a `ConfigError` giving a position, never the file's text.

    Args:
        text: the file's text.
        path: the file's path, for messages only.

    Raises:
        ConfigError: `text` is not valid YAML, writes a mapping key twice (names the dotted key and
            both lines), or holds a value YAML cannot convert (names its line, and its key when known).
    """
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
