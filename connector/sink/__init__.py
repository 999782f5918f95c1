"""The deliver stage's Yespo side: wire translation, HTTP client, batch planning, retry and rate limit."""

from __future__ import annotations

__all__: list[str] = []
