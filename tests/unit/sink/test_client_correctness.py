"""YespoClient correctness review: what the client sends must be what Yespo accepts."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from connector.config import ContactMapping, YespoSettings
from connector.errors import ConfigError
from connector.sink.client import YespoClient

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "id",
        "channels": [{"type": "email", "column": "em"}],
        "fields": {"score": "score"},
    }
)


def _client(field_ids: dict[str, int]) -> YespoClient:
    settings = YespoSettings(base_url="https://yespo.test", api_key=SecretStr("k"), field_ids=field_ids)
    http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    return YespoClient(http, settings, MAPPING)


@pytest.mark.parametrize("bad", [0, -1, 2**31])
def test_a_configured_field_id_outside_int32_is_refused_at_start_up(bad: int) -> None:
    # with every name configured the client skipped resolve_field_ids and its check
    with pytest.raises(ConfigError, match=r"yespo\.field_ids\.score"):
        _client({"score": bad})


def test_configured_field_ids_go_into_the_envelope() -> None:
    assert _client({"score": 2**31 - 1}).envelope.custom_field_ids == (2**31 - 1,)


def _bulk_client(answer: httpx.Response, requests: list[httpx.Request]) -> YespoClient:
    settings = YespoSettings(base_url="https://yespo.test", api_key=SecretStr("k"), field_ids={"score": 5})

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer

    return YespoClient(httpx.Client(transport=httpx.MockTransport(handler)), settings, MAPPING)


@pytest.mark.parametrize("empty", [{}, "", [{}], [""], {"firstName": "Ann"}, [None]])
def test_a_failed_contacts_value_that_names_no_failure_fails_no_contact(empty: object) -> None:
    # Yespo writes a one-element list as an object (XML heritage), so an empty list may come as
    # `{}` or `""`: no contact failed, and nothing is sent again in halves to find one
    requests: list[httpx.Request] = []
    answer = httpx.Response(200, json={"asyncSessionId": "s1", "failedContacts": empty})
    contacts = [
        {"externalCustomerId": f"c{i}", "channels": [{"type": "email", "value": f"c{i}@x.io"}]}
        for i in range(4)
    ]
    outcome = _bulk_client(answer, requests).send_bulk_isolating(contacts)
    assert outcome.failed == () and outcome.unattributed_failures == 0
    assert len(requests) == 1 and outcome.session_ids == ("s1",)


def test_an_entry_with_an_error_still_fails_its_contact() -> None:
    requests: list[httpx.Request] = []
    failed = [{}, {"channels": [{"type": "email", "value": "c1@x.io"}], "error": "invalid"}]
    answer = httpx.Response(200, json={"asyncSessionId": "s1", "failedContacts": failed})
    contacts = [
        {"externalCustomerId": f"c{i}", "channels": [{"type": "email", "value": f"c{i}@x.io"}]}
        for i in range(3)
    ]
    outcome = _bulk_client(answer, requests).send_bulk_isolating(contacts)
    assert [c.external_id for c in outcome.failed] == ["c1"] and outcome.failed[0].reason == "invalid"
    assert len(requests) == 1
