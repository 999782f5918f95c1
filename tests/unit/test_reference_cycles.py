"""The stages and their long-lived parts are freed as soon as their last reference goes.

Not later, by the cyclic garbage collector: it may run on a librdkafka thread (an admin future's
callback), and librdkafka aborts the process when a client is destroyed from its own thread (seen in
CI as "Fatal Python error: Aborted" under `_make_futmap_result`). So no collaborator holds its owner:
it gets a `gctune.weak_method` or a shared holder (`merge_stage/handles.py`).
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from connector.config import YespoSettings, load_settings
from connector.deliver import DeliverStage
from connector.gctune import weak_method
from connector.merge_stage import MergeStage
from connector.projection import MappingProjector
from connector.sink.client import YespoClient
from connector.sink.delivery import BatchDelivery
from connector.sink.recorder import DeliverStats, OutcomeRecorder
from connector.standin.faults import Faults
from connector.standin.routes import StandInApp
from connector.standin.store import ContactStore
from connector.standin.validation import RequestValidator, load_spec
from tests.stubs import simple_json_decoder
from tests.unit.test_config import REPO_EXAMPLE
from tests.unit.test_deliver_stage import settings as deliver_settings


@pytest.fixture(autouse=True)
def _no_collector() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    if was_enabled:
        gc.enable()


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={})


def _client() -> YespoClient:
    settings = YespoSettings(base_url="https://yespo.test", api_key=SecretStr("k-1"))
    return YespoClient(
        httpx.Client(transport=httpx.MockTransport(_answer)), settings, load_settings(REPO_EXAMPLE).contact
    )


def _merge_stage() -> Any:
    settings = load_settings(REPO_EXAMPLE)
    return MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)


def _no_client(conf: Any) -> Any:
    raise AssertionError("not started")


def _deliver_stage() -> Any:
    return DeliverStage(
        deliver_settings(), client=_client(), consumer_factory=_no_client, producer_factory=_no_client
    )


def _delivery() -> Any:
    recorder = OutcomeRecorder(DeliverStats(), dlq_topic="dlq", audit_topic="audit")
    return BatchDelivery(
        _client(), recorder, mode="bulk", batch_size=10, poll_import_status=True, sleep=time.sleep
    )


def _stand_in() -> Any:
    return StandInApp(
        api_key="k",
        store=ContactStore(),
        validator=RequestValidator(load_spec()),
        faults=Faults(time.monotonic),
        clock=time.monotonic,
    )


@pytest.mark.parametrize(
    "build",
    [_merge_stage, _deliver_stage, _client, _delivery, _stand_in],
    ids=["merge-stage", "deliver-stage", "yespo-client", "batch-delivery", "stand-in"],
)
def test_freed_by_reference_counting(build: Callable[[], Any]) -> None:
    obj = build()
    ref = weakref.ref(obj)
    del obj
    assert ref() is None, "kept alive by a reference cycle"


def test_the_merge_stage_s_collaborators_see_what_the_stage_sets() -> None:
    stage = _merge_stage()
    consumer, producer = object(), object()
    stage._consumer, stage._producer = consumer, producer
    assert stage._positions._clients() == (consumer, producer)


class _Owner:
    def twice(self, value: int, *, plus: int = 0) -> int:
        return 2 * value + plus


def test_a_weak_method_calls_through_and_does_not_keep_its_object() -> None:
    owner = _Owner()
    call = weak_method(owner.twice)
    assert call(3, plus=1) == 7
    ref = weakref.ref(owner)
    del owner
    assert ref() is None
    with pytest.raises(ReferenceError):
        call(3)
