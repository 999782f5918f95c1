"""Deliver-stage throughput end to end (upserts topic -> stage -> Yespo stand-in), against baselines.

The stand-in runs as a subprocess (`yespo-connector stand-in --rate-limit 0`: its own interpreter).
For each mode the same run measures:
  - stage: contacts/s from the stage's partition assignment until its commits pass the last record
    (read_committed consumer, planning, wire translation, HTTP, audit writes, offset commits), and
    the CPU of this process meanwhile (the stage's threads, librdkafka's, the probe of committed
    offsets), with the part the garbage collector took. The workload is dropped before the stage
    starts: a stage process does not hold it, and the collector would walk it;
  - baseline: the bodies the stage would send (same chunking, already translated and serialized)
    POSTed directly to the stand-in with a bare httpx client, no Kafka: the rate the stand-in accepts.
Bulk mode (goal >= 10k contacts/s) uses `batch_size` 3000 and 200 requests/s (the config maximum);
single mode is bounded by the rate limit (one request per contact), so its ceiling is printed too.

    python benchmarks/bench_deliver.py [--contacts 60000] [--single 2000] [--batch-size 3000]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector.config import Settings
from connector.deliver import build_deliver_stage
from connector.kafka.clients import produce as produce_or_wait
from connector.sink.client import YespoClient
from tests.integration.deliver_support import API_KEY, deliver_settings, make_workload, with_key


class StandInProcess:
    """`yespo-connector stand-in` on a free port, unlimited rate."""

    def __init__(self) -> None:
        cmd = [sys.executable, "-m", "connector", "stand-in", "--port", "0", "--api-key", API_KEY]
        cmd += ["--rate-limit", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"stand-in did not start: {line!r}")
        self.url = line.strip().rsplit(" ", 1)[-1]

    def reset(self) -> None:
        httpx.post(f"{self.url}/_standin/reset", timeout=30).raise_for_status()

    def count(self) -> int:
        return int(httpx.get(f"{self.url}/_standin/contacts", timeout=60).json()["count"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def produce(bootstrap: str, topic: str, records: list[tuple[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "zstd"})
    for key, value in records:
        produce_or_wait(producer, topic, wait_s=math.inf, key=key.encode(), value=orjson.dumps(value))
        producer.poll(0)
    assert producer.flush(60) == 0


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe"})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    out = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    consumer.close()
    return out


def committed(probe: Consumer, topic: str, parts: list[int]) -> dict[int, int]:
    got = probe.committed([TopicPartition(topic, p) for p in parts], timeout=30)
    return {tp.partition: tp.offset for tp in got}


class GcClock:
    """CPU seconds the cyclic garbage collector spent (any thread) while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started: dict[int, float] = {}

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = time.thread_time()
        elif ident in self._started:
            self.seconds += time.thread_time() - self._started.pop(ident)
            self.collections += 1


def run_stage(
    settings: Settings, bootstrap: str, ends: dict[int, int]
) -> tuple[float, float, GcClock, dict[str, int]]:
    """Seconds from assignment to the last commit, CPU seconds and GC meanwhile, the result counters."""
    topic, group = settings.output.upserts_topic, settings.kafka.deliver_group
    # one probe for the committed offsets, made before the clock starts (not one per check)
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    stage = build_deliver_stage(settings)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            stage.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while not stage.ready:
        if errors:
            raise errors[0]
        time.sleep(0.005)
    started = time.perf_counter()
    cpu_started = _cpu()
    parts = sorted(ends)
    probed_after = -1
    with GcClock() as gc_clock:
        while True:
            if errors:
                raise errors[0]
            # cheap checks first (the stage's own counters: everything consumed, a commit since the
            # last probe), then the broker's committed offsets
            commits = stage.stats.commits
            if stage.stats.consumed >= sum(ends.values()) and commits != probed_after:
                probed_after = commits
                done = committed(probe, topic, parts)
                if all(done.get(p, -1) >= o for p, o in ends.items()):
                    break
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu = _cpu() - cpu_started
    stage.stop()
    thread.join(30)
    probe.close()
    return elapsed, cpu, gc_clock, dict(stage.stats.results)


def _cpu() -> float:
    """CPU seconds of this process so far (every thread, librdkafka's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def baseline(settings: Settings, contacts: list[dict[str, Any]], single: bool) -> float:
    """Seconds to POST the same translated bodies with a bare httpx client (no Kafka, no pacing)."""
    http = httpx.Client(timeout=60)
    client = YespoClient(http, settings.yespo, settings.contact)
    client.resolve_fields()
    wire = [client.translate(c) for c in contacts]
    auth = httpx.BasicAuth("bench", API_KEY)
    headers = {"Content-Type": "application/json"}
    base = settings.yespo.base_url.rstrip("/") + "/api/v1"
    if single:
        bodies = [orjson.dumps(w) for w in wire]
        url = base + "/contact"
    else:
        size = settings.yespo.batch_size
        bodies = [orjson.dumps(client.bulk_body(wire[i : i + size])) for i in range(0, len(wire), size)]
        url = base + "/contacts"
    started = time.perf_counter()
    for body in bodies:
        response = http.post(url, content=body, headers=headers, auth=auth)
        assert response.status_code == 200, response.text[:200]
    elapsed = time.perf_counter() - started
    http.close()
    return elapsed


def bench_mode(
    name: str,
    bootstrap: str,
    admin: AdminClient,
    standin: StandInProcess,
    count: int,
    make: Callable[[Callable[[str], str]], Settings],
) -> None:
    run = uuid.uuid4().hex[:8]
    names = lambda prefix: f"bench-deliver-{prefix}-{run}"  # noqa: E731
    settings = with_key(make(names))
    topic = settings.output.upserts_topic
    futures = admin.create_topics(
        [
            NewTopic(topic, num_partitions=3, replication_factor=1),
            NewTopic(settings.output.dlq_topic, num_partitions=1, replication_factor=1),
            NewTopic(settings.output.audit_topic, num_partitions=1, replication_factor=1),
        ]
    )
    for fut in futures.values():
        fut.result(30)
    # one record per customer: every record becomes a contact on the wire (nothing collapses); no
    # segments, so the stage sends exactly the requests of the baseline
    work = make_workload(count, count, seed=5, delete_rate=0.0)
    for _, value in work.records:
        value["contact"]["groups"] = []
    produce(bootstrap, topic, work.records)
    ends = end_offsets(bootstrap, topic)
    contacts = [value["contact"] for _, value in work.records]

    standin.reset()
    base_s = baseline(settings, contacts, single=settings.yespo.mode == "single")
    assert standin.count() == count
    # A stage process holds no workload: drop this one, so the collector does not walk it meanwhile.
    del work, contacts
    gc.collect()
    standin.reset()
    stage_s, cpu_s, gc_clock, results = run_stage(settings, bootstrap, ends)
    assert standin.count() == count, "the stand-in does not hold every contact"
    assert results.get("delivered", 0) >= count, results

    stage_rate, base_rate = count / stage_s, count / base_s
    print(
        f"{name}: {count} contacts, batch_size={settings.yespo.batch_size}, "
        f"max_requests_per_second={settings.yespo.max_requests_per_second:g}"
    )
    print(f"  stage    {stage_s:7.2f} s  {stage_rate:9.0f} contacts/s  (results {results})")
    print(f"  baseline {base_s:7.2f} s  {base_rate:9.0f} contacts/s  (same bodies, bare httpx, no Kafka)")
    print(f"  ratio stage/baseline = {stage_rate / base_rate:.2f}")
    print(
        f"  stage process CPU {cpu_s:.2f} s = {cpu_s / stage_s:.2f} cores, "
        f"{1000 * cpu_s / count:.3f} ms/contact "
        f"(of which GC {gc_clock.seconds:.2f} s in {gc_clock.collections} collections)"
    )
    if settings.yespo.mode == "single":
        ceiling = settings.yespo.max_requests_per_second
        print(f"  rate-limit ceiling {ceiling:g} contacts/s; stage/ceiling = {stage_rate / ceiling:.2f}")
    admin.delete_topics([topic, settings.output.dlq_topic, settings.output.audit_topic])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=60_000, help="contacts in the bulk-mode run")
    parser.add_argument("--single", type=int, default=2_000, help="contacts in the single-mode run")
    parser.add_argument("--batch-size", type=int, default=3000)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    standin = StandInProcess()
    try:

        def bulk(names: Callable[[str], str]) -> Settings:
            return deliver_settings(
                bootstrap, names, standin.url, batch_size=args.batch_size, max_requests_per_second=200
            )

        def single(names: Callable[[str], str]) -> Settings:
            return deliver_settings(
                bootstrap, names, standin.url, mode="single", batch_size=500, max_requests_per_second=200
            )

        bench_mode("bulk", bootstrap, admin, standin, args.contacts, bulk)
        bench_mode("single", bootstrap, admin, standin, args.single, single)
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
