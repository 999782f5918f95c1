from __future__ import annotations

import logging
from pathlib import Path

import pytest
from msgspec.structs import replace
from pydantic import BaseModel
from rich.console import Console

from connector import cli, logs
from connector.commands import rebuild_state as rebuild_command
from connector.commands import resync as resync_command
from connector.commands._confighelp import env_name
from connector.config import Settings, load_settings
from connector.mapping import ContactMapper
from connector.merge import CustomerState, RowState, view_of
from connector.models import RecordRef, SourcePosition
from connector.ops.offsets import OffsetReset
from connector.ops.progress import LogProgress
from connector.ops.rebuild import RebuildSummary
from connector.ops.resync import ResyncSummary
from connector.ops.resync_decision import decide_resync
from connector.ops.scan import fold_latest
from connector.projection import MappingProjector
from tests.schema_validation import validator

MAPPING = load_settings("deploy/connector.yaml", environ={}).contact
ORIGIN = RecordRef("state-topic", 3, 41)
POS = SourcePosition("pg", (10, 12))


def customer(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": 7,
        "external_id": "EXT-7",
        "first_name": "Ana",
        "last_name": "Silva",
        "email": "ana@example.com",
        "phone": None,
        "city": "Porto",
        "country": "PT",
        "loyalty_level": "gold",
    }
    row.update(overrides)
    return row


def group_row(gid: int) -> RowState:
    return RowState({"customer_id": 7, "group_id": gid, "group_name": f"G{gid}"}, POS)


def state_of(
    row: dict[str, object] | None = None,
    *,
    groups: tuple[int, ...] = (),
    emitted: bool = True,
    **fields: object,
) -> CustomerState:
    """A customer state; with `emitted` its fingerprint/groups are those of its current contact."""
    base = CustomerState(
        "7",
        RowState(row if row is not None else customer(), POS),
        {"groups": {f"[7,{g}]": group_row(g) for g in groups}} if groups else {},
        version=4,
    )
    if emitted:
        result = ContactMapper(MAPPING).map(view_of(base))
        assert result.contact is not None
        base = CustomerState(
            base.customer_key,
            base.customer,
            base.children,
            result.fingerprint,
            result.contact.group_ids,
            4,
            "EXT-7",
        )
    return replace(base, **fields)  # type: ignore[arg-type]


def decide(state: CustomerState, *, force: bool = False):
    return decide_resync(state, MappingProjector(MAPPING), force=force, origin=ORIGIN)


def test_unchanged_contact_is_skipped_without_force() -> None:
    decision = decide(state_of())
    assert (decision.kind, decision.record, decision.state) == ("unchanged", None, None)


def test_force_re_emits_the_same_contact_with_the_next_version() -> None:
    state = state_of(groups=(1001,))
    decision = decide(state, force=True)
    assert decision.kind == "upsert"
    record = decision.record
    assert record is not None
    validator("upsert.schema.json").validate(record)
    expected = ContactMapper(MAPPING).map(view_of(state)).contact
    assert expected is not None
    assert record["contact"] == expected.to_json()
    assert record["version"] == 5
    assert record["groups_removed"] == []
    assert record["external_customer_id"] == "EXT-7"
    assert record["source"] == {"topic": "state-topic", "partition": 3, "offset": 41, "position": None}
    assert decision.state is not None
    assert decision.state.version == 5
    assert decision.state.fingerprint == state.fingerprint  # the same contact
    assert decision.state.groups == (1001,)
    assert view_of(decision.state) == view_of(state)


def test_a_mapping_change_re_emits_without_force() -> None:
    decision = decide(state_of(fingerprint="fingerprint-of-the-old-mapping"))
    assert decision.kind == "upsert"
    assert decision.record is not None and decision.record["version"] == 5
    assert decision.state is not None and decision.state.fingerprint != "fingerprint-of-the-old-mapping"


def test_a_contact_under_another_external_id_is_retired_before_the_upsert() -> None:
    """The mapping (or the row) now gives EXT-8: the contact EXT-7 is deleted first, as in the merge stage."""
    decision = decide(state_of(customer(external_id="EXT-8"), fingerprint="old"))
    assert decision.kind == "upsert" and decision.retired
    assert decision.record is not None and len(decision.first) == 1
    for record in (*decision.first, decision.record):
        validator("upsert.schema.json").validate(record)
    assert [
        (r["op"], r["external_customer_id"], r["version"]) for r in (*decision.first, decision.record)
    ] == [
        ("delete", "EXT-7", 5),
        ("upsert", "EXT-8", 6),
    ]
    assert decision.state is not None and (decision.state.version, decision.state.external_id) == (6, "EXT-8")
    summary = ResyncSummary()
    summary.count(decision)
    assert (summary.retired, summary.erases, summary.upserts) == (1, 0, 1)
    assert any("1 delete(s) of a previous externalCustomerId" in line for line in summary.lines())


def test_groups_no_longer_in_the_contact_are_listed_as_removed() -> None:
    state = replace(state_of(groups=(1001,)), fingerprint="stale", groups=(1001, 1002))
    decision = decide(state)
    assert decision.record is not None
    assert decision.record["groups_removed"] == [1002]
    assert decision.state is not None and decision.state.groups == (1001,)


def test_deleted_customer_without_live_contact_is_absent_even_with_force() -> None:
    deleted = CustomerState("7", RowState(None, POS, 1), {}, None, (), 3, None)
    assert decide(deleted).kind == "absent"
    assert decide(deleted, force=True).kind == "absent"


def test_a_live_contact_without_customer_row_is_deleted() -> None:
    deleted = CustomerState("7", RowState(None, POS, 1), {}, "fp", (1001,), 3, "EXT-7")
    decision = decide(deleted)
    assert decision.kind == "delete"
    assert decision.record is not None
    assert (decision.record["op"], decision.record["external_customer_id"]) == ("delete", "EXT-7")
    assert decision.record["version"] == 4
    validator("upsert.schema.json").validate(decision.record)
    assert decision.state is not None and decision.state.fingerprint is None


def test_unmatchable_contact_is_counted_not_emitted() -> None:
    row = customer(external_id=None, email=None, phone=None)
    state = state_of(row, emitted=False)
    assert decide(state, force=True).kind == "unmappable"


def test_summary_counts_and_lines() -> None:
    summary = ResyncSummary(records_read=9, partitions=2, transactions=1, force=True)
    for state, force in ((state_of(), True), (state_of(), False), (state_of(emitted=False), False)):
        summary.count(decide(state, force=force))
    summary.count(decide(CustomerState("8", RowState(None, POS, 1)), force=True))
    assert (summary.customers, summary.upserts, summary.unchanged, summary.absent) == (4, 2, 1, 1)
    assert (summary.emitted, summary.skipped) == (2, 2)
    assert summary.lines() == [
        "state records read: 9 in 2 partition(s)",
        "customers: 4",
        "emitted: 2 upsert(s), 0 delete(s) in 1 transaction(s)",
        "skipped: 2 (unchanged 1, no contact 1, unmappable 0)",
    ]
    assert ResyncSummary(dry_run=True).lines()[2] == "would emit: 0 upsert(s), 0 delete(s)"


def test_fold_latest_keeps_the_last_value_and_drops_tombstoned_keys() -> None:
    records = [("a", b"1", 0), ("b", b"1", 1), ("a", b"2", 2), ("b", None, 3), ("c", None, 4), ("b", b"3", 5)]
    assert fold_latest(iter(records)) == {"a": (b"2", 2), "b": (b"3", 5)}
    assert fold_latest(iter([("a", b"1", 0), ("a", None, 1)])) == {}


def test_log_progress_reports_at_most_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = logging.getLogger("tests.progress")
    progress = LogProgress(interval_s=5.0, clock=lambda: now[0], log=log)
    with caplog.at_level(logging.INFO, logger="tests.progress"):
        progress.start(200, "resync: reading state")
        for _ in range(10):  # 10 x 10 records, 1 s apart
            now[0] += 1.0
            progress.advance(10)
        progress.finish()
    lines = [(r.getMessage(), r.done, r.percent) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [
        ("resync: reading state started", 0, 0.0),
        ("resync: reading state progress", 50, 25.0),
        ("resync: reading state progress", 100, 50.0),
        ("resync: reading state finished", 100, 50.0),
    ]
    assert progress.lines == 4


def test_log_progress_with_nothing_to_read_is_complete(caplog: pytest.LogCaptureFixture) -> None:
    progress = LogProgress(clock=lambda: 0.0, log=logging.getLogger("tests.progress"))
    with caplog.at_level(logging.INFO, logger="tests.progress"):
        progress.start(0, "rebuild-state: reading state")
        progress.finish()
    assert [r.percent for r in caplog.records] == [100.0, 100.0]  # type: ignore[attr-defined]


def test_progress_is_a_bar_on_a_terminal_and_log_lines_otherwise() -> None:
    assert isinstance(
        resync_command.progress_reporter(Console(force_terminal=True)), resync_command.RichProgress
    )
    assert isinstance(resync_command.progress_reporter(Console(force_terminal=False)), LogProgress)


def test_rich_progress_runs_to_completion() -> None:
    out = Console(force_terminal=True, width=100, record=True)
    progress = resync_command.RichProgress(out)
    progress.start(10, "resync: reading state")
    progress.advance(4)
    progress.finish()
    assert "10/10" in out.export_text()


def test_rebuild_summary_lines() -> None:
    resets = (OffsetReset("src", 0, 10, 0), OffsetReset("changes", 0, 5, 9))
    summary = RebuildSummary(records_read=12, partitions=2, tombstones=7, resets=resets)
    assert summary.lines() == [
        "state records read: 12 in 2 partition(s)",
        "wrote 7 tombstone(s) (one per live state key)",
        "merge group offsets moved: 2 partition(s) (source topics to earliest, changes topic to its end)",
    ]
    assert RebuildSummary(dry_run=True).lines()[1].startswith("would write 0 tombstone(s)")


def _resolves(key: str) -> bool:
    model: type[BaseModel] = Settings
    for part in key.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return True


@pytest.mark.parametrize(
    ("command", "module"), [("resync", resync_command), ("rebuild-state", rebuild_command)]
)
def test_help_lists_config_keys_and_env_names(
    command: str, module: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for key in module.CONFIG_KEYS:  # type: ignore[attr-defined]
        assert _resolves(key), key
        assert f"{key} (env {env_name(key)})" in text


def test_rebuild_state_without_yes_off_a_terminal_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka: {bootstrap_servers: '127.0.0.1:1'}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["rebuild-state", "--config", str(config)])
    logs.reset()
    assert exit_info.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ConfigError: rebuild-state clears the state") and line.endswith("pass --yes")


def test_a_failed_scan_stops_the_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan that fails mid-way leaves no live display (hidden cursor, the error line glued to the bar)."""
    from connector.errors import KafkaError
    from connector.ops import rebuild

    class FailingScanner:
        topic = "state"

        def __init__(self, settings: Settings) -> None:
            pass

        def partitions(self) -> dict[int, int]:
            return {0: 10}

        def scan(self, partition: int, on_records: object) -> dict[str, object]:
            raise KafkaError("cannot read state[0]: broker down")

        def close(self) -> None:
            pass

    monkeypatch.setattr(rebuild, "StateScanner", FailingScanner)
    progress = resync_command.RichProgress(Console(force_terminal=True, width=100, record=True))
    with pytest.raises(KafkaError):
        rebuild._scan(load_settings("deploy/connector.yaml", environ={}), RebuildSummary(), progress, None)
    assert not progress._progress.live.is_started
