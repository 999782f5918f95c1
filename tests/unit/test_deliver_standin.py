"""The deliver stage against the in-process Yespo stand-in (its routes behind httpx.MockTransport).

Where the contract itself decides the outcome: Yespo answers 409 to a byte-identical
`POST /contact` within a minute of the first one, which is not the same as "this request is in
effect" when another write to the contact came in between.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.deliver import DeliverStage, inline_runner
from connector.merge import CustomerState, merge_change
from connector.models import RecordRef, SourcePosition
from connector.projection import MappingProjector, upsert_records
from connector.routing import CUSTOMERS, RoutedChange
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
    """A repeat of this process's own last write to the contact, answered 2xx (the same body sent
    again by a later record); not a retry after a lost answer (see `sink/test_single_lost_answer.py`)."""
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


def _merged(
    projector: MappingProjector, *changes: tuple[str, str, dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """The upserts records the merge stage writes for customer "1" from (source, row key, row) changes
    (row None: deleted), starting from no state."""
    state: CustomerState | None = None
    records: list[dict[str, Any]] = []
    for lsn, (source, row_key, row) in enumerate(changes, start=1):
        op = "upsert" if row is not None else "delete"
        position = SourcePosition("pg", (lsn, lsn))
        origin = RecordRef("t", 0, lsn)
        change = RoutedChange("1", source, row_key, op, row, position, 1, False, False, origin)
        out = merge_change(state, change, now_ms=1)
        projection = projector.project(out.state, moved=False)
        state = projection.state
        records += upsert_records(projection, change)
    return records


@pytest.mark.parametrize("mode", ["bulk", "single"])
def test_a_customer_re_created_without_its_segments_does_not_get_them_back(mode: str) -> None:
    """Yespo keeps a soft-deleted contact's segments and restores them with the contact: the merge
    stage's delete detaches them first, so the re-created customer (its delete marker expired: a
    fresh state, nothing to detach) ends without them, as in the source."""
    rig = StandinRig(mode=mode, batch_size=1)
    projector = MappingProjector(rig.settings.contact)
    row = {"id": 1, "external_id": "ext-1", "first_name": "Anna", "email": "anna@example.com"}
    member = {"customer_id": 1, "group_id": 7}
    lived = _merged(
        projector,
        (CUSTOMERS, "[1]", row),
        ("groups", "[1,7]", member),
        (CUSTOMERS, "[1]", None),
        ("groups", "[1,7]", None),  # ON DELETE CASCADE
    )
    recreated = _merged(projector, (CUSTOMERS, "[1]", {**row, "first_name": "Bea"}))
    for record in lived:
        rig.consumer.add(0, "1", record)
        rig.run_for(10)
    assert rig.stored("ext-1")["deleted"] and rig.stored("ext-1")["groups"] == []
    (record,) = recreated
    rig.consumer.add(0, "1", record)
    rig.run_for(70)
    stored = rig.stored("ext-1")
    assert not stored["deleted"] and stored["firstName"] == "Bea"
    assert stored["groups"] == [], "the segment the customer left came back with the restore"
    assert rig.consumer.committed_offsets() == {0: len(lived) + 1}


def _without_channels(record: dict[str, Any], name: str) -> dict[str, Any]:
    contact = {k: v for k, v in record["contact"].items() if k != "channels"}
    return {**record, "contact": {**contact, "firstName": name}}


@pytest.mark.parametrize("mode", ["bulk", "single"])
def test_a_contact_whose_channels_were_all_cleared_is_dead_lettered_and_keeps_its_channels(mode: str) -> None:
    """Yespo needs at least one channel, also to update a contact (spec section 3): a customer whose
    email and phone were both cleared cannot be written; its record goes to the DLQ with the reason
    and the contact stays as it was (docs/mapping.md, "A contact without channels")."""
    rig = StandinRig(mode=mode)
    for cid in "ab":
        rig.consumer.add(0, cid, up(cid, 1))
    rig.run_for(5)
    for cid in "ab":  # two of them in one request: Yespo's failedContacts entries look alike
        rig.consumer.add(0, cid, _without_channels(up(cid, 2), "Berta"))
    rig.consumer.add(0, "c", up("c", 1))
    rig.run_for(70)
    assert rig.results() == {
        0: "delivered",
        1: "delivered",
        2: "dlq:rejected",
        3: "dlq:rejected",
        4: "delivered",
    }
    assert all("at least one channel" in d["yespo.error.reason"] for d in rig.producer.dlq())
    for cid in "ab":
        stored = rig.stored(f"ext-{cid}")
        assert stored["channels"] == [{"type": "email", "value": f"c{cid}@example.com"}]
        assert stored["firstName"] == "Anna", "nothing of the refused update applies"
    assert rig.stored("ext-c")["firstName"] == "Anna"
    assert rig.consumer.committed_offsets() == {0: 5}


def _anonymous(cid: str, version: int, name: str, email: str) -> dict[str, Any]:
    """An upsert of a customer whose external id column is NULL: no externalCustomerId."""
    record = up(cid, version, name=name)
    contact = {k: v for k, v in record["contact"].items() if k not in ("externalCustomerId", "channels")}
    contact["channels"] = [{"type": "email", "value": email}]
    return {**record, "external_customer_id": None, "contact": contact}


def test_a_contact_without_an_external_id_is_updated_in_place_by_its_email() -> None:
    """Bulk matches it on its email (`dedupeOn: email`, rule 2), in a request of its own: written
    twice it stays one contact, and it never clears the id of a contact it matches."""
    rig = StandinRig(mode="bulk")
    rig.consumer.add(0, "n", _anonymous("n", 1, "Nina", "nina@example.com"))
    rig.consumer.add(0, "a", up("a", 1))
    rig.run_for(5)
    rig.consumer.add(0, "n", _anonymous("n", 2, "Nora", "nina@example.com"))
    rig.consumer.add(0, "a", up("a", 2, name="Berta"))
    rig.run_for(5)
    # a customer without an id whose email is another contact's (the one with an id)
    rig.consumer.add(0, "m", _anonymous("m", 1, "Mia", "ca@example.com"))
    rig.run_for(5)
    contacts = rig.app.store.dump()["contacts"]
    assert [(c["externalCustomerId"], c["firstName"]) for c in contacts] == [
        (None, "Nora"),
        ("ext-a", "Mia"),  # matched on the email: updated, its id kept
    ]
    assert set(rig.results().values()) == {"delivered"} and len(rig.results()) == 5
    assert rig.consumer.committed_offsets() == {0: 5}
