"""A merge stage is freed as soon as its last reference goes, not later by the cyclic garbage collector.

The collector may run on a librdkafka thread (an admin future's callback), and librdkafka aborts the
process when a client is destroyed from its own thread (seen in CI: "Fatal Python error: Aborted" under
`_make_futmap_result`), so no collaborator of the stage may hold the stage itself.
"""

from __future__ import annotations

import gc
import weakref

from connector.config import load_settings
from connector.merge_stage import MergeStage
from connector.projection import MappingProjector
from tests.stubs import simple_json_decoder
from tests.unit.test_config import REPO_EXAMPLE


def test_a_merge_stage_is_in_no_reference_cycle() -> None:
    settings = load_settings(REPO_EXAMPLE)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        stage = MergeStage(
            settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder
        )
        stage._assigned = []  # the handles the collaborators read are set through the stage
        ref = weakref.ref(stage)
        del stage
        assert ref() is None, "the merge stage is kept alive by a reference cycle"
    finally:
        if was_enabled:
            gc.enable()


def test_the_collaborators_see_what_the_stage_sets() -> None:
    settings = load_settings(REPO_EXAMPLE)
    stage = MergeStage(settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder)
    consumer, producer = object(), object()
    stage._consumer, stage._producer = consumer, producer  # type: ignore[assignment]
    assert stage._handles.clients() == (consumer, producer)
    assert stage._positions._clients() == (consumer, producer)
