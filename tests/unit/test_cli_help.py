"""`--help` renders every command's text as written: paragraphs reflowed, nothing eaten as markup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from rich.text import Text
from typer.core import TyperGroup
from typer.testing import CliRunner

from connector.cli import app, reflowed


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "root" for p, _ in COMMANDS])
def test_help_texts_survive_rich_markup(path: tuple[str, ...], command: Any) -> None:
    # typer renders help with rich markup: "[default: 5432]" would vanish from the screen
    texts = [command.help or "", command.epilog or ""]
    texts += [getattr(param, "help", None) or "" for param in command.params]
    for text in texts:
        assert Text.from_markup(text).plain == text, (path, text)


def test_docstring_paragraphs_are_reflowed_in_help() -> None:
    result = CliRunner().invoke(app, ["resync", "--help"], env={"COLUMNS": "250"}, terminal_width=250)
    assert result.exit_code == 0
    # the docstring breaks this sentence after "only"; the help shows it on one line
    assert "Without --force only customers whose contact differs" in result.output


def test_reflowed_keeps_paragraphs_and_list_items() -> None:
    doc = """First line.

    Second paragraph
    goes on here.

    - item one
      continues
    - item two
    """
    assert reflowed(doc) == (
        "First line.\n\nSecond paragraph goes on here.\n\n- item one\n  continues\n- item two"
    )
