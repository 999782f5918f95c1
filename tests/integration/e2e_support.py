"""Helpers for the end-to-end tests: a private CRM database, a SQL workload, the expected Yespo contacts.

The chain under test is PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> `yespo-connector run` ->
the Yespo stand-in. Each test gets its own database (created from deploy/local/crm-schema.sql), so its
snapshot and its final rows are exactly its own. The expected contacts are computed from the final
rows read back from PostgreSQL with the connector's own `ContactMapper` and `WireTranslator`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from connector.config import Settings
from connector.mapping import ContactMapper
from connector.models import CustomerView
from connector.sink.catalog import custom_field_names, resolve_field_ids
from connector.sink.wire import WireTranslator
from tests.integration.merge_support import fully_consumed, last_offsets, read_all

REPO = Path(__file__).resolve().parents[2]
SCHEMA_SQL = REPO / "deploy" / "local" / "crm-schema.sql"

FIRST = ["Bohdana", "Yaroslav", "Zoryana", "Ostap", "Solomiia", "Svyatoslav", "Myroslava", "Yevhenii"]
LAST = ["Shevchuk", "Kovalyshyn", "Hnatyshyn", "Prokopovych", "Vynnychenko", "Dovzhenkova"]
CITIES = [("Kyiv", "Kyivska"), ("Lviv", "Lvivska"), ("Odesa", "Odeska"), ("Chernivtsi", "Chernivetska")]
GROUPS = {21: "vip", 22: "newsletter", 23: "b2b", 24: "churn-risk", 25: "beta"}
COLUMNS = (
    "id",
    "external_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "web_push_subscription",
    "city",
    "region",
    "country",
    "postal_code",
    "address_line",
    "birth_date",
    "loyalty_level",
    "language_code",
    "time_zone",
    "notes",
)


# -- PostgreSQL -----------------------------------------------------------------------------------------


def psql(dsn: str, sql: str, *, timeout: float = 120) -> str:
    """Run `sql` as one script (each statement commits on its own unless wrapped in BEGIN/COMMIT)."""
    result = subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
        input=sql,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointed at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@dataclass
class CrmDatabase:
    """A private database with the CRM schema; `drop()` removes it with the test's slot and publication."""

    admin_dsn: str
    name: str = field(default_factory=lambda: f"e2e_{uuid.uuid4().hex[:10]}")

    @property
    def dsn(self) -> str:
        """Superuser DSN of this database."""
        return with_database(self.admin_dsn, self.name)

    def create(self) -> CrmDatabase:
        """CREATE DATABASE, then the project's schema file (roles, tables, REPLICA IDENTITY)."""
        psql(with_database(self.admin_dsn, "postgres"), f"CREATE DATABASE {self.name}")
        psql(self.dsn, SCHEMA_SQL.read_text(encoding="utf-8"))
        return self

    def drop(self, slot: str, publication: str) -> None:
        """Drop the replication slot once it is inactive, then the publication and the database."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            active = psql(self.dsn, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")
            if active == "":
                break
            if active == "f":
                psql(self.dsn, f"SELECT pg_drop_replication_slot('{slot}')")
                break
            time.sleep(1)
        psql(self.dsn, f"DROP PUBLICATION IF EXISTS {publication}")
        psql(with_database(self.admin_dsn, "postgres"), f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")

    def customers(self) -> dict[int, dict[str, Any]]:
        """Every customers row as JSON values (what the connector's rows look like), by id."""
        raw = psql(self.dsn, "SELECT coalesce(json_agg(c ORDER BY id), '[]') FROM public.customers c")
        return {row["id"]: row for row in json.loads(raw)}

    def groups(self) -> dict[int, list[dict[str, Any]]]:
        """customer_groups rows by customer id."""
        raw = psql(
            self.dsn,
            "SELECT coalesce(json_agg(g ORDER BY customer_id, group_id), '[]') FROM public.customer_groups g",
        )
        out: dict[int, list[dict[str, Any]]] = {}
        for row in json.loads(raw):
            out.setdefault(row["customer_id"], []).append(row)
        return out


def sql_literal(value: Any) -> str:
    """A SQL literal for a text/number/None value."""
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


# -- the workload ---------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Generates SQL against a model of the rows it wrote, and remembers every PII value it used."""

    rng: random.Random
    next_id: int = 1000
    live: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, dict[int, str]] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    toasted: set[int] = field(default_factory=set)
    moved: set[int] = field(default_factory=set)
    pii: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    trail: dict[int, list[str]] = field(default_factory=dict)

    def _count(self, op: str, cid: int | None = None) -> None:
        self.counts[op] = self.counts.get(op, 0) + 1
        if cid is not None:
            self.trail.setdefault(cid, []).append(op)

    def story(self, external_id: str) -> str:
        """The operations that touched the customer(s) behind `external_id` (for failure messages)."""
        cid = int(external_id.rsplit("-", 1)[-1])
        moved_to = [
            c for c, trail in self.trail.items() if any(t.startswith(f"key_change from {cid}") for t in trail)
        ]
        return f"{external_id}: " + "; ".join(
            f"id {c}: {', '.join(self.trail.get(c, []))}" for c in [cid, *moved_to]
        )

    def _phone(self) -> str:
        number = f"+38067{self.rng.randrange(10**7):07d}"
        self.pii.update({number, number[1:], number[3:]})
        return number

    def _name(self, names: list[str]) -> str:
        name = self.rng.choice(names)
        self.pii.add(name)
        return name

    def _email(self, cid: int) -> str:
        email = f"{self.rng.choice(FIRST).lower()}.{cid}.{self.rng.randrange(10**6)}@example.com"
        self.pii.add(email)
        return email

    def _text(self, n: int) -> str:
        return "".join(self.rng.choices(string.ascii_letters + string.digits, k=n))

    def row(self, cid: int, *, big: bool = False) -> dict[str, Any]:
        """A random customers row; `big` adds a TOASTed `notes` and a long (TOASTed) loyalty_level."""
        rng = self.rng
        city, region = rng.choice(CITIES)
        row: dict[str, Any] = {
            "id": cid,
            "external_id": f"crm-{cid}",
            "first_name": self._name(FIRST),
            "last_name": self._name(LAST) if rng.random() < 0.85 else None,
            # always an email: Yespo refuses to create a contact without any channel
            "email": self._email(cid),
            "phone": self._phone() if rng.random() < 0.7 else None,
            "web_push_subscription": f"wp-{self._text(16)}" if rng.random() < 0.2 else None,
            "city": city,
            "region": region,
            "country": rng.choice(["UA", "PL", None]),
            "postal_code": f"{rng.randrange(10000, 99999)}" if rng.random() < 0.8 else None,
            "address_line": f"Street {rng.randrange(1, 200)}" if rng.random() < 0.6 else None,
            "birth_date": f"19{rng.randrange(50, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}"
            if rng.random() < 0.7
            else None,
            "loyalty_level": rng.choice(["gold", "silver", None]),
            "language_code": rng.choice(["uk", "en", "pl"]),
            "time_zone": rng.choice(["Europe/Kyiv", "Europe/Warsaw"]),
            "notes": None,
        }
        if big:
            # random alphanumerics barely compress: both values are stored out of line (TOAST)
            row["notes"] = self._text(6000)
            row["loyalty_level"] = self._text(3000)
            self.toasted.add(cid)
        return row

    def _insert_sql(self, row: Mapping[str, Any]) -> str:
        cols = ", ".join(row)
        vals = ", ".join(sql_literal(v) for v in row.values())
        return f"INSERT INTO public.customers ({cols}) VALUES ({vals});"

    def _group_sql(self, cid: int, gid: int, name: str) -> str:
        return (
            "INSERT INTO public.customer_groups (customer_id, group_id, group_name) "
            f"VALUES ({cid}, {gid}, {sql_literal(name)});"
        )

    def insert(self, *, big: bool = False, groups: int | None = None) -> str:
        """A new customer and its groups, in one transaction."""
        cid = self.next_id
        self.next_id += 1
        row = self.row(cid, big=big)
        self.live[cid] = row
        chosen = self.rng.sample(sorted(GROUPS), self.rng.randrange(0, 3) if groups is None else groups)
        self.groups[cid] = {g: GROUPS[g] for g in chosen}
        self._count("insert", cid)
        parts = [self._insert_sql(row), *(self._group_sql(cid, g, GROUPS[g]) for g in chosen)]
        return "BEGIN;\n" + "\n".join(parts) + "\nCOMMIT;\n"

    def update(self) -> str:
        """Change a few columns of a live customer (some to NULL); TOASTed values of big rows stay."""
        cid = self.rng.choice(sorted(self.live))
        fresh = self.row(cid)
        candidates = [c for c in COLUMNS[2:-1] if not (cid in self.toasted and c == "loyalty_level")]
        changed = self.rng.sample(candidates, self.rng.randrange(1, 4))
        for column in changed:
            self.live[cid][column] = fresh[column]
        self._count("update", cid)
        sets = ", ".join(f"{c} = {sql_literal(fresh[c])}" for c in changed)
        return f"UPDATE public.customers SET {sets}, updated_at = now() WHERE id = {cid};\n"

    def toast_update(self) -> str:
        """An update of a TOASTed customer that leaves `notes` and `loyalty_level` untouched."""
        cid = self.rng.choice(sorted(self.toasted & set(self.live)))
        name = self._name(FIRST)
        self.live[cid]["first_name"] = name
        self._count("toast_update", cid)
        return f"UPDATE public.customers SET first_name = {sql_literal(name)} WHERE id = {cid};\n"

    def group_change(self) -> str:
        """Add a group, remove one, or rename one for a live customer."""
        cid = self.rng.choice(sorted(self.live))
        mine = self.groups.setdefault(cid, {})
        roll = self.rng.random()
        if mine and roll < 0.4:
            gid = self.rng.choice(sorted(mine))
            del mine[gid]
            self._count("group_remove", cid)
            return f"DELETE FROM public.customer_groups WHERE customer_id = {cid} AND group_id = {gid};\n"
        if mine and roll < 0.55:
            gid = self.rng.choice(sorted(mine))
            mine[gid] = f"{GROUPS[gid]}-renamed"
            self._count("group_rename", cid)
            return (
                f"UPDATE public.customer_groups SET group_name = {sql_literal(mine[gid])} "
                f"WHERE customer_id = {cid} AND group_id = {gid};\n"
            )
        free = sorted(set(GROUPS) - set(mine))
        if not free:
            return self.update()
        gid = self.rng.choice(free)
        mine[gid] = GROUPS[gid]
        self._count("group_add", cid)
        return self._group_sql(cid, gid, GROUPS[gid]) + "\n"

    def delete(self, cid: int | None = None) -> str:
        """Delete a live customer (`cid`, or one at random; its groups go by ON DELETE CASCADE)."""
        if cid is None:
            cid = self.rng.choice(sorted(set(self.live) - self.toasted) or sorted(self.live))
        del self.live[cid]
        self.groups.pop(cid, None)
        self.deleted.add(cid)
        self.toasted.discard(cid)
        self._count("delete", cid)
        return f"DELETE FROM public.customers WHERE id = {cid};\n"

    def reinsert(self) -> str:
        """Insert a customer again under a deleted id (a fresh row with the same key)."""
        cid = self.rng.choice(sorted(self.deleted - set(self.live)))
        row = self.row(cid)
        self.live[cid] = row
        self.groups[cid] = {}
        self._count("reinsert", cid)
        return self._insert_sql(row) + "\n"

    def change_key(self, *, with_id: bool = False) -> str:
        """`UPDATE customers SET id = new`: the groups follow by ON UPDATE CASCADE; external_id stays.

        `with_id`: the same statement sets external_id = 'crm-new', so the contact moves to another
        id: the old key's delete is suppressed and the new key's create names another contact; only
        the old key's handover (through the changes topic) retires crm-old in Yespo.
        """
        with_groups = [c for c in sorted(self.live) if self.groups.get(c) and c not in self.toasted]
        old = self.rng.choice(with_groups or sorted(self.live))
        new = self.next_id
        self.next_id += 1
        row = self.live.pop(old)
        row["id"] = new
        self.live[new] = row
        self.groups[new] = self.groups.pop(old, {})
        self.moved.add(old)
        if not with_id:
            self._count("key_change", old)
            self.trail.setdefault(new, []).append(f"key_change from {old}")
            return f"UPDATE public.customers SET id = {new} WHERE id = {old};\n"
        row["external_id"] = f"crm-{new}"
        self._count("key_change_id", old)
        self.trail.setdefault(new, []).append(f"key_change from {old} with its id")
        return f"UPDATE public.customers SET id = {new}, external_id = 'crm-{new}' WHERE id = {old};\n"

    def change_key_and_delete(self) -> str:
        """A primary-key change and the delete of the moved row, in one transaction.

        The new key's create and delete can merge in one transaction of the merge stage: it never
        emits an upsert, yet must delete the contact the old key left live (CI, seed 2714546670).
        """
        change = self.change_key()
        moved = self.next_id - 1
        self.trail[moved].append("key_change_delete")
        self._count("key_change_delete")
        delete = self.delete(moved)
        return f"BEGIN;\n{change}{delete}COMMIT;\n"

    def live_ops(self, n: int) -> list[str]:
        """`n` scripts of a mixed live workload (three kinds of primary-key change, one re-insert)."""
        ops: list[str] = []
        key_change_at = n // 2
        key_change_delete_at = key_change_at + n // 10
        key_change_id_at = key_change_at + n // 5
        reinsert_at = (2 * n) // 3
        for i in range(n):
            if i == key_change_at:
                ops.append(self.change_key())
            elif i == key_change_delete_at:
                ops.append(self.change_key_and_delete())
            elif i == key_change_id_at:
                ops.append(self.change_key(with_id=True))
            elif i == reinsert_at and self.deleted - set(self.live):
                ops.append(self.reinsert())
            else:
                roll = self.rng.random()
                if roll < 0.22:
                    ops.append(self.insert(big=self.rng.random() < 0.1))
                elif roll < 0.50:
                    ops.append(self.update())
                elif roll < 0.58 and self.toasted & set(self.live):
                    ops.append(self.toast_update())
                elif roll < 0.85:
                    ops.append(self.group_change())
                else:
                    ops.append(self.delete())
        return ops


# -- expected vs actual contacts ------------------------------------------------------------------------


def translator(settings: Settings) -> WireTranslator:
    """The deliver stage's wire translation for `settings` (field ids from `yespo.field_ids`)."""
    names = custom_field_names(settings.contact, settings.yespo)
    ids = resolve_field_ids(names, settings.yespo.field_ids, None)
    country = settings.yespo.country_field
    return WireTranslator(ids, ids.get(country) if country else None)


def expected_contacts(
    settings: Settings, rows: Mapping[int, Mapping[str, Any]], groups: Mapping[int, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """externalCustomerId -> the stand-in view the final database rows must produce."""
    mapper = ContactMapper(settings.contact)
    wire = translator(settings)
    out: dict[str, dict[str, Any]] = {}
    for cid, row in rows.items():
        view = CustomerView(str(cid), dict(row), {"groups": list(groups.get(cid, []))})
        result = mapper.map(view)
        assert result.contact is not None, f"customer {cid}: {result.error}"
        contact = result.contact.to_json()
        official = wire.contact(contact)
        out[official["externalCustomerId"]] = {
            "firstName": official.get("firstName"),
            "lastName": official.get("lastName"),
            "languageCode": official.get("languageCode"),
            "timeZone": official.get("timeZone"),
            "channels": sorted((ch["type"], ch["value"]) for ch in official["channels"]),
            "address": dict(official.get("address", {})),
            "fields": {str(f["id"]): f["value"] for f in official.get("fields", [])},
            "groups": sorted(result.contact.group_ids),
        }
    return out


def actual_view(dumped: Mapping[str, Any]) -> dict[str, Any]:
    """A stand-in dump entry in the shape of `expected_contacts` values."""
    return {
        "firstName": dumped.get("firstName"),
        "lastName": dumped.get("lastName"),
        "languageCode": dumped.get("languageCode"),
        "timeZone": dumped.get("timeZone"),
        "channels": sorted((ch["type"], ch["value"]) for ch in dumped["channels"]),
        "address": dict(dumped["address"]),
        "fields": dict(dumped["fields"]),
        "groups": sorted(dumped["groups"]),
    }


EXTRA = "live contacts without a database row"


def differences(
    expected: Mapping[str, dict[str, Any]], dump: Mapping[str, Any], gone: Iterable[str]
) -> list[str]:
    """Every way the stand-in differs from `expected`; `gone` are external ids that must not be live."""
    by_ext = {c["externalCustomerId"]: c for c in dump["contacts"] if c["externalCustomerId"] is not None}
    problems = []
    for ext, want in sorted(expected.items()):
        have = by_ext.get(ext)
        if have is None or have["deleted"]:
            problems.append(f"{ext}: {'deleted' if have else 'missing'} in the stand-in")
            continue
        got = actual_view(have)
        if got != want:
            problems.append(f"{ext}: " + repr({k: (want[k], got[k]) for k in want if want[k] != got[k]}))
    for ext in sorted(set(gone) - set(expected)):
        have = by_ext.get(ext)
        if have is not None and not have["deleted"]:
            problems.append(f"{ext}: deleted in the database but live in the stand-in")
    live = {c["externalCustomerId"] for c in dump["contacts"] if not c["deleted"]}
    extra = live - set(expected)
    if extra:
        problems.append(f"{EXTRA}: {sorted(extra)[:10]}")
    return problems


def pipeline_drained(bootstrap: str, settings: Settings) -> Callable[[], bool]:
    """A probe that is true once nothing is in flight between Kafka and the stand-in.

    Every source and changes record is consumed by the merge group, every upsert by the deliver
    group (which commits only after Yespo answered), and no topic has grown since the probe's last
    call: Debezium has stopped publishing and the connector has nothing left to deliver.
    """
    merge_topics = [*settings.source.topics, settings.state.changes_topic]
    watched = [*merge_topics, settings.output.upserts_topic]
    previous: dict[str, dict[int, int]] | None = None

    def probe() -> bool:
        nonlocal previous
        ends = {topic: last_offsets(bootstrap, topic) for topic in watched}
        consumed = fully_consumed(bootstrap, settings.kafka.group_id, merge_topics) and fully_consumed(
            bootstrap, settings.kafka.deliver_group, [settings.output.upserts_topic]
        )
        steady, previous = consumed and ends == previous, (ends if consumed else None)
        return steady

    return probe


def wait_for_equality(
    fetch_dump: Any,
    expected: Mapping[str, dict[str, Any]],
    gone: Iterable[str],
    timeout: float,
    drained: Callable[[], bool] | None = None,
) -> tuple[list[str], float]:
    """Poll the stand-in until it equals `expected` (returns ([], seconds)) or `timeout` (the last diff).

    With `drained` (see `pipeline_drained`), equality counts only once the pipeline has drained and
    the stand-in still equals `expected` then: a late record must not undo what was compared.
    """
    started = time.monotonic()
    gone = list(gone)
    problems = ["never compared"]
    while time.monotonic() - started < timeout:
        problems = differences(expected, fetch_dump(), gone)
        if not problems and drained is not None:
            if not drained():
                problems = ["equal, but the pipeline has records in flight"]
            else:
                problems = differences(expected, fetch_dump(), gone)
        if not problems:
            break
        time.sleep(1)
    return problems, time.monotonic() - started


# -- the connector process -----------------------------------------------------------------------------


def write_json_config(settings: Settings, path: Path) -> None:
    """`settings` as YAML for `yespo-connector run`, JSON logs, no metrics port, no secret."""
    import yaml

    data = settings.model_dump(mode="json", exclude={"yespo": {"api_key"}})
    data["observability"].update({"metrics_port": 0, "log_format": "json", "log_level": "INFO"})
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def start_connector(config: Path, api_key: str, log: Path, instance: str) -> subprocess.Popen[bytes]:
    """`yespo-connector run --stage all --create-topics` in its own session, output appended to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YESPO_")}
    env["YESPO_API_KEY"] = api_key
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector",
                "run",
                "--config",
                str(config),
                "--stage",
                "all",
                "--create-topics",
                "--instance-id",
                instance,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop_connector(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM, wait (SIGKILL after `timeout`); returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def leaked_pii(log_text: str, values: Iterable[str]) -> list[str]:
    """The `values` that occur in `log_text` (reported masked, never in clear)."""
    return [f"{v[:2]}...({len(v)} chars)" for v in sorted(set(values)) if v and v in log_text]


LIBRDKAFKA_LINE = re.compile(r"^%\d\|\d+\.\d+\|[A-Z_]+\|rdkafka#")
"""librdkafka's native log format (`%4|<ts>|GETPID|rdkafka#producer-2| ...`): a client built without
the `logger` property writes these straight to stderr, past the JSON formatting and its redaction."""


def json_log_lines(log_text: str) -> list[dict[str, Any]]:
    """Every log record; fails on any line that is not a JSON object (a native librdkafka one included)."""
    records = []
    for line in log_text.splitlines():
        if not line.strip():
            continue
        assert not LIBRDKAFKA_LINE.match(line), f"a librdkafka client logs past Python logging: {line[:200]}"
        doc = json.loads(line)
        assert isinstance(doc, dict), line[:200]
        records.append(doc)
    return records


# -- Kafka-side checks ----------------------------------------------------------------------------------


def upsert_versions(bootstrap: str, topic: str) -> dict[str, list[int]]:
    """customer_key -> the versions of its committed upserts-topic records, in offset order."""
    out: dict[str, list[int]] = {}
    for msg in read_all(bootstrap, topic):
        rec = orjson.loads(msg.value())
        out.setdefault(rec["customer_key"], []).append(int(rec["version"]))
    return out


def replayed_source_records(bootstrap: str, topics: Iterable[str]) -> int:
    """How many Debezium records repeat an earlier (key, op, lsn) of the same topic: Connect's replays."""
    seen: set[tuple[str, bytes, str, Any]] = set()
    repeats = 0
    for topic in topics:
        for msg in read_all(bootstrap, topic, committed_only=False):
            if msg.value() is None:
                continue
            payload = orjson.loads(msg.value())["payload"]
            ident = (topic, msg.key(), payload["op"], payload["source"].get("lsn"))
            if payload["op"] == "r":
                continue  # snapshot records share one lsn
            if ident in seen:
                repeats += 1
            seen.add(ident)
    return repeats


def delete_chain_topics(admin: Any, settings: Settings, prefix: str) -> None:
    """Delete a chain's connector topics and Debezium's heartbeat topic for `prefix`."""
    from tests.integration.kafka_helpers import delete_topics

    delete_topics(
        admin,
        [
            settings.state.changes_topic,
            settings.state.topic,
            settings.output.upserts_topic,
            settings.output.dlq_topic,
            settings.output.audit_topic,
            f"__debezium-heartbeat.{prefix}",
        ],
    )
