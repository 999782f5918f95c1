"""The demo script: stack up, sample customers, the connector catching up, live changes, the result.

`run_demo` prints each step as it goes; `stop_demo` stops everything it started.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from connector.demo.compare import Comparison, compare, expected_views
from connector.demo.components import FIELD_IDS, ConnectorProcess, DemoConfig, write_connector_config
from connector.errors import StackError
from connector.stack.base import wait_until
from connector.stack.local import LocalStack
from connector.stack.postgres import PostgresServer
from connector.stack.standin import DEV_API_KEY, StandInServer

__all__ = ["run_demo", "stop_demo"]

logger = logging.getLogger(__name__)

LIVE_CHANGES: Sequence[tuple[str, str]] = (
    (
        "update: customer 7 moves to Lviv and changes phone",
        "UPDATE public.customers SET city = 'Lviv', region = 'Lvivska', phone = '+380671234567' WHERE id = 7",
    ),
    (
        "group change: customer 7 joins segment 11 (vip)",
        "INSERT INTO public.customer_groups VALUES (7, 11, 'vip') ON CONFLICT DO NOTHING",
    ),
    (
        "group change: customer 10 leaves segment 12 (newsletter)",
        "DELETE FROM public.customer_groups WHERE customer_id = 10 AND group_id = 12",
    ),
    (
        "update: customer 12 clears last name, loyalty gold",
        "UPDATE public.customers SET last_name = NULL, loyalty_level = 'gold' WHERE id = 12",
    ),
    ("delete: customer 13", "DELETE FROM public.customers WHERE id = 13"),
)
SHOWN_IDS: Sequence[int] = (1, 2, 7, 10, 12, 13)


class _Database:
    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def rows(self) -> tuple[dict[int, dict[str, Any]], dict[int, list[dict[str, Any]]]]:
        customers = json.loads(
            self.server.psql("SELECT coalesce(json_agg(c ORDER BY id), '[]') FROM public.customers c") or "[]"
        )
        groups: dict[int, list[dict[str, Any]]] = {}
        raw = self.server.psql(
            "SELECT coalesce(json_agg(g ORDER BY customer_id, group_id), '[]') FROM public.customer_groups g"
        )
        for row in json.loads(raw or "[]"):
            groups.setdefault(row["customer_id"], []).append(row)
        return {row["id"]: row for row in customers}, groups


def _wait_for_topics(bootstrap: str, topics: Sequence[str], timeout: float = 120.0) -> None:
    # The merge stage subscribes by name; a topic created later is only seen at librdkafka's next
    # metadata refresh (5 min by default), so wait for Debezium's snapshot to create both first.
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def present() -> bool:
        return set(topics) <= set(admin.list_topics(timeout=10).topics)

    if not wait_until(present, timeout=timeout, interval=0.5):
        raise StackError(f"Debezium did not create {', '.join(topics)} within {timeout:.0f} s")


def _dump(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_standin/contacts", timeout=30).json()
    return body


def _follow(
    console: Console,
    what: str,
    measure: Callable[[], Comparison],
    *,
    timeout: float,
    interval: float = 2.0,
) -> Comparison:
    started = time.monotonic()
    last = measure()
    while True:
        elapsed = time.monotonic() - started
        console.print(
            f"  [{elapsed:5.1f} s] {what:<12} PostgreSQL {last.rows} customers | stand-in "
            f"{last.live_contacts} live contacts, {last.equal} match their rows"
        )
        if last.done:
            return last
        if elapsed > timeout:
            raise StackError(
                f"the stand-in did not catch up within {timeout:.0f} s (see .stack/logs/connector.out)"
            )
        time.sleep(interval)
        last = measure()


def _customer_cell(row: Mapping[str, Any] | None, groups: list[dict[str, Any]]) -> str:
    if row is None:
        return "(deleted)"
    name = " ".join(str(v) for v in (row.get("first_name"), row.get("last_name")) if v)
    segs = ",".join(str(g["group_id"]) for g in groups) or "-"
    phone, city = row.get("phone") or "-", row.get("city") or "-"
    loyalty = row.get("loyalty_level") or "-"
    return f"{name}\n{row.get('email') or '-'}\n{phone} · {city}\nloyalty {loyalty} · segments {segs}"


def _contact_cell(contact: Mapping[str, Any] | None) -> str:
    if contact is None:
        return "(none)"
    if contact["deleted"]:
        return "(deleted)"
    name = " ".join(str(v) for v in (contact.get("firstName"), contact.get("lastName")) if v)
    channels = {ch["type"]: ch["value"] for ch in contact["channels"]}
    segs = ",".join(str(g) for g in contact["groups"]) or "-"
    town = contact["address"].get("town", "-")
    loyalty = contact["fields"].get(str(FIELD_IDS["loyaltyLevel"]), "-")
    return (
        f"{name}\n{channels.get('email', '-')}\nsms {channels.get('sms', '-')} · {town}\n"
        f"field {FIELD_IDS['loyaltyLevel']} {loyalty} · segments {segs}"
    )


def run_demo(demo: DemoConfig, console: Console) -> None:
    """Bring everything up, load the sample customers, catch up, apply live changes, print the result.

    Raises:
        StackError: a component did not start or the stand-in did not catch up in time.
    """
    started = time.monotonic()
    stack = LocalStack(demo.stack)
    console.rule("1. the local stack: Kafka, PostgreSQL, Kafka Connect + Debezium 3.6.1")
    for status in stack.up(["postgres"]):
        console.print(f"  {status.name:<9} {status.endpoint:<40} {status.detail}")
    server = PostgresServer(demo.stack)
    db = _Database(server)
    sample = demo.stack.deploy_dir / "local" / "demo-data.sql"
    server.psql(file=sample)
    rows, _ = db.rows()
    console.print(f"  loaded {sample.name}: {len(rows)} customers in crm.public.customers")
    for status in stack.up(["postgres", "connect"])[-1:]:
        console.print(f"  {status.name:<9} {status.endpoint:<40} {status.detail}")

    console.rule("2. the Yespo stand-in and the connector (merge + deliver)")
    standin, connector = StandInServer(demo.stack), ConnectorProcess(demo)
    connector.down()  # every demo run replays the CDC topics into a fresh stand-in
    standin.down()
    key_file = demo.demo_dir / "api-key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(DEV_API_KEY, encoding="ascii")  # the stand-in's development key, not a secret
    run_id = uuid.uuid4().hex[:8]
    settings = write_connector_config(demo, key_file, run_id)
    _wait_for_topics(demo.stack.bootstrap_servers, settings.source.topics)
    console.print(f"  Debezium topics: {', '.join(settings.source.topics)}")
    for status in (standin.up(), connector.up()):
        console.print(f"  {status.name:<9} {status.endpoint:<40} pid {status.pid} {status.detail}")
    console.print(f"  connector topics: yespo-demo-{run_id}.*  logs: {connector.daemon.log_file}")

    def measure() -> Comparison:
        rows, groups = db.rows()
        return compare(expected_views(settings, rows, groups), _dump(demo.standin_url))

    console.rule("3. catching up: Debezium snapshot -> merge -> deliver -> stand-in")
    _follow(console, "catch-up", measure, timeout=300, interval=0.5)

    console.rule("4. live changes in PostgreSQL")
    for label, sql in LIVE_CHANGES:
        server.psql(sql)
        console.print(f"  {label}\n    [dim]{sql}[/dim]")
    _follow(console, "live changes", measure, timeout=120, interval=0.5)

    console.rule("5. database rows next to the stand-in's contacts")
    rows, groups = db.rows()
    by_ext = {c["externalCustomerId"]: c for c in _dump(demo.standin_url)["contacts"]}
    table = Table(show_lines=True)
    table.add_column("id", justify="right")
    table.add_column("PostgreSQL crm.public.customers")
    table.add_column("Yespo stand-in contact (externalCustomerId crm-<id>)")
    for cid in SHOWN_IDS:
        table.add_row(
            str(cid),
            _customer_cell(rows.get(cid), groups.get(cid, [])),
            _contact_cell(by_ext.get(f"crm-{cid}")),
        )
    console.print(table)
    final = measure()
    console.print(
        f"  {final.equal}/{final.rows} contacts equal the mapping of their database rows; "
        f"deleted but still live: {final.stale_live}; "
        f"total {time.monotonic() - started:.0f} s"
    )
    console.print("  stop everything with `make demo-down` (or `yespo-connector demo --down`)")


def stop_demo(demo: DemoConfig, console: Console) -> None:
    """Stop the connector, the stand-in and the stack (data is kept)."""
    components: tuple[ConnectorProcess | StandInServer, ...] = (
        ConnectorProcess(demo),
        StandInServer(demo.stack),
    )
    for component in components:
        component.down()
        console.print(f"  {component.name} stopped")
    LocalStack(demo.stack).down()
    console.print(f"  stack in {demo.stack.stack_dir} stopped")
