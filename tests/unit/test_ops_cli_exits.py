"""Exit codes of the ops commands: a one-shot `lag` prints its sample before exit 1; usage errors exit 2."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector import cli
from connector.commands import lag as lag_command
from connector.ops.lag import GroupLag, PartitionLag

from .test_config import REPO_EXAMPLE
from .test_config_errors import clean_logs  # noqa: F401 (a fixture)

TAKEN_AT = 1_800_000_000.0
DESCRIBE_FAILED = "cannot describe consumer group 'yespo-connector-deliver': timed out"


def _exit_code(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code


class _DeliverGroupUnreadable:
    """The merge group reads fine; describing the deliver group times out."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> _DeliverGroupUnreadable:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read(self, sg: Any) -> GroupLag:
        if sg.stage == "merge":
            row = PartitionLag("crm.public.customers", 0, 5, 0, 10, 5, 3.0)
            return GroupLag("merge", sg.group, "STABLE", 1, (row,), TAKEN_AT)
        return GroupLag(sg.stage, sg.group, "UNKNOWN", 0, (), TAKEN_AT, error=DESCRIBE_FAILED)


@pytest.mark.usefixtures("clean_logs")
def test_lag_json_prints_every_group_then_exits_1_when_one_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lag_command, "LagReader", _DeliverGroupUnreadable)
    assert _exit_code(["lag", "-c", str(REPO_EXAMPLE), "--json"]) == 1
    out = capsys.readouterr()
    merge, deliver = json.loads(out.out)["groups"]
    assert (merge["stage"], merge["status"], merge["error"]) == ("merge", "OK", None)
    assert merge["partitions"][0]["lag"] == 5
    assert (deliver["stage"], deliver["status"], deliver["error"]) == ("deliver", "ERROR", DESCRIBE_FAILED)
    assert deliver["partitions"] == []
    [line] = out.err.splitlines()
    assert line.startswith("KafkaError: 1 group(s) with status ERROR (cannot describe consumer group ")
    assert line.endswith("group yespo-connector-deliver)")


@pytest.mark.usefixtures("clean_logs")
def test_lag_table_prints_every_group_then_exits_1_when_one_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lag_command, "LagReader", _DeliverGroupUnreadable)
    assert _exit_code(["lag", "-c", str(REPO_EXAMPLE)]) == 1
    out = capsys.readouterr()
    assert "merge  group yespo-connector  state STABLE  members 1  status OK" in out.out
    assert "crm.public.customers" in out.out
    assert "deliver  group yespo-connector-deliver  state UNKNOWN  members 0  status ERROR" in out.out
    assert f"error: {DESCRIBE_FAILED}" in out.out
    assert out.err.startswith("KafkaError: 1 group(s) with status ERROR")


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["run", "--stage", "foo"], "--stage"),
        (["validate-config", "--stage", "foo"], "--stage"),
        (["resync", "--since", "2026-11-29T12:00:00Z"], "--since"),
        (["resync", "--with-erases"], "--with-erases"),
    ],
)
def test_a_usage_mistake_exits_2_naming_the_option_once(
    capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    """docs/operations.md: errors exit 1, usage errors exit 2 (as typer's own option checks do)."""
    assert _exit_code([*argv, "-c", str(REPO_EXAMPLE)]) == 2
    err = capsys.readouterr().err
    assert f"Invalid value for {option}: " in err
    assert err.count(option) == 1  # not `--stage: --stage must be ...`
    assert "ConfigError" not in err
