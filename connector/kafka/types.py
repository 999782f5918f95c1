"""A Protocol in front of `confluent_kafka.Message`, which Python code cannot construct."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["MessageLike"]


class MessageLike(Protocol):
    """The parts of `confluent_kafka.Message` the connector reads."""

    def topic(self) -> str | None: ...  # noqa: D102
    def partition(self) -> int | None: ...  # noqa: D102
    def offset(self) -> int | None: ...  # noqa: D102
    def key(self) -> bytes | None: ...  # noqa: D102
    def value(self) -> bytes | None: ...  # noqa: D102
    def headers(  # noqa: D102
        self,
    ) -> dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...  # noqa: D102
    def error(self) -> Any: ...  # noqa: D102
