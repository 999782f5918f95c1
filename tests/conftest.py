"""Shared test set-up: environment isolation; integration fixtures are registered as plugins."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins: list[str] = []


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No YESPO_CONNECTOR_* or YESPO_API_KEY variable leaks into a test from the caller's shell."""
    for name in list(os.environ):
        if name.upper().startswith("YESPO_CONNECTOR_") or name == "YESPO_API_KEY":  # read case-insensitively
            monkeypatch.delenv(name, raising=False)
    yield
