from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from connector.metrics import METRIC_NAMES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "yespo-connector-dashboard.json"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"

# PromQL words that are not metric names.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
    "rate", "irate", "increase", "delta", "histogram_quantile", "label_values", "by", "without",
    "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "clamp_min", "clamp_max", "abs", "time", "vector", "scalar", "max_over_time", "min_over_time",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(doc: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(doc) for t in p.get("targets", [])]
    for var in doc.get("templating", {}).get("list", []):
        query = var.get("query")
        if var.get("type") == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def metric_names(expr: str) -> set[str]:
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", text)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text)) - PROMQL_WORDS
    return names


def base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        stem = name.removesuffix(suffix)
        if stem != name and stem in METRIC_NAMES:
            return stem
    return name


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = dashboard()
    assert doc["title"] and doc["uid"] == "yespo-connector"
    assert isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(doc):
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys()
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']!r} has no query"
            assert p["datasource"]["type"] == "prometheus"


def test_every_expression_uses_only_defined_metrics() -> None:
    exprs = expressions(dashboard())
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        names = {base_name(n) for n in metric_names(expr)}
        assert names, f"no metric in {expr!r}"
        unknown = names - METRIC_NAMES
        assert not unknown, f"{expr!r} uses metrics that connector.metrics does not define: {sorted(unknown)}"
        used |= names
    # The dashboard covers lag (records and seconds), throughput, errors/DLQ, commit and HTTP latency.
    for required in (
        "yespo_connector_consumer_lag_records",
        "yespo_connector_consumer_lag_seconds",
        "yespo_connector_events_total",
        "yespo_connector_contacts_delivered_total",
        "yespo_connector_dlq_records_total",
        "yespo_connector_transaction_commit_duration_seconds",
        "yespo_connector_http_request_duration_seconds",
    ):
        assert required in used


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (topic) (yespo_connector_lag{instance=~"$instance"})', {"yespo_connector_lag"}),
        ("rate(foo_total[5m]) / on (job) bar", {"foo_total", "bar"}),
        ("label_values(yespo_connector_up_total, instance)", {"yespo_connector_up_total"}),
    ],
)  # fmt: skip
def test_the_checker_finds_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_prometheus_scrapes_the_connector() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "yespo-connector"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(":9464") for t in targets)
    # a target label named like one of the connector's own labels would rename it to exported_<label>
    for sc in job["static_configs"]:
        assert not {"stage", "topic", "partition", "result", "reason"} & set(sc.get("labels", {}))
