from __future__ import annotations

import datetime as dt

import pytest
from pydantic import BaseModel

from connector import cli
from connector.commands import lag as lag_command
from connector.commands import replay as replay_command
from connector.commands._confighelp import env_name
from connector.config import Settings, load_settings
from connector.errors import ConfigError
from connector.ops.offsets import parse_replay_target
from connector.ops.stages import stage_group, stage_groups

from .test_config import REPO_EXAMPLE


def help_text(capsys: pytest.CaptureFixture[str], command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def resolves(key: str) -> bool:
    model: type[BaseModel] = Settings
    for part in key.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return True


@pytest.mark.parametrize("module", [lag_command, replay_command], ids=["lag", "replay"])
def test_help_lists_config_keys_and_env_names(
    module: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    text = help_text(capsys, module.__name__.rsplit(".", 1)[-1])
    keys = module.CONFIG_KEYS  # type: ignore[attr-defined]
    assert "kafka.bootstrap_servers" in keys and "kafka.group_id" in keys
    for key in keys:
        assert resolves(key), f"{key} is not a Settings key"
        assert f"{key} (env {env_name(key)})" in text


def test_env_names() -> None:
    assert env_name("kafka.bootstrap_servers") == "YESPO_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS"
    assert env_name("source.customers.topic") == "YESPO_CONNECTOR_SOURCE__CUSTOMERS__TOPIC"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("earliest", None),
        (" EARLIEST ", None),
        ("2026-11-29T12:00:00Z", dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)),
        ("2026-11-29T14:00:00+02:00", dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)),
    ],
)
def test_replay_targets(value: str, expected: dt.datetime | None) -> None:
    assert parse_replay_target(value) == expected


@pytest.mark.parametrize("value", ["latest", "yesterday", "2026-11-29T12:00:00", "2026-13-01T00:00:00Z", ""])
def test_bad_replay_targets(value: str) -> None:
    with pytest.raises(ConfigError, match="--from"):
        parse_replay_target(value)


def test_stage_groups_follow_the_settings() -> None:
    settings = Settings(
        kafka={"group_id": "g"},
        source={
            "customers": {"topic": "crm.c"},
            "children": [{"name": "groups", "topic": "crm.g", "customer_key": "cid", "key": ["cid", "gid"]}],
        },
        state={"changes_topic": "chg"},
        output={"upserts_topic": "ups"},
    )
    merge, deliver = stage_groups(settings)
    assert (merge.stage, merge.group, merge.topics) == ("merge", "g", ("crm.c", "crm.g", "chg"))
    assert (deliver.stage, deliver.group, deliver.topics) == ("deliver", "g-deliver", ("ups",))
    assert stage_group(settings, "deliver") == deliver
    assert [merge.key_of(t) for t in merge.topics] == [
        "source.customers.topic",
        "source.children[0].topic",
        "state.changes_topic",
    ]
    assert deliver.key_of("ups") == "output.upserts_topic"


class _Topic:
    error = None
    partitions = {0: None}


class _AdminWithout:
    """A cluster that has every topic but the configured customers topic."""

    def __init__(self, conf: object) -> None:
        pass

    def list_topics(self, timeout: float | None = None) -> object:
        return type(
            "Metadata",
            (),
            {"topics": {"yespo-connector.changes": _Topic(), "crm.public.customer_groups": _Topic()}},
        )()


def test_replay_of_a_missing_topic_names_the_config_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(replay_command, "AdminClient", _AdminWithout)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["replay", "-c", str(REPO_EXAMPLE), "--from", "earliest", "--dry-run"])
    assert exit_info.value.code != 0
    out = capsys.readouterr()
    assert "source.customers.topic: topic 'crm.public.customers' of the merge stage does not exist" in (
        out.out + out.err
    )


def test_rebuild_plan_of_a_missing_topic_names_the_config_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from connector.errors import ConfigError
    from connector.ops import offsets as offsets_module
    from connector.ops.rebuild import plan_offsets

    monkeypatch.setattr(offsets_module, "_live_members", lambda admin, group, timeout: 0)
    with pytest.raises(ConfigError) as info:
        plan_offsets(_AdminWithout(None), load_settings(REPO_EXAMPLE), require_empty=False)  # type: ignore[arg-type]
    assert info.value.key == "source.customers.topic"


@pytest.mark.parametrize(
    "command", ["run", "decode", "dry-run", "validate-config", "lag", "replay", "resync"]
)
def test_every_config_reading_command_names_its_environment_variables(command, capsys) -> None:
    from connector.cli import main as cli_main

    with pytest.raises(SystemExit) as info:
        cli_main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "YESPO_CONNECTOR_" in out


def test_a_merge_replay_to_a_later_time_never_moves_the_changes_topic_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import datetime as dt

    from connector.ops import offsets as offsets_module
    from connector.ops.offsets import plan_reset
    from connector.ops.stages import stage_group

    settings = load_settings(REPO_EXAMPLE)

    class _All:
        def list_topics(self, timeout: float | None = None) -> object:
            names = [*settings.source.topics, settings.state.changes_topic]
            return type("Metadata", (), {"topics": {n: _Topic() for n in names}})()

    committed = {(t, 0): 5 for t in [*settings.source.topics, settings.state.changes_topic]}
    monkeypatch.setattr(offsets_module, "_live_members", lambda admin, group, timeout: 0)
    monkeypatch.setattr(offsets_module, "_committed", lambda admin, group, parts, timeout: dict(committed))
    monkeypatch.setattr(offsets_module, "_offsets", lambda admin, specs, timeout: dict.fromkeys(specs, 9))
    later = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    changes = settings.state.changes_topic
    plan = plan_reset(_All(), stage_group(settings, "merge"), later, never_forward=frozenset({changes}))  # type: ignore[arg-type]
    moved = {r.topic: (r.current, r.new) for r in plan.resets}
    assert moved[changes] == (5, 5)  # a change routed but not merged yet is not skipped
    assert moved[settings.source.customers.topic] == (5, 9)  # the source topics go where asked
    monkeypatch.setattr(offsets_module, "_offsets", lambda admin, specs, timeout: dict.fromkeys(specs, 2))
    back = plan_reset(_All(), stage_group(settings, "merge"), None, never_forward=frozenset({changes}))  # type: ignore[arg-type]
    assert {r.topic: r.new for r in back.resets}[changes] == 2  # backwards it moves: changes merged again
    # no offset committed on the changes partition yet (the stage stopped right after the transaction
    # that first routed into it): the group would start at its earliest offset, so must the replay
    del committed[(changes, 0)]
    monkeypatch.setattr(
        offsets_module,
        "_offsets",
        lambda admin, specs, timeout: {
            tp: 3 if type(s).__name__ == "EarliestSpec" else 9 for tp, s in specs.items()
        },
    )
    fresh = plan_reset(_All(), stage_group(settings, "merge"), later, never_forward=frozenset({changes}))  # type: ignore[arg-type]
    assert {r.topic: (r.current, r.new) for r in fresh.resets}[changes] == (None, 3)


@pytest.mark.parametrize(("stage", "kept"), [("merge", {"yespo-connector.changes"}), ("deliver", set())])
def test_replay_keeps_the_changes_topic_from_moving_forward_for_the_merge_stage_only(
    monkeypatch: pytest.MonkeyPatch, stage: str, kept: set[str]
) -> None:
    seen: dict[str, object] = {}

    def plan(admin: object, sg: object, target: object, **kw: object) -> None:
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(replay_command, "AdminClient", lambda conf: object())
    monkeypatch.setattr(replay_command, "plan_reset", plan)
    with pytest.raises(SystemExit):
        cli.main(["replay", "-c", str(REPO_EXAMPLE), "--stage", stage, "--from", "earliest", "--dry-run"])
    assert seen["never_forward"] == kept


@pytest.mark.parametrize(
    "value", ["1969-12-31T23:59:59.999Z", "1969-12-31T23:59:59.998Z", "9999-12-31T23:00:00-02:00"]
)
def test_a_time_kafka_cannot_express_is_a_config_error_naming_the_option(value: str) -> None:
    """Before 1970 the milliseconds go negative (-1: latest, -2: earliest to ListOffsets)."""
    from connector.errors import ConfigError
    from connector.ops.offsets import parse_time

    with pytest.raises(ConfigError, match="--from"):
        parse_time(value, "--from")
    assert parse_time("1970-01-01T00:00:00Z", "--from").timestamp() == 0
