from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.ops_helpers import (
    LiveMember,
    commit,
    committed,
    first_record_offset,
    produce,
    run_cli,
    write_config,
)

pytestmark = pytest.mark.integration

NONE = -1001  # no committed offset


class Setup:
    """A source (2 partitions), changes (1) and upserts (1) topic, both groups, a config file."""

    def __init__(
        self, bootstrap: str, create_topic: Callable[..., str], unique_topic: Callable[..., str], tmp: Path
    ) -> None:
        self.bootstrap = bootstrap
        self.source = create_topic(unique_topic("src"), 2)
        self.changes = create_topic(unique_topic("chg"), 1)
        self.upserts = create_topic(unique_topic("ups"), 1)
        self.merge_group = unique_topic("g-merge")
        self.deliver_group = unique_topic("g-deliver")
        self.config = str(
            write_config(
                tmp / "connector.yaml",
                bootstrap,
                group=self.merge_group,
                deliver_group=self.deliver_group,
                source=self.source,
                changes=self.changes,
                upserts=self.upserts,
            )
        )

    @property
    def merge_partitions(self) -> list[tuple[str, int]]:
        return [(self.source, 0), (self.source, 1), (self.changes, 0)]


@pytest.fixture
def setup(
    kafka_bootstrap: str, create_topic: Callable[..., str], unique_topic: Callable[..., str], tmp_path: Path
) -> Setup:
    return Setup(kafka_bootstrap, create_topic, unique_topic, tmp_path)


def test_replay_from_earliest_dry_run_then_apply(
    setup: Setup, kafka_admin: AdminClient, capsys: pytest.CaptureFixture[str]
) -> None:
    produce(setup.bootstrap, setup.source, [{0: 5, 1: 3}])  # p0: 0-4 m5, p1: 0-2 m3
    produce(setup.bootstrap, setup.upserts, [{0: 2}])
    done = {(setup.source, 0): 6, (setup.source, 1): 4}
    commit(setup.bootstrap, setup.merge_group, done)
    commit(setup.bootstrap, setup.deliver_group, {(setup.upserts, 0): 3})

    code, out, err = run_cli(capsys, "replay", "--config", setup.config, "--from", "earliest", "--dry-run")
    assert code == 0, err
    plan = [line.split() for line in out.splitlines() if line.startswith((setup.source, setup.changes))]
    assert plan == [
        [setup.source, "0", "6", "->", "0"],
        [setup.source, "1", "4", "->", "0"],
        [setup.changes, "0", "-", "->", "0"],
    ]
    assert "nothing changed" in out
    assert committed(kafka_admin, setup.merge_group, setup.merge_partitions) == {
        **done,
        (setup.changes, 0): NONE,
    }

    code, out, err = run_cli(capsys, "replay", "--config", setup.config, "--from", "earliest")
    assert code == 0, err
    assert f"reset 3 partition(s) of group {setup.merge_group} to earliest" in out
    assert committed(kafka_admin, setup.merge_group, setup.merge_partitions) == {
        (setup.source, 0): 0,
        (setup.source, 1): 0,
        (setup.changes, 0): 0,
    }
    # the other stage's group is untouched
    assert committed(kafka_admin, setup.deliver_group, [(setup.upserts, 0)]) == {(setup.upserts, 0): 3}


def test_replay_the_deliver_stage_from_a_time(
    setup: Setup, kafka_admin: AdminClient, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    ms = int(t0.timestamp() * 1000)
    # three transactions stamped t0, t0 + 1 h, t0 + 2 h: offsets 0-1 m2, 3-4 m5, 6-7 m8
    produce(
        setup.bootstrap,
        setup.upserts,
        [{0: 2}, {0: 2}, {0: 2}],
        timestamps_ms=[ms, ms + 3_600_000, ms + 7_200_000],
    )
    commit(setup.bootstrap, setup.deliver_group, {(setup.upserts, 0): 9})
    commit(setup.bootstrap, setup.merge_group, {(setup.source, 0): 0})

    since = "2026-11-01T13:30:00+01:00"  # = 12:30 UTC: the first data record at or after it is offset 3
    code, out, err = run_cli(
        capsys, "replay", "--config", setup.config, "--from", since, "--stage", "deliver"
    )
    assert code == 0, err
    assert "to 2026-11-01T12:30:00Z" in out
    # Kafka answers 2, the first transaction's commit marker: control records carry the time they were
    # written (now, after 12:30). A read_committed consumer skips it, so the replay starts at record 3.
    assert committed(kafka_admin, setup.deliver_group, [(setup.upserts, 0)]) == {(setup.upserts, 0): 2}
    assert first_record_offset(setup.bootstrap, setup.upserts, 0, 2) == 3

    # a time after every record: the end (last stable offset)
    code, out, err = run_cli(
        capsys, "replay", "--config", setup.config, "--from", "2030-01-01T00:00:00Z", "--stage", "deliver"
    )
    assert code == 0, err
    assert committed(kafka_admin, setup.deliver_group, [(setup.upserts, 0)]) == {(setup.upserts, 0): 9}
    assert committed(kafka_admin, setup.merge_group, [(setup.source, 0)]) == {(setup.source, 0): 0}


def test_replay_refuses_while_the_group_has_live_members(
    setup: Setup, kafka_admin: AdminClient, capsys: pytest.CaptureFixture[str]
) -> None:
    produce(setup.bootstrap, setup.source, [{0: 2}])
    commit(setup.bootstrap, setup.merge_group, {(setup.source, 0): 3})
    member = LiveMember(setup.bootstrap, setup.merge_group, [setup.source])
    try:
        code, out, err = run_cli(capsys, "replay", "--config", setup.config, "--from", "earliest")
        assert code == 1
        assert err.strip().splitlines() == [
            f"GroupActiveError: consumer group '{setup.merge_group}' has 1 live member(s); "
            "stop the connector's stage first"
        ]
        # a dry run still shows the plan, with a note
        code, out, err = run_cli(
            capsys, "replay", "--config", setup.config, "--from", "earliest", "--dry-run"
        )
        assert code == 0, err
        assert "1 live member(s)" in out
    finally:
        member.close()
    assert committed(kafka_admin, setup.merge_group, [(setup.source, 0)]) == {(setup.source, 0): 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "yesterday"], "ConfigError: --from must be 'earliest' or an ISO-8601 time"),
        (["--from", "2026-11-01T12:00:00"], "ConfigError: --from '2026-11-01T12:00:00' has no time zone"),
    ],
)
def test_bad_from_is_one_clear_line(
    setup: Setup, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "replay", "--config", setup.config, *args)
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith(message)


def test_missing_topic_is_one_clear_line(
    kafka_bootstrap: str, unique_topic: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = unique_topic("missing")
    config = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        group=unique_topic("g"),
        deliver_group=unique_topic("gd"),
        source=missing,
        changes=unique_topic("chg"),
        upserts=unique_topic("ups"),
    )
    code, _, err = run_cli(capsys, "replay", "--config", str(config), "--from", "earliest")
    assert code == 1
    assert err.strip().splitlines() == [
        f"ConfigError: source.customers.topic: topic '{missing}' of the merge stage does not exist"
    ]
