"""Every bulk import a batch started is awaited before the batch is final, also after a failed wait.

Yespo applies bulk imports asynchronously, "in a different order or concurrently": an import still
queued when an attempt gave up waiting for it (the wait timed out, a status poll was refused or
unreadable, a later half of a bisection raised) can apply after the retry's import, after the batch
was committed and after the next batch sent a newer version of the contact. The double below applies
each import only once it is due, whatever the order they were sent in.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from connector.config import ContactMapping, YespoSettings
from connector.errors import RetryableDeliveryError
from connector.models import RawRecord
from connector.sink.batch_state import Batch
from connector.sink.client import YespoClient
from connector.sink.delivery import BatchDelivery
from connector.sink.recorder import DeliverStats, OutcomeRecorder
from connector.sink.upserts import read_upsert
from tests.stubs import ManualClock

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "external_id",
        "firstName": "first_name",
        "channels": [{"type": "email", "column": "email"}],
    }
)


class QueueingYespo:
    """Bulk imports wait in a queue; each applies once due (`slow` ones at `slow_until`), in any order.

    `answers` are the next bulk answers before the default (200 and a new import), as (status, slow);
    `polls` the next import-status answers before the import's own status (an HTTP status, or "{");
    `broken` sessions whose status answers that HTTP status (404: evicted, as the stand-in forgets
    old sessions; 503: unreadable).
    """

    def __init__(self, clock: ManualClock, slow_until: float = 30.0) -> None:
        self.clock = clock
        self.slow_until = slow_until
        self.imports: dict[str, tuple[float, list[dict[str, Any]]]] = {}  # sid -> (due, contacts)
        self.applied: list[str] = []
        self.names: dict[str, str] = {}  # externalCustomerId -> the firstName in effect
        self.answers: list[tuple[int, bool]] = []
        self.polls: list[int | str] = []
        self.broken: dict[str, int] = {}
        self.log: list[str] = []

    def settle(self, until: float) -> None:
        """Apply every import due by `until`, in the order they fall due."""
        due = sorted(
            (t, sid) for sid, (t, _) in self.imports.items() if sid not in self.applied and t <= until
        )
        for _, sid in due:
            self.applied.append(sid)
            for c in self.imports[sid][1]:
                self.names[c["externalCustomerId"]] = c["firstName"]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.settle(self.clock.now)
        path = request.url.path
        if "/importstatus/" in path:
            sid = path.rsplit("/", 1)[1]
            self.log.append(f"poll {sid}")
            if sid in self.broken:
                return httpx.Response(self.broken[sid], text="Session not found")
            if self.polls:
                answer = self.polls.pop(0)
                return (
                    httpx.Response(answer, text="")
                    if isinstance(answer, int)
                    else httpx.Response(200, text=answer)
                )
            return httpx.Response(200, json={"status": "FINISHED" if sid in self.applied else "STARTED"})
        contacts = json.loads(request.content)["contacts"]
        status, slow = self.answers.pop(0) if self.answers else (200, False)
        self.log.append(f"post {[c['firstName'] for c in contacts]} -> {status}")
        if status != 200:
            return httpx.Response(status, text="refused")
        sid = f"s{len(self.imports) + 1}"
        self.imports[sid] = (self.slow_until if slow else self.clock.now, contacts)
        self.settle(self.clock.now)
        return httpx.Response(200, json={"asyncSessionId": sid})


def delivery(yespo: QueueingYespo, clock: ManualClock, import_error_attempts: int = 10) -> BatchDelivery:
    """Imports awaited 5 s per attempt, and at most 5 s x `import_error_attempts` (50 s) in all."""
    settings = YespoSettings(
        base_url="https://yespo.test", api_key=SecretStr("k-1234"), max_requests_per_second=200
    )
    client = YespoClient(
        httpx.Client(transport=httpx.MockTransport(yespo)), settings, MAPPING, clock=clock, sleep=clock.sleep
    )
    recorder = OutcomeRecorder(DeliverStats(), dlq_topic="dlq", audit_topic="audit")
    return BatchDelivery(
        client,
        recorder,
        mode="bulk",
        batch_size=10,
        poll_import_status=True,
        sleep=clock.sleep,
        import_timeout_s=5,
        import_error_attempts=import_error_attempts,
        clock=clock,
    )


def batch(*names: tuple[str, str], offset: int = 0) -> Batch:
    records = []
    for i, (cid, name) in enumerate(names):
        contact = {
            "externalCustomerId": f"ext-{cid}",
            "firstName": name,
            "channels": [{"type": "email", "value": f"{cid}@x.io"}],
        }
        value = {
            "op": "upsert",
            "customer_key": cid,
            "external_customer_id": f"ext-{cid}",
            "contact": contact,
        }
        record = read_upsert(RawRecord("upserts", 0, offset + i, cid.encode(), orjson.dumps(value)))
        assert record is not None
        records.append(record)
    return Batch(f"b{offset}", records, {("upserts", 0): offset + len(names)}, [])


def deliver(run: BatchDelivery, work: Batch, clock: ManualClock) -> int:
    """Attempt until the batch is final (as the stage does, 1 s between attempts); the attempts made."""
    for attempts in range(1, 100):
        try:
            run.attempt(work)
        except RetryableDeliveryError:
            clock.sleep(1.0)
            continue
        return attempts
    raise AssertionError("the batch never became final")


@pytest.mark.parametrize("failed_wait", ["timeout", 429, "{"])
def test_an_import_left_behind_by_a_failed_wait_is_awaited_before_the_batch_is_final(
    failed_wait: Any,
) -> None:
    clock = ManualClock()
    yespo = QueueingYespo(clock)
    yespo.answers = [(200, True)]  # Yespo is slow with the first import: due only at t=30
    if failed_wait != "timeout":
        yespo.polls = [failed_wait]  # its first status poll is refused or unreadable
    run = delivery(yespo, clock)
    first = batch(("a", "Anna"))
    attempts = deliver(run, first, clock)
    final_at = clock.now
    deliver(run, batch(("a", "Berta"), offset=1), clock)  # the customer's next change
    yespo.settle(until=float("inf"))  # whatever Yespo still holds applies at last
    assert yespo.names == {"ext-a": "Berta"}
    # the first batch was final only once its first import was over, and its retries sent nothing
    # before that: they awaited the import first
    assert final_at >= 30 and attempts > 2 and first.sessions == {}
    posts = [line for line in yespo.log if line.startswith("post")]
    assert posts == ["post ['Anna'] -> 200", "post ['Anna'] -> 200", "post ['Berta'] -> 200"]
    assert yespo.log.index("post ['Anna'] -> 200", 1) > max(
        i for i, x in enumerate(yespo.log) if x == "poll s1"
    )


def test_halves_accepted_before_a_later_half_failed_are_awaited_too() -> None:
    clock = ManualClock()
    yespo = QueueingYespo(clock)
    # the whole request is refused (400): its halves go one by one; the first is taken (a slow
    # import), the second meets a 503, so the bisection raises and its answer is never returned
    yespo.answers = [(400, False), (200, True), (503, False)]
    run = delivery(yespo, clock)
    first = batch(("a", "Anna"), ("b", "Bea"))
    with pytest.raises(RetryableDeliveryError):
        run.attempt(first)
    assert list(first.sessions) == ["s1"]  # told by the client as soon as the half was taken
    deliver(run, first, clock)
    final_at = clock.now
    deliver(run, batch(("a", "Alla"), offset=2), clock)
    yespo.settle(until=float("inf"))
    assert yespo.names == {"ext-a": "Alla", "ext-b": "Bea"}
    assert final_at >= 30 and yespo.applied[0] == "s1" and first.sessions == {}


def test_the_client_tells_each_import_as_its_answer_comes_also_when_a_later_request_raises() -> None:
    clock = ManualClock()
    yespo = QueueingYespo(clock)
    yespo.answers = [(400, False), (200, False), (429, False)]
    settings = YespoSettings(base_url="https://yespo.test", api_key=SecretStr("k-1234"))
    client = YespoClient(
        httpx.Client(transport=httpx.MockTransport(yespo)), settings, MAPPING, clock=clock, sleep=clock.sleep
    )
    told: list[str] = []
    contacts = [
        {"externalCustomerId": c, "firstName": c, "channels": [{"type": "email", "value": f"{c}@x.io"}]}
        for c in "ab"
    ]
    with pytest.raises(RetryableDeliveryError):
        client.send_bulk_isolating(contacts, on_session=told.append)
    assert told == ["s1"]
    outcome = client.send_bulk(contacts, on_session=told.append)
    assert told == ["s1", "s2"] and outcome.session_ids == ("s2",)


def posts(yespo: QueueingYespo) -> list[str]:
    return [line for line in yespo.log if line.startswith("post")]


def test_an_earlier_import_whose_status_answers_404_is_over_and_the_part_is_sent_again() -> None:
    """Yespo (the stand-in) forgets old sessions: a 404 for one left behind ends the wait on it."""
    clock = ManualClock()
    yespo = QueueingYespo(clock, slow_until=float("inf"))
    yespo.answers = [(200, True)]  # the first import never finishes while awaited ...
    run = delivery(yespo, clock, import_error_attempts=1000)  # a bound far away: the 404 decides
    work = batch(("a", "Anna"))
    with pytest.raises(RetryableDeliveryError):
        run.attempt(work)  # its wait timed out
    yespo.broken["s1"] = 404  # ... and is forgotten: its status answers 404 from now on
    clock.sleep(60.0)
    run.attempt(work)  # final: the dead session is dropped, the part sent again and awaited
    assert posts(yespo) == ["post ['Anna'] -> 200", "post ['Anna'] -> 200"]
    assert work.sessions == {} and yespo.applied == ["s2"]
    assert run._recorder.stats.results["import_session_dropped"] == 1


@pytest.mark.parametrize("status", ["running", 503])
def test_an_earlier_import_is_awaited_no_longer_than_the_bound_then_the_part_is_sent_again(
    status: Any,
) -> None:
    clock = ManualClock()
    yespo = QueueingYespo(clock, slow_until=float("inf"))  # the first import never finishes
    yespo.answers = [(200, True)]
    run = delivery(yespo, clock, import_error_attempts=3)  # bound: 5 s x 3
    assert run.session_bound_s == 15
    work = batch(("a", "Anna"))
    with pytest.raises(RetryableDeliveryError):
        run.attempt(work)  # its wait timed out
    if status != "running":
        yespo.broken["s1"] = status  # and its status cannot be read any more
    deliver(run, work, clock)
    assert posts(yespo) == ["post ['Anna'] -> 200", "post ['Anna'] -> 200"]
    assert work.sessions == {} and run._recorder.stats.results["import_session_dropped"] == 1
    # never longer than the bound (and the attempt's own wait) since the import was first seen
    assert 15 <= clock.now <= 15 + 5 + 1


def test_the_imports_of_an_abandoned_batch_are_awaited_before_any_later_attempt_sends() -> None:
    """A revocation, a stop or a give-up drops a batch whose import still runs at Yespo: the next
    batch (its records read again) must not overtake it."""
    clock = ManualClock()
    yespo = QueueingYespo(clock)
    yespo.answers = [(200, True)]  # Anna's import is due at t=30
    run = delivery(yespo, clock)
    first = batch(("a", "Anna"))
    with pytest.raises(RetryableDeliveryError):
        run.attempt(first)
    run.abandon(first)  # what the stage does on a revocation or a stop; nothing is polled
    assert first.sessions == {} and list(run.orphan_sessions) == ["s1"]
    deliver(run, batch(("a", "Berta"), offset=1), clock)  # read again: the newer write
    yespo.settle(until=float("inf"))
    assert yespo.names == {"ext-a": "Berta"} and yespo.applied == ["s1", "s2"]
    assert run.orphan_sessions == {}


def test_a_batch_given_up_hands_its_imports_to_the_later_attempts() -> None:
    clock = ManualClock()
    yespo = QueueingYespo(clock)
    yespo.answers = [(200, True)]
    run = delivery(yespo, clock)
    first = batch(("a", "Anna"))
    with pytest.raises(RetryableDeliveryError):
        run.attempt(first)
    run.give_up(first, "gave up")
    assert list(run.orphan_sessions) == ["s1"] and first.sessions == {}
    deliver(run, batch(("a", "Berta"), offset=1), clock)
    yespo.settle(until=float("inf"))
    assert yespo.names == {"ext-a": "Berta"}
