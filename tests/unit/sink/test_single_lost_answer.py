"""Single mode: a write whose answer was lost leaves the contact's last write unknown.

A 409 proves that an identical body came within the minute, not that the lost attempt arrived and
applied (A, B, then A lost: the retry's 409 may repeat the first A while Yespo keeps B). So no 409
counts as delivered until a write of the contact is answered again, not even the lost write's own
retry: it waits out the minute and is sent again.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.errors import RetryableDeliveryError
from tests.unit.sink.test_client import Recorder, contact, make_client
from tests.unit.test_deliver_stage import up
from tests.unit.test_deliver_standin import REPEAT_WINDOW_S, StandinRig

OK = httpx.Response(200, json={"id": 7})
REPEAT = httpx.Response(409, text="Duplicated request")


def _lost(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


LOST_ANSWERS = {
    "timeout": _lost,
    "503": httpx.Response(503, text="unavailable"),
    "504": httpx.Response(504, text="gateway timeout"),
    "408": httpx.Response(408, text="request timeout"),
}


def _repeat_window(exc: pytest.ExceptionInfo[RetryableDeliveryError]) -> None:
    assert exc.value.status_code == 409
    assert exc.value.retry_after is not None and exc.value.retry_after > REPEAT_WINDOW_S


@pytest.mark.parametrize("lost", LOST_ANSWERS.values(), ids=LOST_ANSWERS.keys())
def test_a_409_on_the_retry_of_a_lost_write_is_sent_again_after_the_minute(lost: Any) -> None:
    client = make_client(Recorder(lost, REPEAT, OK, REPEAT))
    with pytest.raises(RetryableDeliveryError):
        client.send_single(contact("a"))
    with pytest.raises(RetryableDeliveryError) as err:
        client.send_single(contact("a"))  # the retry: the 409 may be about an earlier identical body
    _repeat_window(err)
    assert client.send_single(contact("a")).contact_id == 7  # after the minute: answered
    assert client.send_single(contact("a")).reason == "duplicate"  # known again: a repeat counts


@pytest.mark.parametrize("lost", LOST_ANSWERS.values(), ids=LOST_ANSWERS.keys())
def test_a_lost_write_in_between_stops_a_409_counting_for_the_write_before_it(lost: Any) -> None:
    # A answered, B lost (it may have applied), A again within the minute: Yespo may keep B
    client = make_client(Recorder(OK, lost, REPEAT))
    assert client.send_single(contact("a")).ok
    with pytest.raises(RetryableDeliveryError):
        client.send_single(contact("a", "berta@example.com"))
    with pytest.raises(RetryableDeliveryError) as err:
        client.send_single(contact("a"))
    _repeat_window(err)


def test_a_lost_delete_stops_a_409_counting_for_the_write_before_it() -> None:
    # A answered, its delete lost (the contact may be gone), A again: the 409 does not bring it back
    client = make_client(Recorder(OK, _lost, REPEAT))
    assert client.send_single(contact("a")).ok
    with pytest.raises(RetryableDeliveryError):
        client.delete("a", erase=False)
    with pytest.raises(RetryableDeliveryError) as err:
        client.send_single(contact("a"))
    _repeat_window(err)


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(429, text="slow down"),
        httpx.Response(400, text="channels: invalid"),
        httpx.Response(409, text="Duplicated request"),
    ],
    ids=["429", "400", "409"],
)
def test_a_refused_write_in_between_keeps_the_last_write(refusal: httpx.Response) -> None:
    # Yespo applied nothing of B: a 409 for A again still repeats the write in effect
    client = make_client(Recorder(OK, refusal, REPEAT))
    assert client.send_single(contact("a")).ok
    if refusal.status_code == 400:
        assert not client.send_single(contact("a", "berta@example.com")).ok
    else:
        with pytest.raises(RetryableDeliveryError):
            client.send_single(contact("a", "berta@example.com"))
    assert client.send_single(contact("a")).reason == "duplicate"


class _LosingRig(StandinRig):
    """The stand-in applies the first `POST /contact`, and its answer is lost."""

    lose = 1

    def _handle(self, request: httpx.Request) -> httpx.Response:
        response = super()._handle(request)
        if self.lose and request.method == "POST" and request.url.path.endswith("/contact"):
            self.lose -= 1
            raise httpx.ReadTimeout("timed out", request=request)
        return response


def test_the_stage_sends_a_write_whose_answer_was_lost_again_after_the_minute() -> None:
    rig = _LosingRig(mode="single", batch_size=1)
    rig.consumer.add(0, "a", up("a", 1, name="Anna"))
    rig.run_for(10, step_s=0.5)
    assert rig.requests[1:] == [("POST /contact", 200), ("POST /contact", 409)]
    assert rig.consumer.committed_offsets() == {}
    rig.run_for(REPEAT_WINDOW_S, step_s=0.5)
    assert rig.requests[3:] == [("POST /contact", 200)]
    assert rig.consumer.committed_offsets() == {0: 1}
    assert rig.results() == {0: "delivered"}
    assert rig.stored("ext-a")["firstName"] == "Anna"
