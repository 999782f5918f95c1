"""The deliver stage against the in-process Yespo stand-in (its routes behind httpx.MockTransport).

Where the contract itself decides the outcome: Yespo answers 409 to a byte-identical
`POST /contact` within a minute of the first one, which is not the same as "this request is in
effect" when another write to the contact came in between.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.deliver_stage import DeliverStage, inline_runner
from connector.sink.client import YespoClient
from connector.standin.faults import Faults
from connector.standin.routes import StandInApp
from connector.standin.store import ContactStore
from connector.standin.validation import RequestValidator, load_spec
from tests.unit.test_deliver_stage import KEY, FakeClock, FakeConsumer, FakeProducer, delete, settings, up

_VALIDATOR = RequestValidator(load_spec())
REPEAT_WINDOW_S = 60.0  # "Repeated request within 1 minute" (spec: yespo-contacts-api.md, 409)


class StandinRig:
    """DeliverStage on the unit tests' Kafka doubles, talking to the stand-in's request handler."""

    def __init__(self, **yespo: Any) -> None:
        self.clock = FakeClock()
        self.app = StandInApp(
            api_key=KEY,
            store=ContactStore(groups={7: "VIP"}),
            validator=_VALIDATOR,
            faults=Faults(self.clock),
            clock=self.clock,
            rate_limit=None,
        )
        self.settings = settings(**yespo)
        http = httpx.Client(transport=httpx.MockTransport(self._handle))
        self.requests: list[tuple[str, int]] = []
        client = YespoClient(
            http, self.settings.yespo, self.settings.contact, clock=self.clock, sleep=self.clock.sleep
        )
        self.consumer = FakeConsumer([], 1)
        self.producer = FakeProducer([])
        self.stage = DeliverStage(
            self.settings,
            client=client,
            clock=self.clock,
            wall_ms=lambda: 1,
            consumer_factory=lambda conf: self.consumer,
            producer_factory=lambda conf: self.producer,
            sleep=self.clock.sleep,
            runner=inline_runner,
            topic_limits=lambda topics: {},
        )
        self.stage.start()

    def _handle(self, request: httpx.Request) -> httpx.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        reply = self.app.handle(
            request.method, request.url.path, dict(request.url.params), headers, request.content
        )
        self.requests.append((f"{request.method} {request.url.path.removeprefix('/api/v1')}", reply.status))
        return httpx.Response(
            reply.status, content=reply.body, headers={"content-type": reply.content_type, **reply.headers}
        )

    def run_for(self, seconds: float, step_s: float = 5.0) -> None:
        """Step the stage while the clock moves on by `seconds`."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.stage.step()
            self.clock.now += step_s

    def stored(self, ext: str) -> dict[str, Any]:
        (found,) = [c for c in self.app.store.dump()["contacts"] if c["externalCustomerId"] == ext]
        return found

    def results(self) -> dict[int, str]:
        return {a["source"]["offset"]: a["result"] for a in self.producer.audit()}


def test_a_409_for_a_request_another_write_replaced_is_sent_again_after_the_minute() -> None:
    """A, B, then A again within a minute: Yespo refuses the second A (409) and keeps B."""
    rig = StandinRig(mode="single", batch_size=1)
    for version, name in enumerate(["Anna", "Berta", "Anna"], start=1):
        rig.consumer.add(0, "a", up("a", version, name=name))
    rig.run_for(15)
    assert ("POST /contact", 409) in rig.requests
    assert rig.consumer.committed_offsets() == {0: 2}, "the refused write is not committed"
    assert rig.stored("ext-a")["firstName"] == "Berta"
    rig.run_for(REPEAT_WINDOW_S + 10)
    assert rig.stored("ext-a")["firstName"] == "Anna"
    assert rig.consumer.committed_offsets() == {0: 3}
    assert rig.results() == {0: "delivered", 1: "delivered", 2: "delivered"}


def test_an_upsert_repeated_after_a_delete_within_the_minute_brings_the_contact_back() -> None:
    rig = StandinRig(mode="single", batch_size=1)
    rig.consumer.add(0, "b", up("b", 1))
    rig.consumer.add(0, "b", {**delete("b"), "version": 2})
    rig.consumer.add(0, "b", up("b", 3))
    rig.run_for(15)
    assert rig.stored("ext-b")["deleted"]
    rig.run_for(REPEAT_WINDOW_S + 10)
    assert not rig.stored("ext-b")["deleted"]
    assert rig.consumer.committed_offsets() == {0: 3}


def test_a_409_for_the_write_in_effect_counts_as_delivered_at_once() -> None:
    """A repeat of this process's own last write to the contact (a retry after a lost answer)."""
    rig = StandinRig(mode="single", batch_size=1)
    rig.consumer.add(0, "c", up("c", 1, name="Cid"))
    rig.run_for(5)
    rig.consumer.add(0, "c", up("c", 2, name="Cid"))  # the same contact again: the same body
    rig.run_for(5)
    assert rig.requests == [("GET /account/info", 200), ("POST /contact", 200), ("POST /contact", 409)]
    assert rig.consumer.committed_offsets() == {0: 2}
    assert rig.results() == {0: "delivered", 1: "delivered"}
    assert rig.stored("ext-c")["firstName"] == "Cid"


def test_a_409_after_a_restart_is_sent_again_after_the_minute() -> None:
    """A restarted process (or a partition's new owner) never saw the earlier writes: the 409 may
    repeat a write another one replaced, so the record waits out the minute and is sent again."""
    rig = StandinRig(mode="single", batch_size=1)
    rig.consumer.add(0, "c", up("c", 1, name="Cid"))
    rig.run_for(5)
    again = StandinRig(mode="single", batch_size=1)  # a restarted process: no memory of the write
    again.app = rig.app
    again.consumer.add(0, "c", up("c", 1, name="Cid"))
    again.run_for(5)
    assert again.requests == [("GET /account/info", 200), ("POST /contact", 409)]
    assert again.consumer.committed_offsets() == {}
    rig.clock.now += REPEAT_WINDOW_S + 5  # the stand-in's clock (it came with `rig.app`)
    again.run_for(REPEAT_WINDOW_S + 5)
    assert again.requests[2:] == [("POST /contact", 200)]
    assert again.consumer.committed_offsets() == {0: 1}
    assert again.results() == {0: "delivered"}
    assert rig.stored("ext-c")["firstName"] == "Cid"


@pytest.mark.parametrize(
    ("mode", "refused"), [("bulk", ("POST /contacts", 200)), ("single", ("POST /contact", 400))]
)
def test_a_soft_delete_followed_by_a_rejected_upsert_still_deletes_the_contact(
    mode: str, refused: tuple[str, int]
) -> None:
    """The planner sends only the last upsert of a customer (it restores a soft-deleted contact); when
    Yespo rejects it, the delete before it is the last record that applies: Yespo gets the delete."""
    rig = StandinRig(mode=mode)
    rig.consumer.add(0, "a", up("a", 1))
    rig.run_for(5)
    assert not rig.stored("ext-a")["deleted"]
    rig.consumer.add(0, "a", up("a", 2, name="Berta"))
    rig.consumer.add(0, "a", {**delete("a"), "version": 3})
    rig.consumer.add(0, "a", up("a", 4, email="bad-address"))  # Yespo rejects it (failedContacts)
    rig.run_for(5)
    assert rig.requests[-2:] == [refused, ("DELETE /contact", 200)]
    stored = rig.stored("ext-a")
    assert stored["deleted"] and stored["firstName"] == "Anna"
    assert rig.results() == {0: "delivered", 1: "superseded", 2: "deleted", 3: "dlq:rejected"}
    (dead,) = rig.producer.dlq()
    assert (
        dead["yespo.source.offset"] == "3" and "channels: invalid email address" in dead["yespo.error.reason"]
    )
    assert rig.consumer.committed_offsets() == {0: 4}
