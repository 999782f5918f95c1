"""The local state store seam (`StateStore`) and its transactional overlay (`StateTransaction`).

State changes made inside a Kafka transaction are buffered in the overlay and reach the store only
after the transaction commits; an abort drops them. `MemoryStore` is the in-memory implementation; a
disk-backed one can implement the same five methods.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator

from connector.merge import CustomerState

__all__ = ["MemoryStore", "StateStore", "StateTransaction"]

logger = logging.getLogger(__name__)


class StateStore(abc.ABC):
    """Committed per-customer state, partitioned like the changes/state topics."""

    @abc.abstractmethod
    def get(self, partition: int, key: str) -> CustomerState | None:
        """The committed state of `key`, or None."""

    @abc.abstractmethod
    def put(self, partition: int, key: str, state: CustomerState | None) -> None:
        """Set (None: delete) the committed state of `key`."""

    @abc.abstractmethod
    def drop_partition(self, partition: int) -> None:
        """Forget a partition (revoked from this process)."""

    @abc.abstractmethod
    def items(self, partition: int) -> Iterator[tuple[str, CustomerState]]:
        """Every (key, state) of a partition."""

    @abc.abstractmethod
    def size(self, partition: int | None = None) -> int:
        """Number of customers held in `partition`, or in all partitions."""


class MemoryStore(StateStore):
    """A dict per partition."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, CustomerState]] = {}

    def get(self, partition: int, key: str) -> CustomerState | None:  # noqa: D102
        part = self._parts.get(partition)
        return part.get(key) if part is not None else None

    def put(self, partition: int, key: str, state: CustomerState | None) -> None:  # noqa: D102
        part = self._parts.setdefault(partition, {})
        if state is None:
            part.pop(key, None)
        else:
            part[key] = state

    def drop_partition(self, partition: int) -> None:  # noqa: D102
        self._parts.pop(partition, None)

    def items(self, partition: int) -> Iterator[tuple[str, CustomerState]]:  # noqa: D102
        yield from list(self._parts.get(partition, {}).items())

    def size(self, partition: int | None = None) -> int:  # noqa: D102
        if partition is not None:
            return len(self._parts.get(partition, ()))
        return sum(len(p) for p in self._parts.values())


_DELETED = object()


class StateTransaction:
    """Buffered writes over a `StateStore`, applied by `commit()` only."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._pending: dict[tuple[int, str], CustomerState | None] = {}

    def get(self, partition: int, key: str) -> CustomerState | None:
        """The state as this transaction sees it (its own writes first)."""
        k = (partition, key)
        if k in self._pending:
            return self._pending[k]
        return self._store.get(partition, key)

    def put(self, partition: int, key: str, state: CustomerState | None) -> None:
        """Buffer a write."""
        self._pending[(partition, key)] = state

    def __len__(self) -> int:
        return len(self._pending)

    def commit(self) -> None:
        """Apply the buffered writes to the store (call after the Kafka commit succeeded)."""
        for (partition, key), state in self._pending.items():
            self._store.put(partition, key, state)
        self._pending.clear()

    def abort(self) -> None:
        """Drop the buffered writes."""
        self._pending.clear()

    def drop_partition(self, partition: int) -> None:
        """Forget buffered writes of a partition."""
        for k in [k for k in self._pending if k[0] == partition]:
            del self._pending[k]
