"""Schema Registry client over httpx.MockTransport, and the wait-and-retry helper with a fake clock."""

from __future__ import annotations

import json

import httpx
import pytest

from connector.errors import SchemaRegistryUnavailableError, UnknownSchemaError
from connector.registry import Backoff, RetryingSchemaLookup, SchemaRegistryClient, wait_for_registry

SCHEMA = {
    "type": "record",
    "name": "Key",
    "namespace": "crm.public.customers",
    "fields": [{"name": "id", "type": "long"}],
}


def client(handler) -> SchemaRegistryClient:
    return SchemaRegistryClient(
        "http://registry:8081/", client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def test_get_fetches_once_per_id_and_parses() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, json={"schema": json.dumps(SCHEMA)})

    registry = client(handler)
    first = registry.get(7)
    assert registry.get(7) is first
    assert calls == ["http://registry:8081/schemas/ids/7"]
    assert first["name"] == "crm.public.customers.Key"


def test_404_is_unknown_schema() -> None:
    registry = client(
        lambda r: httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
    )
    with pytest.raises(UnknownSchemaError) as info:
        registry.get(17)
    assert info.value.reason == "unknown Avro schema id 17"


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(503, text="busy"), SchemaRegistryUnavailableError),
        (httpx.Response(500, json={"error_code": 50001}), SchemaRegistryUnavailableError),
        (httpx.Response(401, json={"error_code": 40101}), SchemaRegistryUnavailableError),
        (httpx.Response(200, text="<html>proxy</html>"), SchemaRegistryUnavailableError),
        (httpx.Response(200, json={"nothing": 1}), SchemaRegistryUnavailableError),
        (httpx.Response(200, json={"schema": "{}", "schemaType": "PROTOBUF"}), UnknownSchemaError),
        (httpx.Response(200, json={"schema": '{"type": "nope"}'}), UnknownSchemaError),
    ],
)
def test_bad_answers(response: httpx.Response, error: type[Exception]) -> None:
    with pytest.raises(error):
        client(lambda r: response).get(1)


def test_transport_errors_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(SchemaRegistryUnavailableError) as info:
        client(handler).get(1)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("code", [40401, 40402, 40403])
def test_a_404_with_a_not_found_error_code_is_unknown_schema(code: int) -> None:
    registry = client(lambda r: httpx.Response(404, json={"error_code": code, "message": "not found"}))
    with pytest.raises(UnknownSchemaError):
        registry.get(7)


@pytest.mark.parametrize(
    "body",
    [
        '{"message":"No content with id: 7","error_code":404}',  # Apicurio <= 2.0.1 ccompat (#1547)
        '{"error_code": 404, "message": "No artifact with ID \'7\' in group \'null\' was found."}',
    ],
)
def test_apicurio_2_0_s_not_found_with_error_code_404_and_a_message_is_unknown_schema(body: str) -> None:
    registry = client(lambda r: httpx.Response(404, text=body))
    with pytest.raises(UnknownSchemaError):
        registry.get(7)


@pytest.mark.parametrize(
    "response",
    [
        # Apicurio's native API (/apis/registry/v2) instead of its ccompat API
        httpx.Response(404, json={"error_code": 404, "message": "RESTEASY003210: Could not find resource"}),
        httpx.Response(404, json={"error_code": 404, "message": "HTTP 404 Not Found"}),
        httpx.Response(404, json={"error_code": 404}),  # no message: nothing says what is missing
        httpx.Response(404, json={"error_code": 404, "message": "  "}),
        httpx.Response(404, json={"error_code": True, "message": "not found"}),
        httpx.Response(404, text="<html>404 Not Found</html>"),  # an ingress's page
        httpx.Response(404, json={"error_code": [40403]}),
        httpx.Response(404, json=["not", "a", "map"]),
        httpx.Response(404),
    ],
)
def test_a_404_that_is_not_the_registry_s_not_found_is_unavailable(response: httpx.Response) -> None:
    with pytest.raises(SchemaRegistryUnavailableError, match=r"source\.schema_registry_url"):
        client(lambda r: response).get(7)


@pytest.mark.parametrize("url", ["http://registry:8081\n", "http://[::1"])
def test_an_invalid_registry_url_is_unavailable_never_an_unknown_schema(url: str) -> None:
    registry = SchemaRegistryClient(
        url, client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    )
    with pytest.raises(SchemaRegistryUnavailableError, match=r"source\.schema_registry_url") as info:
        registry.get(7)
    assert isinstance(info.value.__cause__, httpx.InvalidURL)


def test_the_decoder_never_dead_letters_a_record_for_a_wrong_registry_path() -> None:
    import struct

    from connector.decode import DecodeOptions, decode_event
    from connector.models import RawRecord

    registry = SchemaRegistryClient(
        "http://registry:8080/apis/registry/v2",
        client=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404, text="nope"))),
    )
    framed = b"\x00" + struct.pack(">I", 7) + b"\x02"
    with pytest.raises(SchemaRegistryUnavailableError):
        decode_event(
            RawRecord("crm.public.customers", 0, 1, framed, framed),
            options=DecodeOptions(format="avro", native=False),
            schemas=registry,
        )


def test_register_posts_the_schema_text() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/subjects/crm.public.customers-key/versions"
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"id": 5})

    assert client(handler).register("crm.public.customers-key", SCHEMA) == 5
    assert json.loads(seen[0]["schema"]) == SCHEMA


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_grows_and_caps() -> None:
    policy = Backoff(initial_s=0.5, max_s=4.0)
    assert [policy.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(10_000) == 4.0


def test_wait_for_registry_retries_until_it_answers() -> None:
    clock = FakeClock()
    answers = iter([SchemaRegistryUnavailableError("down")] * 3 + ["ok"])

    def call() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert (
        wait_for_registry(call, sleep=clock.sleep, clock=clock, backoff=Backoff(initial_s=1, max_s=3)) == "ok"
    )
    assert clock.sleeps == [1, 2, 3]


def test_wait_for_registry_gives_up_after_max_wait() -> None:
    clock = FakeClock()

    def call() -> str:
        raise SchemaRegistryUnavailableError("down")

    with pytest.raises(SchemaRegistryUnavailableError):
        wait_for_registry(
            call, sleep=clock.sleep, clock=clock, backoff=Backoff(initial_s=1, max_s=8), max_wait_s=10
        )
    assert clock.sleeps == [1, 2, 4]
    assert clock.now <= 10


def test_wait_for_registry_does_not_retry_unknown_schema() -> None:
    clock = FakeClock()

    def call() -> str:
        raise UnknownSchemaError(3)

    with pytest.raises(UnknownSchemaError):
        wait_for_registry(call, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


def test_retrying_lookup_waits_out_an_outage() -> None:
    clock = FakeClock()
    state = {"up": False, "calls": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        state["calls"] += 1
        if state["calls"] == 3:
            state["up"] = True
        if not state["up"]:
            return httpx.Response(503)
        return httpx.Response(200, json={"schema": json.dumps(SCHEMA)})

    lookup = RetryingSchemaLookup(
        client(handler), sleep=clock.sleep, clock=clock, backoff=Backoff(initial_s=0.5)
    )
    assert lookup.get(1)["name"] == "crm.public.customers.Key"
    assert clock.sleeps == [0.5, 1.0]


def _lagging_replica(known_after_calls: int | None):
    """A registry that answers "not found" for its first calls (None: for ever), then the schema."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if known_after_calls is None or len(calls) <= known_after_calls:
            return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
        return httpx.Response(200, json={"schema": json.dumps(SCHEMA)})

    return handler, calls


def test_a_not_found_within_the_grace_waits_for_a_lagging_replica() -> None:
    clock = FakeClock()
    handler, calls = _lagging_replica(known_after_calls=2)
    registry = SchemaRegistryClient(
        "http://registry:8081",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        not_found_grace_s=5.0,
        clock=clock,
    )
    lookup = RetryingSchemaLookup(registry, sleep=clock.sleep, clock=clock, backoff=Backoff(initial_s=0.5))
    assert lookup.get(9)["name"] == "crm.public.customers.Key"  # not dead-lettered
    assert (len(calls), clock.sleeps) == (3, [0.5, 1.0])


def test_a_not_found_that_outlasts_the_grace_is_final_and_stays_final() -> None:
    clock = FakeClock()
    handler, calls = _lagging_replica(known_after_calls=None)
    registry = SchemaRegistryClient(
        "http://registry:8081",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        not_found_grace_s=5.0,
        clock=clock,
    )
    lookup = RetryingSchemaLookup(
        registry, sleep=clock.sleep, clock=clock, backoff=Backoff(initial_s=0.5), max_wait_s=10
    )
    with pytest.raises(UnknownSchemaError):
        lookup.get(9)
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]  # 7.5 s: the grace passed, within max_wait_s
    waited, asked = len(clock.sleeps), len(calls)
    with pytest.raises(UnknownSchemaError):  # the next record with that id: asked again, no second grace
        lookup.get(9)
    assert (len(clock.sleeps), len(calls)) == (waited, asked + 1)
    # another id gets a grace of its own
    with pytest.raises(SchemaRegistryUnavailableError):
        registry.get(10)
