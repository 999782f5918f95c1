"""Helpers for deliver-stage integration tests: settings, an upserts workload, the expected Yespo view.

The workload is a list of upserts-topic records (the shape of schemas/upsert.schema.json) with several
versions per customer, deletes (some erasing), group changes with `groups_removed`, cleared columns and,
on request, contacts Yespo must refuse. `expected_view` translates a record into what the stand-in's
dump must show for that customer (official channel types, fields by id, town/postcode/address).
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from connector.config import Settings
from connector.deliver import DeliverStage, build_deliver_stage
from connector.deliver.runner import SEND_THREAD_PREFIX
from tests.integration.merge_support import merge_settings, read_all

API_KEY = "it-deliver-key"
FIELD_IDS = {"birthDate": 101, "loyaltyLevel": 102, "country": 103}
GROUPS = {11: "vip", 12: "newsletter", 13: "b2b", 14: "churn-risk", 15: "beta", 16: "kyiv"}
_NAMES = ["Anna", "Bohdan", "Olena", "Taras", "Iryna", "Mykola", "Sofiia", "Andrii", "Daria", "Petro"]
_LAST = ["Shevchenko", "Kovalenko", "Bondarenko", "Tkachenko", "Melnyk", "Kravchenko"]
_CITIES = [("Kyiv", "Kyivska"), ("Lviv", "Lvivska"), ("Odesa", "Odeska"), ("Dnipro", "Dnipropetrovska")]


def deliver_settings(
    bootstrap: str, names: Callable[[str], str], base_url: str, *, partitions: int = 3, **yespo: Any
) -> Settings:
    """The repo's example config on unique topics, delivering to `base_url` (a stand-in)."""
    base = merge_settings(bootstrap, names, partitions=partitions)
    data = base.model_dump(exclude={"yespo": {"api_key"}})
    data["yespo"].update(
        {
            "base_url": base_url,
            "field_ids": FIELD_IDS,
            "country_field": "country",
            "batch_linger_ms": 100,
            "request_timeout_s": 10,
        }
    )
    data["yespo"].update(yespo)
    data["observability"].update({"metrics_port": 0, "log_format": "text"})
    return Settings(**data)


def with_key(settings: Settings, key: str = API_KEY) -> Settings:
    """`settings` carrying the API key (as `load_settings` would from YESPO_API_KEY)."""
    from pydantic import SecretStr

    return settings.model_copy(
        update={"yespo": settings.yespo.model_copy(update={"api_key": SecretStr(key)})}
    )


# -- the workload -----------------------------------------------------------------------------------


@dataclass
class UpsertWorkload:
    """Records in production order, as (customer key, value dict or raw bytes)."""

    records: list[tuple[str, Any]] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)

    def waves(self, n: int) -> list[list[tuple[str, Any]]]:
        """The records cut into `n` consecutive parts (per-customer order is kept)."""
        size = -(-len(self.records) // n)
        return [self.records[i : i + size] for i in range(0, len(self.records), size)]

    def last_per_customer(self) -> dict[str, dict[str, Any]]:
        """The last readable record of every customer."""
        out: dict[str, dict[str, Any]] = {}
        for key, value in self.records:
            if isinstance(value, dict):
                out[key] = value
        return out


def _contact(
    rng: random.Random, cid: int, version: int, groups: set[int], *, bad_email: bool
) -> dict[str, Any]:
    channels: list[dict[str, str]] = [
        {"type": "email", "value": "broken-address" if bad_email else f"user{cid}.v{version}@example.com"}
    ]
    if rng.random() < 0.7:
        channels.append({"type": "sms", "value": f"+38050{rng.randrange(10**7):07d}"})
    if rng.random() < 0.2:
        channels.append({"type": "webPush", "value": f"wp-token-{cid}-{version}"})
    city, region = rng.choice(_CITIES)
    address: dict[str, str] = {"city": city, "region": region, "country": rng.choice(["UA", "PL"])}
    if rng.random() < 0.8:
        address["postalCode"] = f"{rng.randrange(10000, 99999)}"
    if rng.random() < 0.6:
        address["addressLine"] = f"Khreshchatyk {rng.randrange(1, 99)}"
    contact: dict[str, Any] = {
        "externalCustomerId": f"c{cid}",
        "firstName": rng.choice(_NAMES),
        "channels": channels,
        "address": address,
        "fields": [
            {
                "name": "birthDate",
                "value": f"19{rng.randrange(50, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}",
            }
        ],
        "groups": [{"id": g, "name": GROUPS[g]} for g in sorted(groups)],
        "languageCode": rng.choice(["uk", "en"]),
        "timeZone": "Europe/Kyiv",
    }
    if rng.random() < 0.7:  # else the column is cleared: Yespo must clear it too
        contact["lastName"] = rng.choice(_LAST)
    if rng.random() < 0.5:
        contact["fields"].append({"name": "loyaltyLevel", "value": rng.choice(["gold", "silver"])})
    return contact


def make_workload(
    customers: int, records: int, *, seed: int = 7, bad_customers: int = 0, delete_rate: float = 0.06
) -> UpsertWorkload:
    """`records` upserts/deletes over `customers` customers, interleaved at random, versions in order.

    Every customer gets at least one record. `bad_customers` customers end with an invalid email (Yespo
    refuses them: DLQ). About `delete_rate` of the records are deletes (a tenth of them erase).
    """
    rng = random.Random(seed)
    counts = [1] * customers
    for _ in range(records - customers):
        counts[rng.randrange(customers)] += 1
    order = [cid for cid in range(customers) for _ in range(counts[cid])]
    rng.shuffle(order)
    bad = set(rng.sample(range(customers), bad_customers))
    remaining = list(counts)
    version = [0] * customers
    groups: list[set[int]] = [set() for _ in range(customers)]
    work = UpsertWorkload(bad={f"cust-{c}" for c in bad})
    for cid in order:
        remaining[cid] -= 1
        version[cid] += 1
        key = f"cust-{cid}"
        last = remaining[cid] == 0
        source = {"topic": "changes", "partition": 0, "offset": version[cid], "position": None}
        if version[cid] > 1 and not (last and cid in bad) and rng.random() < delete_rate:
            erase = rng.random() < 0.1
            value = {
                "op": "delete",
                "customer_key": key,
                "external_customer_id": f"c{cid}",
                "contact": None,
                "groups_removed": [],
                "erase": erase,
                "version": version[cid],
                "source": source,
            }
            if erase:
                groups[cid] = set()  # an erased contact loses its segments
        else:
            new = set(rng.sample(sorted(GROUPS), rng.randrange(0, 3)))
            removed = sorted(groups[cid] - new)
            groups[cid] = new
            value = {
                "op": "upsert",
                "customer_key": key,
                "external_customer_id": f"c{cid}",
                "contact": _contact(rng, cid, version[cid], new, bad_email=last and cid in bad),
                "groups_removed": removed,
                "erase": False,
                "version": version[cid],
                "source": source,
            }
        work.records.append((key, value))
    return work


# -- producing ----------------------------------------------------------------------------------------


def produce_transactions(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[str, Any]],
    *,
    per_transaction: int = 1000,
    abort: bool = False,
) -> list[tuple[int, int]]:
    """Produce keyed records in transactions (aborted with `abort`); returns their (partition, offset)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"it-deliver-{uuid.uuid4().hex[:10]}",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    positions: list[tuple[int, int]] = []
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            positions.append((msg.partition(), msg.offset()))

    batch = list(records)
    for start in range(0, len(batch), per_transaction):
        producer.begin_transaction()
        for key, value in batch[start : start + per_transaction]:
            raw = value if isinstance(value, bytes) else orjson.dumps(value)
            producer.produce(topic, key=key.encode(), value=raw, on_delivery=on_delivery)
            producer.poll(0)
        producer.flush(30)
        if abort:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
    assert not errors, errors
    return positions


# -- reading the outcome -------------------------------------------------------------------------------


def expected_view(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the stand-in's dump must hold for a customer whose last delivered record is `record`.

    None: no live contact (deleted, erased or never created); the caller checks `deleted` separately.
    """
    if record["op"] == "delete":
        return None
    c = record["contact"]
    channels = []
    for ch in c["channels"]:
        ctype = {"webPush": "webpush"}.get(ch["type"], ch["type"])
        value = "".join(x for x in ch["value"] if x.isdigit()) if ctype == "sms" else ch["value"]
        channels.append((ctype, value))
    names = {"city": "town", "postalCode": "postcode", "addressLine": "address", "region": "region"}
    address = {names[k]: v for k, v in c.get("address", {}).items() if k in names}
    fields = {str(FIELD_IDS[f["name"]]): f["value"] for f in c.get("fields", [])}
    if "country" in c.get("address", {}):
        fields[str(FIELD_IDS["country"])] = c["address"]["country"]
    return {
        "firstName": c.get("firstName"),
        "lastName": c.get("lastName"),
        "languageCode": c.get("languageCode"),
        "timeZone": c.get("timeZone"),
        "channels": sorted(channels),
        "address": address,
        "fields": fields,
        "groups": sorted(g["id"] for g in c.get("groups", [])),
    }


def actual_view(dumped: Mapping[str, Any]) -> dict[str, Any]:
    """A stand-in dump entry in the shape of `expected_view`."""
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


def compare_with_standin(work: UpsertWorkload, dump: Mapping[str, Any]) -> list[str]:
    """Differences between the last record of every (not refused) customer and the stand-in's contacts."""
    by_ext = {c["externalCustomerId"]: c for c in dump["contacts"] if c["externalCustomerId"] is not None}
    problems: list[str] = []
    for key, last in work.last_per_customer().items():
        if key in work.bad:
            continue
        ext = last["external_customer_id"]
        have = by_ext.get(ext)
        want = expected_view(last)
        if want is None:
            if have is not None and not have["deleted"]:
                problems.append(f"{key}: deleted (erase={last['erase']}) but live in the stand-in")
            if have is not None and last["erase"]:
                problems.append(f"{key}: erased but still in the stand-in")
            continue
        if have is None or have["deleted"]:
            problems.append(f"{key}: missing or deleted in the stand-in")
            continue
        got = actual_view(have)
        if got != want:
            diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
            problems.append(f"{key}: {diff}")
    return problems


@dataclass
class Accounting:
    """Per input position, what the audit and DLQ topics say happened to it."""

    audit: dict[tuple[int, int], set[str]]
    dlq: dict[tuple[int, int], str]
    audited: Counter[tuple[int, int]] = field(default_factory=Counter)
    """How many audit records each position has (a redelivery after a crash writes a second)."""

    def missing(self, positions: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Positions that are neither audited as settled nor in the DLQ with a reason."""
        return [p for p in positions if p not in self.dlq and not (self.audit.get(p, set()) - {""})]


def accounting(bootstrap: str, settings: Settings) -> Accounting:
    """Read the audit and DLQ topics of `settings`."""
    audit: dict[tuple[int, int], set[str]] = {}
    audited: Counter[tuple[int, int]] = Counter()
    for msg in read_all(bootstrap, settings.output.audit_topic, committed_only=False):
        doc = orjson.loads(msg.value())
        src = doc["source"]
        audit.setdefault((src["partition"], src["offset"]), set()).add(doc["result"])
        audited[(src["partition"], src["offset"])] += 1
    dlq: dict[tuple[int, int], str] = {}
    for msg in read_all(bootstrap, settings.output.dlq_topic, committed_only=False):
        headers = {k: (v or b"").decode() for k, v in msg.headers() or ()}
        if headers.get("yespo.source.topic") == settings.output.upserts_topic:
            pos = (int(headers["yespo.source.partition"]), int(headers["yespo.source.offset"]))
            dlq[pos] = headers.get("yespo.error.reason", "")
    return Accounting(audit, dlq, audited)


def data_positions(bootstrap: str, topic: str) -> dict[tuple[int, int], bytes]:
    """(partition, offset) -> key of every committed record of `topic`."""
    return {(m.partition(), m.offset()): m.key() for m in read_all(bootstrap, topic)}


def member_ids(admin: AdminClient, group: str) -> list[str]:
    """The member ids of `group` now (empty when it has none)."""
    result = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return sorted(m.member_id for m in result.members)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.5,
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll `check` until it is true; fail with `what` (and `explain()`, if given) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


def log_tail(caplog: pytest.LogCaptureFixture, names: Iterable[str], size: int) -> str:
    """The last `size` records `caplog` captured from the loggers `names`, for a failure message."""
    wanted = tuple(names)
    form = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    records = [r for r in caplog.records if r.name in wanted][-size:]
    return "last log lines:\n" + "\n".join(form.format(r)[:400] for r in records)


class StageThread:
    """A stage running in this process on a thread; `error` holds what stopped it.

    A `DeliverStage` built from `settings`, or any stage with `run()` and `stop()` given as `stage`.
    """

    def __init__(self, settings: Settings | None = None, *, stage: Any = None) -> None:
        self.stage: DeliverStage = stage if stage is not None else build_deliver_stage(settings)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stage-under-test", daemon=True)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the stage to stop by itself; True when it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> str:
        """What the stage is doing now, for a failure message: its counters, the state of its loop
        (assignment, pause, offsets waiting for a commit, batches) and the stacks of its threads."""
        stage = self.stage
        window = [
            f"{len(b.records)} records, final={b.final}, done={b.future is not None and b.future.done()}"
            for b in getattr(stage, "_window", [])
        ]
        flow = getattr(stage, "_flow", None)
        gathering = getattr(stage, "_gathering", None)
        lines = [
            f"stats: {stage.stats}",
            f"assigned: {[(tp.topic, tp.partition) for tp in getattr(flow, 'assigned', [])]}",
            f"paused: {getattr(flow, 'paused', None)}, backing off: {getattr(flow, 'backing_off', None)}",
            f"uncommitted: {getattr(getattr(stage, '_offsets', None), 'uncommitted', None)}",
            f"gathering: {len(getattr(gathering, 'records', []))}, window: {window}",
        ]
        frames = sys._current_frames()
        for thread in threading.enumerate():
            frame = frames.get(thread.ident or -1)
            if frame is not None and (thread is self._thread or thread.name.startswith(SEND_THREAD_PREFIX)):
                lines.append(f"thread {thread.name}:\n" + "".join(traceback.format_stack(frame)[-12:]))
        return "\n".join(lines)

    def _run(self) -> None:
        try:
            self.stage.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> StageThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stage.stop()
        self._thread.join(30)
