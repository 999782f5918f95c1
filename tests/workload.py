"""A deterministic CDC workload: customers + customer_groups changes as Debezium would publish them.

`generate()` simulates a PostgreSQL database and emits Debezium JSON envelopes (schemas off, REPLICA
IDENTITY FULL) with real `source.sequence` positions, delete + tombstone pairs, cascaded child deletes,
re-created customers, no-op updates (only `updated_at`), and at-least-once replays of earlier slices.
It also returns the final database rows, from which a test computes the reference contacts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Event", "Workload", "generate"]


@dataclass(frozen=True)
class Event:
    topic: str
    key: bytes
    value: bytes | None


@dataclass
class Workload:
    events: list[Event] = field(default_factory=list)
    customers: dict[int, dict[str, Any]] = field(default_factory=dict)  # final live rows
    groups: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)  # customer -> group -> row
    ever_live: set[int] = field(default_factory=set)


CITIES = ["Lisboa", "Porto", "Braga", "Faro", "Coimbra"]
LEVELS = ["bronze", "silver", "gold", "platinum"]
GROUP_NAMES = {1001: "Newsletter", 1002: "VIP", 1003: "Beta", 1004: "Churn risk", 1005: "B2B"}


class _Db:
    def __init__(self, rng: random.Random, customers_topic: str, groups_topic: str) -> None:
        self.rng = rng
        self.ct = customers_topic
        self.gt = groups_topic
        self.lsn = 1000
        self.last_commit = 0
        self.tx = 500
        self.w = Workload()
        self.log: list[Event] = []

    def _source(self, table: str) -> dict[str, Any]:
        self.lsn += self.rng.randint(1, 40)
        return {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": "crm",
            "ts_ms": 1795166142000 + self.lsn,
            "snapshot": None,
            "db": "crm",
            "sequence": orjson.dumps([str(self.last_commit), str(self.lsn)]).decode(),
            "schema": "public",
            "table": table,
            "txId": self.tx,
            "lsn": self.lsn,
            "xmin": None,
        }

    def _commit(self) -> None:
        self.last_commit = self.lsn
        self.tx += 1

    def _emit(self, topic: str, key: dict[str, Any], op: str, before: Any, after: Any, table: str) -> None:
        env = {
            "before": before,
            "after": after,
            "source": self._source(table),
            "transaction": None,
            "op": op,
            "ts_ms": 1795166142500 + self.lsn,
        }
        self.log.append(Event(topic, orjson.dumps(key), orjson.dumps(env)))
        if op == "d":
            self.log.append(Event(topic, orjson.dumps(key), None))

    def customer_row(self, cid: int, version: int) -> dict[str, Any]:
        r = self.rng
        return {
            "id": cid,
            "external_id": f"EXT-{cid}",
            "first_name": r.choice(["Ana", "João", "Maria", "Pedro", "Inês", None]),
            "last_name": r.choice(["Silva", "Costa", "Santos", "Ferreira"]),
            "email": f"user{cid}.v{version}@example.com" if r.random() > 0.1 else None,
            "phone": f"+3512100{cid:05d}" if r.random() > 0.3 else None,
            "web_push_subscription": None,
            "city": r.choice(CITIES),
            "region": None,
            "country": "PT",
            "postal_code": f"{1000 + cid % 9000}-001",
            "address_line": f"Rua {cid}",
            "birth_date": f"19{60 + cid % 40}-0{1 + cid % 9}-1{cid % 10}",
            "loyalty_level": r.choice(LEVELS),
            "language_code": "pt",
            "time_zone": "Europe/Lisbon",
            "updated_at": f"2026-11-20T09:{self.lsn % 60:02d}:00.000000Z",
        }

    def step(self, n_customers: int) -> None:
        r, w = self.rng, self.w
        cid = r.randint(1, n_customers)
        live = cid in w.customers
        roll = r.random()
        if not live and roll < 0.9:
            row = self.customer_row(cid, r.randint(0, 9))
            w.customers[cid] = row
            w.ever_live.add(cid)
            self._emit(self.ct, {"id": cid}, "c", None, row, "customers")
        elif live and roll < 0.45:
            before = w.customers[cid]
            after = dict(self.customer_row(cid, r.randint(0, 9)))
            w.customers[cid] = after
            self._emit(self.ct, {"id": cid}, "u", before, after, "customers")
        elif live and roll < 0.55:
            before = w.customers[cid]
            after = {**before, "updated_at": f"2026-11-21T10:{self.lsn % 60:02d}:00.000000Z"}
            w.customers[cid] = after
            self._emit(self.ct, {"id": cid}, "u", before, after, "customers")
        elif live and roll < 0.62:
            before = w.customers.pop(cid)
            # ON DELETE CASCADE: the child rows go in the same transaction
            for gid, grow in sorted(w.groups.pop(cid, {}).items()):
                self._emit(self.gt, {"customer_id": cid, "group_id": gid}, "d", grow, None, "customer_groups")
            self._emit(self.ct, {"id": cid}, "d", before, None, "customers")
        elif live and roll < 0.85:
            gid = r.choice(list(GROUP_NAMES))
            groups = w.groups.setdefault(cid, {})
            key = {"customer_id": cid, "group_id": gid}
            if gid in groups:
                before = groups.pop(gid)
                self._emit(self.gt, key, "d", before, None, "customer_groups")
            else:
                row = {"customer_id": cid, "group_id": gid, "group_name": GROUP_NAMES[gid]}
                groups[gid] = row
                self._emit(self.gt, key, "c", None, row, "customer_groups")
            if not groups:
                w.groups.pop(cid, None)
        elif live:
            groups = w.groups.get(cid)
            if groups:
                gid = r.choice(sorted(groups))
                before = groups[gid]
                after = {**before, "group_name": before["group_name"] + "*"}
                groups[gid] = after
                self._emit(
                    self.gt, {"customer_id": cid, "group_id": gid}, "u", before, after, "customer_groups"
                )
        self._commit()


def generate(
    *,
    seed: int,
    customers: int,
    events: int,
    customers_topic: str,
    groups_topic: str,
    replay_probability: float = 0.01,
) -> Workload:
    """Simulate the database; `events` is the minimum number of published records."""
    rng = random.Random(seed)
    db = _Db(rng, customers_topic, groups_topic)
    out: list[Event] = []
    while len(out) < events:
        start = len(db.log)
        db.step(customers)
        out.extend(db.log[start:])
        if rng.random() < replay_probability and len(db.log) > 10:
            # Debezium after a crash: re-publish a slice of what it had already sent
            a = rng.randint(0, len(db.log) - 2)
            out.extend(db.log[a : a + rng.randint(1, 30)])
    db.w.events = out
    return db.w
