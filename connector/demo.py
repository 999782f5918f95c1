"""The README's demo: the whole chain on one machine, PostgreSQL -> Debezium -> Kafka -> connector -> Yespo.

`run_demo` brings the local stack up (Kafka, PostgreSQL, Kafka Connect + Debezium), loads
`deploy/local/demo-data.sql`, starts the Yespo stand-in and `yespo-connector run --stage all` as
background processes of the stack directory, shows the connector catching up, applies a few live
changes and prints the resulting contacts next to the database rows. `stop_demo` stops everything.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from connector.config import Settings, load_settings
from connector.errors import StackError
from connector.mapping import ContactMapper
from connector.models import CustomerView
from connector.sink.wire import WireTranslator, custom_field_names, resolve_field_ids
from connector.stack.base import ComponentStatus, StackConfig, port_open, wait_until
from connector.stack.daemon import Daemon
from connector.stack.local import LocalStack
from connector.stack.postgres import PostgresServer
from connector.stack.standin import DEV_API_KEY, StandInServer

__all__ = [
    "ConnectorProcess",
    "DemoConfig",
    "expected_views",
    "run_demo",
    "stop_demo",
    "view_of_contact",
]

logger = logging.getLogger(__name__)

# the stand-in's default catalog (connector/standin/store.py): the demo maps country to field 103
FIELD_IDS: Mapping[str, int] = {"birthDate": 101, "loyaltyLevel": 102, "country": 103}
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


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Where the demo runs: the stack's config plus the stand-in's port."""

    stack: StackConfig
    standin_port: int = 8089

    @property
    def demo_dir(self) -> Path:
        """Config, API key file and run id of the demo."""
        return self.stack.stack_dir / "demo"

    @property
    def standin_url(self) -> str:
        """Base URL of the demo's stand-in."""
        return f"http://{self.stack.host}:{self.standin_port}"


# -- background processes of the stack directory -------------------------------------------------------


def _cli_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from connector.cli import main; main()", *args]


class ConnectorProcess:
    """`yespo-connector run --stage all` on the demo's config, as a background process."""

    name = "connector"

    def __init__(self, demo: DemoConfig) -> None:
        self.demo = demo
        self.config_file = (demo.demo_dir / "connector.yaml").resolve()
        self.daemon = Daemon(
            name=self.name,
            marker=str(self.config_file),
            pid_file=demo.stack.run_dir / "connector.pid",
            log_file=demo.stack.logs_dir / "connector.out",
            host=demo.stack.host,
            port=0,
        )

    def up(self) -> ComponentStatus:
        """Start merge + deliver on the written config (or keep ours running).

        Raises:
            StackError: no config was written yet (only `yespo-connector demo` writes it), or the
                process exited at once (its log tail is in the message).
        """
        if not self.config_file.exists():
            raise StackError(f"no connector config at {self.config_file}: run `yespo-connector demo`")
        pid = self.daemon.reconcile()
        detail = "already running"
        if pid is None:
            argv = _cli_argv(
                [
                    "run",
                    "--config",
                    str(self.config_file),
                    "--stage",
                    "all",
                    "--create-topics",
                    "--instance-id",
                    "demo",
                ],
            )
            pid = self.daemon.start(argv, cwd=self.demo.stack.stack_dir)
            detail = "started (merge + deliver)"
        time.sleep(1)
        reason = self.daemon.alive_or_reason(pid)
        if reason is not None:
            raise StackError(reason)
        return self.status(detail)

    def down(self) -> None:
        """Stop it (SIGTERM: the stages finish their batch and commit)."""
        self.daemon.stop(timeout=30)

    def status(self, detail: str = "") -> ComponentStatus:
        """Whether it runs."""
        seen = self.daemon.observe()
        return ComponentStatus(self.name, seen.pid is not None, str(self.config_file), seen.pid, detail)


def write_connector_config(demo: DemoConfig, key_file: Path, run_id: str) -> Settings:
    """deploy/connector.yaml pointed at the stack's broker and the stand-in, on this run's own topics."""
    base = load_settings(demo.stack.deploy_dir / "connector.yaml")
    data = base.model_dump(mode="json", exclude={"yespo": {"api_key"}})
    prefix = f"yespo-demo-{run_id}"
    data["kafka"].update(
        {
            "bootstrap_servers": demo.stack.bootstrap_servers,
            "group_id": prefix,
            "transactional_id_prefix": prefix,
        }
    )
    data["state"].update(
        {"changes_topic": f"{prefix}.changes", "topic": f"{prefix}.customer-state", "partitions": 3}
    )
    data["output"].update(
        {
            "upserts_topic": f"{prefix}.contact-upserts",
            "dlq_topic": f"{prefix}.dlq",
            "audit_topic": f"{prefix}.audit",
        }
    )
    data["yespo"].update(
        {
            "base_url": demo.standin_url,
            "api_key_file": str(key_file.resolve()),
            "field_ids": dict(FIELD_IDS),
            "country_field": "country",
            "batch_linger_ms": 100,
        }
    )
    data["observability"].update({"metrics_port": 0, "log_format": "json"})
    settings = Settings(**data)
    path = demo.demo_dir / "connector.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return settings


# -- expected vs actual -----------------------------------------------------------------------------------


def _translator(settings: Settings) -> WireTranslator:
    ids = resolve_field_ids(
        custom_field_names(settings.contact, settings.yespo), settings.yespo.field_ids, None
    )
    country = settings.yespo.country_field
    return WireTranslator(ids, ids.get(country) if country else None)


def expected_views(
    settings: Settings, rows: Mapping[int, Mapping[str, Any]], groups: Mapping[int, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Map the database rows to contacts, by externalCustomerId, in the stand-in dump's shape."""
    mapper = ContactMapper(settings.contact)
    wire = _translator(settings)
    out: dict[str, dict[str, Any]] = {}
    for cid, row in rows.items():
        result = mapper.map(CustomerView(str(cid), dict(row), {"groups": list(groups.get(cid, []))}))
        if result.contact is None:
            continue
        official = wire.contact(result.contact.to_json())
        out[official["externalCustomerId"]] = {
            "firstName": official.get("firstName"),
            "lastName": official.get("lastName"),
            "channels": sorted((ch["type"], ch["value"]) for ch in official["channels"]),
            "address": dict(official.get("address", {})),
            "fields": {str(f["id"]): f["value"] for f in official.get("fields", [])},
            "languageCode": official.get("languageCode"),
            "timeZone": official.get("timeZone"),
            "groups": sorted(result.contact.group_ids),
        }
    return out


def view_of_contact(dumped: Mapping[str, Any]) -> dict[str, Any]:
    """A stand-in dump entry in the shape of `expected_views`."""
    return {
        "firstName": dumped.get("firstName"),
        "lastName": dumped.get("lastName"),
        "channels": sorted((ch["type"], ch["value"]) for ch in dumped["channels"]),
        "address": dict(dumped["address"]),
        "fields": dict(dumped["fields"]),
        "languageCode": dumped.get("languageCode"),
        "timeZone": dumped.get("timeZone"),
        "groups": sorted(dumped["groups"]),
    }


@dataclass(frozen=True, slots=True)
class Comparison:
    """How far the stand-in is from the database."""

    rows: int
    live_contacts: int
    equal: int
    stale_live: int

    @property
    def done(self) -> bool:
        """Every row's contact is equal and no deleted customer is live."""
        return self.equal == self.rows and self.live_contacts == self.rows and self.stale_live == 0


def compare(expected: Mapping[str, dict[str, Any]], dump: Mapping[str, Any]) -> Comparison:
    """Count the stand-in's contacts that equal the mapping of the database rows."""
    live = {c["externalCustomerId"]: c for c in dump["contacts"] if not c["deleted"]}
    equal = sum(1 for ext, want in expected.items() if ext in live and view_of_contact(live[ext]) == want)
    return Comparison(len(expected), len(live), equal, len(set(live) - set(expected)))


# -- the demo ---------------------------------------------------------------------------------------------


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
    standin, connector = StandInServer(demo.stack, port=demo.standin_port), ConnectorProcess(demo)
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
        StandInServer(demo.stack, port=demo.standin_port),
    )
    for component in components:
        component.down()
        console.print(f"  {component.name} stopped")
    LocalStack(demo.stack).down()
    console.print(f"  stack in {demo.stack.stack_dir} stopped")


def port_busy(demo: DemoConfig) -> list[str]:
    """Ports the demo needs that something else already listens on (for a clear message)."""
    busy = []
    standin = StandInServer(demo.stack, port=demo.standin_port)
    if port_open(demo.stack.host, demo.standin_port) and standin.daemon.observe().pid is None:
        busy.append(f"stand-in port {demo.standin_port}")
    return busy
