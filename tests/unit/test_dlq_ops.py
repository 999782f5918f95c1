"""The DLQ for operators: entries from headers, summaries without customer data, re-drive decisions."""

from __future__ import annotations

import orjson
import pytest
from msgspec.structs import replace

from connector.merge import CustomerState, RowState
from connector.ops.dlq import DlqEntry, Redrive, entry_of, redrive_targets, summarize
from connector.ops.resync import ResyncSummary
from connector.ops.resync_decision import decide_redrive
from connector.projection import MappingProjector
from tests.schema_validation import validator
from tests.unit.test_resync import MAPPING, ORIGIN, POS, customer, state_of

PROJECTOR = MappingProjector(MAPPING)


def headers(stage: str = "deliver", error: str = "DeliveryError", reason: str = "gave up") -> list:
    return [
        ("original", b"kept"),
        ("yespo.error.class", error.encode()),
        ("yespo.error.reason", reason.encode()),
        ("yespo.source.topic", b"upserts"),
        ("yespo.source.partition", b"1"),
        ("yespo.source.offset", b"9"),
        ("yespo.stage", stage.encode()),
    ]


def upsert(
    key: str, version: int, op: str = "upsert", removed: tuple[int, ...] = (), erase: bool = False
) -> bytes:
    return orjson.dumps(
        {
            "op": op,
            "customer_key": key,
            "external_customer_id": f"EXT-{key}",
            "contact": None if op == "delete" else {"firstName": "Ana"},
            "groups_removed": list(removed),
            "erase": erase,
            "version": version,
            "source": {"topic": "changes", "partition": 0, "offset": 1, "position": None},
        }
    )


def entry(
    key: bytes | None,
    value: bytes | None,
    offset: int = 0,
    stage: str = "deliver",
    partition: int = 0,
    ts: int | None = None,
    **kw: str,
) -> DlqEntry:
    stamp = 1_764_500_000_000 + offset if ts is None else ts
    return entry_of(partition, offset, stamp, headers(stage, **kw), key, value)


def test_entry_of_reads_the_yespo_headers_and_tolerates_missing_ones() -> None:
    e = entry_of(2, 5, None, [*headers(), ("yespo.stage", b"merge")], b"7", b"{}")
    assert (e.stage, e.error_class, e.reason, e.source_topic) == (
        "merge",
        "DeliveryError",
        "gave up",
        "upserts",
    )
    assert (e.partition, e.offset, e.key, e.value, e.value_dropped) == (2, 5, b"7", b"{}", False)
    bare = entry_of(0, 0, None, None, None, None)
    assert (bare.stage, bare.error_class, bare.reason) == ("", "", "")
    dropped = entry_of(0, 0, None, {"yespo.error.value_dropped": b"too large"}, b"k", None)
    assert dropped.value_dropped


def test_summary_counts_by_stage_error_and_reason_and_never_shows_keys_or_values() -> None:
    entries = [
        entry(b"ana@example.com", upsert("1", 2), 0),
        entry(b"ana@example.com", upsert("1", 3), 1),
        entry(b"42", upsert("42", 1), 2, reason="rejected: bad field"),
        entry(b"raw-key", b'{"secret": "Olena"}', 3, stage="decode", error="DecodeError", reason="not JSON"),
    ]
    s = summarize(entries)
    assert s.records == 4 and s.by_stage == {"deliver": 3, "decode": 1}
    assert s.by_error[("deliver", "DeliveryError")] == 3 and s.by_error[("decode", "DecodeError")] == 1
    assert s.by_reason.most_common(1) == [(("deliver", "gave up"), 2)]
    assert s.customers_to_redrive == 2  # deliver-stage records name two customers
    assert (s.first_ms, s.last_ms) == (1_764_500_000_000, 1_764_500_000_003)
    text = "\n".join(s.lines()) + orjson.dumps(s.as_json()).decode()
    assert "ana@example.com" not in text and "Olena" not in text and "raw-key" not in text
    assert "DLQ records: 4 (2025-11-30T10:53:20Z .. 2025-11-30T10:53:20Z)" in text


def test_redrive_targets_keep_the_last_written_record_and_every_detached_group() -> None:
    entries = [
        entry(b"1", upsert("1", 3, removed=(11,)), 0),
        entry(b"1", upsert("1", 5, op="delete", removed=(12,)), 1),
        entry(b"1", upsert("1", 4, removed=(13,)), 2),
        entry(b"2", None, 3),  # value dropped for size: the key still names the customer
        entry(b"3", b"not json", 4),
        entry(b"9", upsert("9", 1), 5, stage="merge"),  # not a deliver-stage record
        entry(None, upsert("x", 1), 6),
    ]
    targets = redrive_targets(entries)
    assert set(targets) == {"1", "2", "3"}
    one = targets["1"]
    # write order (offsets in the customer's DLQ partition), not version: versions can restart
    assert (one.records, one.last_version, one.last_op, one.last_at) == (3, 4, "upsert", (0, 2))
    assert one.groups_removed == {11, 12, 13}
    assert targets["2"].records == 1 and targets["2"].last is None
    assert targets["3"].last is None


def _target(key: str, version: int, op: str = "upsert", removed: tuple[int, ...] = ()) -> Redrive:
    return redrive_targets([entry(key.encode(), upsert(key, version, op, removed), 7)])[key]


def test_a_customer_with_a_contact_gets_it_forced_with_the_dead_lettered_detachments() -> None:
    state = state_of(customer(), groups=(1001,))  # version 4, contact in segment 1001
    decision = decide_redrive(state, _target("7", 3, removed=(1001, 1002)), PROJECTOR, origin=ORIGIN)
    assert decision.kind == "upsert" and decision.record is not None and decision.state is not None
    assert decision.record["version"] == 5 and decision.state.version == 5
    assert decision.record["contact"]["externalCustomerId"] == "EXT-7"
    # 1002 was to be detached by the dead-lettered record; 1001 is the contact's again
    assert decision.record["groups_removed"] == [1002]
    validator("upsert.schema.json").validate(decision.record)


def test_a_customer_with_a_contact_is_re_driven_even_without_a_readable_record() -> None:
    decision = decide_redrive(state_of(customer()), Redrive(records=1), PROJECTOR, origin=ORIGIN)
    assert decision.kind == "upsert" and decision.record is not None
    assert decision.record["groups_removed"] == []


DELETED = CustomerState("7", RowState(None, POS, 1), {}, None, (), 6, None)


def test_a_dead_lettered_delete_that_is_still_the_last_word_is_sent_again() -> None:
    decision = decide_redrive(DELETED, _target("7", 6, op="delete"), PROJECTOR, origin=ORIGIN)
    assert decision.kind == "delete" and decision.record is not None and decision.state is not None
    assert decision.record["op"] == "delete" and decision.record["external_customer_id"] == "EXT-7"
    assert decision.record["version"] == 7 and decision.state.version == 7
    assert decision.record["source"] == {
        "topic": "state-topic",
        "partition": 3,
        "offset": 41,
        "position": None,
    }


@pytest.mark.parametrize(
    "target",
    [
        redrive_targets([entry(b"7", upsert("7", 5, op="delete", erase=True), 7)])["7"],
        _target("7", 6),
        Redrive(records=1),
    ],
    ids=["an older erase", "an upsert", "unreadable"],
)
def test_a_customer_without_a_contact_gets_nothing_unless_its_delete_is_the_last_word(
    target: Redrive,
) -> None:
    decision = decide_redrive(DELETED, target, PROJECTOR, origin=ORIGIN)
    assert decision.kind == "absent" and decision.record is None


def test_a_plain_delete_is_re_driven_for_a_customer_without_a_contact_whatever_the_versions() -> None:
    """After rebuild-state the deleted customer's state is a marker at version 0 (nothing emitted),
    while the dead-lettered delete has version 2: it must still be sent (review: it was not)."""
    rebuilt = CustomerState("7", RowState(None, POS, 1), {}, None, (), 0, None)
    for state in (rebuilt, DELETED):  # DELETED: version 6, the dead-lettered delete is v5
        decision = decide_redrive(
            state, _target("7", 2 if state is rebuilt else 5, op="delete"), PROJECTOR, origin=ORIGIN
        )
        assert decision.kind == "delete" and decision.record is not None
        assert decision.record["external_customer_id"] == "EXT-7"
        assert decision.record["version"] == state.version + 1


def test_a_customer_without_state_gets_its_dead_lettered_delete_only() -> None:
    decision = decide_redrive(None, _target("7", 6, op="delete"), PROJECTOR, origin=ORIGIN)
    assert decision.kind == "delete" and decision.state is None and decision.record is not None
    assert decision.record["version"] == 7
    assert decide_redrive(None, _target("7", 6), PROJECTOR, origin=ORIGIN).kind == "absent"


def test_an_unmappable_customer_is_counted_not_sent() -> None:
    row = customer(external_id=None, email=None, phone=None)
    decision = decide_redrive(state_of(row, emitted=False), _target("7", 3), PROJECTOR, origin=ORIGIN)
    assert decision.kind == "unmappable" and decision.record is None


def test_across_dlq_partitions_the_timestamps_order_a_customer_s_records() -> None:
    entries = [
        entry(b"1", upsert("1", 9), 50, partition=1, ts=2_000),
        entry(b"1", upsert("1", 2, op="delete"), 3, partition=0, ts=3_000),
    ]
    assert redrive_targets(entries)["1"].last_op == "delete"


def test_after_versions_restarted_the_final_dead_lettered_delete_is_still_re_driven() -> None:
    # an old upsert v12 (before a rebuild-state), then today's delete v2 of the re-created customer
    targets = redrive_targets([entry(b"7", upsert("7", 12), 0), entry(b"7", upsert("7", 2, op="delete"), 1)])
    deleted = CustomerState("7", RowState(None, POS, 1), {}, None, (), 2, None)
    decision = decide_redrive(deleted, targets["7"], PROJECTOR, origin=ORIGIN)
    assert decision.kind == "delete" and decision.record is not None and decision.record["version"] == 3


def test_a_dead_lettered_erase_before_the_current_contact_is_reported_and_sent_only_when_asked() -> None:
    # erase v3 dead-lettered, then the customer came back (v4 delivered). Whether a later erase went
    # through, or an earlier re-drive sent it, is unknown: sending it wipes today's contact
    targets = redrive_targets([entry(b"7", upsert("7", 3, op="delete", erase=True), 0)])
    state = state_of(customer())  # version 4, a contact
    kept = decide_redrive(state, targets["7"], PROJECTOR, origin=ORIGIN)
    assert kept.kind == "upsert" and kept.first == () and kept.erase_skipped
    assert kept.record is not None and kept.record["version"] == 5
    summary = ResyncSummary()
    summary.count(kept)
    assert (summary.upserts, summary.deletes, summary.erases_skipped) == (1, 0, 1)
    assert any(line.startswith("dead-lettered erases not sent: 1") for line in summary.lines())

    sent = decide_redrive(state, targets["7"], PROJECTOR, origin=ORIGIN, erases=True)
    assert sent.kind == "upsert" and sent.record is not None and sent.state is not None
    assert len(sent.first) == 1 and not sent.erase_skipped
    assert (sent.first[0]["op"], sent.first[0]["erase"]) == ("delete", True)
    assert sent.first[0]["version"] == 5 and sent.record["version"] == 6
    assert sent.state.version == 6
    for record in (*sent.first, sent.record):
        validator("upsert.schema.json").validate(record)
    summary = ResyncSummary()
    summary.count(sent)
    assert (summary.customers, summary.upserts, summary.deletes, summary.erases) == (1, 1, 0, 1)
    assert "emitted before those upserts: 1 erase(s) from the DLQ" in summary.lines()


def test_a_dead_lettered_erase_that_is_the_last_word_is_sent_again_without_asking() -> None:
    erased = CustomerState("7", RowState(None, POS, 1), {}, None, (), 6, None)
    targets = redrive_targets([entry(b"7", upsert("7", 6, op="delete", erase=True), 0)])
    decision = decide_redrive(erased, targets["7"], PROJECTOR, origin=ORIGIN)
    assert decision.kind == "delete" and decision.record is not None and decision.record["erase"] is True
    assert not decision.erase_skipped


def test_an_erase_followed_by_a_delivered_soft_delete_is_sent_only_when_asked() -> None:
    # erase v3 and re-creation v4 dead-lettered, soft delete v5 delivered (on_delete changed between)
    targets = redrive_targets(
        [entry(b"7", upsert("7", 3, op="delete", erase=True), 0), entry(b"7", upsert("7", 4), 1)]
    )
    deleted = CustomerState("7", RowState(None, POS, 1), {}, None, (), 5, None)
    skipped = decide_redrive(deleted, targets["7"], PROJECTOR, origin=ORIGIN)
    assert skipped.kind == "absent" and skipped.erase_skipped
    sent = decide_redrive(deleted, targets["7"], PROJECTOR, origin=ORIGIN, erases=True)
    assert sent.kind == "delete" and sent.record is not None
    assert (sent.record["erase"], sent.record["version"]) == (True, 6)


def test_no_delete_or_erase_is_re_driven_for_a_contact_another_customer_now_has() -> None:
    def held(external_id: str) -> bool:
        return external_id == "EXT-7"

    delete = decide_redrive(DELETED, _target("7", 6, op="delete"), PROJECTOR, origin=ORIGIN, held=held)
    assert delete.kind == "held" and delete.record is None
    gone = decide_redrive(None, _target("7", 6, op="delete"), PROJECTOR, origin=ORIGIN, held=held)
    assert gone.kind == "held"
    erase = redrive_targets([entry(b"7", upsert("7", 3, op="delete", erase=True), 0)])["7"]
    upsert_only = decide_redrive(
        state_of(customer()), erase, PROJECTOR, origin=ORIGIN, held=held, erases=True
    )
    assert upsert_only.kind == "upsert" and upsert_only.first == ()
    assert upsert_only.erase_skipped  # reported, not dropped silently


def test_an_unmappable_re_creation_does_not_block_the_delete() -> None:
    # deleted (v6, dead-lettered), re-inserted without any identifier: the merge stage emitted nothing
    row = customer(external_id=None, email=None, phone=None)
    state = replace(state_of(row, emitted=False), version=6)
    decision = decide_redrive(state, _target("7", 6, op="delete"), PROJECTOR, origin=ORIGIN)
    assert decision.kind == "delete" and decision.record is not None


def test_an_unmappable_customer_whose_contact_is_live_gets_no_delete() -> None:
    # an old delete v3 dead-lettered; versions restarted, v1-v3 delivered (live), the row now unmappable
    row = customer(external_id=None, email=None, phone=None)
    state = replace(state_of(row, emitted=False), fingerprint="live", version=3, external_id="EXT-7")
    decision = decide_redrive(state, _target("7", 3, op="delete"), PROJECTOR, origin=ORIGIN)
    assert decision.kind == "unmappable" and decision.record is None


def test_reading_a_long_dlq_keeps_the_run_s_group_membership_alive() -> None:
    from connector.ops.resync import _fenced

    class Fence:
        checks = 0

        def check(self) -> None:
            Fence.checks += 1

    entries = (entry(str(i).encode(), None, i) for i in range(2500))
    assert len(list(_fenced(entries, Fence(), every=1000))) == 2500  # type: ignore[arg-type]
    assert Fence.checks == 2


def _retire(key: str, version: int, ext: str) -> bytes:
    record = orjson.loads(upsert(key, version, op="delete"))
    return orjson.dumps({**record, "external_customer_id": ext, "retires": True})


def test_a_dead_lettered_retiring_delete_is_re_driven_before_the_current_contact() -> None:
    """delete EXT-6 (retires) and upsert EXT-7 both dead-lettered in an outage: EXT-6 must not stay live."""
    targets = redrive_targets([entry(b"7", _retire("7", 3, "EXT-6"), 0), entry(b"7", upsert("7", 4), 1)])
    assert set(targets["7"].retired) == {"EXT-6"}
    state = state_of(customer())  # version 4, contact EXT-7
    decision = decide_redrive(state, targets["7"], PROJECTOR, origin=ORIGIN)
    chain = [*decision.first, decision.record]
    assert [(r["op"], r["external_customer_id"], r["version"]) for r in chain] == [
        ("delete", "EXT-6", 5),
        ("upsert", "EXT-7", 6),
    ]
    for record in chain:
        validator("upsert.schema.json").validate(record)
    assert decision.state is not None and decision.state.version == 6 and decision.retired == 1
    summary = ResyncSummary()
    summary.count(decision)
    assert (summary.upserts, summary.retired, summary.erases) == (1, 1, 0)
    # a customer without a contact now still gets the retiring delete
    deleted = CustomerState("7", RowState(None, POS, 1), {}, None, (), 5, None)
    alone = decide_redrive(deleted, targets["7"], PROJECTOR, origin=ORIGIN)
    assert alone.kind == "delete" and alone.first == ()
    assert alone.record is not None and (alone.record["external_customer_id"], alone.record["version"]) == (
        "EXT-6",
        6,
    )
    # not when another live customer has EXT-6 now, nor when it is the customer's own contact again
    held = decide_redrive(state, targets["7"], PROJECTOR, origin=ORIGIN, held=lambda ext: ext == "EXT-6")
    assert held.first == () and held.retired == 0
    back = redrive_targets([entry(b"7", _retire("7", 3, "EXT-7"), 0)])
    assert decide_redrive(state, back["7"], PROJECTOR, origin=ORIGIN).first == ()
