"""The stand-in's delayed bulk imports: a worker thread moves each session STARTED -> IMPORTING -> applied.

Used when the stand-in runs with a bulk delay, so that the deliver stage meets Yespo's asynchrony.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from connector.standin.records import BulkRequest, BulkResult
from connector.standin.store import ContactStore

__all__ = ["ImportJob", "ImportWorker"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImportJob:
    """A delayed bulk import: STARTED until `importing_at`, IMPORTING until `due`, then applied."""

    importing_at: float
    due: float
    sid: str
    request: BulkRequest
    problems: dict[int, str]
    fail: bool
    """An injected `fail_imports` fault: at `due` the import ends in ERROR, nothing applied."""


class ImportWorker:
    """Applies queued imports in order on one thread; one import's failure does not stop the later ones.

    Args:
        store: the account.
        clock: monotonic seconds, the clock of the jobs' moments.
        fail: ends a session in ERROR by an injected fault.
        applied: told what each applied import did (None: a reset forgot the session).
    """

    def __init__(
        self,
        store: ContactStore,
        clock: Callable[[], float],
        fail: Callable[[str], None],
        applied: Callable[[BulkResult | None], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._fail = fail
        self._applied = applied
        self._jobs: queue.Queue[ImportJob | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread was started (and not stopped)."""
        return self._thread is not None

    def start(self, sleep: Callable[[float], None]) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, args=(sleep,), name="standin-bulk", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread after the queued imports."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, job: ImportJob) -> None:
        """Queue an import."""
        self._jobs.put(job)

    def _work(self, sleep: Callable[[float], None]) -> None:
        def until(moment: float) -> None:
            wait = moment - self._clock()
            if wait > 0:
                sleep(wait)

        with contextlib.suppress(ReferenceError):  # the app that gets the results was freed: stop
            self._loop(until)

    def _loop(self, until: Callable[[float], None]) -> None:
        while (job := self._jobs.get()) is not None:
            until(job.importing_at)
            if not self._store.set_session(job.sid, "IMPORTING"):
                continue  # reset since it was queued
            until(job.due)  # without the store lock: a status poll sees IMPORTING meanwhile
            if job.fail:
                self._fail(job.sid)
                continue
            try:
                result = self._store.run_import(job.sid, job.request, job.problems)
            except Exception as exc:  # one import's failure must not stop the later ones
                logger.error("stand-in import failed: %s", type(exc).__name__)
                self._store.set_session(job.sid, "ERROR")
                continue
            self._applied(result)
