"""Per-customer state: the local store, its transactional overlay, its codec and its recovery."""

from __future__ import annotations

__all__: list[str] = []
