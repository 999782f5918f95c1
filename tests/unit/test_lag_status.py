from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import KafkaError as ConsumerKafkaError
from rich.console import Console

from connector.commands.lag import render_json, render_table
from connector.ops import lag as lag_module
from connector.ops.lag import GroupLag, LagReader, PartitionLag
from connector.ops.lag_status import LagStatus, LagWindows, PartitionSample, evaluate_status, worst_status
from connector.ops.stages import StageGroup

OK, WARN, STALLED, STOPPED, ERROR = (
    LagStatus.OK,
    LagStatus.WARN,
    LagStatus.STALLED,
    LagStatus.STOPPED,
    LagStatus.ERROR,
)


def s(committed: int | None, lag: int | None, members: int = 1, error: str | None = None) -> PartitionSample:
    return PartitionSample(committed=committed, lag=lag, members=members, error=error)


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        pytest.param([], ERROR, id="no-samples"),
        pytest.param([s(10, 0)], OK, id="caught-up"),
        pytest.param([s(10, 5)], OK, id="one-sample-with-members"),
        pytest.param([s(10, 5, members=0)], STOPPED, id="no-members-with-lag"),
        pytest.param([s(10, 0, members=0)], OK, id="no-members-no-lag"),
        pytest.param([s(10, 5), s(None, None, error="timeout")], ERROR, id="latest-errored"),
        pytest.param([s(10, 5), s(12, None)], ERROR, id="latest-lag-unknown"),
        pytest.param([s(10, 5), s(10, 8), s(10, 9)], STALLED, id="committed-not-moving"),
        pytest.param([s(10, 5), s(10, 5)], STALLED, id="stalled-same-lag"),
        pytest.param([s(None, 5), s(None, 7)], STALLED, id="stalled-never-committed"),
        pytest.param([s(10, 5), s(12, 6), s(15, 9)], WARN, id="lag-growing"),
        pytest.param([s(10, 5), s(12, 5), s(15, 9)], WARN, id="lag-non-decreasing"),
        pytest.param([s(10, 5), s(12, 8), s(15, 7)], OK, id="lag-shrank-once"),
        pytest.param([s(10, 9), s(20, 5), s(30, 2)], OK, id="catching-up"),
        pytest.param([s(10, 5), s(12, 5)], OK, id="steady-lag-moving"),
        pytest.param([s(10, 0), s(10, 3), s(10, 6)], OK, id="zero-lag-in-window"),
        pytest.param([s(10, 5), s(10, 6), s(10, 7, members=0)], STOPPED, id="stopped-beats-stalled"),
        pytest.param([s(None, None, error="x"), s(10, 5), s(10, 6)], STALLED, id="old-errors-ignored"),
        pytest.param([s(None, None, error="x"), s(10, 5)], OK, id="one-good-sample-after-error"),
    ],
)
def test_evaluate_status(window: list[PartitionSample], expected: LagStatus) -> None:
    assert evaluate_status(window) is expected


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], OK),
        ([OK, OK], OK),
        ([OK, WARN], WARN),
        ([STALLED, WARN, OK], STALLED),
        ([STALLED, STOPPED], STOPPED),
        ([STOPPED, ERROR, OK], ERROR),
    ],
)
def test_worst_status(statuses: list[LagStatus], expected: LagStatus) -> None:
    assert worst_status(statuses) is expected


def test_windows_keep_the_last_samples_per_key() -> None:
    windows = LagWindows(size=3)
    assert windows.add("a", s(10, 5)) is OK
    assert windows.add("a", s(10, 6)) is STALLED
    assert windows.add("b", s(1, 1)) is OK  # separate key, separate window
    assert windows.add("a", s(11, 7)) is WARN
    assert windows.add("a", s(12, 8)) is WARN
    # the first three samples (incl. committed=10 twice) left the window: 11, 12, 13 moving, lag growing
    assert windows.add("a", s(13, 9)) is WARN
    assert windows.add("a", s(13, 9)) is WARN  # 12, 13, 13: moving overall, lag 8 -> 9
    assert windows.add("a", s(13, 9)) is STALLED  # 13, 13, 13
    with pytest.raises(ValueError):
        LagWindows(size=0)


@pytest.mark.parametrize(
    ("row", "pending"),
    [
        (PartitionLag("t", 0, committed=5, start=0, end=9, lag=4, lag_seconds=1.0), 4),
        (PartitionLag("t", 0, committed=None, start=3, end=9, lag=None, lag_seconds=2.0), 6),
        (PartitionLag("t", 0, committed=12, start=0, end=9, lag=-3, lag_seconds=0.0), 0),
        (PartitionLag("t", -1, None, None, None, None, None, error="topic does not exist"), None),
        # committed after a transaction's last record: one marker behind the end, nothing to read
        (PartitionLag("t", 0, committed=6, start=0, end=7, lag=1, lag_seconds=0.0, drained=True), 0),
    ],
)
def test_pending_counts_the_backlog_without_a_commit(row: PartitionLag, pending: int | None) -> None:
    assert row.pending == pending


class _Eof:
    """What the read_committed probe gets when only a transaction marker is left."""

    def topic(self) -> str:
        return "upserts"

    def partition(self) -> int:
        return 0

    def error(self) -> Any:
        return ConsumerKafkaError(ConsumerKafkaError._PARTITION_EOF)


class _Probe:
    def __init__(self, conf: Any) -> None:
        pass

    def assign(self, partitions: Any) -> None:
        pass

    def poll(self, timeout: float) -> _Eof:
        return _Eof()

    def unassign(self) -> None:
        pass

    def close(self) -> None:
        pass


def one_partition_reader(
    monkeypatch: pytest.MonkeyPatch, probe: type, *, committed: int, start: int, end: int
) -> LagReader:
    """A LagReader of topic `upserts` (one partition, a stable group of one) on a fake cluster."""
    monkeypatch.setattr(lag_module, "Consumer", probe)
    reader = LagReader({"bootstrap.servers": "unused:1"})
    monkeypatch.setattr(reader, "_partitions", lambda topics: ([("upserts", 0)], []))
    monkeypatch.setattr(reader, "_describe_group", lambda group: ("STABLE", 1))
    monkeypatch.setattr(reader, "_committed", lambda group, parts: {("upserts", 0): committed})

    def offsets(parts: Any, spec: Any) -> dict[tuple[str, int], int]:
        return {("upserts", 0): end if "LATEST" in repr(spec).upper() else start}

    monkeypatch.setattr(reader, "_list_offsets", offsets)
    return reader


def test_an_idle_group_one_marker_behind_the_end_is_ok_not_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages commit the offset after a transaction's last record; the commit marker follows it."""
    reader = one_partition_reader(monkeypatch, _Probe, committed=6, start=0, end=7)
    windows = LagWindows(10)
    statuses = []
    for _ in range(3):
        group = reader.read(StageGroup("deliver", "g-deliver", ("upserts",)))
        (row,) = group.partitions
        assert (row.lag, row.lag_seconds, row.drained, row.pending) == (1, 0.0, True, 0)
        statuses += [windows.add(key, sample) for key, sample in group.samples()]
    assert statuses == [LagStatus.OK] * 3


def sample_groups() -> list[GroupLag]:
    merge = GroupLag(
        stage="merge",
        group="g-merge",
        state="EMPTY",
        members=0,
        partitions=(
            PartitionLag("src", 0, committed=3, start=0, end=10, lag=7, lag_seconds=12.5),
            PartitionLag("src", 1, committed=4, start=0, end=4, lag=0, lag_seconds=0.0),
            PartitionLag("gone", -1, None, None, None, None, None, error="topic does not exist"),
        ),
        taken_at=1_795_963_244.0,
    )
    deliver = GroupLag(
        "deliver", "g-deliver", "UNKNOWN", 0, (), 1_795_963_244.0, error="cannot describe: timed out"
    )
    return [merge, deliver]


def statuses_of(groups: list[GroupLag]) -> dict[tuple[str, str, int], LagStatus]:
    windows = LagWindows()
    return {key: windows.add(key, sample) for g in groups for key, sample in g.samples()}


def test_json_output_shape() -> None:
    groups = sample_groups()
    doc = json.loads(render_json(groups, statuses_of(groups)))
    assert doc["taken_at"] == "2026-11-29T14:40:44Z"
    merge, deliver = doc["groups"]
    assert (merge["group"], merge["status"], merge["members"]) == ("g-merge", "ERROR", 0)
    src0, src1, gone = merge["partitions"]
    assert src0 == {
        "topic": "src",
        "partition": 0,
        "committed": 3,
        "start": 0,
        "end": 10,
        "lag": 7,
        "lag_seconds": 12.5,
        "status": "STOPPED",
        "error": None,
    }
    assert src1["status"] == "OK" and gone["status"] == "ERROR"
    assert deliver["status"] == "ERROR" and deliver["error"] == "cannot describe: timed out"


def test_table_output_lists_every_partition() -> None:
    groups = sample_groups()
    console = Console(width=200, record=True)
    console.print(render_table(groups, statuses_of(groups)))
    text = console.export_text()
    assert "merge  group g-merge  state EMPTY  members 0  status ERROR" in text
    assert "topic does not exist" in text and "cannot describe: timed out" in text
    row = next(line for line in text.splitlines() if line.startswith("src") and " 7 " in line)
    assert row.split() == ["src", "0", "3", "10", "7", "12.5s", "STOPPED"]


def test_a_group_behind_the_log_start_is_probed_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deleted what the group had not read: assigned below the start, the probe would jump to
    the end (no auto.offset.reset) and report no lag in seconds."""
    assigned: list[tuple[str, int, int]] = []

    class Probe(_Probe):
        def assign(self, partitions: Any) -> None:
            assigned.extend((tp.topic, tp.partition, tp.offset) for tp in partitions)

    reader = one_partition_reader(monkeypatch, Probe, committed=2, start=5, end=9)
    (row,) = reader.read(StageGroup("deliver", "g-deliver", ("upserts",))).partitions
    assert assigned == [("upserts", 0, 5)]
    assert row.lag == 7
