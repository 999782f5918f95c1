"""`replay --stage merge` warns when it re-reads source records older than the delete markers.

A customer deleted more than `state.delete_marker_ttl_hours` ago has no state left (the sweep
tombstoned it): its replayed records re-create it in Yespo until its replayed delete arrives.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from connector import cli, logs
from connector.commands import replay as replay_command
from connector.commands.replay import ttl_warning
from connector.ops.offsets import ResetPlan

NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("stage", "target", "ttl_hours", "warns"),
    [
        ("merge", None, 168, True),  # earliest: as far back as the source topics' retention
        ("merge", NOW - 169 * HOUR, 168, True),
        ("merge", NOW - 167 * HOUR, 168, False),  # within the TTL: every marker deleted since is kept
        ("merge", NOW - 168 * HOUR, 168, False),
        ("merge", NOW + HOUR, 168, False),
        ("merge", NOW - dt.timedelta(seconds=1), 0, True),  # markers swept at once
        ("merge", dt.datetime(1970, 1, 1, tzinfo=dt.UTC), 1e9, False),  # a TTL beyond any replay
        ("deliver", None, 168, False),  # re-sends upserts by design; no state involved
        ("deliver", NOW - 1000 * HOUR, 168, False),
    ],
)
def test_the_warning_is_given_for_merge_replays_reaching_past_the_marker_ttl(
    stage: str, target: dt.datetime | None, ttl_hours: float, warns: bool
) -> None:
    warning = ttl_warning(stage, target, ttl_hours, NOW)
    assert (warning is not None) == warns
    if warning is not None:
        assert "state.delete_marker_ttl_hours" in warning
        assert f"{ttl_hours:g} h" in warning


@pytest.fixture
def clean_logs() -> Any:
    yield
    logs.reset()


@pytest.mark.usefixtures("clean_logs")
@pytest.mark.parametrize(("argv", "warns"), [([], True), (["--stage", "deliver"], False)])
def test_replay_prints_the_warning_on_stderr(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    warns: bool,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka: {bootstrap_servers: '127.0.0.1:1'}\n")
    monkeypatch.setattr(replay_command, "AdminClient", lambda conf: object())
    monkeypatch.setattr(
        replay_command,
        "plan_reset",
        lambda admin, group, target, **kw: ResetPlan("merge", "g", "earliest", ()),
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["replay", "-c", str(config), "--from", "earliest", "--dry-run", *argv])
    assert exit_info.value.code in (0, None)
    err = capsys.readouterr().err
    assert ("state.delete_marker_ttl_hours" in err) == warns
