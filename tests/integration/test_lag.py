from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from connector.ops.lag import LagReader
from connector.ops.stages import StageGroup
from tests.integration.ops_helpers import LiveMember, commit, describe_group, produce, run_cli, write_config

pytestmark = pytest.mark.integration

Rows = dict[tuple[str, int], dict[str, object]]


def rows_of(group: dict[str, object]) -> Rows:
    return {(p["topic"], p["partition"]): p for p in group["partitions"]}  # type: ignore[attr-defined,index]


def test_lag_matches_kafka_consumer_groups_for_both_stages(
    kafka_bootstrap: str,
    create_topic: Callable[..., str],
    unique_topic: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = create_topic(unique_topic("src"), 3)
    changes = create_topic(unique_topic("chg"), 1)
    upserts = create_topic(unique_topic("ups"), 2)
    merge_group, deliver_group = unique_topic("g-merge"), unique_topic("g-deliver")
    # Committed transactions; every transaction leaves a commit marker in each partition it wrote.
    produce(kafka_bootstrap, source, [{0: 5, 1: 3}, {0: 2, 1: 4}])  # p0: 0-4 m5 6-7 m8; p2 empty
    produce(kafka_bootstrap, upserts, [{0: 6}, {1: 1}, {1: 1}])  # p0: 0-5 m6; p1: 0 m1 2 m3
    # The merge group runs (a live member consumed everything, committed part); the deliver group is
    # stopped, its offsets committed earlier (p0 right before a commit marker: only the marker is left).
    member = LiveMember(kafka_bootstrap, merge_group, [source])
    try:
        assert member.consume_all(expected=14) == 14, member.per_partition
        member.commit({(source, 0): 3, (source, 1): 6})
        commit(kafka_bootstrap, deliver_group, {(upserts, 0): 6, (upserts, 1): 2})
        config = write_config(
            tmp_path / "connector.yaml",
            kafka_bootstrap,
            group=merge_group,
            deliver_group=deliver_group,
            source=source,
            changes=changes,
            upserts=upserts,
        )
        code, out, err = run_cli(capsys, "lag", "--config", str(config), "--json")
        assert code == 0, err
        tool = {merge_group: describe_group(kafka_bootstrap, merge_group)}
    finally:
        member.close()
    tool[deliver_group] = describe_group(kafka_bootstrap, deliver_group)

    doc = json.loads(out)
    merge, deliver = doc["groups"]
    assert (merge["stage"], merge["group"], merge["members"], merge["state"]) == (
        "merge",
        merge_group,
        1,
        "STABLE",
    )
    assert (deliver["stage"], deliver["group"], deliver["members"]) == ("deliver", deliver_group, 0)
    for group in (merge, deliver):
        ours = rows_of(group)
        theirs = tool[group["group"]]
        assert theirs, f"the tool reported nothing for {group['group']}"
        for key, (current, log_end, lag) in theirs.items():
            row = ours[key]
            assert (row["committed"], row["end"], row["lag"]) == (current, log_end, lag), key
    # what the tool lists, by construction of the test data
    assert tool[merge_group] == {(source, 0): (3, 9, 6), (source, 1): (6, 9, 3), (source, 2): (None, 0, None)}
    assert tool[deliver_group] == {(upserts, 0): (6, 7, 1), (upserts, 1): (2, 4, 2)}
    # partitions the tool omits (no commit, not assigned) are still listed by `lag`
    assert rows_of(merge)[(changes, 0)] | {"status": None} == {
        "topic": changes,
        "partition": 0,
        "committed": None,
        "start": 0,
        "end": 0,
        "lag": None,
        "lag_seconds": 0.0,
        "status": None,
        "error": None,
    }
    # lag seconds: the age of the oldest unconsumed record; a commit marker alone is not a record
    ups = rows_of(deliver)
    assert ups[(upserts, 0)]["lag_seconds"] == 0.0
    assert 0.0 < ups[(upserts, 1)]["lag_seconds"] < 300  # type: ignore[operator]
    assert 0.0 < rows_of(merge)[(source, 0)]["lag_seconds"] < 300  # type: ignore[operator]
    # one sample: a live group is OK; a stopped group with lag is STOPPED, except on a partition where
    # only the commit marker is left (lag 1 as the tool counts it, nothing to read: drained)
    assert merge["status"] == "OK"
    assert (deliver["status"], ups[(upserts, 0)]["status"], ups[(upserts, 1)]["status"]) == (
        "STOPPED",
        "OK",
        "STOPPED",
    )


def test_end_is_the_last_stable_offset_while_a_transaction_is_open(
    kafka_bootstrap: str, create_topic: Callable[..., str], unique_topic: Callable[..., str]
) -> None:
    topic = create_topic(unique_topic("open-txn"), 1)
    group = unique_topic("g")
    produce(kafka_bootstrap, topic, [{0: 3}])  # 0-2, marker 3: LSO = HW = 4
    commit(kafka_bootstrap, group, {(topic, 0): 1})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"open-{topic}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for _ in range(2):
        producer.produce(topic, b"uncommitted", partition=0)
    producer.flush(30)
    sg = StageGroup("deliver", group, (topic,))
    with LagReader({"bootstrap.servers": kafka_bootstrap}) as reader:
        [row] = reader.read(sg).partitions
        # read_committed: the end is the LSO (4); kafka-consumer-groups shows the high watermark (6)
        assert (row.committed, row.end, row.lag) == (1, 4, 3)
        assert describe_group(kafka_bootstrap, group)[(topic, 0)] == (1, 6, 5)
        producer.abort_transaction(30)  # abort marker at 6: LSO = HW = 7 again
        [row] = reader.read(sg).partitions
        assert (
            describe_group(kafka_bootstrap, group)[(topic, 0)]
            == (row.committed, row.end, row.lag)
            == (1, 7, 6)
        )


def test_lag_seconds_grow_while_nothing_consumes(
    kafka_bootstrap: str, create_topic: Callable[..., str], unique_topic: Callable[..., str]
) -> None:
    topic = create_topic(unique_topic("idle"), 2)
    group = unique_topic("g")
    produced_at = time.time()
    produce(kafka_bootstrap, topic, [{0: 3}])
    commit(kafka_bootstrap, group, {(topic, 0): 0, (topic, 1): 0})
    sg = StageGroup("merge", group, (topic,))
    with LagReader({"bootstrap.servers": kafka_bootstrap}) as reader:
        first = {p.partition: p for p in reader.read(sg).partitions}
        time.sleep(2.0)
        second = {p.partition: p for p in reader.read(sg).partitions}
    assert first[0].lag == second[0].lag == 4
    assert first[0].lag_seconds is not None and second[0].lag_seconds is not None
    assert first[0].lag_seconds <= time.time() - produced_at + 1
    assert 1.5 <= second[0].lag_seconds - first[0].lag_seconds <= 5
    assert first[1].lag == second[1].lag == 0 and first[1].lag_seconds == second[1].lag_seconds == 0.0


def test_watch_reports_stalled_with_growing_seconds_and_stops_on_ctrl_c(
    kafka_bootstrap: str, create_topic: Callable[..., str], unique_topic: Callable[..., str], tmp_path: Path
) -> None:
    source = create_topic(unique_topic("src"), 1)
    changes = create_topic(unique_topic("chg"), 1)
    upserts = create_topic(unique_topic("ups"), 1)
    group = unique_topic("g")
    produce(kafka_bootstrap, source, [{0: 2}])
    commit(kafka_bootstrap, group, {(source, 0): 0})
    config = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        group=group,
        deliver_group=unique_topic("gd"),
        source=source,
        changes=changes,
        upserts=upserts,
    )
    member = LiveMember(kafka_bootstrap, group, [source])  # joined, but never commits: a stuck stage
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector", "lag", "--config", str(config), "--json", "--watch", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        docs = [json.loads(proc.stdout.readline()) for _ in range(3)]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        member.close()
    assert proc.returncode == 0, err
    rows = [rows_of(d["groups"][0])[(source, 0)] for d in docs]
    assert [r["lag"] for r in rows] == [3, 3, 3]
    assert [r["status"] for r in rows] == ["OK", "STALLED", "STALLED"]
    seconds = [r["lag_seconds"] for r in rows]
    assert seconds[0] < seconds[1] < seconds[2]
