"""Source positions from Debezium `source` blocks and unwrapped `__*` fields (see `SourcePosition`).

PostgreSQL: `("pg", (int(sequence[0] or 0), int(sequence[1])))` when `sequence` is present, else
`("pg-lsn", (0, lsn))`. MySQL: `("mysql", (binlog file number, pos, row))`. Incremental-snapshot rows
and anything without a log coordinate have no position (None).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from connector.models import SourcePosition

__all__ = ["flat_position", "source_position"]

logger = logging.getLogger(__name__)


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _from_sequence(sequence: Any) -> SourcePosition | None:
    if not isinstance(sequence, str):
        return None
    try:
        parts = orjson.loads(sequence)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parts, list) or len(parts) != 2:
        return None
    last_commit = _int_or_none(parts[0]) if parts[0] is not None else 0
    current = _int_or_none(parts[1])
    if last_commit is None or current is None:
        return None
    return SourcePosition("pg", (last_commit, current))


def _pg(sequence: Any, lsn: Any) -> SourcePosition | None:
    position = _from_sequence(sequence)
    if position is not None:
        return position
    lsn_value = _int_or_none(lsn)
    if lsn_value is not None:
        return SourcePosition("pg-lsn", (0, lsn_value))
    return None


def _mysql(file: Any, pos: Any, row: Any) -> SourcePosition | None:
    if not isinstance(file, str):
        return None
    _, _, number = file.rpartition(".")
    file_no = _int_or_none(number)
    pos_value = _int_or_none(pos)
    if file_no is None or pos_value is None:
        return None
    return SourcePosition("mysql", (file_no, pos_value, _int_or_none(row) or 0))


def source_position(source: Mapping[str, Any]) -> SourcePosition | None:
    """The position of an envelope from its `source` block (None when it has none)."""
    if source.get("snapshot") == "incremental":
        return None
    if "file" in source and "pos" in source:
        return _mysql(source.get("file"), source.get("pos"), source.get("row"))
    return _pg(source.get("sequence"), source.get("lsn"))


def flat_position(row: Mapping[str, Any]) -> SourcePosition | None:
    """The position of an unwrapped record from its `__*` fields (`add.fields`), None without them."""
    if row.get("__source_snapshot") == "incremental":
        return None
    if "__source_file" in row:
        return _mysql(row.get("__source_file"), row.get("__source_pos"), row.get("__source_row"))
    return _pg(row.get("__source_sequence"), row.get("__lsn", row.get("__source_lsn")))
