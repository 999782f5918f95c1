"""Bulk imports awaited by the deliver stage: status polling, and imports left behind by earlier attempts.

Yespo applies bulk imports asynchronously and in any order, so an import still queued could overtake a
later write of its contacts: every import a batch starts is awaited until it is over (or dropped).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from connector.errors import RetryableDeliveryError
from connector.sink.batch_state import Batch
from connector.sink.client import YespoClient
from connector.sink.recorder import OutcomeRecorder

__all__ = ["ImportSessions"]

logger = logging.getLogger(__name__)


class ImportSessions:
    """The bulk imports a `BatchDelivery` awaits: its batches' and those of abandoned batches.

    Args:
        client: the Yespo client (`import_status`).
        recorder: counts imports in ERROR and dropped ones.
        sleep: how to wait between import-status requests.
        clock: monotonic seconds, for how long an import left behind has been awaited.
        import_timeout_s: how long an attempt waits at most for an import (`yespo.import_status_timeout_s`).
        session_bound_s: how long after it was first seen an import left behind is still awaited.

    Thread-safe: the abandoned batches' imports are shared by the stage's worker threads.
    """

    def __init__(
        self,
        client: YespoClient,
        recorder: OutcomeRecorder,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        import_timeout_s: float,
        session_bound_s: float,
    ) -> None:
        self._client = client
        self._recorder = recorder
        self._sleep = sleep
        self._clock = clock
        self._import_timeout_s = import_timeout_s
        self.session_bound_s = session_bound_s
        """How long after it was first seen an import left behind is still awaited."""
        self._orphans_lock = threading.Lock()
        self._orphans: dict[str, float] = {}
        """Imports of abandoned batches not known to be over, with when each was first seen."""

    def abandon(self, batch: Batch) -> None:
        """Keep the imports `batch` still awaits: every later attempt awaits them first.

        Called for a batch the stage drops (a revocation, a stop) or gives up on: its records are
        read again (or were dead-lettered), and an import of it still queued at Yespo must not
        apply after their next write. Never blocks (nothing is polled here).
        """
        if not batch.sessions:
            return
        with self._orphans_lock:
            for sid, seen in batch.sessions.items():
                self._orphans.setdefault(sid, seen)
        batch.sessions = {}

    @property
    def orphans(self) -> dict[str, float]:
        """The imports of abandoned batches still awaited (a copy), with when each was first seen."""
        with self._orphans_lock:
            return dict(self._orphans)

    def await_left_behind(self, batch: Batch) -> None:
        """Wait until the imports of abandoned batches and of `batch`'s earlier attempts are over.

        Raises:
            RetryableDeliveryError: one is still running (or unreadable) when the attempt's wait
                (`import_timeout_s` for all of them) is spent, not yet past `session_bound_s`.
        """
        # imports left behind, by abandoned batches and by this batch's earlier attempts: over
        # before anything else is sent (their contacts are sent again, or were delivered: their
        # outcome changes nothing else); each awaited within `session_bound_s` of being first seen
        budget = self._import_timeout_s  # the attempt's wait for them, shared by every one
        if self._orphans:
            budget = self._await_earlier(self._orphans, None, budget)
        if batch.sessions:
            self._await_earlier(batch.sessions, "import_error", budget)

    def track(self, batch: Batch, session_id: str) -> None:
        """Keep an import the client was told of in `batch.sessions`, with when it was first seen."""
        batch.sessions.setdefault(session_id, self._clock())

    def poll(self, batch: Batch, session_ids: tuple[str, ...], counted_as: str) -> bool:
        """Wait until each import of this attempt is over; True when one ended in ERROR (send it again).

        Polls back off from 0.25 s to 5 s. An import in ERROR was not applied by Yespo; it is
        counted as `counted_as` (a probe's apart: it says Yespo fails imports, not a contact). An
        import is dropped from `batch.sessions` once over, not before.

        Raises:
            RetryableDeliveryError: an import still running after `import_timeout_s`, or whose
                status cannot be read (a 404 included: Yespo may not know a session yet): the part
                is sent again on the batch's retry (upserts are idempotent), so its records are
                never counted as delivered unapplied; the retry first awaits the imports still in
                `batch.sessions` (`_await_earlier`).
        """
        failed = False
        for sid in session_ids:  # every one awaited: one still queued could overtake a later write
            waited, delay = 0.0, 0.25
            while True:
                status = self._client.import_status(sid, mapping=False)
                if status.finished:
                    batch.sessions.pop(sid, None)
                    if status.failed:
                        logger.error("bulk import ended in ERROR", extra={"session": sid})
                        self._recorder.count(counted_as)
                        failed = True
                    break
                if waited >= self._import_timeout_s:
                    raise RetryableDeliveryError(
                        f"bulk import not finished after {self._import_timeout_s:g} s"
                    )
                self._sleep(delay)
                waited += delay
                delay = min(delay * 1.5, 5.0)
        return failed

    def _await_earlier(self, sessions: dict[str, float], counted_as: str | None, budget: float) -> float:
        """Wait until each import left behind in `sessions` is over or dropped; the budget left.

        `sessions` is a batch's (`counted_as`: how an ERROR is counted) or the abandoned batches'
        (None: an ERROR there is nobody's contact failure). An import is over once FINISHED or
        ERROR, or when its status answers 404 (Yespo no longer knows the session: evicted, or long
        over). One first seen more than `session_bound_s` ago is dropped once its status still says
        it runs or cannot be read: the wait on it ends, its contacts are sent again (a batch must
        not stall on a session for longer). `budget` is what is left of the attempt's wait for
        them (seconds slept; `import_timeout_s` for all of them).

        Raises:
            RetryableDeliveryError: an import still running (or unreadable) when the budget is spent,
                not yet past its bound: the batch's retry awaits it again.
        """
        delay = 0.25
        with self._orphans_lock:  # the abandoned batches' are shared by the workers
            todo = list(sessions.items())
        for sid, seen in todo:
            while sid in sessions:  # else another worker saw it end
                try:
                    status = self._client.import_status(sid, mapping=False)
                except RetryableDeliveryError as exc:
                    if exc.status_code == 404:
                        self._drop(sessions, sid, "Yespo does not know the session (404)")
                        break
                    if self._clock() - seen >= self.session_bound_s:
                        self._drop(sessions, sid, f"status unreadable for {self.session_bound_s:g} s")
                        break
                    raise
                if status.finished:
                    with self._orphans_lock:
                        sessions.pop(sid, None)
                    if status.failed and counted_as is not None:
                        logger.error("bulk import ended in ERROR", extra={"session": sid})
                        self._recorder.count(counted_as)
                    break
                if self._clock() - seen >= self.session_bound_s:
                    self._drop(sessions, sid, f"not finished {self.session_bound_s:g} s after it was sent")
                    break
                if budget <= 0:
                    raise RetryableDeliveryError(
                        f"earlier bulk import not finished after {self._import_timeout_s:g} s"
                    )
                wait = min(delay, budget)
                self._sleep(wait)
                budget -= wait
                delay = min(delay * 1.5, 5.0)
        return budget

    def _drop(self, sessions: dict[str, float], sid: str, why: str) -> None:
        """Stop awaiting import `sid` (its contacts are sent again); logged and counted."""
        with self._orphans_lock:
            sessions.pop(sid, None)
        logger.warning("no longer awaiting an earlier bulk import", extra={"session": sid, "reason": why})
        self._recorder.count("import_session_dropped")
