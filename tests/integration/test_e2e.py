"""End to end: PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> merge -> deliver -> the Yespo stand-in.

Each test owns a database (the CRM schema, REPLICA IDENTITY FULL), a Debezium connector with its own
topic prefix, slot and publication, a stand-in, and a `yespo-connector run --stage all` subprocess with
JSON logs. Pre-existing rows arrive through the initial snapshot; a live workload of inserts, updates
(some leaving TOASTed columns untouched), deletes, a re-insert, group adds/removes/renames and one
primary-key change follows. At the end the stand-in must hold exactly the mapping of the final rows
(read back from PostgreSQL, mapped with the connector's ContactMapper and wire translation), deleted
customers deleted, and the connector's logs must contain no fixture PII nor the API key.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connector.config import Settings
from connector.stack.base import port_open
from connector.stack.connect import KafkaConnect, delete_connector, register_connector, wait_running
from connector.standin import StandIn
from tests.integration.deliver_support import deliver_settings
from tests.integration.e2e_support import (
    EXTRA,
    CrmDatabase,
    Workload,
    delete_chain_topics,
    expected_contacts,
    json_log_lines,
    leaked_pii,
    pipeline_drained,
    psql,
    replayed_source_records,
    start_connector,
    stop_connector,
    upsert_versions,
    wait_for_equality,
    write_json_config,
)
from tests.integration.merge_support import read_all

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PRE_EXISTING = 30
PRE_EXISTING_BIG = 4
LIVE_OPS = 250
CONVERGE_S = 120.0


@dataclass
class Chain:
    """One test's chain: database, Debezium connector, stand-in, connector process, workload."""

    db: CrmDatabase
    settings: Settings
    standin: StandIn
    connect_url: str
    connector_name: str
    source_topics: list[str]
    workload: Workload
    api_key: str
    log: Path
    proc: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return self.standin.contacts()

    def expected(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """(the contacts the database's rows map to now, external ids of deleted customers)."""
        rows = self.db.customers()
        expected = expected_contacts(self.settings, rows, self.db.groups())
        gone = {f"crm-{cid}" for cid in self.workload.deleted}
        return expected, gone

    def converge(self, what: str) -> None:
        expected, gone = self.expected()
        drained = pipeline_drained(self.settings.kafka.bootstrap_servers, self.settings)
        problems, seconds = wait_for_equality(self.dump, expected, gone, CONVERGE_S, drained)
        self.timings[what] = round(seconds, 1)
        assert self.proc.poll() is None, f"the connector exited ({self.proc.returncode}):\n{self.log_tail()}"
        named = [p.split(":", 1)[0] for p in problems[:10] if p.startswith("crm-")]
        named += [e for p in problems if p.startswith(EXTRA) for e in re.findall(r"crm-\d+", p)]
        stories = [self.workload.story(e) for e in named[:20]]
        assert not problems, f"{what}: {len(problems)} differences after {seconds:.0f} s:\n" + "\n".join(
            [*problems[:20], "history:", *stories]
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def chain(
    kafka_bootstrap: str,
    kafka_admin: Any,
    postgres_dsn: str,
    connect_url: str,
    debezium_connector_config: Callable[..., tuple[str, dict[str, str]]],
    create_topic: Callable[..., str],
    unique_topic: Callable[..., str],
    tmp_path: Path,
) -> Iterator[Chain]:
    # E2E_SEED replays a printed seed's workload (the SQL; Debezium's and Kafka's timing still vary)
    seed = int(os.environ.get("E2E_SEED") or random.randrange(2**32))
    print(f"e2e workload seed {seed}")
    rng = random.Random(seed)
    prefix = f"e2e{uuid.uuid4().hex[:10]}"
    db = CrmDatabase(postgres_dsn).create()
    api_key = f"e2e-key-{uuid.uuid4().hex}"
    # the big (TOASTed) rows carry a 3000-character loyalty level: a text area in this account
    # (a text input holds 1000 characters, and Yespo would refuse the contact)
    standin = StandIn(api_key=api_key, port=0, field_types={"loyaltyLevel": "TEXTAREA"})
    standin.start()
    sources = [
        create_topic(f"{prefix}.public.customers", partitions=3),
        create_topic(f"{prefix}.public.customer_groups", partitions=2),
    ]
    base = deliver_settings(kafka_bootstrap, unique_topic, standin.url)
    data = base.model_dump(exclude={"yespo": {"api_key"}})
    data["source"]["customers"]["topic"] = sources[0]
    data["source"]["children"][0]["topic"] = sources[1]
    settings = Settings(**data)
    name, config = debezium_connector_config(prefix=prefix, **{"database.dbname": db.name})
    run = Chain(
        db=db,
        settings=settings,
        standin=standin,
        connect_url=connect_url,
        connector_name=name,
        source_topics=sources,
        workload=Workload(rng),
        api_key=api_key,
        log=tmp_path / "connector.log",
    )
    try:
        # 1. pre-existing rows: they reach Kafka through Debezium's initial snapshot
        script = [run.workload.insert(big=i < PRE_EXISTING_BIG) for i in range(PRE_EXISTING)]
        psql(db.dsn, "".join(script))
        toasted = psql(
            db.dsn,
            "SELECT count(*) FROM public.customers WHERE pg_column_size(notes) > 2100 "
            "AND pg_column_size(loyalty_level) > 2100",
        )
        assert int(toasted) == PRE_EXISTING_BIG  # not compressed inline: stored out of line (TOAST)
        # 2. the connector, then Debezium
        config_file = tmp_path / "connector.yaml"
        write_json_config(settings, config_file)
        run.proc = start_connector(config_file, api_key, run.log, f"e2e-{prefix}")
        started = time.monotonic()
        register_connector(connect_url, name, config)
        wait_running(connect_url, name)
        run.timings["debezium_running"] = round(time.monotonic() - started, 1)
        yield run
    finally:
        if run.proc is not None:
            stop_connector(run.proc)
        with contextlib.suppress(Exception):
            delete_connector(connect_url, name)
        standin.stop()
        db.drop(f"{prefix}_slot", f"{prefix}_pub")
        with contextlib.suppress(Exception):
            delete_chain_topics(kafka_admin, settings, prefix)


def run_ops(run: Chain, ops: list[str], pause_s: float = 0.02) -> None:
    for script in ops:
        psql(run.db.dsn, script)
        time.sleep(pause_s)


def finish_and_check(run: Chain, kafka_bootstrap: str) -> None:
    """Final equality, then stop the connector and check exit code, upsert versions and the logs."""
    run.converge("live workload")
    expected, gone = run.expected()
    dump = run.dump()
    deleted_in_standin = {c["externalCustomerId"] for c in dump["contacts"] if c["deleted"]}
    assert gone & deleted_in_standin, "no deleted customer reached the stand-in as a delete"
    assert len(expected) == len(run.workload.live)
    # The TOASTed long loyalty_level (field 102) survived updates that did not touch it.
    by_ext = {c["externalCustomerId"]: c for c in dump["contacts"]}
    toast_kept = [
        cid
        for cid in run.workload.toasted & set(run.workload.live)
        if "toast_update" in run.workload.trail.get(cid, [])
        and by_ext[f"crm-{cid}"]["fields"].get("102") == run.workload.live[cid]["loyalty_level"]
    ]
    assert toast_kept, "no TOASTed customer was updated and checked"
    assert sum(bool(c["groups"]) for c in dump["contacts"] if not c["deleted"]) > 0

    assert stop_connector(run.proc) == 0, run.log_tail()

    # Nothing was refused or unmappable: every change reached Yespo.
    dead = read_all(kafka_bootstrap, run.settings.output.dlq_topic, committed_only=False)
    reasons = [dict(m.headers() or ()).get("yespo.error.reason") for m in dead]
    assert not dead, f"{len(dead)} records dead-lettered: {reasons[:5]}"

    # Every committed upsert has its own version: no record was emitted twice (replays deduped).
    versions = upsert_versions(kafka_bootstrap, run.settings.output.upserts_topic)
    assert versions
    repeated = {k: v for k, v in versions.items() if v != sorted(set(v))}
    assert not repeated, f"duplicated or out-of-order upsert versions: {list(repeated.items())[:5]}"

    # The connector's JSON logs name no fixture email, phone, name, nor the API key.
    text = run.log.read_text(errors="replace")
    lines = json_log_lines(text)  # every client's librdkafka lines go through logging too
    assert lines, "the connector logged nothing"
    assert not leaked_pii(text, [*run.workload.pii, run.api_key])
    print(f"e2e ops {run.workload.counts} timings {run.timings}")
    print(f"log lines: {len(lines)} JSON")


def test_e2e_snapshot_and_live_workload(chain: Chain, kafka_bootstrap: str) -> None:
    chain.converge("snapshot")
    ops = chain.workload.live_ops(LIVE_OPS)
    started = time.monotonic()
    run_ops(chain, ops)
    chain.timings["workload"] = round(time.monotonic() - started, 1)
    counts = chain.workload.counts
    for op in (
        "insert",
        "update",
        "toast_update",
        "delete",
        "key_change",
        "key_change_delete",
        "key_change_id",
        "group_add",
        "group_remove",
    ):
        assert counts.get(op, 0) > 0, f"the workload has no {op}: {counts}"
    finish_and_check(chain, kafka_bootstrap)


def test_e2e_survives_connect_restart(
    chain: Chain, kafka_bootstrap: str, connect_worker: KafkaConnect | None
) -> None:
    if connect_worker is None:
        pytest.fail("KAFKA_CONNECT_URL points at an external Connect: this test must restart the worker")
    chain.converge("snapshot")
    ops = chain.workload.live_ops(LIVE_OPS)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            run_ops(chain, ops, pause_s=0.05)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=writer, name="e2e-writer", daemon=True)
    thread.start()
    time.sleep(2.0)  # mid-workload: Debezium is streaming the live changes
    # A crash, not a clean stop: offsets committed up to ~1 s before the kill, so Debezium replays.
    pid = connect_worker.daemon.observe().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    while port_open("127.0.0.1", connect_worker.config.connect_port):  # the dying JVM still listens
        assert time.monotonic() - started < 30, "the killed worker still listens"
        time.sleep(0.1)
    connect_worker.restart(wait_for=[chain.connector_name])
    chain.timings["connect_restart"] = round(time.monotonic() - started, 1)
    thread.join(300)
    assert not thread.is_alive() and not errors, errors
    finish_and_check(chain, kafka_bootstrap)
    replays = replayed_source_records(kafka_bootstrap, chain.source_topics)
    print(f"Debezium replayed {replays} records after the restart")
    assert replays > 0, "the crash caused no replay: this run did not exercise the dedupe"
