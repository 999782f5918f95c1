"""Command groups of the CLI: one module each, discovered by `connector.cli`."""

from __future__ import annotations

__all__: list[str] = []
