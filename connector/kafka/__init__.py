"""Thin wrappers around confluent-kafka: client configs, error translation, records, topics."""

from __future__ import annotations

__all__: list[str] = []
