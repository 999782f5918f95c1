"""Source positions from Debezium `source` blocks and unwrapped `__*` fields (see `SourcePosition`).

PostgreSQL: `("pg", (int(sequence[0]), int(sequence[1])))` when `sequence` is present (a null
`sequence[0]`: 0 for snapshot reads, `sequence[1]` for streamed changes), else `("pg-lsn", (0, lsn))`.
A blocking snapshot's reads carry the streaming offset, `sequence = [last commit, LSN]` (Debezium
reuses it for on-demand snapshots), and come out as such a pair, as the C fast path writes them too;
merge ranks them as reads, `(0, last commit)` (`merge._ranked`).
MySQL: `("mysql", (binlog file number, pos, row))`. Incremental-snapshot rows and anything without a
log coordinate have no position (None).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from connector.models import SourcePosition

__all__ = ["SNAPSHOT_READS", "flat_position", "source_position"]

logger = logging.getLogger(__name__)

SNAPSHOT_READS: Final = frozenset(
    {True, "true", "first", "first_in_data_collection", "last_in_data_collection", "last"}
)
"""`source.snapshot` of an initial or blocking snapshot read (`incremental` rows have no position)."""


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not "²", which int() refuses
        return int(value)
    return None


def _from_sequence(sequence: Any, snapshot: Any) -> SourcePosition | None:
    # `sequence` is a JSON array text such as `["24023119","24023128"]` or `[null,"24000000"]`;
    # split it by hand: this runs for every event.
    if type(sequence) is not str:
        return None
    first, comma, second = sequence.strip("[] ").partition(",")
    if not comma:
        return None
    first = first.strip(' "')
    second = second.strip(' "')
    try:
        change = int(second)
        if first != "null":
            return SourcePosition("pg", (int(first), change))
    except ValueError:
        return None
    # No previous commit LSN. Snapshot reads rank below everything streamed after them: 0. A
    # streamed change (the first transaction after a start without a commit position) takes its
    # own LSN: 0 would rank it below the snapshot it follows when it began before the snapshot
    # point (its LSN is then smaller), and below every position from before a restart that lost
    # the offsets, and merge would skip it as stale. Its LSN is below the next transaction's
    # previous commit, so emission order is kept.
    read = (snapshot is True or type(snapshot) is str) and snapshot in SNAPSHOT_READS
    return SourcePosition("pg", (0 if read else change, change))


def _pg(sequence: Any, lsn: Any, snapshot: Any) -> SourcePosition | None:
    position = _from_sequence(sequence, snapshot)
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
    position = _from_sequence(source.get("sequence"), source.get("snapshot"))
    if position is not None:
        return position
    lsn = _int_or_none(source.get("lsn"))
    return SourcePosition("pg-lsn", (0, lsn)) if lsn is not None else None


def _field(row: Mapping[str, Any], name: str) -> Any:
    """A source field added as `source.<name>` (-> `__source_<name>`) or as `<name>` (-> `__<name>`)."""
    value = row.get("__source_" + name)
    return row.get("__" + name) if value is None else value


def flat_position(row: Mapping[str, Any]) -> SourcePosition | None:
    """The position of an unwrapped record from its `__*` fields (`add.fields`), None without them."""
    snapshot = _field(row, "snapshot")
    if snapshot == "incremental":
        return None
    file = _field(row, "file")
    if file is not None:
        return _mysql(file, _field(row, "pos"), _field(row, "row"))
    return _pg(_field(row, "sequence"), _field(row, "lsn"), True if row.get("__op") == "r" else snapshot)
