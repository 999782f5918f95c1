"""The changes topic keeps its records until merged: no retention; the merge stage purges (no broker).

Like Kafka Streams' repartition topics: created with `retention.ms=-1` and `retention.bytes=-1`; the
merge stage deletes (`AdminClient.delete_records`) each owned changes partition below the offset
committed for it, once per interval, never beyond; a failed purge is logged and asked again later.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError as CKError
from confluent_kafka import KafkaException, TopicPartition

from connector.config import Settings, load_settings
from connector.kafka.topics import ensure_topics, internal_topics
from connector.merge_stage import MergeStage
from connector.projection import MappingProjector
from tests.stubs import simple_json_decoder
from tests.unit.test_config import REPO_EXAMPLE
from tests.unit.test_merge_stage_abort import Clock
from tests.unit.test_topics import PolicyAdmin, _Done


class PurgeAdmin:
    """Records each DeleteRecords request; its futures end as `outcome` says (None: still in flight)."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[str, int, int]]] = []
        self.outcome: str | None = "ok"

    def delete_records(self, tps: list[TopicPartition], **kw: Any) -> dict[TopicPartition, Future[Any]]:
        assert kw.get("request_timeout"), "the request must time out on its own"
        self.requests.append([(tp.topic, tp.partition, tp.offset) for tp in tps])
        futures: dict[TopicPartition, Future[Any]] = {}
        for tp in tps:
            future: Future[Any] = Future()
            if self.outcome == "ok":
                future.set_result(SimpleNamespace(low_watermark=tp.offset))
            elif self.outcome == "denied":
                future.set_exception(
                    KafkaException(CKError(CKError.TOPIC_AUTHORIZATION_FAILED, "not authorized"))
                )
            futures[tp] = future
        return futures


class Idle:
    """A consumer with nothing to fetch and a producer that commits at once."""

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def consumer_group_metadata(self) -> object:
        return object()

    def begin_transaction(self) -> None:
        pass

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        pass

    def commit_transaction(self, timeout: float) -> None:
        pass

    def abort_transaction(self, timeout: float) -> None:
        pass


def purging_stage() -> tuple[MergeStage, PurgeAdmin, Clock, Settings]:
    settings = load_settings(REPO_EXAMPLE)
    clock = Clock()
    stage = MergeStage(
        settings, projector=MappingProjector(settings.contact), decoder=simple_json_decoder, clock=clock
    )
    admin = PurgeAdmin()
    idle = Idle()
    stage._consumer, stage._producer, stage._admin = idle, idle, admin  # type: ignore[assignment]
    changes, source = settings.state.changes_topic, settings.source.customers.topic
    # this member owns changes partitions 0 and 1 (and a source partition), not changes partition 2
    stage._assigned = [TopicPartition(changes, 0), TopicPartition(changes, 1), TopicPartition(source, 0)]
    return stage, admin, clock, settings


def test_only_committed_offsets_of_owned_changes_partitions_are_purged_once_per_interval() -> None:
    stage, admin, clock, settings = purging_stage()
    changes, source = settings.state.changes_topic, settings.source.customers.topic
    stage._positions.committed.update({(changes, 0): 10, (changes, 1): 5, (changes, 2): 8, (source, 0): 7})
    stage._transactions.begin(stage._producer)  # an open transaction has consumed further: not committed yet
    stage._positions.offsets[(changes, 0)] = 20
    stage._transactions.txn_started = clock.now + 10**6  # (its commit not due in this test)
    stage.step()
    assert admin.requests == []  # not before the interval
    clock.now += 60
    stage.step()
    assert admin.requests == [[(changes, 0, 10), (changes, 1, 5)]]  # never the source topic
    stage.step()
    clock.now += 30
    stage.step()
    assert len(admin.requests) == 1  # once per interval, not per step or commit


def test_the_purge_follows_the_commits_and_skips_what_an_abort_dropped() -> None:
    stage, admin, clock, settings = purging_stage()
    changes = settings.state.changes_topic
    stage._transactions.begin(stage._producer)
    stage._positions.offsets[(changes, 0)] = 12
    stage._transactions.commit()
    stage._transactions.begin(stage._producer)  # aborted: its offsets were never committed
    stage._positions.offsets[(changes, 0)] = 30
    stage._positions.offsets[(changes, 1)] = 4
    stage._transactions.abort_quietly()
    clock.now += 60
    stage.step()
    assert admin.requests == [[(changes, 0, 12)]]
    clock.now += 60
    stage.step()  # nothing committed since: nothing asked
    assert len(admin.requests) == 1
    stage._transactions.begin(stage._producer)
    stage._positions.offsets[(changes, 1)] = 4
    stage._transactions.commit()
    clock.now += 60
    stage.step()
    assert admin.requests[1:] == [[(changes, 1, 4)]]  # only what moved


def test_a_revoked_partition_is_not_purged_by_its_former_owner() -> None:
    stage, admin, clock, settings = purging_stage()
    changes = settings.state.changes_topic
    stage._positions.committed[(changes, 0)] = 10
    stage._on_revoke(stage._consumer, list(stage._assigned))  # type: ignore[arg-type]
    clock.now += 60
    stage.step()
    assert admin.requests == []


def test_a_failed_purge_is_logged_and_asked_again_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    stage, admin, clock, settings = purging_stage()
    changes = settings.state.changes_topic
    stage._positions.committed[(changes, 0)] = 10
    admin.outcome = "denied"
    clock.now += 60
    stage.step()
    clock.now += 60
    with caplog.at_level(logging.WARNING, logger="connector.merge_stage"):
        stage.step()  # the first request's failure is read, and the same offset asked again
    assert "merged changes not deleted" in caplog.text and "DELETE operation" in caplog.text
    assert admin.requests == [[(changes, 0, 10)], [(changes, 0, 10)]]


def test_a_purge_still_in_flight_gets_no_second_request() -> None:
    stage, admin, clock, settings = purging_stage()
    changes = settings.state.changes_topic
    stage._positions.committed[(changes, 0)] = 10
    admin.outcome = None  # never answers
    clock.now += 60
    stage.step()
    stage._positions.committed[(changes, 0)] = 15
    clock.now += 60
    stage.step()
    assert admin.requests == [[(changes, 0, 10)]]


def test_an_offset_of_zero_or_less_is_never_sent() -> None:
    """OFFSET_END (-1) would delete the whole partition; 0 deletes nothing."""
    stage, admin, clock, settings = purging_stage()
    changes = settings.state.changes_topic
    stage._positions.committed.update({(changes, 0): 0, (changes, 1): -1})
    clock.now += 60
    stage.step()
    assert admin.requests == []


def test_a_stage_without_an_admin_client_does_not_purge() -> None:
    stage, admin, clock, settings = purging_stage()
    stage._admin = None
    stage._positions.committed[(settings.state.changes_topic, 0)] = 10
    clock.now += 60
    stage.step()
    assert admin.requests == []


# -- the topic's retention -----------------------------------------------------------------------


def test_the_changes_topic_is_created_without_retention() -> None:
    settings = load_settings(REPO_EXAMPLE)
    spec = next(s for s in internal_topics(settings) if s.name == settings.state.changes_topic)
    assert spec.config == {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}


class ConfigAdmin(PolicyAdmin):
    """Every internal topic exists as created, except the changes topic's `retention` entries."""

    def __init__(self, settings: Settings, retention: dict[str, str]) -> None:
        super().__init__(settings, {})
        self.retention = retention

    def describe_configs(self, resources: list[Any], **kw: Any) -> dict[Any, Any]:
        specs = {s.name: s for s in internal_topics(self.settings)}
        out = {}
        for r in resources:
            entries = {k: SimpleNamespace(value=v) for k, v in specs[r.name].config.items()}
            if r.name == self.settings.state.changes_topic:
                entries.update({k: SimpleNamespace(value=v) for k, v in self.retention.items()})
            out[r] = _Done(entries)
        return out


@pytest.mark.parametrize(
    ("retention", "named"),
    [
        ({"retention.ms": "604800000", "retention.bytes": "-1"}, "retention.ms=604800000"),
        ({"retention.ms": "-1", "retention.bytes": "1073741824"}, "retention.bytes=1073741824"),
    ],
)
def test_a_changes_topic_with_a_finite_retention_is_warned_about_naming_the_key_and_the_fix(
    retention: dict[str, str], named: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(REPO_EXAMPLE)
    admin = ConfigAdmin(settings, retention)
    with caplog.at_level(logging.WARNING, logger="connector.kafka.topics"):
        ensure_topics(admin, settings, create=False, source_required=False)  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if "retention" in r.getMessage()]
    message = record.getMessage()
    assert settings.state.changes_topic in message and "(state.changes_topic)" in message
    assert named in message and "set retention.ms=-1 and retention.bytes=-1" in message
    assert "without an error" in message  # the risk: changes deleted unmerged, silently


def test_a_changes_topic_without_retention_passes_quietly(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(REPO_EXAMPLE)
    admin = ConfigAdmin(settings, {"retention.ms": "-1", "retention.bytes": "-1"})
    with caplog.at_level(logging.WARNING, logger="connector.kafka.topics"):
        ensure_topics(admin, settings, create=False, source_required=False)  # type: ignore[arg-type]
    assert "retention" not in caplog.text
