"""rebuild-state and resync abort their transaction when they fail before committing it.

Left open, it would hold read_committed readers of the state (and upserts) partitions behind it
until the broker's transaction timeout: a merge stage that just joined could not finish restoring.
"""

from __future__ import annotations

from typing import Any

import pytest

from connector.config import load_settings
from connector.errors import GroupActiveError, KafkaError
from connector.ops import rebuild, resync
from connector.ops.resync_decision import ResyncDecision
from tests.unit.test_config import REPO_EXAMPLE


class _Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, **kw: Any) -> None:
        self.calls.append("produce")

    def poll(self, t: float) -> int:
        return 0

    def abort_transaction(self, *a: Any) -> None:
        self.calls.append("abort")

    def commit_transaction(self, *a: Any) -> None:
        self.calls.append("commit")

    def send_offsets_to_transaction(self, *a: Any) -> None:
        self.calls.append("offsets")

    def flush(self, t: float) -> int:
        self.calls.append("flush")
        return 0


class _Fence:
    """A merge stage joins while the tombstones are written: check() raises, as GroupFence.check does."""

    group = "yespo-connector"

    def __init__(self, settings: Any) -> None:
        self.closed = False

    def check(self) -> None:
        raise GroupActiveError(self.group, 1)

    def close(self) -> None:
        self.closed = True


def _rig(monkeypatch: pytest.MonkeyPatch, producer: _Producer, produce: Any = None) -> None:
    monkeypatch.setattr(rebuild, "AdminClient", lambda conf: object())
    monkeypatch.setattr(rebuild, "live_members", lambda admin, group: 0)
    monkeypatch.setattr(rebuild, "ensure_topics", lambda *a, **k: None)
    monkeypatch.setattr(rebuild, "GroupFence", _Fence)
    monkeypatch.setattr(rebuild.StateScanner, "partition_ids", staticmethod(lambda admin, t: [(t, 0)]))
    monkeypatch.setattr(rebuild, "wait_until_stable", lambda *a, **k: None)
    monkeypatch.setattr(rebuild, "_scan", lambda s, summary, p, f: {0: [f"k{i}" for i in range(10_000)]})
    monkeypatch.setattr(rebuild, "plan_offsets", lambda *a, **k: ())
    monkeypatch.setattr(rebuild, "transactional_producer", lambda *a, **k: producer)
    if produce is not None:
        monkeypatch.setattr(rebuild, "produce", produce)


def test_rebuild_aborts_its_transaction_when_a_merge_stage_joins_mid_tombstones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    producer = _Producer()
    _rig(monkeypatch, producer)
    with pytest.raises(GroupActiveError):
        rebuild.run_rebuild(load_settings(REPO_EXAMPLE))
    assert producer.calls.count("produce") == 10_000
    # not left open: it would hold the state topic's readers (the joining stage's restore) behind it
    assert producer.calls[-2:] == ["abort", "flush"]
    assert "commit" not in producer.calls


def test_rebuild_aborts_its_transaction_when_a_produce_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = _Producer()

    def failing_produce(p: Any, topic: str, **kw: Any) -> None:
        raise KafkaError("producer queue still full after 30 s", txn_requires_abort=True)

    _rig(monkeypatch, producer, failing_produce)
    with pytest.raises(KafkaError):
        rebuild.run_rebuild(load_settings(REPO_EXAMPLE))
    assert producer.calls == ["begin", "abort", "flush"]


class _ResyncProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def abort_transaction(self, *a: Any) -> None:
        self.calls.append("abort")

    def poll(self, t: float) -> int:
        return 0


class _OpenFence:
    def check(self) -> None:
        pass

    def committed(self) -> list:
        return []


def test_resync_aborts_a_batch_whose_produce_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_produce(p: Any, topic: str, **kw: Any) -> None:
        raise KafkaError("producer queue still full after 30 s", txn_requires_abort=True)

    monkeypatch.setattr(resync, "produce", failing_produce)
    producer = _ResyncProducer()
    decision = ResyncDecision("upsert", None, {"op": "upsert"})
    with pytest.raises(KafkaError):
        resync._write(
            load_settings(REPO_EXAMPLE),
            producer,  # type: ignore[arg-type]
            _OpenFence(),  # type: ignore[arg-type]
            0,
            [("k", decision)],
            10,
            resync.ResyncSummary(),
        )
    assert producer.calls == ["begin", "abort"]


def test_a_scan_consumer_keeps_what_scans_rely_on_whatever_kafka_extra_says(monkeypatch):
    from connector import ops
    from connector.config import load_settings
    from connector.ops.scan import scan_consumer

    settings = load_settings("deploy/connector.yaml", environ={})
    extra = {
        "isolation.level": "read_uncommitted",  # would read records of aborted transactions
        "auto.offset.reset": "latest",  # a start below the log start would read nothing
        "enable.auto.commit": "true",
        "enable.partition.eof": "false",  # scans would never end
        "socket.keepalive.enable": "true",  # anything else passes through
    }
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"extra": extra})})
    confs: list[dict] = []
    monkeypatch.setattr(ops.scan, "Consumer", lambda conf: confs.append(conf))
    scan_consumer(settings, "test")
    (conf,) = confs
    assert conf["isolation.level"] == "read_committed"
    assert conf["auto.offset.reset"] == "earliest"
    assert conf["enable.auto.commit"] is False
    assert conf["enable.partition.eof"] is True
    assert conf["socket.keepalive.enable"] == "true"
