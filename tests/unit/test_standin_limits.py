"""The stand-in against documented limits it once let through, in process with a fake clock.

Address keys outside the official `Address`, path ids outside their int32/int64 parameter schemas,
bulk bodies with no contacts or a bad `eventKeyForNewContacts`, phone numbers in other scripts'
digits, an import status that skipped IMPORTING, and a fractional `Retry-After`.
"""

import base64
import json
import queue
import threading
import time
from typing import Any

import pytest

from connector.standin.faults import Faults
from connector.standin.routes import StandInApp
from connector.standin.store import ContactStore
from connector.standin.validation import RequestValidator, load_spec

KEY = "k"
HEADERS = {
    "authorization": "Basic " + base64.b64encode(b"u:" + KEY.encode()).decode(),
    "content-type": "application/json",
}
EMAIL = [{"type": "email", "value": "ann@example.com"}]
_VALIDATOR = RequestValidator(load_spec())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class App:
    """A `StandInApp` without sockets; `call` answers (status, parsed body or text, headers)."""

    def __init__(self, bulk_delay_s: float = 0.0) -> None:
        self.clock = Clock()
        self.store = ContactStore(groups={7: "VIP"})
        self.faults = Faults(self.clock)
        self.app = StandInApp(
            api_key=KEY,
            store=self.store,
            validator=_VALIDATOR,
            faults=self.faults,
            clock=self.clock,
            rate_limit=None,
            bulk_delay_s=bulk_delay_s,
        )

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        raw = b"" if body is None else json.dumps(body).encode()
        reply = self.app.handle(method, "/api/v1" + path, {}, HEADERS, raw)
        if reply.content_type.startswith("application/json"):
            return reply.status, json.loads(reply.body), reply.headers
        return reply.status, reply.body.decode(), reply.headers

    def status(self, sid: str) -> str:
        return self.call("GET", f"/importstatus/{sid}")[1]["status"]


@pytest.fixture
def app() -> App:
    return App()


# -- 1. address: only the official `Address` keys are kept, single writes as bulk ---------------------


def test_single_add_and_put_keep_only_the_official_address_keys(app):
    unofficial = {"city": "Kyiv", "postalCode": "01001", "country": "UA", "addressLine": "Main 1"}
    status, answer, _ = app.call(
        "POST", "/contact", {"channels": EMAIL, "address": {**unofficial, "town": "Kyiv"}}
    )
    assert status == 200
    cid = answer["id"]
    assert app.call("GET", f"/contact/{cid}")[1]["address"] == {"town": "Kyiv"}
    put = {"address": {"addressLine": "Main 2", "country": "UA", "postcode": "01002"}}
    assert app.call("PUT", f"/contact/{cid}", put)[0] == 200
    assert app.call("GET", f"/contact/{cid}")[1]["address"] == {"town": "Kyiv", "postcode": "01002"}
    assert app.store.dump()["contacts"][0]["address"] == {"town": "Kyiv", "postcode": "01002"}


def test_a_single_add_with_only_unofficial_address_keys_stores_no_address(app):
    status, answer, _ = app.call("POST", "/contact", {"channels": EMAIL, "address": {"city": "Kyiv"}})
    assert status == 200
    assert "address" not in app.call("GET", f"/contact/{answer['id']}")[1]


# -- 2. path ids are checked against the OpenAPI parameter schemas ------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        ("POST", "/group/2147483648/contacts/attach", {"contactIds": [1]}, "out of int32 range"),
        ("POST", "/group/-2147483649/contacts/detach", {"contactIds": [1]}, "out of int32 range"),
        ("POST", "/group/x/contacts/attach", {"contactIds": [1]}, "must be of type integer"),
        ("GET", "/contact/18446744073709551616", None, "out of int64 range"),
        ("GET", "/contact/9223372036854775808", None, "out of int64 range"),
        ("PUT", "/contact/9223372036854775808", {"firstName": "Ann"}, "out of int64 range"),
        ("DELETE", "/contact/9223372036854775808", None, "out of int64 range"),
        ("GET", "/contact/abc", None, "must be of type integer"),
        ("GET", "/contact/\u0661\u0662\u0663", None, "must be of type integer"),  # Arabic-Indic digits
        ("GET", "/contact/1.0", None, "must be of type integer"),
    ],
)
def test_a_path_id_breaking_its_parameter_schema_gets_400(app, method, path, body, reason):
    status, text, _ = app.call(method, path, body)
    assert (status, text) == (400, f"Bad request: path.id: {reason}")


def test_an_oversized_segment_id_creates_no_segment(app):
    app.call("POST", "/group/2147483648/contacts/attach", {"externalCustomerIds": ["x"]})
    assert app.call("GET", "/groups")[1] == [{"id": 7, "name": "VIP", "type": "Static"}]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/group/2147483647/contacts/attach", {"externalCustomerIds": ["x"]}, 200),
        ("POST", "/group/-2147483648/contacts/detach", {"externalCustomerIds": ["x"]}, 200),
        ("GET", "/contact/9223372036854775807", None, 404),
        ("DELETE", "/contact/-9223372036854775808", None, 404),
        ("GET", "/importstatus/anything-at-all", None, 404),  # sessionId is a string
    ],
)
def test_path_ids_at_the_ends_of_their_range_are_accepted(app, method, path, body, expected):
    assert app.call(method, path, body)[0] == expected


def test_path_error_reads_the_parameter_schemas_of_the_spec():
    assert _VALIDATOR.path_error("GET", "/api/v1/contact/{id}", {"id": "9223372036854775807"}) is None
    assert _VALIDATOR.path_error("POST", "/api/v1/group/{id}/contacts/attach", {"id": "+12"}) is None
    assert _VALIDATOR.path_error("GET", "/api/v1/importstatus/{sessionId}", {"sessionId": "x"}) is None
    assert _VALIDATOR.path_error("GET", "/api/v1/group/{id}/contacts", {"id": str(2**31)}) == (
        "path.id: out of int32 range"
    )


# -- 3. bulk: 1 to 3000 contacts, eventKeyForNewContacts rules -----------------------------------------


def bulk_body(**extra: Any) -> dict[str, Any]:
    return {"dedupeOn": "email", "contacts": [{"channels": EMAIL}], **extra}


def test_a_bulk_without_contacts_gets_400(app):
    status, text, _ = app.call("POST", "/contacts", bulk_body(contacts=[]))
    assert (status, text) == (400, "Bad request: body.contacts: at least 1 contact per request")
    assert len(app.store.sessions) == 0


def test_an_event_key_of_101_characters_gets_400_and_of_100_passes(app):
    status, text, _ = app.call("POST", "/contacts", bulk_body(eventKeyForNewContacts="x" * 101))
    assert (status, text) == (400, "Bad request: body.eventKeyForNewContacts: longer than 100 characters")
    assert app.call("POST", "/contacts", bulk_body(eventKeyForNewContacts="x" * 100))[0] == 200


@pytest.mark.parametrize("char", list("<;\u2019\\/|\"`'^?!,>"))
def test_an_event_key_with_a_forbidden_character_gets_400_without_echoing_it(app, char):
    status, text, _ = app.call("POST", "/contacts", bulk_body(eventKeyForNewContacts=f"secret{char}key"))
    assert status == 400
    assert text.startswith("Bad request: body.eventKeyForNewContacts: holds a forbidden character")
    assert "secret" not in text


def test_an_event_key_of_other_characters_passes(app):
    key = "order_created-2024 .:#@~(Ann) \u00e9\u0436"
    assert app.call("POST", "/contacts", bulk_body(eventKeyForNewContacts=key))[0] == 200


# -- 4. phone numbers in ASCII digits only -------------------------------------------------------------


ARABIC_INDIC_PHONE = "\u0663\u0668\u0660\u0665\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667"


@pytest.mark.parametrize("ctype", ["sms", "viber"])
def test_a_phone_in_non_ascii_digits_is_refused(app, ctype):
    status, text, _ = app.call(
        "POST", "/contact", {"channels": [{"type": ctype, "value": ARABIC_INDIC_PHONE}]}
    )
    assert (status, text) == (
        400,
        "Bad request: channels: invalid phone number (international format, digits only)",
    )
    status, answer, _ = app.call(
        "POST",
        "/contacts",
        {"dedupeOn": "sms", "contacts": [{"channels": [{"type": ctype, "value": ARABIC_INDIC_PHONE}]}]},
    )
    assert status == 200 and answer["failedContacts"]["error"].startswith("channels: invalid phone number")
    assert app.store.dump()["count"] == 0


@pytest.mark.parametrize(
    "channel", [{"type": "sms", "value": "380501234567\n"}, {"type": "email", "value": "ann@example.com\n"}]
)
def test_a_channel_value_with_a_trailing_newline_is_refused(app, channel):
    assert app.call("POST", "/contact", {"channels": [channel]})[0] == 400


# -- 5. import status: STARTED, IMPORTING, then FINISHED or ERROR --------------------------------------


class SteppedSleep:
    """The worker's sleep, released by the test one call at a time; each advances the fake clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.asked: queue.Queue[float] = queue.Queue()
        self._go = threading.Semaphore(0)

    def __call__(self, seconds: float) -> None:
        self.asked.put(seconds)
        assert self._go.acquire(timeout=10)
        self.clock.now += seconds

    def next(self) -> float:
        """Wait until the worker sleeps; the seconds it asked for."""
        return self.asked.get(timeout=5)

    def release(self) -> None:
        self._go.release()


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def delayed():
    app = App(bulk_delay_s=10.0)
    sleep = SteppedSleep(app.clock)
    app.app.start_worker(sleep)
    yield app, sleep
    sleep.release()
    sleep.release()
    app.app.stop_worker()


def test_a_delayed_import_shows_importing_before_it_finishes(delayed):
    app, sleep = delayed
    status, answer, _ = app.call("POST", "/contacts", bulk_body())
    assert status == 200
    sid = answer["asyncSessionId"]
    assert sleep.next() == pytest.approx(5.0)  # STARTED for the first half of the delay
    assert app.status(sid) == "STARTED"
    sleep.release()
    assert sleep.next() == pytest.approx(5.0)  # IMPORTING for the second, the store lock free
    assert app.status(sid) == "IMPORTING"
    assert app.store.dump()["count"] == 0
    sleep.release()
    wait_for(lambda: app.status(sid) == "FINISHED")
    assert app.store.dump()["count"] == 1


def test_an_injected_import_failure_goes_through_the_same_delay(delayed):
    app, sleep = delayed
    app.faults.fail_imports(count=1)
    sid = app.call("POST", "/contacts", bulk_body())[1]["asyncSessionId"]
    sleep.next()
    assert app.status(sid) == "STARTED"
    sleep.release()
    sleep.next()
    assert app.status(sid) == "IMPORTING"
    assert app.app.stats()["counters"].get("imports_failed", 0) == 0
    sleep.release()
    wait_for(lambda: app.status(sid) == "ERROR")
    assert app.store.dump()["count"] == 0
    assert app.app.stats()["counters"]["imports_failed"] == 1


def test_without_a_delay_an_injected_failure_ends_in_error_at_once(app):
    app.faults.fail_imports(count=1)
    sid = app.call("POST", "/contacts", bulk_body())[1]["asyncSessionId"]
    assert app.status(sid) == "ERROR"
    assert app.store.dump()["count"] == 0


# -- Retry-After is whole seconds ----------------------------------------------------------------------


@pytest.mark.parametrize(("retry_after", "header"), [(1.5, "2"), (0.2, "1"), (4, "4"), (0, "0")])
def test_a_fractional_retry_after_is_rounded_up_to_whole_seconds(app, retry_after, header):
    app.faults.throttle(500, retry_after)
    status, _, headers = app.call("GET", "/account/info")
    assert (status, headers) == (429, {"Retry-After": header})


@pytest.mark.parametrize("retry_after", [-1.0, float("inf"), float("nan")])
def test_a_retry_after_that_is_no_delay_is_refused(app, retry_after):
    with pytest.raises(ValueError, match="retry_after"):
        app.faults.throttle(5, retry_after)
