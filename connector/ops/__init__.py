"""Operator tooling: consumer-lag reading and status, offset resets for replay, graceful shutdown."""

from __future__ import annotations

__all__: list[str] = []
