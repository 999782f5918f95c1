"""The changes topic on the real broker: no retention; merged changes are deleted, unmerged ones never."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource

from connector.merge_stage import MergeStage, new_instance_id
from connector.projection import MappingProjector
from tests.integration.kafka_helpers import delete_topics
from tests.integration.merge_support import committed, feed_workload, merge_settings
from tests.integration.test_merge_stage import check_results, inputs_consumed, run_until, source_workload
from tests.stubs import simple_json_decoder

pytestmark = pytest.mark.integration


def test_merged_changes_are_purged_and_unmerged_ones_kept(
    kafka_bootstrap, unique_topic, create_topic, kafka_admin
) -> None:
    settings = merge_settings(kafka_bootstrap, unique_topic, partitions=2)
    workload = source_workload(create_topic, settings, partitions=(2, 2), seed=11, customers=150, events=2000)
    changes, group = settings.state.changes_topic, settings.kafka.group_id
    stage = MergeStage(
        settings,
        projector=MappingProjector(settings.contact),
        decoder=simple_json_decoder,
        instance_id=new_instance_id(),
        create_topics=True,
        purge_interval_s=0.5,
    )
    watcher = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique_topic("watch")})
    samples: list[dict[int, tuple[int, int]]] = []

    def purged_up_to_the_merge() -> bool:
        if not stage.ready:
            return False  # the stage creates the changes topic as it starts
        try:
            lows = {
                p: watcher.get_watermark_offsets(TopicPartition(changes, p), timeout=10, cached=False)[0]
                for p in range(2)
            }
        except KafkaException:  # the topic not known to this client yet
            return False
        done = committed(kafka_bootstrap, group, changes)  # read after the log starts: never below them
        samples.append({p: (lows[p], done.get(p, -1)) for p in lows})
        for p, low in lows.items():  # nothing the group has not committed is ever deleted
            assert low <= max(done.get(p, 0), 0), f"changes[{p}] deleted below {low}, merged {done.get(p)}"
        return (
            stage.stats.source_records >= len(workload.events)
            and inputs_consumed(kafka_bootstrap, settings)
            and all(low == done.get(p) for p, low in lows.items())
        )

    feeder = threading.Thread(target=feed_workload, args=(kafka_bootstrap, workload, 4.0, 8), daemon=True)
    feeder.start()  # changes are routed while earlier ones are merged and purged
    try:
        run_until(stage, purged_up_to_the_merge, timeout=60, poll_s=0.3)
        feeder.join(30)
        resource = ConfigResource(ConfigResource.Type.TOPIC, changes)
        config = kafka_admin.describe_configs([resource])[resource].result(timeout=30)
        assert (config["retention.ms"].value, config["retention.bytes"].value) == ("-1", "-1")
        assert all(low > 0 for low, _ in samples[-1].values())  # every partition was purged
        check_results(kafka_bootstrap, settings, workload)  # nothing routed was lost
    finally:
        watcher.close()
        delete_topics(
            kafka_admin,
            [
                changes,
                settings.state.topic,
                settings.output.upserts_topic,
                settings.output.dlq_topic,
                settings.output.audit_topic,
            ],
        )
