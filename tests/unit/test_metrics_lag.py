"""Consumer lag stays truthful while a stage keeps its partitions paused (librdkafka freezes their ends)."""

from __future__ import annotations

import logging

import httpx
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from connector.deliver import DeliverStage, inline_runner
from connector.metrics import Metrics
from connector.sink.client import YespoClient

from .test_deliver_stage import TOPIC, FakeClock, FakeConsumer, FakeProducer, FakeYespo, settings, up
from .test_metrics import lag_samples, partition, stats


class FakeBroker:
    """The consumer's watermark query: partition ends by (topic, partition); `down` makes it fail."""

    def __init__(self, ends: dict[tuple[str, int], int]) -> None:
        self.ends = ends
        self.down = False
        self.calls: list[tuple[str, int, float, bool]] = []

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        self.calls.append((partition.topic, partition.partition, timeout, cached))
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return 0, self.ends[(partition.topic, partition.partition)]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def frozen(end: int = 10, position: int = 10) -> str:
    """A statistics document of t[0] as librdkafka keeps sending it while the partition is paused."""
    return stats("c", {"t": [partition(0, hi_offset=end, ls_offset=end, app_offset=position)]})


T0 = [TopicPartition("t", 0)]


def caught_up_metrics(clock: Clock) -> Metrics:
    """t[0] consumed up to its end (10) at clock 100; its last record was written at 90."""
    m = Metrics(CollectorRegistry(), clock=clock)
    m.record_consumed("t", 0, 90_000)
    m.update_from_librdkafka_stats(frozen())
    assert lag_samples(m) == {("records", "t", "0"): 0, ("seconds", "t", "0"): 0}
    return m


def test_a_paused_partition_s_lag_counts_what_arrived_since_its_statistics_froze() -> None:
    clock = Clock(100.0)
    m = caught_up_metrics(clock)
    broker = FakeBroker({("t", 0): 510})  # 500 records arrived while paused
    clock.now = 101.0
    m.track_paused(broker, T0)
    clock.now = 105.0
    m.update_from_librdkafka_stats(frozen())  # ls_offset 10, position 10: lag 0 as far as it knows
    assert lag_samples(m) == {("records", "t", "0"): 500, ("seconds", "t", "0"): 5.0}
    clock.now = 160.0
    m.update_from_librdkafka_stats(frozen())  # the backlog ages from when the partition was caught up
    assert lag_samples(m)[("seconds", "t", "0")] == 60.0


def test_frozen_lag_0_statistics_of_a_paused_partition_never_refresh_its_caught_up_time() -> None:
    clock = Clock(100.0)
    m = caught_up_metrics(clock)
    broker = FakeBroker({("t", 0): 30})
    broker.down = True  # the end is unknown
    clock.now = 101.0
    m.track_paused(broker, T0)
    clock.now = 110.0
    m.update_from_librdkafka_stats(frozen())
    assert lag_samples(m) == {("records", "t", "0"): 0, ("seconds", "t", "0"): 0}
    broker.down = False
    clock.now = 116.0  # the next round reads the end
    m.track_paused(broker, T0)
    clock.now = 120.0
    m.update_from_librdkafka_stats(frozen())
    assert lag_samples(m) == {("records", "t", "0"): 20, ("seconds", "t", "0"): 20.0}  # since 100, not 110


def test_a_paused_partition_the_broker_shows_caught_up_counts_as_caught_up_when_it_was_asked() -> None:
    clock = Clock(100.0)
    m = caught_up_metrics(clock)
    broker = FakeBroker({("t", 0): 10})
    clock.now = 200.0
    m.track_paused(broker, T0)
    clock.now = 210.0
    m.update_from_librdkafka_stats(frozen())
    assert lag_samples(m) == {("records", "t", "0"): 0, ("seconds", "t", "0"): 0}
    broker.ends[("t", 0)] = 12
    clock.now = 216.0
    m.track_paused(broker, T0)
    clock.now = 220.0
    m.update_from_librdkafka_stats(frozen())
    assert lag_samples(m) == {("records", "t", "0"): 2, ("seconds", "t", "0"): 20.0}  # since 200


def test_ends_are_asked_at_most_every_15_s_with_a_short_timeout_and_only_while_paused() -> None:
    clock = Clock(100.0)
    m = Metrics(CollectorRegistry(), clock=clock)
    broker = FakeBroker({("t", 0): 10, ("t", 1): 10})
    both = [TopicPartition("t", 0), TopicPartition("t", 1)]
    m.track_paused(broker, [])
    assert broker.calls == []  # nothing paused: no broker call
    for _ in range(31):  # a loop turning every 0.5 s, from 100 to 115
        m.track_paused(broker, both)
        clock.now += 0.5
    assert [c[:2] for c in broker.calls] == [("t", 0), ("t", 1)] * 2  # at 100 and at 115
    assert all(0 < timeout <= 1.0 and cached is False for *_, timeout, cached in broker.calls)
    calls = len(broker.calls)
    m.track_paused(broker, [])  # resumed
    clock.now += 60
    m.track_paused(broker, [])
    assert len(broker.calls) == calls


def test_a_failing_broker_query_is_logged_at_debug_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics(CollectorRegistry(), clock=Clock(100.0))
    broker = FakeBroker({("t", 0): 10, ("t", 1): 10})
    broker.down = True
    with caplog.at_level(logging.DEBUG, logger="connector.metrics"):
        m.track_paused(broker, [TopicPartition("t", 0), TopicPartition("t", 1)])
    assert len(broker.calls) == 1  # the round ends at the first failure: the loop is not held up
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_after_a_resume_stale_statistics_keep_the_broker_end_until_a_fetch_passes_it() -> None:
    clock = Clock(100.0)
    m = caught_up_metrics(clock)
    broker = FakeBroker({("t", 0): 510})
    m.track_paused(broker, T0)
    clock.now = 130.0
    m.track_paused(broker, [])  # resumed; the statistics have not seen a fetch yet
    m.update_from_librdkafka_stats(frozen())
    assert lag_samples(m) == {("records", "t", "0"): 500, ("seconds", "t", "0"): 30.0}
    clock.now = 131.0
    m.record_consumed("t", 0, 101_000)  # consuming the backlog, a record written at 101
    m.update_from_librdkafka_stats(frozen(end=520, position=300))
    assert lag_samples(m) == {("records", "t", "0"): 220, ("seconds", "t", "0"): 30.0}
    clock.now = 140.0
    m.update_from_librdkafka_stats(frozen(end=520, position=520))
    assert lag_samples(m) == {("records", "t", "0"): 0, ("seconds", "t", "0"): 0}
    assert m._caught_up_at[("t", 0)] == 140.0


# -- the deliver stage feeds it ----------------------------------------------------------------------


class WatermarkConsumer(FakeConsumer):
    """The unit tests' consumer, with the broker's ends of its partitions (their record counts)."""

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.data[partition.partition])


def test_the_deliver_stage_reports_the_lag_of_the_partitions_it_keeps_paused_for_a_retry() -> None:
    clock = FakeClock()
    wall = Clock(1_000.0)
    metrics = Metrics(CollectorRegistry(), clock=wall)
    yespo = FakeYespo()
    conf = settings()
    client = YespoClient(
        httpx.Client(transport=httpx.MockTransport(yespo)),
        conf.yespo,
        conf.contact,
        clock=clock,
        sleep=clock.sleep,
    )
    log: list[str] = []
    consumer = WatermarkConsumer(log)
    stage = DeliverStage(
        conf,
        client=client,
        clock=clock,
        wall_ms=lambda: 1,
        metrics=metrics,
        consumer_factory=lambda c: consumer,
        producer_factory=lambda c: FakeProducer(log),
        sleep=clock.sleep,
        runner=inline_runner,
        topic_limits=lambda topics: {},
        history=consumer.history,
    )
    stage.start()
    consumer.add(0, "a", up("a"))
    yespo.script = [(503, {}, "down")]
    stage.step()
    assert stage.paused
    for i in range(40):  # arrive while the batch waits for its retry
        consumer.add(0, f"n{i}", up(f"n{i}"))
    wall.now += 15  # the next round of broker queries is due
    stage.step()
    assert stage.paused
    frozen_at_the_pause = partition(0, hi_offset=1, ls_offset=1, app_offset=1)
    metrics.update_from_librdkafka_stats(stats("deliver", {TOPIC: [frozen_at_the_pause]}))
    assert lag_samples(metrics)[("records", TOPIC, "0")] == 40
