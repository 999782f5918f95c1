"""A rejected winning upsert falls back to the customer's record before it (`batch.fallback`):
one batch ends as the records sent one by one would."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.unit.test_deliver_stage import Rig, accounted, delete, up
from tests.unit.test_deliver_standin import StandinRig

MODES = [{"mode": "bulk", "poll_import_status": True}, {"mode": "bulk"}, {"mode": "single"}]


def _record(version: int, name: str, **kw: Any) -> dict[str, Any]:
    return up("a", version, name=name, **kw)


@pytest.mark.parametrize("yespo", MODES)
def test_a_rejected_change_falls_back_to_the_valid_change_before_it(yespo: dict[str, Any]) -> None:
    rig = StandinRig(batch_size=10, **yespo)
    rig.consumer.add(0, "a", _record(1, "Anna"))
    rig.run_for(5)
    rig.consumer.add(0, "a", _record(2, "Berta"))
    rig.consumer.add(0, "a", _record(3, "Carla", email="bad-address"))  # Yespo rejects it
    rig.run_for(5)
    assert rig.stored("ext-a")["firstName"] == "Berta"
    assert rig.results() == {0: "delivered", 1: "delivered", 2: "dlq:rejected"}
    (dead,) = rig.producer.dlq()
    assert dead["yespo.source.offset"] == "2" and "invalid email" in dead["yespo.error.reason"]
    assert rig.consumer.committed_offsets() == {0: 3}


@pytest.mark.parametrize("yespo", MODES)
def test_rejections_fall_back_one_record_at_a_time(yespo: dict[str, Any]) -> None:
    rig = StandinRig(batch_size=10, **yespo)
    rig.consumer.add(0, "a", _record(1, "Anna"))
    rig.consumer.add(0, "a", _record(2, "Berta", email="bad-1"))
    rig.consumer.add(0, "a", _record(3, "Carla", email="bad-2"))
    rig.run_for(10)
    assert rig.stored("ext-a")["firstName"] == "Anna"
    assert rig.results() == {0: "delivered", 1: "dlq:rejected", 2: "dlq:rejected"}
    assert sorted(d["yespo.source.offset"] for d in rig.producer.dlq()) == ["1", "2"]


@pytest.mark.parametrize("yespo", MODES)
def test_delete_restore_and_a_rejected_change_end_restored(yespo: dict[str, Any]) -> None:
    rig = StandinRig(batch_size=10, **yespo)
    rig.consumer.add(0, "a", _record(1, "Anna"))
    rig.run_for(5)
    rig.consumer.add(0, "a", {**delete("a"), "version": 2})
    rig.consumer.add(0, "a", _record(3, "Berta"))
    rig.consumer.add(0, "a", _record(4, "Carla", email="bad-address"))
    rig.run_for(10)
    stored = rig.stored("ext-a")
    assert not stored["deleted"] and stored["firstName"] == "Berta"
    assert rig.results() == {0: "delivered", 1: "superseded", 2: "delivered", 3: "dlq:rejected"}


@pytest.mark.parametrize("yespo", MODES)
def test_delete_and_two_rejected_changes_end_deleted(yespo: dict[str, Any]) -> None:
    rig = StandinRig(batch_size=10, **yespo)
    rig.consumer.add(0, "a", _record(1, "Anna"))
    rig.run_for(5)
    rig.consumer.add(0, "a", {**delete("a"), "version": 2})
    rig.consumer.add(0, "a", _record(3, "Berta", email="bad-1"))
    rig.consumer.add(0, "a", _record(4, "Carla", email="bad-2"))
    rig.run_for(10)
    assert rig.stored("ext-a")["deleted"]
    assert rig.results() == {0: "delivered", 1: "deleted", 2: "dlq:rejected", 3: "dlq:rejected"}


@pytest.mark.parametrize("poll", [True, False])
def test_a_give_up_while_the_fallback_is_retried_dead_letters_its_records(poll: bool) -> None:
    rig = Rig(poll_import_status=poll, max_retry_seconds=30)
    inner, bulk = rig.yespo, {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/contacts"):
            bulk["n"] += 1
            if bulk["n"] > 1:  # the fallback's request, and its retries
                return httpx.Response(503, text="down")
        return inner(request)

    rig.client._http = httpx.Client(transport=httpx.MockTransport(handler))
    rig.consumer.add(0, "a", up("a", 1, name="Anna"))
    rig.consumer.add(0, "a", up("a", 2, name="Berta"))
    rig.consumer.add(0, "a", up("a", 3, email="bad-address"))
    rig.steps()
    assert accounted(rig) == {} and rig.consumer.commits == []
    for _ in range(10):
        rig.clock.now += 31
        rig.steps()
    assert accounted(rig) == {0: "dlq:gave_up", 1: "dlq:gave_up", 2: "dlq:rejected"}
    assert rig.consumer.committed_offsets() == {0: 3}


def test_an_import_that_keeps_ending_in_error_dead_letters_every_record_of_the_contact() -> None:
    """An import error is about the contact, not one record's content: no fallback to an earlier upsert
    (it would fail the same way, three imports each)."""
    rig = StandinRig(batch_size=10, mode="bulk", poll_import_status=True)
    rig.app.faults.fail_imports(external_ids=["ext-a"])
    rig.consumer.add(0, "a", _record(1, "Anna"))
    rig.consumer.add(0, "a", _record(2, "Berta"))
    rig.consumer.add(0, "b", up("b", 1))
    rig.run_for(120)
    assert rig.results() == {0: "dlq:import_error", 1: "dlq:import_error", 2: "delivered"}
    # the imports that isolate and condemn a's upsert (5 here); a fallback to its first upsert would
    # take as many again
    assert rig.app.stats()["counters"]["imports_failed"] == 5
