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
