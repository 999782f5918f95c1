"""Garbage-collector settings for a running stage: start-up objects frozen, fewer young collections.

Stages keep many short-lived containers alive for a few hundred milliseconds (a poll round, a batch
on the wire) and, in the merge stage, every customer's state for the life of the process. With
CPython's defaults the collector walks them again and again. Everything this connector builds is
acyclic, so reference counting frees it whether the collector looks or not: a collaborator that calls
back into its owner gets a `weak_method`. (A cycle would also be freed by the collector on whatever
thread it runs, a librdkafka one included, and librdkafka aborts when a client is destroyed there.)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Final, ParamSpec, TypeVar

__all__ = ["GC_YOUNG_THRESHOLD", "CollectorTuning", "collector_tuning", "weak_method"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

logger = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD: Final = 10_000
"""Allocations between young collections while a stage runs (CPython's default is 700)."""


class CollectorTuning:
    """While a stage runs: start-up objects frozen, young collections every 10k allocations.

    Measured in the deliver stage: a batch keeps ~30 containers per contact alive for a few hundred
    ms (parsed records, the wire contacts, outcomes), so with the defaults the collector walked them
    again and again, and every full collection also walked the modules and clients of the whole
    process: 16 of 46 us per contact. The merge stage also freezes its restored state
    (`freeze_now`). Frozen objects are only skipped by the collector, never leaked: reference
    counting still frees them. The settings are process-wide, so the first stage to enter applies
    them and the last to leave restores them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = gc.get_threshold()
        self._unfreeze = False

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Apply the settings for the duration of the block (nested and concurrent uses share them)."""
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._saved = gc.get_threshold()
                # someone else's freeze (e.g. at process start) is not ours to undo afterwards
                self._unfreeze = gc.get_freeze_count() == 0
                gc.collect()
                gc.freeze()
                gen0, gen1, gen2 = self._saved
                gc.set_threshold(max(gen0, GC_YOUNG_THRESHOLD), gen1, gen2)
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    if self._unfreeze:
                        gc.unfreeze()
                    gc.set_threshold(*self._saved)

    def freeze_now(self) -> None:
        """Move everything alive now out of the collector's sight (e.g. state just restored).

        Only while the settings are applied, so the last user's exit undoes it with its own freeze.
        """
        with self._lock:
            if self._users > 0:
                gc.freeze()


collector_tuning = CollectorTuning()
"""The process's one instance: every stage enters it while it loops."""


def weak_method(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """A bound method's callable that does not keep its object alive.

    For a collaborator that calls back into the object that owns it: holding the bound method itself
    would make a reference cycle (owner -> collaborator -> method -> owner).

    Raises:
        ReferenceError: when called after the object was freed.
    """
    ref = weakref.WeakMethod(method)

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = ref()
        if bound is None:
            raise ReferenceError("the object of this callback was freed")
        return bound(*args, **kwargs)

    return call
