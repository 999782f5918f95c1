from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from connector.deliver import build_deliver_stage
from connector.errors import RetryableDeliveryError
from connector.metrics import METRIC_NAMES, PREFIX, Metrics

from .test_deliver_stage import settings


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def exposed_names(metrics: Metrics) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_prefixed_and_listed() -> None:
    names = exposed_names(Metrics(CollectorRegistry()))
    assert names == METRIC_NAMES
    assert all(name.startswith(PREFIX) for name in names)


def test_fresh_registries_are_independent() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.upserts_emitted.inc(3)
    assert samples(a)[("yespo_connector_upserts_emitted_total", ())] == 3
    assert samples(b)[("yespo_connector_upserts_emitted_total", ())] == 0


def test_counters_agree_with_increments() -> None:
    m = Metrics(CollectorRegistry())
    for _ in range(5):
        m.events.labels(table="public.customers", op="u").inc()
    m.events.labels(table="public.customer_groups", op="c").inc(2)
    m.stale_events_skipped.labels(table="public.customers").inc()
    m.upserts_emitted.inc(4)
    m.deletes_emitted.inc()
    m.contacts_delivered.labels(result="ok").inc(7)
    m.contacts_delivered.labels(result="rejected").inc()
    m.dlq_records.labels(stage="merge", reason="DecodeError").inc(2)
    m.rebalances.labels(event="assigned").inc()
    m.state_customers.labels(partition="0").set(42)
    m.transaction_commit_duration.observe(0.02)
    m.transaction_commit_duration.observe(0.3)
    m.http_request_duration.labels(endpoint="/api/v1/contacts", status="200").observe(0.2)
    m.restore_duration.observe(1.5)

    got = samples(m)
    assert got[("yespo_connector_events_total", (("op", "u"), ("table", "public.customers")))] == 5
    assert got[("yespo_connector_events_total", (("op", "c"), ("table", "public.customer_groups")))] == 2
    assert got[("yespo_connector_stale_events_skipped_total", (("table", "public.customers"),))] == 1
    assert got[("yespo_connector_upserts_emitted_total", ())] == 4
    assert got[("yespo_connector_deletes_emitted_total", ())] == 1
    assert got[("yespo_connector_contacts_delivered_total", (("result", "ok"),))] == 7
    assert got[("yespo_connector_contacts_delivered_total", (("result", "rejected"),))] == 1
    assert got[("yespo_connector_dlq_records_total", (("reason", "DecodeError"), ("stage", "merge")))] == 2
    assert got[("yespo_connector_rebalances_total", (("event", "assigned"),))] == 1
    assert got[("yespo_connector_state_customers", (("partition", "0"),))] == 42
    assert got[("yespo_connector_transaction_commit_duration_seconds_count", ())] == 2
    assert got[("yespo_connector_transaction_commit_duration_seconds_sum", ())] == pytest.approx(0.32)
    assert got[("yespo_connector_transaction_commit_duration_seconds_bucket", (("le", "0.025"),))] == 1
    http = (("endpoint", "/api/v1/contacts"), ("status", "200"))
    assert got[("yespo_connector_http_request_duration_seconds_count", http)] == 1
    assert got[("yespo_connector_restore_duration_seconds_count", ())] == 1
    assert not any(name.endswith("_created") for name, _ in got)


def partition(p: int, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "partition": p,
        "desired": True,
        "lo_offset": 0,
        "hi_offset": 10,
        "ls_offset": 10,
        "committed_offset": -1001,
        "stored_offset": -1001,
        "consumer_lag": -1,
        "consumer_lag_stored": -1,
    }
    base.update(fields)
    return base


def stats(name: str, topics: dict[str, list[dict[str, object]]], kind: str = "consumer") -> str:
    return json.dumps(
        {
            "name": name,
            "type": kind,
            "topics": {
                t: {"topic": t, "partitions": {str(p["partition"]): p for p in parts}}
                for t, parts in topics.items()
            },
        }
    )


def lag_samples(m: Metrics) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), value in samples(m).items():
        if name.startswith("yespo_connector_consumer_lag_"):
            d = dict(labels)
            out[(name.removeprefix("yespo_connector_consumer_lag_"), d["topic"], d["partition"])] = value
    return out


def test_lag_from_librdkafka_stats() -> None:
    now = [1_000.0]
    m = Metrics(CollectorRegistry(), clock=lambda: now[0])
    m.record_consumed("src", 0, 990_500)  # 9.5 s before "now"
    doc = stats(
        "rdkafka#consumer-1",
        {
            "src": [
                partition(0, consumer_lag_stored=6, consumer_lag=7),  # stored offset wins
                partition(1, consumer_lag=3),  # nothing consumed yet: committed
                partition(2, hi_offset=0, ls_offset=0),  # empty partition: 0
                partition(3, desired=False, consumer_lag=5),  # not assigned: ignored
                partition(-1, consumer_lag=9),  # librdkafka's internal UA partition: ignored
                partition(4),  # unknown lag: ignored
                partition(5, app_offset=7, consumer_lag=9),  # position beats a stale committed offset
            ]
        },
    )
    m.update_from_librdkafka_stats(doc)
    assert lag_samples(m) == {
        ("records", "src", "0"): 6,
        ("seconds", "src", "0"): 9.5,
        ("records", "src", "1"): 3,  # no consumed timestamp yet: no seconds series
        ("records", "src", "2"): 0,
        ("seconds", "src", "2"): 0,
        ("records", "src", "5"): 3,
    }


def test_lag_seconds_grow_with_the_clock_and_are_zero_when_caught_up() -> None:
    now = [100.0]
    m = Metrics(CollectorRegistry(), clock=lambda: now[0])
    m.record_consumed("t", 0, 95_000)
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, consumer_lag_stored=2)]}))
    assert lag_samples(m)[("seconds", "t", "0")] == 5
    now[0] = 130.0
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, consumer_lag_stored=2)]}))
    assert lag_samples(m)[("seconds", "t", "0")] == 35
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, consumer_lag_stored=0)]}))
    assert lag_samples(m)[("seconds", "t", "0")] == 0


def test_lag_seconds_after_an_idle_partition_gets_a_record_count_from_when_it_was_caught_up() -> None:
    now = [10_000.0]
    m = Metrics(CollectorRegistry(), clock=lambda: now[0])
    m.record_consumed("t", 0, 1_000_000)  # the last record consumed is 9000 s old
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, consumer_lag_stored=0)]}))
    now[0] += 5  # a record arrived since: its age is at most the 5 s since lag 0 was seen
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, consumer_lag_stored=1)]}))
    assert lag_samples(m)[("seconds", "t", "0")] == 5
    now[0] += 60  # nothing consumed meanwhile (a stage waiting out a retry): the backlog ages
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, consumer_lag_stored=40)]}))
    assert lag_samples(m)[("seconds", "t", "0")] == 65


def test_lag_seconds_of_a_partition_caught_up_before_anything_was_consumed_are_not_a_stale_zero() -> None:
    now = [500.0]
    m = Metrics(CollectorRegistry(), clock=lambda: now[0])
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, hi_offset=0, ls_offset=0)]}))
    assert lag_samples(m)[("seconds", "t", "0")] == 0
    now[0] += 30
    m.update_from_librdkafka_stats(stats("c", {"t": [partition(0, consumer_lag=3)]}))
    assert lag_samples(m)[("seconds", "t", "0")] == 30


def test_revoked_partitions_disappear_but_other_clients_stay() -> None:
    m = Metrics(CollectorRegistry())
    m.update_from_librdkafka_stats(
        stats("merge", {"src": [partition(0, consumer_lag=1), partition(1, consumer_lag=2)]})
    )
    m.update_from_librdkafka_stats(stats("deliver", {"ups": [partition(0, consumer_lag=4)]}))
    m.update_from_librdkafka_stats(stats("merge", {"src": [partition(1, consumer_lag=5)]}))
    assert {k: v for k, v in lag_samples(m).items() if k[0] == "records"} == {
        ("records", "src", "1"): 5,
        ("records", "ups", "0"): 4,
    }


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[1, 2]",
        stats("p", {"t": [partition(0, consumer_lag=1)]}, kind="producer"),
        '{"type": "consumer"}',
    ],
    ids=["malformed", "not-an-object", "producer", "no-topics"],
)
def test_stats_that_are_not_consumer_lag_are_ignored(doc: str) -> None:
    m = Metrics(CollectorRegistry())
    m.update_from_librdkafka_stats(doc)
    assert lag_samples(m) == {}


def test_every_yespo_request_is_timed_failed_ones_as_error_with_ids_templated_out() -> None:
    def yespo(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/account/info"):
            return httpx.Response(503)
        if "/importstatus/" in request.url.path:
            raise httpx.ConnectError("connection refused", request=request)
        raise httpx.ReadTimeout("slow", request=request)

    m = Metrics(CollectorRegistry())
    http = httpx.Client(transport=httpx.MockTransport(yespo))
    stage = build_deliver_stage(settings(), metrics=m, http=http)
    client = stage._client
    for call in (
        client.account_info,
        lambda: client.import_status("jane@example.com"),
        lambda: client.attach(42, ["ext-1"]),
    ):
        with pytest.raises(RetryableDeliveryError):
            call()
    counts = {
        dict(labels)["endpoint"] + " " + dict(labels)["status"]: value
        for (name, labels), value in samples(m).items()
        if name == "yespo_connector_http_request_duration_seconds_count"
    }
    assert counts == {
        "/api/v1/account/info 503": 1,
        "/api/v1/importstatus/{id} error": 1,
        "/api/v1/group/{id}/contacts/attach error": 1,
    }
